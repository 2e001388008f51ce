"""AWS credentials from botocore's chain, resolved and refreshed off the event loop.

botocore resolves credentials with blocking I/O: the container and instance metadata
endpoints, STS for web identity and assumed roles, the SSO cache. Run on the event loop, one
slow answer stalls every request of the process, ``/healthz`` included. So here every
resolution runs in a worker thread, one at a time:

- the first call waits for the first resolution (nothing can be signed without it);
- afterwards requests are signed with the credentials in hand, and at most once per
  ``check_interval_s`` a request looks whether botocore wants to refresh them (its advisory
  window, 15 minutes before expiry); if so a refresh starts in the background and requests go
  on with the current credentials until it lands;
- ``refresh(stale)`` re-resolves the whole chain at once, for a caller DynamoDB told that its
  credentials are expired or unknown; callers that saw the same stale credentials share it.

A background refresh that fails keeps the current credentials (they may still be valid for
minutes) and is tried again at the next check.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any

from idemgate._exceptions import StorageUnavailableError
from idemgate._storage._sigv4 import Credentials

if TYPE_CHECKING:
    import botocore.session

__all__ = ["CredentialSource"]

logger = logging.getLogger("idemgate")

DEFAULT_CHECK_INTERVAL_S = 1.0


class CredentialSource:
    """The credentials of botocore's default chain for ``session``, never fetched on the loop."""

    def __init__(
        self,
        session: botocore.session.Session,
        *,
        check_interval_s: float = DEFAULT_CHECK_INTERVAL_S,
    ) -> None:
        self._session = session
        self._check_interval_s = check_interval_s
        self._botocore: Any = None  # botocore's (possibly refreshable) credentials object
        self._current: Credentials | None = None
        self._next_check = 0.0
        self._resolving: asyncio.Future[Credentials | None] | None = None

    async def get(self) -> Credentials:
        """The credentials to sign with now; waits only for the very first resolution."""
        current = self._current
        if current is None:
            return await self.refresh(None)
        if time.monotonic() >= self._next_check:
            self._refresh_ahead()
        return current

    async def refresh(self, stale: Credentials | None) -> Credentials:
        """Credentials other than ``stale``, resolving the chain anew unless another call did.

        Raises ``StorageUnavailableError`` when the chain finds none or fails.
        """
        current = self._current
        if current is not stale:  # another call has replaced them already
            assert current is not None
            return current
        if self._resolving is None:
            self._start(force=stale is not None)
        assert self._resolving is not None
        try:
            resolved = await asyncio.shield(self._resolving)
        except Exception as exc:
            raise StorageUnavailableError(f"no AWS credentials for DynamoDB: {exc}") from exc
        if resolved is None:
            raise StorageUnavailableError("no AWS credentials found for DynamoDB")
        # The resolution's own result, not ``self._current``: awaiting a resolution that has
        # finished does not yield to the loop, so ``_landed`` may not have stored it yet (a
        # loop waiting for it to be stored would never let it run). ``resolved is stale`` when
        # the chain answered what DynamoDB refused: there is nothing better.
        return resolved

    def _refresh_ahead(self) -> None:
        self._next_check = time.monotonic() + self._check_interval_s
        if self._resolving is None and self._botocore is not None:
            refresh_needed = getattr(self._botocore, "refresh_needed", None)
            if refresh_needed is not None and refresh_needed():
                self._start(force=False)

    def _start(self, *, force: bool) -> None:
        loop = asyncio.get_running_loop()
        self._resolving = loop.run_in_executor(None, self._resolve, force)
        self._resolving.add_done_callback(self._landed)

    def _resolve(self, force: bool) -> Credentials | None:
        """In a worker thread: botocore's credentials, refreshed if due, re-resolved if forced."""
        if force or self._botocore is None:
            import botocore.credentials

            self._botocore = botocore.credentials.create_credential_resolver(
                self._session
            ).load_credentials()
        if self._botocore is None:
            return None
        frozen = self._botocore.get_frozen_credentials()
        if not (frozen.access_key and frozen.secret_key):
            return None
        fresh = Credentials(frozen.access_key, frozen.secret_key, frozen.token or None)
        return self._current if fresh == self._current else fresh

    def _landed(self, resolving: asyncio.Future[Credentials | None]) -> None:
        self._resolving = None
        self._next_check = time.monotonic() + self._check_interval_s
        if resolving.cancelled():
            return
        error = resolving.exception()
        if error is not None:
            logger.warning("refreshing AWS credentials failed: %s", error)
        elif (resolved := resolving.result()) is not None:
            self._current = resolved
