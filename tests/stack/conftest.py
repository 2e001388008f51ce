"""What the stack tests share: the project's root, its docker-compose.yml, and Node.js."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml


@pytest.fixture(scope="session")
def root() -> Path:
    return Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def compose(root: Path) -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load((root / "docker-compose.yml").read_text())
    return document


@pytest.fixture(scope="session")
def node() -> str:
    executable = shutil.which("node")
    if executable is None:
        pytest.fail("the Node.js client tests need Node.js 20+: install nodejs", pytrace=False)
    return executable
