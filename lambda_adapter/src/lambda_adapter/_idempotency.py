"""The decorators, and the claim → run → complete flow they share."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
import os
import re
import threading
import time
import warnings
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar, overload

from ._canonical import sha256_hex
from ._config import DataRecord, IdempotencyConfig, LambdaContext
from ._exceptions import (
    IdempotencyAlreadyInProgressError,
    IdempotencyError,
    IdempotencyKeyError,
    IdempotencyPersistenceLayerError,
    IdempotencyResultNotStoredError,
    IdempotencyUnavailableError,
    IdempotencyValidationError,
)
from ._http_events import is_http_event, problem_response
from ._incidents import Metric, emit_metric, log_incident
from ._persistence import (
    Claimed,
    GatewayPersistenceLayer,
    Invocation,
    Replayed,
    backoff,
    durable_lease_token,
    new_lease_token,
)
from ._serialization import (
    BaseIdempotencyModelSerializer,
    BaseIdempotencySerializer,
    encode_result,
    not_stored_marker,
    not_stored_reason,
    resolve_serializer,
)

__all__ = ["idempotent", "idempotent_function"]

P = ParamSpec("P")
R = TypeVar("R")
Handler = Callable[..., Any]
OutputSerializer = BaseIdempotencySerializer | type[BaseIdempotencyModelSerializer]

_KEY_UNSAFE = re.compile(r"[^A-Za-z0-9._~@=+-]")
_KEY_PREFIX = re.compile(r"[A-Za-z0-9._~@=+-]{1,190}")
_MAX_PREFIX = 190  # 255 for a key, less ':' and 64 hex digits
_DISABLED_VARIABLES = ("IDEMGATE_IDEMPOTENCY_DISABLED", "POWERTOOLS_IDEMPOTENCY_DISABLED")
_TRUE = frozenset({"1", "true", "t", "yes", "y", "on"})
_ENVIRON_DATA: dict[Any, Any] | None = getattr(os.environ, "_data", None)
_DISABLED_KEYS = tuple(
    (variable, getattr(os.environ, "encodekey", str)(variable)) for variable in _DISABLED_VARIABLES
)
# The refusals of complete that are about the result itself: storing a marker instead helps.
_RESULT_REFUSALS = frozenset({"PAYLOAD_TOO_LARGE", "INVALID_REQUEST"})
_RESULT_DECODER = json.JSONDecoder()


@overload
def idempotent(
    handler: None = None,
    *,
    persistence_store: GatewayPersistenceLayer,
    config: IdempotencyConfig | None = None,
    key_prefix: str | None = None,
) -> Callable[[Handler], Handler]: ...
@overload
def idempotent(
    handler: Handler,
    *,
    persistence_store: GatewayPersistenceLayer,
    config: IdempotencyConfig | None = None,
    key_prefix: str | None = None,
) -> Handler: ...
def idempotent(
    handler: Handler | None = None,
    *,
    persistence_store: GatewayPersistenceLayer,
    config: IdempotencyConfig | None = None,
    key_prefix: str | None = None,
) -> Handler | Callable[[Handler], Handler]:
    """Make a Lambda handler ``(event, context)`` idempotent on its event.

    ``key_prefix`` replaces the function and handler names in its keys, so they survive a rename.
    An event-source data class (anything with ``raw_event``) is keyed on its raw event.
    """

    def decorate(handler: Handler) -> Handler:
        guard = _Guard(handler, persistence_store, config or IdempotencyConfig(), key_prefix)

        @functools.wraps(handler)
        def wrapper(event: Any, context: Any, *args: Any, **kwargs: Any) -> Any:
            if _disabled():
                return handler(event, context, *args, **kwargs)
            lambda_context, durable_execution = _lambda_context(context)
            if lambda_context is not None:
                guard.config.register_lambda_context(lambda_context)
            data = getattr(event, "raw_event", event)
            return guard.run(
                event,
                data,
                lambda_context,
                lambda: handler(event, context, *args, **kwargs),
                http_event=is_http_event(data),
                durable_execution=durable_execution,
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
    output_serializer: OutputSerializer | None = None,
    key_prefix: str | None = None,
) -> Callable[[Callable[P, R]], Callable[P, R]]: ...
@overload
def idempotent_function(
    function: Callable[P, R],
    *,
    data_keyword_argument: str,
    persistence_store: GatewayPersistenceLayer,
    config: IdempotencyConfig | None = None,
    output_serializer: OutputSerializer | None = None,
    key_prefix: str | None = None,
) -> Callable[P, R]: ...
def idempotent_function(
    function: Callable[P, R] | None = None,
    *,
    data_keyword_argument: str,
    persistence_store: GatewayPersistenceLayer,
    config: IdempotencyConfig | None = None,
    output_serializer: OutputSerializer | None = None,
    key_prefix: str | None = None,
) -> Callable[P, R] | Callable[[Callable[P, R]], Callable[P, R]]:
    """Make any function idempotent on one keyword argument.

    The argument may be a JSON value, a dataclass, a pydantic model or an event-source data
    class. ``output_serializer`` turns the result into a JSON value to store and back on replay:
    an instance, or ``DataclassSerializer``/``PydanticSerializer`` (the class) to build one from
    the function's return annotation. The function uses the Lambda context registered on
    ``config`` for its deadline and lease, else ``config.default_lease_ms``.
    """

    def decorate(function: Callable[P, R]) -> Callable[P, R]:
        guard = _Guard(
            function,
            persistence_store,
            config or IdempotencyConfig(),
            key_prefix,
            resolve_serializer(output_serializer, function),
        )

        @functools.wraps(function)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            if _disabled():
                return function(*args, **kwargs)
            if data_keyword_argument not in kwargs:
                raise RuntimeError(
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


def _disabled() -> bool:
    """Whether idempotency is switched off for tests (Powertools' variable, or ours).

    Read on every call, as Powertools does, since tests set it after importing the handler.
    The usual answer is a miss, which ``os.environ.get`` turns into a KeyError raised and caught
    per variable, most of the adapter's own CPU on a replay; CPython's ``os.environ`` keeps the
    environment in a plain dict of encoded names, which answers a miss without one.
    """
    for variable, encoded in _DISABLED_KEYS:
        if _ENVIRON_DATA is None:  # not CPython
            value: str | bytes | None = os.environ.get(variable)
        else:
            value = _ENVIRON_DATA.get(encoded)
        if value and _text(value).strip().lower() in _TRUE:
            warnings.warn(
                f"{variable} is set: running without idempotency. Never set it in production.",
                stacklevel=3,
            )
            return True
    return False


def _text(value: str | bytes) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else value


def _lambda_context(context: Any) -> tuple[LambdaContext | None, str | None]:
    """The Lambda context, and the ARN of the durable execution the invocation belongs to.

    A durable function's handler gets a ``DurableContext``: its Lambda context is
    ``lambda_context``, and its execution state (``state``) keeps the ``DurableExecutionArn``
    the invocation came with, the same in every invocation of the execution.
    """
    lambda_context = getattr(context, "lambda_context", None)
    state = getattr(context, "state", None)
    if lambda_context is None or state is None:
        return context, None
    execution_arn = getattr(state, "durable_execution_arn", None)
    return lambda_context, execution_arn if isinstance(execution_arn, str) else None


def _as_json(data: Any) -> Any:
    if dataclasses.is_dataclass(data) and not isinstance(data, type):
        return dataclasses.asdict(data)
    if callable(getattr(data, "model_dump", None)):  # a pydantic model, without importing pydantic
        return data.model_dump(mode="json")
    return getattr(data, "raw_event", data)


class _Guard:
    """Idempotency for one decorated function."""

    def __init__(
        self,
        function: Callable[..., Any],
        store: GatewayPersistenceLayer,
        config: IdempotencyConfig,
        key_prefix: str | None,
        serializer: BaseIdempotencySerializer | None = None,
    ) -> None:
        if key_prefix is not None and not _KEY_PREFIX.fullmatch(key_prefix):
            raise ValueError(f"key_prefix {key_prefix!r} must match {_KEY_PREFIX.pattern}")
        self.config = config
        self.store = store
        self._name = f"{function.__module__}.{function.__qualname__}"
        self._key_prefix = key_prefix
        self._serializer = serializer
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
        durable_execution: str | None = None,
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
                return self._replay_cached(key, fingerprint, cached, invocation)
            outcome = self._claim(key, fingerprint, invocation, durable_execution)
            if isinstance(outcome, Replayed):
                if self._cache is not None:
                    result_json = encode_result(outcome.result)
                    self._cache.put(key, fingerprint, result_json, outcome.expires_at_s)
                return self._replayed(
                    key, fingerprint, outcome.result, outcome.expires_at_s, invocation
                )
        except IdempotencyUnavailableError as error:
            return self._fallback(
                error,
                invocation,
                key=key,
                event=event,
                context=context,
                call=call,
                http_event=http_event,
                data=data,
            )
        except (
            IdempotencyAlreadyInProgressError,
            IdempotencyValidationError,
            IdempotencyResultNotStoredError,
        ) as error:
            if http_event:
                return problem_response(data, error)
            raise
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
        prefix = self._key_prefix or _key_prefix(invocation.function_name, self._name)
        return f"{prefix}:{digest}"

    def _fingerprint(self, data: Any, invocation: Invocation) -> str | None:
        expression = self.config._payload_validation
        if expression is None:
            return None
        return f"sha256:{_digest(expression.search(data), 'the payload to validate', invocation)}"

    def _replay_cached(
        self,
        key: str,
        fingerprint: str | None,
        cached: tuple[str | None, str, int | None],
        invocation: Invocation,
    ) -> Any:
        stored_fingerprint, result_text, expires_at_s = cached
        # The gateway's rule: a missing fingerprint on either side never mismatches.
        if fingerprint and stored_fingerprint and fingerprint != stored_fingerprint:
            raise IdempotencyValidationError(
                f"{key} was first seen with a different payload", request_id=invocation.request_id
            )
        result = _RESULT_DECODER.raw_decode(result_text)[0]
        return self._replayed(key, fingerprint, result, expires_at_s, invocation)

    def _replayed(
        self,
        key: str,
        fingerprint: str | None,
        stored: Any,
        expires_at_s: int | None,
        invocation: Invocation,
    ) -> Any:
        """The stored result as the caller gets it: deserialised, through the response hook."""
        reason = not_stored_reason(stored)
        if reason is not None:
            raise IdempotencyResultNotStoredError(
                f"{key} was processed before, but its result was not stored ({reason}); "
                "the work is not run again",
                reason=reason,
                request_id=invocation.request_id,
            )
        emit_metric(self.store.metrics_namespace, invocation.function_name, Metric.REPLAY)
        result = stored
        if self._serializer is not None and stored is not None:
            result = self._serializer.from_dict(stored)
        hook = self.config.response_hook
        if hook is None:
            return result
        record = DataRecord(
            idempotency_key=key,
            expiry_timestamp=expires_at_s,
            response_data=encode_result(stored).decode(),
            payload_hash=fingerprint,
        )
        return hook(result, record)

    def _claim(
        self,
        key: str,
        fingerprint: str | None,
        invocation: Invocation,
        durable_execution: str | None,
    ) -> Claimed | Replayed:
        """Claim the key (as the durable execution's, if any), waiting for it as configured."""
        config, store = self.config, self.store
        if config.on_unavailable != "fail_closed":
            # Falling back must still leave the work its time.
            invocation = invocation.share(config.claim_time_share)
        waits = bool(config.wait_for_result_ms)
        wait_until = time.monotonic() + config.wait_for_result_ms / 1000 if waits else 0.0
        wait_ms = 0
        poll = 0
        # One token for every try of this invocation's claim: a try answered 503 whose write
        # landed afterwards is then this claim's own, not a holder nobody knows of. Every
        # invocation of a durable execution proposes the same token, so a replay finds the claim
        # of the invocation that suspended as its own, and can complete it.
        lease_token = (
            new_lease_token()
            if durable_execution is None
            else durable_lease_token(durable_execution, store.namespace, key)
        )
        while True:
            if waits:
                wait_ms = max(0, int((wait_until - time.monotonic()) * 1000))
            try:
                return store.claim(
                    key,
                    fingerprint=fingerprint,
                    lease_ms=invocation.lease_ms,
                    ttl_s=config.expires_after_seconds,
                    invocation=invocation,
                    wait_ms=wait_ms,
                    lease_token=lease_token,
                )
            except IdempotencyAlreadyInProgressError:
                emit_metric(store.metrics_namespace, invocation.function_name, Metric.IN_PROGRESS)
                # The gateway gave up waiting before we did (its cap, or our budget): ask again
                # while another waiting claim still fits.
                if (
                    wait_ms
                    and time.monotonic() < wait_until
                    and invocation.time_left() * 1000 > store.max_call_ms
                ):
                    continue
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
        data: Any,
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
            return problem_response(data, error)
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
        """Store the result; one that cannot be stored leaves the "not stored" marker instead.

        Nothing here raises: failing after the work is done would make the caller retry it.
        """
        store = self.store
        size: int | None = None
        try:
            stored = result
            if self._serializer is not None and result is not None:
                stored = self._serializer.to_dict(result)
            result_json = encode_result(stored)
        except Exception as exc:  # a user serializer may raise anything
            problem = f"the result is not JSON: {type(exc).__name__}: {exc}"
        else:
            size = len(result_json)
            if size > store.max_result_bytes:
                problem = f"the result is {size} bytes of JSON, more than {store.max_result_bytes}"
            else:
                try:
                    expires_at_s = store.complete(
                        key, lease_token=lease_token, result_json=result_json, invocation=invocation
                    )
                except IdempotencyPersistenceLayerError as error:
                    if error.code not in _RESULT_REFUSALS:
                        self._complete_failed(key, error, invocation)
                        return
                    problem = f"the gateway refused it: {error}"
                else:
                    if self._cache is not None:
                        self._cache.put(key, fingerprint, result_json, expires_at_s)
                    return
        try:
            store.complete(
                key,
                lease_token=lease_token,
                result_json=not_stored_marker(problem, size),
                invocation=invocation,
            )
        except IdempotencyError as error:
            self._complete_failed(key, error, invocation)
            return
        log_incident(
            logging.ERROR,
            "result_not_stored",
            f"the result was returned but not stored: {problem}; the record is completed, and a "
            "duplicate gets IdempotencyResultNotStoredError instead of running the work again",
            url=store.url,
            key=key,
            request_id=invocation.request_id,
        )

    def _complete_failed(self, key: str, error: IdempotencyError, invocation: Invocation) -> None:
        log_incident(
            logging.ERROR,
            "complete_failed",
            f"the result was returned but not stored: {error}",
            url=self.store.url,
            key=key,
            request_id=invocation.request_id,
            gateway_request_id=error.gateway_request_id,
        )


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
    """An LRU of completed results as JSON, each kept until its record would expire.

    The JSON is kept as text: a hit then parses it without ``json.loads``' encoding detection
    and decoding, which cost more than the parse itself for a small result.
    """

    def __init__(self, max_items: int, ttl_s: int) -> None:
        self._max_items = max_items
        self._ttl_s = ttl_s
        self._entries: OrderedDict[str, tuple[str | None, str, int | None, float]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: str) -> tuple[str | None, str, int | None] | None:
        """The fingerprint, result JSON and record expiry (epoch s) under ``key``, if live."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            fingerprint, result_text, expires_at_s, expires = entry
            if expires <= time.monotonic():
                del self._entries[key]
                return None
            self._entries.move_to_end(key)
            return fingerprint, result_text, expires_at_s

    def put(
        self, key: str, fingerprint: str | None, result_json: bytes, expires_at_s: int | None
    ) -> None:
        expires = time.monotonic() + self._ttl_s
        with self._lock:
            self._entries[key] = (fingerprint, result_json.decode(), expires_at_s, expires)
            self._entries.move_to_end(key)
            while len(self._entries) > self._max_items:
                self._entries.popitem(last=False)
