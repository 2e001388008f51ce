"""`make stack`'s table creation retries until DynamoDB Local answers, within its deadline."""

from __future__ import annotations

import importlib.util
import sys
import threading
from pathlib import Path
from types import ModuleType

import pytest

# Fails (as a create-table timing out would) until it has run `FAILURES` times before.
FLAKY_INIT = """
import pathlib, sys
attempts = pathlib.Path(sys.argv[1])
attempts.write_text(attempts.read_text() + "x" if attempts.exists() else "x")
sys.exit(0 if len(attempts.read_text()) > int(sys.argv[2]) else 1)
"""


@pytest.fixture(scope="module")
def stack(root: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location("stack", root / "tools" / "stack.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def _flaky_init(stack: ModuleType, attempts: Path, failures: int) -> object:
    command = [sys.executable, "-c", FLAKY_INIT, str(attempts), str(failures)]
    return stack.Step(command=command, environment={})


def test_a_failing_table_creation_is_retried_until_it_succeeds(
    stack: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(stack, "INIT_RETRY_PAUSE_S", 0.01)
    attempts = tmp_path / "attempts"
    assert stack._create_table(_flaky_init(stack, attempts, 2), threading.Event()) is True
    assert attempts.read_text() == "xxx"


def test_table_creation_gives_up_at_its_deadline(
    stack: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(stack, "INIT_RETRY_PAUSE_S", 0.01)
    monkeypatch.setattr(stack, "READY_TIMEOUT_S", 0.0)
    attempts = tmp_path / "attempts"
    assert stack._create_table(_flaky_init(stack, attempts, 5), threading.Event()) is False
    assert attempts.read_text() == "x"


def test_a_stop_ends_the_retries(stack: ModuleType, tmp_path: Path) -> None:
    stop = threading.Event()
    stop.set()
    attempts = tmp_path / "attempts"
    assert stack._create_table(_flaky_init(stack, attempts, 5), stop) is False
    assert not attempts.exists()
