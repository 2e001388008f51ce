"""7. Gateway CPU spent on authentication per request: ``AuthGate`` driven in-process.

The gate wraps an app that answers 204 at once, so everything measured beside that app is the
gate's own work: reading the Authorization header, hashing a bearer token or looking up a
cached IAM proof, matching the namespace, and checking (at most once a second) whether the
policy file changed. The variants take turns in blocks so drift on a busy box hits them alike;
each block's CPU time is ``time.process_time()``.

    python -m bench.auth_cpu [--requests 200000]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from starlette.types import ASGIApp, Receive, Scope, Send

from bench.report import Section, Table, Target
from idemgate._auth import (
    AuthGate,
    IamVerifier,
    PolicyDocument,
    PolicyFile,
    PrincipalEntry,
    _Proven,
    dump_policy,
    new_token,
    token_sha256,
)
from idemgate._problems import error_response

__all__ = ["measure", "run"]

BLOCK = 2000
GOAL_US = 20.0
PATH = "/v1/records/orders-eu/order-1/claim"


async def _no_content(scope: Scope, receive: Receive, send: Send) -> None:
    await send({"type": "http.response.start", "status": 204, "headers": []})
    await send({"type": "http.response.body", "body": b""})


def _policy(directory: Path, token: str) -> PolicyFile:
    principals = [
        PrincipalEntry(
            name=f"team-{n}", role="client", namespaces=(f"team-{n}-*",), token_sha256=f"{n:064x}"
        )
        for n in range(50)  # a policy of some size: the lookup must not depend on it
    ]
    principals.append(
        PrincipalEntry(
            name="orders", role="client", namespaces=("orders-*",), token_sha256=token_sha256(token)
        )
    )
    principals.append(
        PrincipalEntry(
            name="orders-lambda",
            role="client",
            namespaces=("orders-*",),
            aws_arn="arn:aws:sts::123456789012:assumed-role/orders-fn-role/*",
        )
    )
    path = directory / "policy.toml"
    dump_policy(PolicyDocument(server_id="bench", principals=tuple(principals)), path)
    return PolicyFile(path)


def _iam_proof() -> str:
    # Shaped as the adapter's proofs are (their size matters to the cache lookup); the cache is
    # filled by hand below, so no STS is asked.
    headers = {
        "content-type": "application/x-www-form-urlencoded; charset=utf-8",
        "host": "sts.us-east-1.amazonaws.com",
        "x-amz-date": "20260101T000000Z",
        "x-amz-security-token": "IQoJb3JpZ2luX2VjE" + "A" * 900,
        "x-idemgate-server-id": "bench",
        "authorization": "AWS4-HMAC-SHA256 Credential=ASIAEXAMPLE/20260101/us-east-1/sts/"
        "aws4_request, SignedHeaders=content-type;host;x-amz-date;x-amz-security-token;"
        "x-idemgate-server-id, Signature=" + "0" * 64,
    }
    request = {"url": "https://sts.us-east-1.amazonaws.com/", "headers": headers, "body": "x"}
    return base64.b64encode(json.dumps(request).encode()).decode()


def _scope(authorization: bytes | None) -> Callable[[], Scope]:
    headers = [(b"host", b"gateway"), (b"content-type", b"application/json")]
    if authorization is not None:
        headers.append((b"authorization", authorization))

    def fresh() -> Scope:
        return {"type": "http", "method": "POST", "path": PATH, "headers": list(headers)}

    return fresh


async def _block(
    app: ASGIApp, make_scope: Callable[[], Scope], count: int, statuses: set[int] | None = None
) -> float:
    async def receive() -> dict[str, object]:
        return {"type": "http.request", "body": b""}

    async def send(message: dict[str, object]) -> None:
        if statuses is not None and message["type"] == "http.response.start":
            statuses.add(int(str(message["status"])))

    started = time.process_time()
    for _ in range(count):
        await app(make_scope(), receive, send)
    return time.process_time() - started


async def _measure(requests: int) -> dict[str, tuple[float, float]]:
    token = new_token()
    proof = _iam_proof()
    with tempfile.TemporaryDirectory() as directory:
        policy = _policy(Path(directory), token)
        iam = IamVerifier(
            sts_url="https://sts.us-east-1.amazonaws.com/", timeout_ms=1000, max_age_s=300
        )
        iam._proven[proof] = _Proven(  # as after one STS call
            "arn:aws:sts::123456789012:assumed-role/orders-fn-role/fn", float("inf"), "bench"
        )
        gate = AuthGate(_no_content, policy=policy, iam=iam, error_response=error_response)
        variants = {
            "none": (_no_content, _scope(None)),
            "bearer": (gate, _scope(f"Bearer {token}".encode())),
            "iam-cached": (gate, _scope(f"AWS4-IAM {proof}".encode())),
        }
        spent: dict[str, list[float]] = {name: [] for name in variants}
        for name, (app, make) in variants.items():  # warm up, and prove each variant passes
            statuses: set[int] = set()
            await _block(app, make, 100, statuses)
            if statuses != {204}:
                raise RuntimeError(f"{name}: the gate answered {statuses}, not 204")
        for _ in range(max(1, requests // BLOCK)):
            for name, (app, make) in variants.items():
                spent[name].append(await _block(app, make, BLOCK) / BLOCK)
    base = statistics.median(spent["none"])
    return {
        name: (statistics.median(times) * 1e6, (statistics.median(times) - base) * 1e6)
        for name, times in spent.items()
    }


def measure(requests: int = 200_000) -> dict[str, tuple[float, float]]:
    """Per variant, microseconds of CPU per request: in all, and added to the gate-less app."""
    return asyncio.run(_measure(requests))


_LABELS = {
    "bearer": "Authentication CPU per request, bearer token (µs)",
    "iam-cached": "Authentication CPU per request, cached IAM identity (µs)",
}


def run(*, requests: int) -> Section:
    figures = measure(requests)
    rows = [[name, f"{total:.2f}", f"{added:.2f}"] for name, (total, added) in figures.items()]
    return Section(
        title="Authentication CPU per request",
        method=(
            f"`AuthGate` in front of an ASGI app that answers 204 at once, driven in-process "
            f"({requests:,} requests per variant, in blocks of {BLOCK:,} taking turns); "
            "`time.process_time()` per block, median of blocks. The policy has 52 principals; "
            "the IAM proof is adapter-sized and already proven (cached), as for every request "
            "but a container's first in each few minutes. `none` is the app without the gate."
        ),
        tables=[Table(["Variant", "CPU per request (µs)", "Added by the gate (µs)"], rows)],
        targets=[
            Target(
                name=label,
                measured=figures[name][1],
                goal=GOAL_US,
                at_most=True,
                shown_as=f"{figures[name][1]:.1f} µs",
                basis=f"{figures[name][0]:.2f} µs vs {figures['none'][0]:.2f} µs without the gate",
            )
            for name, label in _LABELS.items()
        ],
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=200_000)
    args = parser.parse_args()
    for name, (total, added) in measure(args.requests).items():
        print(f"{name}: {total:.2f} us of CPU per request, {added:.2f} us added by the gate")


if __name__ == "__main__":
    main()
