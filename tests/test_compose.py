"""compose.yaml is for users (Docker does not run here): check it parses and names real commands."""

from __future__ import annotations

from pathlib import Path

import click
import yaml

from stepstone.cli import main

ROOT = Path(__file__).parent.parent


def test_compose_file_parses_and_every_command_exists_in_the_cli() -> None:
    doc = yaml.safe_load((ROOT / "compose.yaml").read_text())
    services = doc["services"]
    assert "postgres" in services
    commands = [s["command"] for s in services.values() if "command" in s]
    assert commands
    ctx = click.Context(main)
    for command in commands:
        program, sub, *args = command
        assert program == "stepstone"
        found = main.get_command(ctx, sub)
        assert found is not None, f"compose.yaml runs `stepstone {sub}`, which does not exist"
        known = {opt for p in found.params for opt in getattr(p, "opts", [])}
        for arg in args:
            if arg.startswith("--"):
                assert arg.split("=")[0] in known, f"`stepstone {sub}` has no option {arg}"
    for service in services.values():
        url = service.get("environment", {}).get("STEPSTONE_DATABASE_URL")
        if url:
            assert url.startswith("postgresql://")


def test_compose_serves_the_api_with_its_own_projector_service() -> None:
    services = yaml.safe_load((ROOT / "compose.yaml").read_text())["services"]
    api = services["api"]["command"]
    assert api[:2] == ["stepstone", "serve"]
    assert "0.0.0.0" in api, "in a container the API must listen beyond loopback"
    # Read-only API: some other service must feed the views.
    assert "--no-projector" in api
    assert services["projector"]["command"][:3] == ["stepstone", "projections", "run"]
    assert any(p.endswith(":8080") for p in services["api"]["ports"])


def test_compose_api_follows_the_auth_rules() -> None:
    """Listening on 0.0.0.0 needs a token or --insecure-no-token; without a token the port
    must reach this machine only, and an unset token must not become an empty one."""
    api = yaml.safe_load((ROOT / "compose.yaml").read_text())["services"]["api"]
    token = api["environment"]["STEPSTONE_API_TOKEN"]
    assert token is None or (token.startswith("${STEPSTONE_API_TOKEN:?")), token
    if "--insecure-no-token" in api["command"]:
        assert all(p.startswith("127.0.0.1:") for p in api["ports"]), api["ports"]
    text = (ROOT / "compose.yaml").read_text()
    assert "without a token" in text
