"""Every exception the adapter raises, and the Powertools names users already catch.

IdempotencyError                            the base: catch this to catch them all
├── IdempotencyKeyError                     no key data in the event, or data that is not JSON
├── IdempotencyAlreadyInProgressError       another invocation holds the key right now
├── IdempotencyValidationError              same key, different payload (fingerprint mismatch)
├── IdempotencyResultNotStoredError         the work ran before, but its result was not stored
├── IdempotencyPersistenceLayerError        the gateway refused a request (``code`` says why)
│   └── IdempotencyUnavailableError         the gateway could not answer within the budget
│       (also an IdempotencyPersistenceConnectionError)
├── IdempotencyPersistenceConnectionError
├── IdempotencyNoSerializationModelError    output_serializer found no return type to build
├── IdempotencyModelTypeError               that return type is not a dataclass or model
└── never raised, kept so Powertools ``except`` clauses still import:
    IdempotencyInconsistentStateError, IdempotencyItemAlreadyExistsError,
    IdempotencyItemNotFoundError, IdempotencyInvalidStatusError,
    IdempotencyPersistenceConfigError, IdempotencyPersistenceConsistencyError

Each carries ``code`` (stable, machine-readable), ``request_id`` (the invocation's
``aws_request_id``) and ``gateway_request_id`` (the gateway's ``X-Request-Id``, when it answered).
Errors from the HTTP library never escape: they are translated once, where calls are made, and
chained as ``__cause__``.

The adapter's own transport fails with the types below, named as httpx names its own, so the
default path never loads httpx; a user's httpx transport has its errors translated into them at
one boundary (``_transport.through_httpx``). They never reach users either: the store and the
SQS client turn them into the errors above.

TransportError                              a call that ended without a whole answer
├── TimeoutException                        the call's time ran out
│   ├── ConnectTimeout, WriteTimeout, ReadTimeout
├── NetworkError                            the socket failed
│   ├── ConnectError, WriteError, ReadError
├── ProtocolError                           not HTTP/1.1 as the transport speaks it
│   ├── LocalProtocolError                  a request it will not write (a line break in a header)
│   └── RemoteProtocolError                 an answer it will not read
└── UnsupportedProtocol                     not an http:// or https:// URL
"""

from __future__ import annotations

__all__ = [
    "ConnectError",
    "ConnectTimeout",
    "IdempotencyAlreadyInProgressError",
    "IdempotencyError",
    "IdempotencyInconsistentStateError",
    "IdempotencyInvalidStatusError",
    "IdempotencyItemAlreadyExistsError",
    "IdempotencyItemNotFoundError",
    "IdempotencyKeyError",
    "IdempotencyModelTypeError",
    "IdempotencyNoSerializationModelError",
    "IdempotencyPersistenceConfigError",
    "IdempotencyPersistenceConnectionError",
    "IdempotencyPersistenceConsistencyError",
    "IdempotencyPersistenceLayerError",
    "IdempotencyResultNotStoredError",
    "IdempotencyUnavailableError",
    "IdempotencyValidationError",
    "LocalProtocolError",
    "NetworkError",
    "ProtocolError",
    "ReadError",
    "ReadTimeout",
    "RemoteProtocolError",
    "TimeoutException",
    "TransportError",
    "UnsupportedProtocol",
    "WriteError",
    "WriteTimeout",
]


class IdempotencyError(Exception):
    """Base class; ``code`` is the gateway's error code when the gateway refused a request."""

    default_code = "IDEMPOTENCY_ERROR"

    def __init__(
        self,
        message: str = "",
        *,
        code: str | None = None,
        request_id: str | None = None,
        gateway_request_id: str | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code or self.default_code
        self.request_id = request_id
        self.gateway_request_id = gateway_request_id


class IdempotencyKeyError(IdempotencyError):
    default_code = "IDEMPOTENCY_KEY_INVALID"


class IdempotencyAlreadyInProgressError(IdempotencyError):
    """``retry_after`` is the whole seconds until the holder's lease expires."""

    default_code = "IN_PROGRESS"

    def __init__(
        self,
        message: str = "",
        *,
        retry_after: int = 1,
        request_id: str | None = None,
        gateway_request_id: str | None = None,
    ) -> None:
        super().__init__(message, request_id=request_id, gateway_request_id=gateway_request_id)
        self.retry_after = retry_after


class IdempotencyValidationError(IdempotencyError):
    default_code = "FINGERPRINT_MISMATCH"


class IdempotencyResultNotStoredError(IdempotencyError):
    """The work under this key completed, but its result could not be kept to replay.

    The work must not run again, and there is nothing to answer with: the caller has to find
    the outcome elsewhere (the charge, the email, ...). ``reason`` says why it was not stored.
    """

    default_code = "RESULT_NOT_STORED"

    def __init__(
        self,
        message: str = "",
        *,
        reason: str = "",
        request_id: str | None = None,
        gateway_request_id: str | None = None,
    ) -> None:
        super().__init__(message, request_id=request_id, gateway_request_id=gateway_request_id)
        self.reason = reason


class IdempotencyPersistenceLayerError(IdempotencyError):
    """Powertools' name for a failing store; here, a request the gateway refused."""


class IdempotencyPersistenceConnectionError(IdempotencyError):
    """Powertools' name for a store that cannot be reached."""


class IdempotencyUnavailableError(
    IdempotencyPersistenceLayerError, IdempotencyPersistenceConnectionError
):
    default_code = "IDEMPOTENCY_UNAVAILABLE"


class IdempotencyNoSerializationModelError(IdempotencyError):
    default_code = "NO_SERIALIZATION_MODEL"


class IdempotencyModelTypeError(IdempotencyError):
    default_code = "SERIALIZATION_MODEL_TYPE"


class IdempotencyInconsistentStateError(IdempotencyError):
    """Never raised: the gateway decides each claim in one atomic step."""


class IdempotencyItemAlreadyExistsError(IdempotencyError):
    """Never raised: an existing record is answered as a replay or as in progress."""


class IdempotencyItemNotFoundError(IdempotencyError):
    """Never raised: the adapter never reads a record it did not claim."""


class IdempotencyInvalidStatusError(IdempotencyError):
    """Never raised: the gateway owns record statuses."""


class IdempotencyPersistenceConfigError(IdempotencyError):
    """Never raised: a bad store configuration raises ``ValueError`` when the store is built."""


class IdempotencyPersistenceConsistencyError(IdempotencyError):
    """Never raised: kept for imports only."""


class TransportError(Exception):
    """A call through the adapter's transport that ended without a whole answer."""


class TimeoutException(TransportError):
    pass


class ConnectTimeout(TimeoutException):
    pass


class WriteTimeout(TimeoutException):
    pass


class ReadTimeout(TimeoutException):
    pass


class NetworkError(TransportError):
    pass


class ConnectError(NetworkError):
    pass


class WriteError(NetworkError):
    pass


class ReadError(NetworkError):
    pass


class ProtocolError(TransportError):
    pass


class LocalProtocolError(ProtocolError):
    pass


class RemoteProtocolError(ProtocolError):
    pass


class UnsupportedProtocol(TransportError):
    pass
