"""Every error the gateway raises, and the problem-details answer each one becomes.

The hierarchy::

    IdemgateError
    ├── ProblemError                  an answer to the caller (RFC 9457 problem details)
    │   ├── InvalidRequestError       400 INVALID_REQUEST
    │   ├── NotFoundError             404 NOT_FOUND
    │   ├── MethodNotAllowedError     405 METHOD_NOT_ALLOWED
    │   ├── RequestTimeoutError       408 REQUEST_TIMEOUT (the request came too slowly)
    │   ├── InProgressError           409 IN_PROGRESS (with Retry-After)
    │   ├── LeaseLostError            409 LEASE_LOST
    │   ├── PayloadTooLargeError      413 PAYLOAD_TOO_LARGE
    │   ├── URITooLongError           414 URI_TOO_LONG
    │   ├── FingerprintMismatchError  422 FINGERPRINT_MISMATCH
    │   ├── HeadersTooLargeError      431 HEADERS_TOO_LARGE
    │   └── StorageUnavailableError   503 STORAGE_UNAVAILABLE (with Retry-After)
    └── ConfigurationError            bad settings or storage URL, found at start-up

Storage backends translate their drivers' errors into ``StorageUnavailableError`` at one
boundary each, with ``raise ... from exc``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, ClassVar

__all__ = [
    "ConfigurationError",
    "FingerprintMismatchError",
    "HeadersTooLargeError",
    "IdemgateError",
    "InProgressError",
    "InvalidRequestError",
    "LeaseLostError",
    "MethodNotAllowedError",
    "NotFoundError",
    "PayloadTooLargeError",
    "ProblemError",
    "RequestTimeoutError",
    "StorageUnavailableError",
    "URITooLongError",
]


class IdemgateError(Exception):
    """The root of every error idemgate raises."""


class ConfigurationError(IdemgateError):
    """The settings or the storage URL cannot work."""


class ProblemError(IdemgateError):
    """An answer to the caller, rendered as RFC 9457 problem details."""

    status: ClassVar[int]
    code: ClassVar[str]
    title: ClassVar[str]

    def __init__(self, detail: str, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.headers = headers or {}

    def extra_members(self) -> dict[str, Any]:
        """Members added to the problem body beside the standard ones."""
        return {}


class InvalidRequestError(ProblemError):
    status, code, title = 400, "INVALID_REQUEST", "Invalid request"

    def __init__(self, detail: str, *, errors: list[dict[str, Any]] | None = None) -> None:
        super().__init__(detail)
        self.errors = errors

    @classmethod
    def from_errors(
        cls, errors: Iterable[Mapping[str, Any]], prefix: tuple[str, ...] = ()
    ) -> InvalidRequestError:
        """From pydantic's error list: each error's location and message, joined in ``detail``."""
        listed = [
            {
                "location": ".".join(str(part) for part in (*prefix, *error["loc"])),
                "message": error["msg"],
            }
            for error in errors
        ]
        detail = "; ".join(f"{error['location']}: {error['message']}" for error in listed)
        return cls(detail, errors=listed)

    def extra_members(self) -> dict[str, Any]:
        return {"errors": self.errors} if self.errors else {}


class NotFoundError(ProblemError):
    status, code, title = 404, "NOT_FOUND", "Not found"


class MethodNotAllowedError(ProblemError):
    status, code, title = 405, "METHOD_NOT_ALLOWED", "Method not allowed"


class RequestTimeoutError(ProblemError):
    status, code, title = 408, "REQUEST_TIMEOUT", "Request timeout"


def _retry_after_s(until_ms: int, now_ms: int) -> str:
    return str(max(1, -(-(until_ms - now_ms) // 1000)))


class InProgressError(ProblemError):
    status, code, title = 409, "IN_PROGRESS", "Another caller holds this key"

    def __init__(self, *, lease_expires_at: int, now: int) -> None:
        super().__init__(
            "The key is claimed by another caller whose lease has not expired; retry later.",
            headers={"Retry-After": _retry_after_s(lease_expires_at, now)},
        )
        self.lease_expires_at = lease_expires_at

    def extra_members(self) -> dict[str, Any]:
        return {"lease_expires_at": self.lease_expires_at}


class LeaseLostError(ProblemError):
    status, code, title = 409, "LEASE_LOST", "The lease token no longer holds this key"

    def __init__(self) -> None:
        super().__init__(
            "The lease token is not the current holder's: the key was taken over, released, "
            "completed or deleted. Nothing was changed."
        )


class PayloadTooLargeError(ProblemError):
    status, code, title = 413, "PAYLOAD_TOO_LARGE", "Payload too large"


class URITooLongError(ProblemError):
    status, code, title = 414, "URI_TOO_LONG", "URI too long"


class HeadersTooLargeError(ProblemError):
    status, code, title = 431, "HEADERS_TOO_LARGE", "Request headers too large"


class FingerprintMismatchError(ProblemError):
    status, code, title = 422, "FINGERPRINT_MISMATCH", "Fingerprint mismatch"

    def __init__(self) -> None:
        super().__init__(
            "The key is already used with a different fingerprint: the same key was sent "
            "with a different payload."
        )


class StorageUnavailableError(ProblemError):
    status, code, title = 503, "STORAGE_UNAVAILABLE", "Storage unavailable"

    def __init__(self, detail: str, *, retry_after_s: int = 1) -> None:
        super().__init__(detail, headers={"Retry-After": str(retry_after_s)})
