"""`stepstone send`: a message into a run that waits for it with `receive()` (docs/messages.md).

Everything is checked before anything is written: the payload is JSON within the size limit,
the topic and id are short strings, the run exists and has not finished. Any of those wrong is
one line and exit 2, with nothing stored.
"""

from __future__ import annotations

from pathlib import Path

import click
import orjson

from engine import RunStatus
from engine.messages import MAX_PAYLOAD_BYTES
from stepstone import output
from stepstone.common import fail, open_engine, parse_run_id, store_options


@click.command()
@click.argument("run_id")
@click.argument("topic")
@click.option("--data", "data", default="null", show_default=True, metavar="JSON",
              help=f"The payload, as JSON (at most {MAX_PAYLOAD_BYTES // 1024} KiB); "
                   "@FILE reads it from a file.")
@click.option("--id", "message_id", metavar="ID",
              help="The message's id: sending the same id again delivers nothing more "
                   "(default: a new one).")
@store_options
def send(run_id: str, topic: str, data: str, message_id: str | None,
         database_url: str | None, as_json: bool) -> None:
    """Send a message to a run: durable at once, consumed once by its `receive(TOPIC)`.

    A run waiting for it wakes (a worker picks it up); a message sent before the run waits is
    kept for it. Unknown or finished runs, bad JSON and oversized payloads exit 2.
    """
    rid = parse_run_id(run_id)
    if data.startswith("@"):
        try:
            data = Path(data[1:]).read_text()
        except OSError as e:
            fail(f"--data {data}: cannot read the file ({e.strerror})")
    try:
        payload = orjson.loads(data)
    except orjson.JSONDecodeError as e:
        fail(f"--data is not JSON ({e}); quote it for the shell, e.g. --data "
             "'{\"approved\": true}'")
    with open_engine(database_url, create=False) as engine:
        sent = engine.send(rid, topic, payload, message_id=message_id)
        if as_json:
            output.emit_json({"run_id": str(rid), "message_id": sent.message_id,
                              "delivered": sent.delivered, "status": sent.status.value})
        elif not sent.delivered:
            click.echo(f"message {sent.message_id} was sent to run {rid} before; nothing "
                       "more was stored")
        else:
            woke = " (it was waiting: it wakes now)" if sent.status is RunStatus.WAITING else ""
            click.echo(f"message {sent.message_id} stored for run {rid}{woke}")
