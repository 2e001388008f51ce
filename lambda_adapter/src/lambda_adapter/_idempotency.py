"""The decorators, and the claim → run → complete flow they share."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
import re
import threading
import time
import warnings
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar, overload

from ._canonical import sha256_hex
from ._config import IdempotencyConfig, LambdaContext
from ._exceptions import (
    IdempotencyAlreadyInProgressError,
    IdempotencyError,
    IdempotencyKeyError,
    IdempotencyUnavailableError,
    IdempotencyValidationError,
)
from ._http_events import is_http_event, problem_response
from ._incidents import Metric, emit_metric, log_incident
from ._persistence import Claimed, GatewayPersistenceLayer, Invocation, Replayed, backoff

__all__ = ["idempotent", "idempotent_function"]

P = ParamSpec("P")
R = TypeVar("R")
Handler = Callable[..., Any]

_KEY_UNSAFE = re.compile(r"[^A-Za-z0-9._~@=+-]")
_MAX_PREFIX = 190  # 255 for a key, less ':' and 64 hex digits


@overload
def idempotent(
    handler: None = None,
    *,
    persistence_store: GatewayPersistenceLayer,
    config: IdempotencyConfig | None = None,
) -> Callable[[Handler], Handler]: ...
@overload
def idempotent(
    handler: Handler,
    *,
    persistence_store: GatewayPersistenceLayer,
    config: IdempotencyConfig | None = None,
) -> Handler: ...
def idempotent(
    handler: Handler | None = None,
    *,
    persistence_store: GatewayPersistenceLayer,
    config: IdempotencyConfig | None = None,
) -> Handler | Callable[[Handler], Handler]:
    """Make a Lambda handler ``(event, context)`` idempotent on its event."""

    def decorate(handler: Handler) -> Handler:
        guard = _Guard(handler, persistence_store, config or IdempotencyConfig())

        @functools.wraps(handler)
        def wrapper(event: Any, context: LambdaContext | None, *args: Any, **kwargs: Any) -> Any:
            if context is not None:
                guard.config.register_lambda_context(context)
            return guard.run(
                event,
                event,
                context,
                lambda: handler(event, context, *args, **kwargs),
                http_event=is_http_event(event),
            )

        return wrapper

    return decorate if handler is None else decorate(handler)


@overload
def idempotent_function(
    function: None = None,
    *,
    data_keyword_argument: str,
    persistence_store: GatewayPersistenceLayer,
    config: IdempotencyConfig | None = None,
) -> Callable[[Callable[P, R]], Callable[P, R]]: ...
@overload
def idempotent_function(
    function: Callable[P, R],
    *,
    data_keyword_argument: str,
    persistence_store: GatewayPersistenceLayer,
    config: IdempotencyConfig | None = None,
) -> Callable[P, R]: ...
def idempotent_function(
    function: Callable[P, R] | None = None,
    *,
    data_keyword_argument: str,
    persistence_store: GatewayPersistenceLayer,
    config: IdempotencyConfig | None = None,
) -> Callable[P, R] | Callable[[Callable[P, R]], Callable[P, R]]:
    """Make any function idempotent on one keyword argument (a JSON value or a dataclass).

    It uses the Lambda context registered on ``config`` for its deadline and lease, else
    ``config.default_lease_ms``.
    """

    def decorate(function: Callable[P, R]) -> Callable[P, R]:
        guard = _Guard(function, persistence_store, config or IdempotencyConfig())

        @functools.wraps(function)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            if data_keyword_argument not in kwargs:
                raise TypeError(
                    f"{function.__qualname__}() must be called with {data_keyword_argument}= "
                    "as a keyword argument: it is the data the idempotency key is made from"
                )
            data = _as_json(kwargs[data_keyword_argument])
            result: R = guard.run(
                data, data, guard.config.lambda_context, lambda: function(*args, **kwargs)
            )
            return result

        return wrapper

    return decorate if function is None else decorate(function)


def _as_json(data: Any) -> Any:
    if dataclasses.is_dataclass(data) and not isinstance(data, type):
        return dataclasses.asdict(data)
    if hasattr(data, "model_dump"):  # a pydantic model, without importing pydantic
        return data.model_dump(mode="json")
    return data


class _Guard:
    """Idempotency for one decorated function."""

    def __init__(
        self,
        function: Callable[..., Any],
        store: GatewayPersistenceLayer,
        config: IdempotencyConfig,
    ) -> None:
        self.config = config
        self.store = store
        self._name = f"{function.__module__}.{function.__qualname__}"
        self._cache = (
            _ResultCache(config.local_cache_max_items, config.expires_after_seconds)
            if config.use_local_cache
            else None
        )

    def run(
        self,
        event: Any,
        data: Any,
        context: LambdaContext | None,
        call: Callable[[], Any],
        *,
        http_event: bool = False,
    ) -> Any:
        config, store = self.config, self.store
        invocation = Invocation(
            context, reserve_ms=store.reserve_ms, default_lease_ms=config.default_lease_ms
        )
        key = self._key(data, invocation)
        if key is None:
            return call()
        fingerprint = self._fingerprint(data, invocation)
        try:
            if self._cache is not None and (cached := self._cache.get(key)) is not None:
                return self._replay_cached(key, fingerprint, *cached, invocation)
            outcome = self._claim(key, fingerprint, invocation)
        except IdempotencyUnavailableError as error:
            return self._fallback(
                error,
                invocation,
                key=key,
                event=event,
                context=context,
                call=call,
                http_event=http_event,
            )
        except (IdempotencyAlreadyInProgressError, IdempotencyValidationError) as error:
            if http_event:
                return problem_response(event, error)
            raise
        if not isinstance(outcome, Claimed):
            emit_metric(store.metrics_namespace, invocation.function_name, Metric.REPLAY)
            if self._cache is not None:
                self._cache.put(key, fingerprint, json.dumps(outcome.result))
            return outcome.result
        try:
            result = call()
        except Exception:
            self._release(key, outcome.lease_token, invocation)
            raise
        self._complete(key, outcome.lease_token, fingerprint, result, invocation)
        return result

    def _key(self, data: Any, invocation: Invocation) -> str | None:
        expression = self.config._event_key
        selected = data if expression is None else expression.search(data)
        if _is_missing(selected):
            if self.config.raise_on_no_idempotency_key:
                raise IdempotencyKeyError(
                    "no data found to make the idempotency key from",
                    code="IDEMPOTENCY_KEY_MISSING",
                    request_id=invocation.request_id,
                )
            warnings.warn(
                "No idempotency key value found: running without idempotency.",
                stacklevel=4,
            )
            return None
        digest = _digest(selected, "the idempotency key data", invocation)
        return f"{_key_prefix(invocation.function_name, self._name)}:{digest}"

    def _fingerprint(self, data: Any, invocation: Invocation) -> str | None:
        expression = self.config._payload_validation
        if expression is None:
            return None
        return f"sha256:{_digest(expression.search(data), 'the payload to validate', invocation)}"

    def _replay_cached(
        self,
        key: str,
        fingerprint: str | None,
        stored_fingerprint: str | None,
        result_json: str,
        invocation: Invocation,
    ) -> Any:
        # The gateway's rule: a missing fingerprint on either side never mismatches.
        if fingerprint and stored_fingerprint and fingerprint != stored_fingerprint:
            raise IdempotencyValidationError(
                f"{key} was first seen with a different payload", request_id=invocation.request_id
            )
        emit_metric(self.store.metrics_namespace, invocation.function_name, Metric.REPLAY)
        return json.loads(result_json)

    def _claim(
        self, key: str, fingerprint: str | None, invocation: Invocation
    ) -> Claimed | Replayed:
        config, store = self.config, self.store
        poll = 0
        while True:
            try:
                return store.claim(
                    key,
                    fingerprint=fingerprint,
                    lease_ms=invocation.lease_ms,
                    ttl_s=config.expires_after_seconds,
                    invocation=invocation,
                )
            except IdempotencyAlreadyInProgressError:
                emit_metric(store.metrics_namespace, invocation.function_name, Metric.IN_PROGRESS)
                pause = backoff(poll)
                if not config.wait_for_in_progress or pause >= invocation.time_left():
                    raise
                time.sleep(pause)
                poll += 1

    def _fallback(
        self,
        error: IdempotencyUnavailableError,
        invocation: Invocation,
        *,
        key: str,
        event: Any,
        context: LambdaContext | None,
        call: Callable[[], Any],
        http_event: bool,
    ) -> Any:
        policy = self.config.on_unavailable
        emit_metric(self.store.metrics_namespace, invocation.function_name, Metric.FALLBACK)
        log_incident(
            logging.ERROR if policy == "fail_closed" else logging.WARNING,
            "gateway_unavailable",
            f"{error}; fallback: {getattr(policy, '__qualname__', policy)}",
            url=self.store.url,
            key=key,
            request_id=error.request_id,
            gateway_request_id=error.gateway_request_id,
        )
        if policy == "fail_open":
            return call()
        if callable(policy):
            return policy(event, context, error)
        if http_event:
            return problem_response(event, error)
        raise error

    def _release(self, key: str, lease_token: str, invocation: Invocation) -> None:
        try:
            self.store.release(
                key,
                lease_token=lease_token,
                invocation=invocation,
            )
        except IdempotencyError as error:
            log_incident(
                logging.WARNING,
                "release_failed",
                f"{error}; a retry can run once the lease expires",
                url=self.store.url,
                key=key,
                request_id=invocation.request_id,
                gateway_request_id=error.gateway_request_id,
            )

    def _complete(
        self,
        key: str,
        lease_token: str,
        fingerprint: str | None,
        result: Any,
        invocation: Invocation,
    ) -> None:
        # Failing here would make the caller retry work that is already done: log and go on.
        try:
            result_json = json.dumps(result, separators=(",", ":"), allow_nan=False)
            self.store.complete(
                key,
                lease_token=lease_token,
                result_json=result_json,
                invocation=invocation,
            )
        except (IdempotencyError, TypeError, ValueError) as error:
            log_incident(
                logging.ERROR,
                "complete_failed",
                f"the result was returned but not stored: {error}",
                url=self.store.url,
                key=key,
                request_id=invocation.request_id,
                gateway_request_id=getattr(error, "gateway_request_id", None),
            )
            return
        if self._cache is not None:
            self._cache.put(key, fingerprint, result_json)


def _digest(value: Any, what: str, invocation: Invocation) -> str:
    try:
        return sha256_hex(value)
    except (TypeError, ValueError) as exc:
        raise IdempotencyKeyError(
            f"{what} is not JSON: {exc}", request_id=invocation.request_id
        ) from exc


@functools.lru_cache(maxsize=64)
def _key_prefix(function_name: str, qualified_name: str) -> str:
    prefix = _KEY_UNSAFE.sub("_", f"{function_name}.{qualified_name}")
    if len(prefix) > _MAX_PREFIX:
        # Long names keep their start and a digest of the whole, so they stay distinct.
        digest = hashlib.sha256(prefix.encode()).hexdigest()[:16]
        prefix = f"{prefix[: _MAX_PREFIX - 17]}~{digest}"
    return prefix


def _is_missing(data: Any) -> bool:
    if data is None or data == "":
        return True
    if isinstance(data, dict):
        return all(value is None for value in data.values())
    if isinstance(data, list):
        return all(item is None for item in data)
    return False


class _ResultCache:
    """An LRU of completed results as JSON text, each kept until its record would expire."""

    def __init__(self, max_items: int, ttl_s: int) -> None:
        self._max_items = max_items
        self._ttl_s = ttl_s
        self._entries: OrderedDict[str, tuple[str | None, str, float]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: str) -> tuple[str | None, str] | None:
        """The fingerprint and result JSON stored under ``key``, unless expired."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            fingerprint, result_json, expires = entry
            if expires <= time.monotonic():
                del self._entries[key]
                return None
            self._entries.move_to_end(key)
            return fingerprint, result_json

    def put(self, key: str, fingerprint: str | None, result_json: str) -> None:
        expires = time.monotonic() + self._ttl_s
        with self._lock:
            self._entries[key] = (fingerprint, result_json, expires)
            self._entries.move_to_end(key)
            while len(self._entries) > self._max_items:
                self._entries.popitem(last=False)
