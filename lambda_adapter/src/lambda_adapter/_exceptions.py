"""Every exception the adapter raises.

IdempotencyError                       the base: catch this to catch them all
├── IdempotencyKeyError                no key data in the event, or data that is not JSON
├── IdempotencyAlreadyInProgressError  another invocation holds the key right now
├── IdempotencyValidationError         same key, different payload (fingerprint mismatch)
└── IdempotencyUnavailableError        the gateway could not answer within the budget

Each carries ``code`` (stable, machine-readable), ``request_id`` (the invocation's
``aws_request_id``) and ``gateway_request_id`` (the gateway's ``X-Request-Id``, when it answered).
Errors from the HTTP library never escape: they are translated once, where calls are made, and
chained as ``__cause__``.
"""

from __future__ import annotations

__all__ = [
    "IdempotencyAlreadyInProgressError",
    "IdempotencyError",
    "IdempotencyKeyError",
    "IdempotencyUnavailableError",
    "IdempotencyValidationError",
]


class IdempotencyError(Exception):
    """Base class; ``code`` is the gateway's error code when the gateway refused a request."""

    default_code = "IDEMPOTENCY_ERROR"

    def __init__(
        self,
        message: str,
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
        message: str,
        *,
        retry_after: int = 1,
        request_id: str | None = None,
        gateway_request_id: str | None = None,
    ) -> None:
        super().__init__(message, request_id=request_id, gateway_request_id=gateway_request_id)
        self.retry_after = retry_after


class IdempotencyValidationError(IdempotencyError):
    default_code = "FINGERPRINT_MISMATCH"


class IdempotencyUnavailableError(IdempotencyError):
    default_code = "IDEMPOTENCY_UNAVAILABLE"
