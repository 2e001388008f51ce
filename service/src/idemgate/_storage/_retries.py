"""What the DynamoDB client retries, and how long it waits: the AWS SDKs' standard mode.

Retried (docs/operations.md has the table): the throttling errors, the transient errors,
every 5xx status, connection failures, and answers that arrive damaged (a CRC32 that does not
match the body, a body that is not JSON). Not retried: every other 4xx, conditional-check
failures and validation errors among them. Between attempts the client sleeps a full-jitter
backoff, ``backoff_s``; all attempts share one deadline, so the standard mode's longer waits
(a 20 s cap) are cut to fit inside the storage timeout.

As in standard mode, retries draw on a quota, so a DynamoDB that fails every call is not also
sent every call twice or three times: each retry costs ``RETRY_COST`` tokens, each call that
succeeds pays back what it spent (or one token), and an empty quota means no retry.
"""

from __future__ import annotations

import random

__all__ = [
    "BACKOFF_BASE_S",
    "BACKOFF_CAP_S",
    "CREDENTIALS_REFUSED",
    "RETRY_COST",
    "RetryQuota",
    "backoff_s",
    "retryable",
]

THROTTLING_ERRORS = frozenset(
    {
        "Throttling",
        "ThrottlingException",
        "ThrottledException",
        "RequestThrottledException",
        "TooManyRequestsException",
        "ProvisionedThroughputExceededException",
        "TransactionInProgressException",
        "RequestLimitExceeded",
        "BandwidthLimitExceeded",
        "LimitExceededException",
        "RequestThrottled",
        "SlowDown",
    }
)
TRANSIENT_ERRORS = frozenset(
    {
        "RequestTimeout",
        "RequestTimeoutException",
        "PriorRequestNotComplete",
        "InternalServerError",
        "ServiceUnavailable",
        "TransactionConflictException",  # DynamoDB's own addition to the standard list
    }
)
# DynamoDB's answers when the credentials signed with are expired or unknown to it: worth one
# forced refresh of the credentials and one more try.
CREDENTIALS_REFUSED = frozenset(
    {"ExpiredTokenException", "ExpiredToken", "UnrecognizedClientException"}
)

BACKOFF_BASE_S = 0.025
BACKOFF_CAP_S = 1.0
QUOTA_TOKENS = 500
RETRY_COST = 5


def retryable(status: int, error: str) -> bool:
    """Whether an answer with HTTP ``status`` and DynamoDB error ``error`` is worth retrying."""
    return status >= 500 or error in THROTTLING_ERRORS or error in TRANSIENT_ERRORS


def backoff_s(retry: int) -> float:
    """The wait before retry number ``retry`` (1, 2, ...): full jitter, capped."""
    return random.uniform(0, min(BACKOFF_CAP_S, BACKOFF_BASE_S * 2 ** (retry - 1)))


class RetryQuota:
    """Tokens retries spend and successes pay back; one per client."""

    def __init__(self, tokens: int = QUOTA_TOKENS) -> None:
        self.capacity = tokens
        self.tokens = tokens

    def spend(self) -> bool:
        """Take the cost of one retry; False (and nothing taken) when the quota is empty."""
        if self.tokens < RETRY_COST:
            return False
        self.tokens -= RETRY_COST
        return True

    def succeeded(self, retries: int) -> None:
        """A call succeeded after ``retries`` retries: pay back what they cost, or one token."""
        self.tokens = min(self.capacity, self.tokens + (retries * RETRY_COST or 1))
