"""Imported by a worker under test: says it is importing, then waits until the test lets go.

This holds a worker inside its start-up (after its signal handler is in place, before it
connects or claims) for as long as the test needs, instead of racing a timer against it.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

_dir = Path(os.environ["SLOWSTART_DIR"])
(_dir / "importing").touch()
_deadline = time.monotonic() + 60
while not (_dir / "go").exists() and time.monotonic() < _deadline:
    time.sleep(0.01)
