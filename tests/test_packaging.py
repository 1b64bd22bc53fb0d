"""Packaging: embedding the engine installs no web server; each command says what it lacks.

The fast tests look at what an import loads; the slow one installs the package without extras
into a fresh virtual environment, as a user embedding the engine would.
"""

from __future__ import annotations

import re
import subprocess
import sys
import venv
from pathlib import Path

import pytest
import yaml

from stepstone.extras import COMMAND_EXTRAS, OPTION_EXTRAS

ROOT = Path(__file__).resolve().parent.parent
WEB_STACK = ("fastapi", "uvicorn", "starlette", "sse_starlette", "prometheus_client", "api")

_LOADED = (
    "import sys, {module}; "
    "print(sorted({{m.split('.')[0] for m in sys.modules}} & set({stack!r})))"
)


@pytest.mark.parametrize("module", ["engine", "stepstone.cli", "projections"])
def test_importing_the_engine_or_the_cli_loads_no_web_stack(module: str) -> None:
    done = subprocess.run([sys.executable, "-c", _LOADED.format(module=module, stack=WEB_STACK)],
                          capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]", f"`import {module}` loaded {done.stdout.strip()}"


def _image_extras() -> set[str]:
    dockerfile = (ROOT / "Dockerfile").read_text()
    found = re.search(r"pip install[^\n]*'\.\[([a-z,]+)\]'", dockerfile)
    assert found, "the Dockerfile installs the package with its extras: '.[a,b]'"
    return set(found.group(1).split(","))


def test_the_image_installs_every_extra_its_compose_services_need() -> None:
    services = yaml.safe_load((ROOT / "compose.yaml").read_text())["services"]
    extras = _image_extras()
    needed: dict[str, str] = {}
    for name, service in services.items():
        command = service.get("command")
        if not command or "build" not in service:
            continue
        assert command[0] == "stepstone"
        if command[1] in COMMAND_EXTRAS:
            needed[name] = COMMAND_EXTRAS[command[1]]
        for option, extra in OPTION_EXTRAS.items():
            if option in command:
                needed[name] = extra
    assert "api" in needed.values()  # the API service is among them
    missing = {name: extra for name, extra in needed.items() if extra not in extras}
    assert not missing, f"the image lacks extras these services need: {missing}"


@pytest.mark.slow
def test_a_plain_install_embeds_the_engine_and_names_the_extra_serve_needs(
    tmp_path: Path,
) -> None:
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    py = env_dir / "bin" / "python"
    subprocess.run([py, "-m", "pip", "install", "--quiet", str(ROOT)], check=True,
                   capture_output=True, timeout=900)
    loaded = subprocess.run([py, "-c", _LOADED.format(module="engine", stack=WEB_STACK)],
                            capture_output=True, text=True, check=True)
    assert loaded.stdout.strip() == "[]"
    for module in ("fastapi", "uvicorn", "starlette"):
        absent = subprocess.run([py, "-c", f"import {module}"], capture_output=True)
        assert absent.returncode != 0, f"{module} was installed without the api extra"
    stepstone = env_dir / "bin" / "stepstone"
    demo = subprocess.run([stepstone, "demo", "--records", "3000", "--workdir",
                           str(tmp_path / "demo"), "--db", f"sqlite:///{tmp_path / 's.db'}"],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert demo.returncode == 0, demo.stderr
    assert "result digest:" in demo.stdout
    serve = subprocess.run([stepstone, "serve", "--db", f"sqlite:///{tmp_path / 's.db'}"],
                           capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert serve.returncode == 2
    assert "pip install 'stepstone[api]'" in serve.stderr
    assert "Traceback" not in serve.stderr
