"""The gateway's CPU per SQLite claim, in process, for two builds taking turns.

    python -m bench.claim_cpu BASELINE_SRC CANDIDATE_SRC [--claims N] [--rounds R]

Each ``*_SRC`` is a ``service/src`` directory (e.g. of a ``git worktree`` at another commit).
Every round runs one child process per build, alternately, so drift on a shared machine hits
both alike. A child builds the app on a fresh SQLite file, runs its lifespan, and sends fresh
claims straight to the ASGI app (no sockets, no HTTP parser): ``time.process_time()`` over the
claims, divided by their number, is what the gateway's own code costs per claim.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["main"]

_WARMUP_CLAIMS = 200
# The body the wrk script of the framework tax section sends, so both measure the same claim.
_CLAIM_BODY = b'{"lease_ms":60000,"ttl_s":86400}'


async def _claims_cpu_us(count: int) -> float:
    from idemgate._app import create_app
    from idemgate._settings import Settings

    with tempfile.TemporaryDirectory() as directory:
        app = create_app(Settings(storage=f"sqlite:///{directory}/bench.db", access_log=False))
        answers: list[Any] = []

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": _CLAIM_BODY, "more_body": False}

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                answers.append(message["status"])

        async def claim(key: str) -> None:
            scope = {
                "type": "http",
                "asgi": {"version": "3.0"},
                "http_version": "1.1",
                "method": "POST",
                "scheme": "http",
                "path": f"/v1/records/bench/{key}/claim",
                "raw_path": f"/v1/records/bench/{key}/claim".encode(),
                "query_string": b"",
                "root_path": "",
                "headers": [
                    (b"host", b"bench"),
                    (b"content-type", b"application/json"),
                    (b"content-length", b"%d" % len(_CLAIM_BODY)),
                ],
                "client": ("127.0.0.1", 1),
                "server": ("127.0.0.1", 80),
                "app": app,
            }
            await app(scope, receive, send)  # type: ignore[arg-type]

        async with app.router.lifespan_context(app):
            for index in range(_WARMUP_CLAIMS):
                await claim(f"warm-{index}")
            started = time.process_time()
            for index in range(count):
                await claim(f"key-{index}")
            elapsed = time.process_time() - started
        if set(answers) != {201}:
            raise SystemExit(f"claims were not all 201: {sorted(set(answers))}")
        return elapsed / count * 1e6


def _child(count: int) -> None:
    print(f"{asyncio.run(_claims_cpu_us(count)):.2f}")


def _run(src: Path, count: int) -> float:
    env_path = [str(src), str(Path(__file__).resolve().parent.parent)]
    code = (
        f"import sys; sys.path[:0] = {env_path!r}; "
        f"from bench.claim_cpu import _child; _child({count})"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True
    ).stdout
    return float(out.strip().splitlines()[-1])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.claim_cpu", description=__doc__)
    parser.add_argument("baseline", type=Path, help="service/src of the baseline build")
    parser.add_argument("candidate", type=Path, help="service/src of the candidate build")
    parser.add_argument("--claims", type=int, default=3000, help="claims per child")
    parser.add_argument("--rounds", type=int, default=5, help="turns each build takes")
    args = parser.parse_args(argv)
    runs: dict[str, list[float]] = {"baseline": [], "candidate": []}
    for _ in range(args.rounds):
        runs["baseline"].append(_run(args.baseline, args.claims))
        runs["candidate"].append(_run(args.candidate, args.claims))
    for name, values in runs.items():
        print(f"{name}: median {statistics.median(values):.1f} µs CPU per claim; runs {values}")
    ratio = statistics.median(runs["candidate"]) / statistics.median(runs["baseline"])
    print(f"candidate / baseline: {ratio:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
