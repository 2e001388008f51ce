"""Helpers for testing functions that use the adapter, without Lambda.

from lambda_adapter.testing import FakeLambdaContext

handler({"order_id": "o-1"}, FakeLambdaContext(remaining_ms=3000))
"""

from __future__ import annotations

import time
import uuid

__all__ = ["FakeLambdaContext"]


class FakeLambdaContext:
    """A Lambda context whose remaining time counts down from ``remaining_ms`` in real time."""

    def __init__(
        self,
        *,
        remaining_ms: int = 30_000,
        function_name: str = "test-function",
        aws_request_id: str | None = None,
        memory_limit_in_mb: int = 128,
    ) -> None:
        self.function_name = function_name
        self.function_version = "$LATEST"
        self.aws_request_id = aws_request_id or str(uuid.uuid4())
        self.memory_limit_in_mb = memory_limit_in_mb
        self.invoked_function_arn = (
            f"arn:aws:lambda:us-east-1:123456789012:function:{function_name}"
        )
        self.log_group_name = f"/aws/lambda/{function_name}"
        self.log_stream_name = "test"
        self._deadline = time.monotonic() + remaining_ms / 1000

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self._deadline - time.monotonic()) * 1000))
