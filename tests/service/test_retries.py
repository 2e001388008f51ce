"""The retry policy of the DynamoDB client: what is retried, the backoff, the quota."""

from __future__ import annotations

import pytest

from idemgate._storage._retries import (
    BACKOFF_BASE_S,
    BACKOFF_CAP_S,
    RETRY_COST,
    RetryQuota,
    backoff_s,
    retryable,
)


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (400, "ProvisionedThroughputExceededException"),
        (400, "ThrottlingException"),
        (400, "RequestLimitExceeded"),
        (400, "LimitExceededException"),
        (400, "TransactionConflictException"),
        (400, "TransactionInProgressException"),
        (500, "InternalServerError"),
        (503, "ServiceUnavailable"),
        (502, "SomethingUnknown"),
        (504, ""),
    ],
)
def test_retried(status: int, error: str) -> None:
    assert retryable(status, error)


@pytest.mark.parametrize(
    "error",
    [
        "ConditionalCheckFailedException",
        "ValidationException",
        "AccessDeniedException",
        "ResourceNotFoundException",
        "ExpiredTokenException",  # refreshed once, by the client, not retried as such
    ],
)
def test_not_retried(error: str) -> None:
    assert not retryable(400, error)


@pytest.mark.parametrize("retry", [1, 2, 3, 6, 20])
def test_backoff_is_full_jitter_under_the_cap(retry: int) -> None:
    ceiling = min(BACKOFF_CAP_S, BACKOFF_BASE_S * 2 ** (retry - 1))
    waits = [backoff_s(retry) for _ in range(200)]
    assert all(0 <= wait <= ceiling for wait in waits)
    assert max(waits) > ceiling / 2  # spread over the range, not a fixed pause


def test_quota_stops_retries_when_spent_and_successes_refill_it() -> None:
    quota = RetryQuota(tokens=3 * RETRY_COST)
    assert [quota.spend() for _ in range(4)] == [True, True, True, False]
    quota.succeeded(retries=1)  # a call that needed one retry pays it back
    assert quota.spend()
    assert not quota.spend()
    for _ in range(RETRY_COST):
        quota.succeeded(retries=0)  # each first-time success adds one token
    assert quota.spend()


def test_quota_never_exceeds_its_capacity() -> None:
    quota = RetryQuota(tokens=2 * RETRY_COST)
    quota.succeeded(retries=5)
    assert quota.tokens == 2 * RETRY_COST
