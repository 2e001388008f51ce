"""The CLI an operator uses: records against a live gateway, SQLite backups, help and startup."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from idemgate._cli import main
from idemgate.testing import GatewayServer, free_port


@pytest.fixture(scope="module")
def sqlite_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayServer]:
    path = tmp_path_factory.mktemp("cli") / "records.db"
    with GatewayServer(storage=f"sqlite:///{path}") as server:
        yield server


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, Any, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, json.loads(out) if out.strip() else None, err


def test_records_list_get_expire_delete_against_a_gateway(
    sqlite_gateway: GatewayServer, namespace: str, capsys: pytest.CaptureFixture[str]
) -> None:
    url = ("--url", sqlite_gateway.url)
    with httpx.Client(base_url=sqlite_gateway.url) as client:
        for key in ("a", "b"):
            assert client.post(f"/v1/records/{namespace}/{key}/claim").status_code == 201
    code, listed, _ = run(capsys, "records", *url, "list", namespace, "--status", "in_progress")
    assert code == 0
    assert [item["key"] for item in listed["items"]] == ["b", "a"]
    code, page, _ = run(capsys, "records", *url, "list", namespace, "--limit", "1")
    assert [item["key"] for item in page["items"]] == ["b"]
    _, rest, _ = run(capsys, "records", *url, "list", namespace, "--cursor", page["cursor"])
    assert [item["key"] for item in rest["items"]] == ["a"]
    code, record, _ = run(capsys, "records", *url, "get", namespace, "a")
    assert (code, record["status"]) == (0, "in_progress")
    code, expired, _ = run(capsys, "records", *url, "expire", namespace, "a")
    assert code == 0
    assert expired["lease_expires_at"] <= record["lease_expires_at"]
    assert run(capsys, "records", *url, "delete", namespace, "a") == (0, None, "")
    code, _, err = run(capsys, "records", *url, "get", namespace, "a")
    assert code == 1
    assert "HTTP 404 NOT_FOUND" in err


def test_records_says_when_the_gateway_cannot_be_reached(
    capsys: pytest.CaptureFixture[str],
) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    code, _, err = run(capsys, "records", "--url", url, "get", "ns", "k")
    assert code == 1
    assert f"cannot reach the gateway at {url}" in err


class _HeaderRecorder(ThreadingHTTPServer):
    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Recorded)
        self.authorization: list[str | None] = []


class _Recorded(BaseHTTPRequestHandler):
    server: _HeaderRecorder

    def do_GET(self) -> None:
        self.server.authorization.append(self.headers["Authorization"])
        body = b'{"items": [], "cursor": null}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the test reads the recorded headers."""


def test_records_sends_the_token_as_a_bearer_and_none_without_it(
    capsys: pytest.CaptureFixture[str],
) -> None:
    server = _HeaderRecorder()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        assert run(capsys, "records", "--url", url, "--token", "s3cret", "list", "ns")[0] == 0
        assert run(capsys, "records", "--url", url, "list", "ns")[0] == 0
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
    assert server.authorization == ["Bearer s3cret", None]


def test_backup_copies_a_live_file_that_restores(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    live = tmp_path / "live.db"
    with (
        GatewayServer(storage=f"sqlite:///{live}") as gateway,
        httpx.Client(base_url=gateway.url) as client,
    ):
        token = client.post("/v1/records/orders/o-1/claim").json()["lease_token"]
        done = {"lease_token": token, "result": {"charged": 42}}
        assert client.post("/v1/records/orders/o-1/complete", json=done).status_code == 200
        backup = tmp_path / "backup.db"
        assert main(["backup", str(backup), "--storage", f"sqlite:///{live}"]) == 0
        assert str(backup) in capsys.readouterr().out
    with sqlite3.connect(backup) as copy:
        assert copy.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    # Restore: the backup file becomes a gateway's storage, and replays what it held.
    with (
        GatewayServer(storage=f"sqlite:///{backup}") as restored,
        httpx.Client(base_url=restored.url) as client,
    ):
        replay = client.post("/v1/records/orders/o-1/claim")
        assert replay.status_code == 200
        assert replay.json()["result"] == {"charged": 42}


@pytest.mark.parametrize(
    ("storage", "message"),
    [
        ("dynamodb://t?region=us-east-1", "give --storage sqlite:///PATH"),
        ("sqlite:///{tmp}/absent.db", "no SQLite file at"),
        ("sqlite:///{tmp}/exists.db", "exists: give the backup a new name"),
    ],
    ids=["not-sqlite", "no-file", "target-exists"],
)
def test_backup_refuses_what_it_cannot_do(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], storage: str, message: str
) -> None:
    (tmp_path / "exists.db").write_bytes(b"")
    target = tmp_path / ("exists.db" if "exists" in storage else "new.db")
    assert main(["backup", str(target), "--storage", storage.format(tmp=tmp_path)]) == 1
    assert message in capsys.readouterr().err


def test_help_has_no_markup_and_serve_names_defaults_and_variables() -> None:
    top = subprocess.run(
        [sys.executable, "-m", "idemgate", "--help"], capture_output=True, text=True, check=True
    ).stdout
    assert "``" not in top
    assert "records" in top
    assert "backup" in top
    serve = subprocess.run(
        [sys.executable, "-m", "idemgate", "serve", "--help"],
        capture_output=True,
        text=True,
        check=True,
        env={"PATH": "/usr/bin:/bin", "IDEMGATE_PORT": "9123"},
    ).stdout
    flat = " ".join(serve.split())
    for flag, default, variable in (
        ("--host", "127.0.0.1", "IDEMGATE_HOST"),
        ("--port", "9123", "IDEMGATE_PORT"),
        ("--storage", "sqlite:///data/idemgate.db", "IDEMGATE_STORAGE"),
        ("--workers", "1", "IDEMGATE_WORKERS"),
    ):
        assert f"{flag} {flag[2:].upper()} " in flat
        assert f"(default: {default}; environment: {variable})" in flat


def test_the_startup_log_names_the_sqlite_files_full_path(tmp_path: Path) -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "idemgate", "serve", "--port", str(free_port())],
        cwd=tmp_path,
        env={**os.environ, "IDEMGATE_STORAGE": "sqlite:///relative/records.db"},
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stderr is not None
        # Until the line comes, or the process ends (then no line is a failure here).
        serving = next(line for line in process.stderr if "serving with" in line)
    finally:
        process.terminate()
        process.wait(30)
    assert json.loads(serving)["msg"] == (
        f"serving with sqlite storage in {tmp_path.resolve()}/relative/records.db"
    )
