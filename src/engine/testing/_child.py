"""The child process behind `Fault.crash`: drives one run and SIGKILLs itself at the fault.

    python -m engine.testing._child STORE_URL RUN_ID FAULT_JSON

Exits by SIGKILL when the fault fired, with 3 when the drive ended before reaching it.
"""

from __future__ import annotations

import os
import sys
from uuid import UUID

import orjson

from engine.engine import Engine
from engine.identity import load_workflow
from engine.settings import Settings
from engine.testing.faults import Fault, FaultInjector, instrumented
from engine.testing.harness import EXIT_NOT_REACHED


def main(argv: list[str]) -> int:
    store_url, run_id, fault_json = argv
    fault = Fault(**orjson.loads(fault_json))
    settings = Settings(database_url=store_url, worker_id=f"crash-child:{os.getpid()}")
    with Engine(settings) as engine:
        rid = UUID(run_id)
        wf = load_workflow(engine.store.load(rid).state.entrypoint)
        injector = FaultInjector(fault, engine.token)
        engine.register(instrumented(wf, lambda: injector))
        engine.resume(rid)
    return EXIT_NOT_REACHED


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
