"""`Settings` reads `STEPSTONE_<FIELD>` itself: values given in code win, names match in any
case, values are validated like values given in code, and unknown variables are ignored.

Each case runs in a child process with its own environment (the test never touches its own).
"""

from __future__ import annotations

import subprocess
import sys

import orjson

from support import child_env

SHOW = (
    "import orjson, sys\n"
    "from engine import Settings\n"
    "try:\n"
    "    s = Settings(**orjson.loads(sys.argv[1]))\n"
    "except Exception as e:\n"
    "    print(orjson.dumps({'error': str(e)}).decode()); raise SystemExit(0)\n"
    "print(s.model_dump_json())\n"
)


def _settings(given: dict[str, object], **env: str) -> dict[str, object]:
    out = subprocess.run([sys.executable, "-c", SHOW, orjson.dumps(given).decode()],
                         capture_output=True, text=True, env=child_env(**env), timeout=60,
                         check=True)
    result: dict[str, object] = orjson.loads(out.stdout)
    return result


def test_the_environment_fills_what_code_does_not_give() -> None:
    s = _settings({"worker_id": "from-code"}, STEPSTONE_WORKER_ID="from-env",
                  STEPSTONE_LEASE_DURATION_S="45", stepstone_store_retry_s="7",
                  STEPSTONE_NO_SUCH_SETTING="ignored")
    assert s["worker_id"] == "from-code"
    assert (s["lease_duration_s"], s["store_retry_s"]) == (45.0, 7.0)
    assert "no_such_setting" not in s


def test_a_bad_value_in_the_environment_is_refused_like_one_in_code() -> None:
    s = _settings({}, STEPSTONE_WORKER_CONCURRENCY="many")
    assert "worker_concurrency" in str(s["error"])
    s = _settings({}, STEPSTONE_HEARTBEAT_INTERVAL_S="40")
    assert "must be shorter than the lease" in str(s["error"])
