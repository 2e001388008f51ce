"""6. Deadline adherence: how late the adapter gets control back from a gateway that hangs.

The "gateway" is a socket that accepts connections and never answers. With the fake context's
``remaining`` and the store's ``reserve_ms``, the adapter should give up at ``remaining -
reserve`` after the invocation starts; the overshoot is how far past that it returns. A plain
``time.sleep`` of the same budget, in the same run, shows how late this machine wakes a sleeper
anyway.
"""

from __future__ import annotations

import logging
import socket
import statistics
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import Any

import lambda_adapter
from bench._stats import ms
from bench.report import Section, Table, Target
from lambda_adapter.testing import FakeLambdaContext

__all__ = ["run"]

REMAINING_MS = 400
RESERVE_MS = 200
GOAL_MS = 10


@contextmanager
def _silent_server() -> Iterator[str]:
    """A URL whose server accepts every connection, reads nothing and never answers."""
    listener = socket.create_server(("127.0.0.1", 0), backlog=128)
    held: list[socket.socket] = []
    stopping = threading.Event()

    def accept() -> None:
        while not stopping.is_set():
            try:
                connection, _ = listener.accept()
            except OSError:  # the listener was closed
                return
            held.append(connection)

    acceptor = threading.Thread(target=accept, daemon=True)
    acceptor.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        stopping.set()
        listener.close()
        acceptor.join(timeout=5)
        for connection in held:
            connection.close()


def _handler(event: dict[str, Any], context: Any) -> str:
    raise AssertionError("the gateway never answers, so the work must never run")


def _sleep_overshoot() -> float:
    wake_at = time.monotonic() + (REMAINING_MS - RESERVE_MS) / 1000
    time.sleep((REMAINING_MS - RESERVE_MS) / 1000)
    return time.monotonic() - wake_at


def _row(name: str, trials: int, overshoots: list[float]) -> list[str]:
    return [
        name,
        str(trials),
        ms(statistics.median(overshoots)),
        ms(max(overshoots)),
        ms(min(overshoots)),
    ]


def run(*, trials: int) -> Section:
    overshoots: list[float] = []
    sleeps: list[float] = []
    # Each trial logs a gateway_call_failed incident; expected here, so not shown.
    logging.getLogger("lambda_adapter").addHandler(logging.NullHandler())
    with _silent_server() as url:
        store = lambda_adapter.GatewayPersistenceLayer(
            url=url, namespace="bench-deadline", reserve_ms=RESERVE_MS
        )
        handler = lambda_adapter.idempotent(
            config=lambda_adapter.IdempotencyConfig(), persistence_store=store
        )(_handler)
        for trial in range(trials):
            context = FakeLambdaContext(remaining_ms=REMAINING_MS)
            give_up_at = time.monotonic() + (REMAINING_MS - RESERVE_MS) / 1000
            with suppress(lambda_adapter.IdempotencyUnavailableError):
                handler({"trial": trial}, context)
            overshoots.append(time.monotonic() - give_up_at)
            # Right after each trial, so a stall of the machine is as likely to hit either.
            sleeps.append(_sleep_overshoot())
    worst = max(overshoots)
    return Section(
        title="Deadline adherence",
        method=(
            f"{trials} invocations against a server that accepts connections and never "
            f"answers; fake context with {REMAINING_MS} ms remaining, `reserve_ms={RESERVE_MS}`, "
            "default `max_call_ms` and retries, `fail_closed`. Overshoot: the time the handler "
            "returned (raised `IdempotencyUnavailableError`) minus `remaining - reserve` after "
            "the context was made. Each trial is followed by the baseline's sleep, so both see the "
            "machine in the same state."
        ),
        tables=[
            Table(
                ["Case", "Trials", "Overshoot median (ms)", "Overshoot max (ms)", "Earliest (ms)"],
                [
                    _row("adapter against a silent gateway", trials, overshoots),
                    _row("baseline: time.sleep of the same budget", trials, sleeps),
                ],
            )
        ],
        targets=[
            Target(
                name="Deadline overshoot, worst of all trials (ms)",
                measured=worst * 1000,
                goal=GOAL_MS,
                at_most=True,
                shown_as=f"{ms(worst)} ms",
                basis=(
                    f"max over {trials} trials; a plain sleep overshot by up to "
                    f"{ms(max(sleeps))} ms in the same run"
                ),
            )
        ],
    )
