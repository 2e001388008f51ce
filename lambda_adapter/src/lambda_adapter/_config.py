"""IdempotencyConfig: what to key on, how long to keep results, what to do when blind."""

from __future__ import annotations

import datetime
import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal, Protocol, TypeAlias

from ._exceptions import IdempotencyUnavailableError

if TYPE_CHECKING:
    from ._jmespath import Expression

__all__ = [
    "DataRecord",
    "IdempotencyConfig",
    "IdempotentHookFunction",
    "LambdaContext",
    "OnUnavailable",
    "ResponseHook",
]

_MAX_TTL_S = 2_592_000  # the gateway's limit: 30 days
_MAX_LEASE_MS = 900_000  # the gateway's limit, and Lambda's: 15 minutes


class LambdaContext(Protocol):
    """The parts of Lambda's context object the adapter reads."""

    @property
    def aws_request_id(self) -> str: ...

    @property
    def function_name(self) -> str: ...

    def get_remaining_time_in_millis(self) -> int: ...


class DataRecord:
    """The completed record a replayed result came from, as ``response_hook`` receives it.

    Powertools' attribute names: ``idempotency_key``, ``status`` (always ``"COMPLETED"``),
    ``expiry_timestamp`` (epoch seconds, or None when unknown), ``response_data`` (the stored
    JSON text) and ``payload_hash`` (the fingerprint, or ``""``).
    """

    __slots__ = ("expiry_timestamp", "idempotency_key", "payload_hash", "response_data", "status")

    def __init__(
        self,
        *,
        idempotency_key: str,
        expiry_timestamp: int | None,
        response_data: str,
        payload_hash: str | None,
    ) -> None:
        self.idempotency_key = idempotency_key
        self.status = "COMPLETED"
        self.expiry_timestamp = expiry_timestamp
        self.response_data = response_data
        self.payload_hash = payload_hash or ""

    def response_json_as_dict(self) -> Any:
        return json.loads(self.response_data)

    def get_expiration_datetime(self) -> datetime.datetime | None:
        """The expiry as a naive local datetime (UTC on Lambda), as Powertools gives it."""
        if self.expiry_timestamp is None:
            return None
        return datetime.datetime.fromtimestamp(self.expiry_timestamp)


ResponseHook: TypeAlias = Callable[[Any, DataRecord], Any]
IdempotentHookFunction = ResponseHook  # Powertools' name
Fallback: TypeAlias = Callable[[Any, "LambdaContext | None", IdempotencyUnavailableError], Any]
OnUnavailable: TypeAlias = Literal["fail_closed", "fail_open"] | Fallback


class IdempotencyConfig:
    """Per-function settings. The first ten take Powertools' names, order and defaults.

    ``on_unavailable`` decides what happens when the gateway cannot answer a claim in time:
    ``"fail_closed"`` refuses (503 for HTTP events, ``IdempotencyUnavailableError`` otherwise),
    ``"fail_open"`` runs the function unprotected, and a callable ``(event, context, error)``
    returns the result to use instead. Under the last two the claim may use at most
    ``claim_time_share`` of the invocation's remaining time, so falling back leaves the work
    the rest.
    """

    def __init__(  # noqa: PLR0917 - positional, in Powertools' order, for drop-in configs
        self,
        event_key_jmespath: str | None = "",
        payload_validation_jmespath: str | None = "",
        jmespath_options: dict[str, Any] | None = None,
        raise_on_no_idempotency_key: bool = False,
        expires_after_seconds: int = 86_400,
        use_local_cache: bool = False,
        local_cache_max_items: int = 256,
        hash_function: str = "md5",
        lambda_context: LambdaContext | None = None,
        response_hook: ResponseHook | None = None,
        *,
        default_lease_ms: int = 60_000,
        on_unavailable: OnUnavailable = "fail_closed",
        claim_time_share: float = 0.25,
        wait_for_in_progress: bool = False,
        wait_for_result_ms: int = 0,
    ) -> None:
        expires_after_seconds = _whole("expires_after_seconds", expires_after_seconds)
        default_lease_ms = _whole("default_lease_ms", default_lease_ms)
        if not 1 <= expires_after_seconds <= _MAX_TTL_S:
            raise ValueError(f"expires_after_seconds must be 1..{_MAX_TTL_S}")
        if not 1 <= default_lease_ms <= _MAX_LEASE_MS:
            raise ValueError(f"default_lease_ms must be 1..{_MAX_LEASE_MS}")
        if local_cache_max_items < 1:
            raise ValueError("local_cache_max_items must be at least 1")
        if not callable(on_unavailable) and on_unavailable not in ("fail_closed", "fail_open"):
            raise ValueError('on_unavailable must be "fail_closed", "fail_open" or a callable')
        if not 0 < claim_time_share <= 1:
            raise ValueError("claim_time_share must be more than 0 and at most 1")
        if not 0 <= wait_for_result_ms <= _MAX_LEASE_MS:
            raise ValueError(f"wait_for_result_ms must be 0..{_MAX_LEASE_MS}")
        self.event_key_jmespath = event_key_jmespath or ""
        self.payload_validation_jmespath = payload_validation_jmespath or ""
        self.jmespath_options = jmespath_options
        self.raise_on_no_idempotency_key = raise_on_no_idempotency_key
        self.expires_after_seconds = expires_after_seconds
        self.use_local_cache = use_local_cache
        self.local_cache_max_items = local_cache_max_items
        # Accepted so Powertools configs keep working; keys are always SHA-256 here.
        self.hash_function = hash_function
        self.lambda_context = lambda_context
        self.response_hook = response_hook
        self.default_lease_ms = default_lease_ms
        self.on_unavailable = on_unavailable
        self.claim_time_share = claim_time_share
        self.wait_for_in_progress = wait_for_in_progress
        self.wait_for_result_ms = wait_for_result_ms
        self._event_key = _compile(event_key_jmespath, jmespath_options)
        self._payload_validation = _compile(payload_validation_jmespath, jmespath_options)

    def register_lambda_context(self, lambda_context: LambdaContext) -> None:
        """Give ``idempotent_function`` the invocation's deadline, request ID and name.

        ``@idempotent`` does this itself for the config it is given. A durable function's
        ``DurableContext`` gives its ``lambda_context``.
        """
        self.lambda_context = getattr(lambda_context, "lambda_context", None) or lambda_context


def _whole(name: str, value: float) -> int:
    """``value`` as the whole number the gateway takes (``3600.0`` is 3600); a fraction is
    refused here, where the gateway would refuse every call that carried it."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if type(value) is not int:
        raise ValueError(f"{name} must be a whole number, not {value!r}")
    return value


def _compile(expression: str | None, options: dict[str, Any] | None) -> Expression | None:
    if not expression:  # Powertools' default "" means none, like None
        return None
    # Imported here: a config without expressions should not pay for jmespath at cold start.
    from ._jmespath import Expression

    return Expression(expression, options)
