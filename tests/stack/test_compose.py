"""docker-compose.yml and the Dockerfile: valid, wired in the right order, one gateway command."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema


def _final_stage_instructions(dockerfile: Path) -> dict[str, list[str]]:
    """The runtime stage's instructions by keyword, continuation lines joined."""
    logical = dockerfile.read_text().replace("\\\n", " ").splitlines()
    instructions = [line.strip() for line in logical if line.strip() and not line.startswith("#")]
    last_from = max(i for i, line in enumerate(instructions) if line.startswith("FROM "))
    by_keyword: dict[str, list[str]] = {}
    for line in instructions[last_from:]:
        keyword, _, arguments = line.partition(" ")
        by_keyword.setdefault(keyword, []).append(" ".join(arguments.split()))
    return by_keyword


def test_compose_file_follows_the_compose_specification(
    root: Path, compose: dict[str, Any]
) -> None:
    # The Compose Specification's JSON schema, shared beside the project rather than vendored.
    schema = json.loads((root.parent / "shared" / "schemas" / "compose-spec.json").read_text())
    jsonschema.validate(compose, schema, cls=jsonschema.Draft7Validator)


def test_gateway_starts_once_dynamodb_is_healthy_and_the_table_exists(
    compose: dict[str, Any],
) -> None:
    services = compose["services"]
    assert "healthcheck" in services["dynamodb"]
    assert services["init"]["command"] == ["idemgate", "create-table"]
    assert services["init"]["depends_on"] == {"dynamodb": {"condition": "service_healthy"}}
    assert services["gateway"]["depends_on"] == {
        "dynamodb": {"condition": "service_healthy"},
        "init": {"condition": "service_completed_successfully"},
    }
    assert services["init"]["image"] == services["gateway"]["image"]
    assert services["gateway"]["ports"] == ["127.0.0.1:8080:8080"]
    for service in ("init", "gateway"):
        storage = services[service]["environment"]["IDEMGATE_STORAGE"]
        assert storage.startswith("dynamodb://idemgate?")
        assert "endpoint_url=http://dynamodb:8000" in storage


def test_image_runs_the_compose_gateway_command_as_a_non_root_user(
    root: Path, compose: dict[str, Any]
) -> None:
    image = _final_stage_instructions(root / "Dockerfile")
    gateway = compose["services"]["gateway"]
    assert json.loads(image["CMD"][-1]) == gateway["command"]
    assert image["USER"] == ["idemgate"]
    assert image["EXPOSE"] == [gateway["environment"]["IDEMGATE_PORT"]]
    environment = " ".join(image["ENV"])
    for setting in ("IDEMGATE_HOST", "IDEMGATE_PORT"):
        assert f"{setting}={gateway['environment'][setting]}" in environment
    assert "/healthz" in image["HEALTHCHECK"][-1]
