"""The demo: a resumable batch job over a generated data set.

It generates N payment records (deterministic from a seed), converts and fingerprints each one
in chunks, upserts the results into a SQLite output table (so a chunk processed twice writes
the same rows), checkpoints the offset after every chunk, and ends with a digest of the output
table. Interrupt it anywhere and rerun it: the digest is the same as an uninterrupted run's.
"""

from __future__ import annotations

import hashlib
import os
import random
import socket
import sqlite3
from decimal import ROUND_HALF_EVEN, Decimal
from pathlib import Path

from tqdm import tqdm

from engine import RetryPolicy, file_fingerprint, step, step_context, workflow
from engine.workers.leases import process_alive

_CURRENCIES = {"EUR": Decimal("1"), "USD": Decimal("0.9213"), "GBP": Decimal("1.1642"),
               "CHF": Decimal("1.0457"), "JPY": Decimal("0.006127"), "SEK": Decimal("0.08731")}
_HEADER = "id,account,currency,amount,day\n"


def _temp_name(target: Path, pid: int) -> Path:
    # The host is in the name because the work directory may be shared (compose mounts one
    # volume into every worker), and a pid means something only on its own host.
    return target.with_name(f"{target.stem}.tmp-{socket.gethostname()}-{pid}")


def _remove_stale_temps(workdir: Path) -> None:
    """Delete the half-written inputs of generators on this host that died (kill -9)."""
    prefix = f".tmp-{socket.gethostname()}-"
    for tmp in workdir.glob(f"input-*{prefix}*"):
        pid = tmp.name.rpartition("-")[2]
        if pid.isdigit() and not process_alive(int(pid)):
            tmp.unlink(missing_ok=True)


@step
def generate_dataset(path: str, records: int, seed: int) -> dict[str, object]:
    """Write the input file atomically (temp file + rename), so a crash never leaves half of it."""
    target = Path(path)
    if target.parent.exists():
        _remove_stale_temps(target.parent)
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        rng = random.Random(seed)
        currencies = sorted(_CURRENCIES)
        tmp = _temp_name(target, os.getpid())
        with tmp.open("w", encoding="utf-8") as f:
            f.write(_HEADER)
            for i in range(records):
                f.write(
                    f"{i},acct-{rng.randrange(500):04d},{rng.choice(currencies)},"
                    f"{rng.randrange(1, 5_000_000) / 100:.2f},2026-{rng.randrange(1, 13):02d}-"
                    f"{rng.randrange(1, 29):02d}\n"
                )
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    digest = hashlib.sha256(target.read_bytes()).hexdigest()
    return {"path": str(target), "sha256": digest, "records": records}


def _convert(line: str) -> tuple[int, str, str, str, str]:
    rid, account, currency, amount, day = line.rstrip("\n").split(",")
    eur = (Decimal(amount) * _CURRENCIES[currency]).quantize(Decimal("0.01"), ROUND_HALF_EVEN)
    fingerprint = hashlib.sha256(line.encode()).hexdigest()[:16]
    return int(rid), account, day, str(eur), fingerprint


@step(retry=RetryPolicy(max_attempts=5, initial_interval_s=0.5), on_source_change="restart")
def process_records(dataset: str, output: str, records: int, chunk: int) -> dict[str, int]:
    """Convert every record, one chunk per transaction, checkpointing the offset after each.

    Each checkpoint carries the input file's fingerprint (size and mtime): if the file changed
    between an interruption and the resume, the byte offset means nothing in the new file, so
    the step starts again from the top instead of producing a wrong digest.
    """
    ctx = step_context()
    position = ctx.last_checkpoint or {"offset": 0, "byte": len(_HEADER)}
    offset, byte = int(position["offset"]), int(position["byte"])
    out = sqlite3.connect(output, isolation_level=None)
    out.execute("PRAGMA journal_mode=WAL")
    out.execute("PRAGMA synchronous=FULL")
    out.execute(
        "CREATE TABLE IF NOT EXISTS results (id INTEGER PRIMARY KEY, account TEXT, day TEXT, "
        "amount_eur TEXT, fingerprint TEXT)"
    )
    bar = tqdm(total=records, initial=offset, unit="rec", desc="processing", disable=None)
    try:
        with open(dataset, "rb") as f:
            f.seek(byte)
            while offset < records:
                lines = [f.readline().decode() for _ in range(min(chunk, records - offset))]
                rows = [_convert(line) for line in lines]
                out.execute("BEGIN")
                out.executemany("INSERT OR REPLACE INTO results VALUES (?, ?, ?, ?, ?)", rows)
                out.execute("COMMIT")
                offset += len(rows)
                bar.update(len(rows))
                ctx.checkpoint({"offset": offset, "byte": f.tell()}, done=offset, total=records,
                               source=file_fingerprint(dataset))
    finally:
        bar.close()
        out.close()
    return {"processed": offset}


@step
def summarize(output: str) -> dict[str, object]:
    """Totals per currency-converted account and a digest of every output row, in id order."""
    con = sqlite3.connect(output)
    try:
        digest = hashlib.sha256()
        count = 0
        total = Decimal(0)
        for row in con.execute("SELECT * FROM results ORDER BY id"):
            digest.update("|".join(map(str, row)).encode() + b"\n")
            total += Decimal(row[3])
            count += 1
        accounts = con.execute("SELECT COUNT(DISTINCT account) FROM results").fetchone()[0]
    finally:
        con.close()
    return {"rows": count, "accounts": accounts, "total_eur": str(total),
            "digest": digest.hexdigest()}


@workflow("demo-batch", version=1)
def batch_job(
    records: int = 500_000, chunk: int = 1_000, seed: int = 7, workdir: str = "stepstone-demo"
) -> dict[str, object]:
    base = Path(workdir)
    dataset = generate_dataset(str(base / f"input-{records}-{seed}.csv"), records, seed)
    output = str(base / f"output-{records}-{seed}.sqlite")
    processed = process_records(str(dataset["path"]), output, records, chunk)
    summary = summarize(output)
    return {**summary, "processed": processed["processed"], "input_sha256": dataset["sha256"]}
