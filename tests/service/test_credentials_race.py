"""The first credentials landing while another request arrives, on a real event loop.

``CredentialSource`` resolves botocore's chain (here: the environment's keys) in an executor.
Its result reaches the loop as a callback; a request whose first step runs in the same loop
turn, after that callback and before the source's own bookkeeping callback, finds the
resolution finished but not yet stored. The gateway once spun on the loop forever there,
``/healthz`` included: a gateway started under load stalled so, as did every caller arriving
as a forced refresh landed.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import botocore.session
import pytest
import uvloop

from idemgate._storage._credentials import CredentialSource
from idemgate._storage._sigv4 import Credentials


class _AtOnce(concurrent.futures.ThreadPoolExecutor):
    """Runs each job as it is submitted: its result is queued for the loop straight away.

    A ``ThreadPoolExecutor`` (that starts no thread) because asyncio takes no other kind as
    the default executor.
    """

    def submit(  # type: ignore[override]
        self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any
    ) -> concurrent.futures.Future[Any]:
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except BaseException as exc:  # handed over to whoever awaits the job
            future.set_exception(exc)
        return future


def _run(scenario: Coroutine[Any, Any, list[Credentials]]) -> list[Credentials]:
    """On uvloop, as the gateway serves."""
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(scenario)


async def _two_calls_the_second_as_the_resolution_lands(
    call: Callable[[CredentialSource], Awaitable[Credentials]], source: CredentialSource
) -> list[Credentials]:
    first = asyncio.ensure_future(call(source))
    # One turn: the first call starts the resolution, whose result is queued behind this task;
    # the second call's first step is queued behind that result.
    await asyncio.sleep(0)
    second = asyncio.ensure_future(call(source))
    return list(await asyncio.gather(first, second))


@pytest.fixture
def keys(monkeypatch: pytest.MonkeyPatch) -> Callable[[str], None]:
    """Sets the keys botocore's chain finds next (the environment's)."""

    def use(access_key: str) -> None:
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", access_key)
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", f"secret-of-{access_key}")

    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    return use


# Before the fix the loop spun until this timeout's signal interrupted it.
@pytest.mark.timeout(10)
def test_a_request_arriving_as_the_first_credentials_land_gets_them(
    keys: Callable[[str], None],
) -> None:
    keys("AKIDFIRST")

    async def scenario() -> list[Credentials]:
        asyncio.get_running_loop().set_default_executor(_AtOnce())
        source = CredentialSource(botocore.session.get_session())
        return await _two_calls_the_second_as_the_resolution_lands(
            lambda source: source.get(), source
        )

    got = _run(scenario())
    assert [credentials.access_key for credentials in got] == ["AKIDFIRST"] * 2


@pytest.mark.timeout(10)
def test_a_caller_arriving_as_a_forced_refresh_lands_gets_the_new_credentials(
    keys: Callable[[str], None],
) -> None:
    keys("AKIDREFUSED")

    async def scenario() -> list[Credentials]:
        asyncio.get_running_loop().set_default_executor(_AtOnce())
        source = CredentialSource(botocore.session.get_session())
        refused = await source.get()
        keys("AKIDROTATED")
        return await _two_calls_the_second_as_the_resolution_lands(
            lambda source: source.refresh(refused), source
        )

    got = _run(scenario())
    assert [credentials.access_key for credentials in got] == ["AKIDROTATED"] * 2
