"""IdempotencyConfig: what to key on, how long to keep results, what to do when blind."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal, Protocol, TypeAlias

from ._exceptions import IdempotencyUnavailableError

if TYPE_CHECKING:
    from ._jmespath import Expression

__all__ = ["IdempotencyConfig", "LambdaContext", "OnUnavailable"]

_MAX_TTL_S = 2_592_000  # the gateway's limit: 30 days
_MAX_LEASE_MS = 900_000  # the gateway's limit, and Lambda's: 15 minutes


class LambdaContext(Protocol):
    """The parts of Lambda's context object the adapter reads."""

    @property
    def aws_request_id(self) -> str: ...

    @property
    def function_name(self) -> str: ...

    def get_remaining_time_in_millis(self) -> int: ...


Fallback: TypeAlias = Callable[[Any, "LambdaContext | None", IdempotencyUnavailableError], Any]
OnUnavailable: TypeAlias = Literal["fail_closed", "fail_open"] | Fallback


class IdempotencyConfig:
    """Per-function settings. Option names follow Powertools' ``IdempotencyConfig``.

    ``on_unavailable`` decides what happens when the gateway cannot answer a claim in time:
    ``"fail_closed"`` refuses (503 for HTTP events, ``IdempotencyUnavailableError`` otherwise),
    ``"fail_open"`` runs the function unprotected, and a callable ``(event, context, error)``
    returns the result to use instead.
    """

    def __init__(
        self,
        *,
        event_key_jmespath: str | None = None,
        payload_validation_jmespath: str | None = None,
        jmespath_options: dict[str, Any] | None = None,
        raise_on_no_idempotency_key: bool = False,
        expires_after_seconds: int = 86_400,
        default_lease_ms: int = 60_000,
        use_local_cache: bool = False,
        local_cache_max_items: int = 256,
        on_unavailable: OnUnavailable = "fail_closed",
        wait_for_in_progress: bool = False,
        lambda_context: LambdaContext | None = None,
    ) -> None:
        if not 1 <= expires_after_seconds <= _MAX_TTL_S:
            raise ValueError(f"expires_after_seconds must be 1..{_MAX_TTL_S}")
        if not 1 <= default_lease_ms <= _MAX_LEASE_MS:
            raise ValueError(f"default_lease_ms must be 1..{_MAX_LEASE_MS}")
        if local_cache_max_items < 1:
            raise ValueError("local_cache_max_items must be at least 1")
        if not callable(on_unavailable) and on_unavailable not in ("fail_closed", "fail_open"):
            raise ValueError('on_unavailable must be "fail_closed", "fail_open" or a callable')
        self.event_key_jmespath = event_key_jmespath
        self.payload_validation_jmespath = payload_validation_jmespath
        self.raise_on_no_idempotency_key = raise_on_no_idempotency_key
        self.expires_after_seconds = expires_after_seconds
        self.default_lease_ms = default_lease_ms
        self.use_local_cache = use_local_cache
        self.local_cache_max_items = local_cache_max_items
        self.on_unavailable = on_unavailable
        self.wait_for_in_progress = wait_for_in_progress
        self.lambda_context = lambda_context
        self._event_key = _compile(event_key_jmespath, jmespath_options)
        self._payload_validation = _compile(payload_validation_jmespath, jmespath_options)

    def register_lambda_context(self, lambda_context: LambdaContext) -> None:
        """Give ``idempotent_function`` the invocation's deadline, request ID and name.

        ``@idempotent`` does this itself for the config it is given.
        """
        self.lambda_context = lambda_context


def _compile(expression: str | None, options: dict[str, Any] | None) -> Expression | None:
    if expression is None:
        return None
    # Imported here: a config without expressions should not pay for jmespath at cold start.
    from ._jmespath import Expression

    return Expression(expression, options)
