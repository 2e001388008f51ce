"""The moto server the AWS-facing tests rely on really checks signatures."""

from __future__ import annotations

from typing import Any

import botocore.exceptions
import pytest


def test_moto_server_refuses_a_wrong_signature_and_accepts_temporary_credentials(
    moto_server: Any,  # conftest.MotoServer: "conftest" may name tests/stack/conftest.py
) -> None:
    credentials = moto_server.temporary_credentials("moto-self-test", actions=["sts:*"])
    assert credentials["aws_session_token"]
    wrong = {**credentials, "aws_secret_access_key": "not-the-secret"}
    with pytest.raises(botocore.exceptions.ClientError) as refused:
        moto_server.client("sts", **wrong).get_caller_identity()
    assert refused.value.response["Error"]["Code"] == "SignatureDoesNotMatch"
    identity = moto_server.client("sts", **credentials).get_caller_identity()
    assert identity["Arn"].endswith(":assumed-role/moto-self-test/moto-self-test-session")
