"""The package's surface: names, imports, configuration, exceptions, canonical JSON."""

from __future__ import annotations

import hashlib
import json
import struct
import subprocess
import sys
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import jmespath  # type: ignore[import-untyped,unused-ignore]
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import lambda_adapter
from lambda_adapter import (
    GatewayPersistenceLayer,
    IdempotencyAlreadyInProgressError,
    IdempotencyConfig,
    IdempotencyError,
    IdempotencyKeyError,
    IdempotencyUnavailableError,
    IdempotencyValidationError,
    _canonical,
)
from lambda_adapter._canonical import canonical_json
from lambda_adapter._jmespath import Expression
from lambda_adapter.testing import FakeLambdaContext

VECTORS = Path(__file__).parents[2] / "docs" / "canonical-json-vectors.json"


def test_the_public_names_are_pinned() -> None:
    assert sorted(lambda_adapter.__all__) == [
        "BaseIdempotencyModelSerializer",
        "BaseIdempotencySerializer",
        "CustomDictSerializer",
        "DataRecord",
        "DataclassSerializer",
        "DeadLetterHandoff",
        "DynamoDBPersistenceLayer",
        "EventKey",
        "GatewayPersistenceLayer",
        "IdempotencyAlreadyInProgressError",
        "IdempotencyConfig",
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
        "IdempotentHookFunction",
        "LambdaContext",
        "NoOpSerializer",
        "PydanticSerializer",
        "SqsBackoff",
        "idempotent",
        "idempotent_function",
        "process_records",
        "process_sqs_batch",
    ]


def _printed_by(script: str) -> str:
    """What ``script`` prints, run in a fresh interpreter (so nothing is imported yet)."""
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    return run.stdout.strip()


def test_importing_and_constructing_pulls_in_no_heavy_framework() -> None:
    script = (
        "import sys, lambda_adapter\n"
        "lambda_adapter.GatewayPersistenceLayer(url='http://127.0.0.1:9', namespace='n')\n"
        "heavy = {'fastapi', 'starlette', 'pydantic', 'boto3', 'botocore', 'jmespath'}\n"
        "print(sorted(heavy & {name.split('.')[0] for name in sys.modules}))\n"
    )
    assert _printed_by(script) == "[]"


def test_the_default_path_loads_no_http_library() -> None:
    """httpx (and the standard library's HTTP client under it) load only for a user's transport."""
    script = (
        "import sys, lambda_adapter\n"
        "store = lambda_adapter.GatewayPersistenceLayer(url='http://127.0.0.1:9', namespace='n')\n"
        "config = lambda_adapter.IdempotencyConfig(event_key_jmespath='id')\n"
        "lambda_adapter.idempotent(persistence_store=store, config=config)(lambda e, c: e)\n"
        "heavy = {'httpx', 'httpcore', 'h11', 'urllib.request', 'http.client', 'email'}\n"
        "print(sorted(heavy & set(sys.modules)))\n"
    )
    assert _printed_by(script) == "[]"


@pytest.mark.parametrize(
    ("error_class", "code"),
    [
        (IdempotencyKeyError, "IDEMPOTENCY_KEY_INVALID"),
        (IdempotencyAlreadyInProgressError, "IN_PROGRESS"),
        (IdempotencyValidationError, "FINGERPRINT_MISMATCH"),
        (IdempotencyUnavailableError, "IDEMPOTENCY_UNAVAILABLE"),
    ],
)
def test_every_error_is_an_idempotency_error_with_ids(
    error_class: type[IdempotencyError], code: str
) -> None:
    error = error_class("message", request_id="aws-1", gateway_request_id="gw-1")
    assert isinstance(error, IdempotencyError)
    assert (error.code, error.request_id, error.gateway_request_id) == (code, "aws-1", "gw-1")


def test_the_store_reads_its_settings_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("IDEMGATE_URL", "http://gateway.internal:8080/")
    monkeypatch.setenv("AWS_LAMBDA_FUNCTION_NAME", "orders-fn")
    store = GatewayPersistenceLayer()
    assert (store.url, store.namespace) == ("http://gateway.internal:8080", "orders-fn")
    monkeypatch.setenv("IDEMGATE_NAMESPACE", "tenant-a")
    assert GatewayPersistenceLayer().namespace == "tenant-a"


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"namespace": "n"}, "URL is missing"),
        ({"url": "ftp://x", "namespace": "n"}, "http or https"),
        ({"url": "http://x", "namespace": "-bad"}, "must match"),
        ({"url": "http://x", "namespace": "n", "max_attempts": 0}, "max_attempts"),
    ],
)
def test_a_misconfigured_store_fails_at_init(
    monkeypatch: pytest.MonkeyPatch, options: dict[str, Any], message: str
) -> None:
    monkeypatch.delenv("IDEMGATE_URL", raising=False)
    with pytest.raises(ValueError, match=message):
        GatewayPersistenceLayer(**options)


@pytest.mark.parametrize(
    "options",
    [
        {"expires_after_seconds": 0},
        {"expires_after_seconds": 3600.5},
        {"default_lease_ms": True},
        {"default_lease_ms": 900_001},
        {"local_cache_max_items": 0},
        {"on_unavailable": "retry"},
    ],
)
def test_a_misconfigured_config_fails_at_init(options: dict[str, Any]) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 (each option has its own message)
        IdempotencyConfig(**options)


def test_whole_numbers_written_with_a_fraction_are_taken_as_integers() -> None:
    config = IdempotencyConfig(expires_after_seconds=3600.0, default_lease_ms=5000.0)
    assert (config.expires_after_seconds, config.default_lease_ms) == (3600, 5000)
    assert type(config.expires_after_seconds) is type(config.default_lease_ms) is int


def test_the_fake_context_counts_down_in_real_time() -> None:
    started = time.monotonic()
    context = FakeLambdaContext(remaining_ms=1000, function_name="fn")
    time.sleep(0.1)
    remaining = context.get_remaining_time_in_millis()
    # As much as has really passed, however late a busy machine woke this thread.
    elapsed_ms = (time.monotonic() - started) * 1000
    assert 1000 - elapsed_ms - 1 <= remaining <= 900
    assert context.function_name == "fn"
    assert context.aws_request_id != FakeLambdaContext().aws_request_id
    assert FakeLambdaContext(remaining_ms=0).get_remaining_time_in_millis() == 0


def test_canonical_json_matches_every_published_vector() -> None:
    vectors = json.loads(VECTORS.read_text(encoding="utf-8"))
    assert len(vectors) >= 30
    for vector in vectors:
        canonical = canonical_json(vector["input"])
        assert canonical.decode() == vector["canonical"]
        assert hashlib.sha256(canonical).hexdigest() == vector["sha256"]


# RFC 8785, appendix B: IEEE 754 bit patterns and their ECMAScript serialisations.
RFC_8785_NUMBERS = {
    "0000000000000001": "5e-324",
    "7fefffffffffffff": "1.7976931348623157e+308",
    "4340000000000000": "9007199254740992",
    "4430000000000000": "295147905179352830000",
    "44b52d02c7e14af6": "1e+23",
    "44b52d02c7e14af7": "1.0000000000000001e+23",
    "444b1ae4d6e2ef50": "1e+21",
    "3eb0c6f7a0b5ed8c": "9.999999999999997e-7",
    "3eb0c6f7a0b5ed8d": "0.000001",
    "41b3de4355555557": "333333333.33333343",
    "becbf647612f3696": "-0.0000033333333333333333",
    "43143ff3c1cb0959": "1424953923781206.2",
}


@pytest.mark.parametrize(("bits", "expected"), RFC_8785_NUMBERS.items())
def test_floats_serialise_as_ecmascript_does(bits: str, expected: str) -> None:
    (number,) = struct.unpack(">d", bytes.fromhex(bits))
    assert canonical_json(number) == expected.encode()


def test_large_integers_keep_every_digit() -> None:
    assert canonical_json(2**64 + 1) == b"18446744073709551617"
    assert canonical_json(2**64 + 1) != canonical_json(2**64)


def test_lone_surrogates_are_escaped_as_javascript_does() -> None:
    assert canonical_json("a\ud800b") == b'"a\\ud800b"'


@pytest.mark.parametrize("value", [float("nan"), float("-inf"), {1: "a"}, {"a"}, b"x"])
def test_values_without_a_json_form_are_refused(value: Any) -> None:
    with pytest.raises((TypeError, ValueError)):
        canonical_json(value)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (Decimal("10"), b"10"),
        (Decimal("10.00"), b"10"),
        (Decimal("1E+25"), b"10000000000000000000000000"),
        (Decimal("1.50"), b"1.5"),
        (Decimal("-0.000001"), b"-0.000001"),
        (Decimal("1E-7"), b"1e-7"),
        (Decimal("123.456E+30"), b"123456000000000000000000000000000"),
        (Decimal("-1.5E-30"), b"-1.5e-30"),
        (Decimal("0.10000000000000000001"), b"0.10000000000000000001"),
    ],
)
def test_decimals_are_numbers_with_all_their_digits(value: Decimal, expected: bytes) -> None:
    assert canonical_json({"n": value}) == b'{"n":' + expected + b"}"


@pytest.mark.parametrize("number", [0.1, 1.5, -2.25e-9, 1.5e-300, 123456.789])
def test_a_decimal_keys_as_the_float_it_spells(number: float) -> None:
    assert canonical_json(Decimal(repr(number))) == canonical_json(number)


@pytest.mark.parametrize("value", [Decimal("NaN"), Decimal("Infinity"), Decimal("-sNaN")])
def test_decimals_without_a_json_form_are_refused(value: Decimal) -> None:
    with pytest.raises(ValueError, match="not a JSON number"):
        canonical_json(value)


def test_powertools_exception_names_catch_ours() -> None:
    unavailable = IdempotencyUnavailableError("down")
    assert isinstance(unavailable, lambda_adapter.IdempotencyPersistenceLayerError)
    assert isinstance(unavailable, lambda_adapter.IdempotencyPersistenceConnectionError)
    assert issubclass(lambda_adapter.IdempotencyResultNotStoredError, IdempotencyError)
    for name in lambda_adapter.__all__:
        if name.endswith("Error"):
            assert issubclass(getattr(lambda_adapter, name), IdempotencyError), name


@pytest.mark.parametrize(
    "options",
    [{"claim_time_share": 0}, {"claim_time_share": 1.5}, {"wait_for_result_ms": -1}],
    ids=repr,
)
def test_new_config_options_are_checked(options: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=next(iter(options))):
        IdempotencyConfig(**options)


@pytest.mark.parametrize("prefix", ["", "has space", "a#b", "x" * 191])
def test_a_key_prefix_outside_the_key_alphabet_is_refused(prefix: str) -> None:
    store = GatewayPersistenceLayer(url="http://127.0.0.1:9", namespace="n")
    with pytest.raises(ValueError, match="key_prefix"):
        lambda_adapter.idempotent(persistence_store=store, key_prefix=prefix)(lambda e, c: None)


def test_the_powertools_store_name_maps_its_table_to_a_namespace(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("IDEMGATE_URL", "http://gateway.internal:8080")
    monkeypatch.delenv("IDEMGATE_NAMESPACE", raising=False)
    store = lambda_adapter.DynamoDBPersistenceLayer("IdempotencyTable", "id", None, "sk")
    assert (store.namespace, store.url) == ("IdempotencyTable", "http://gateway.internal:8080")
    monkeypatch.setenv("IDEMGATE_NAMESPACE", "orders")
    assert lambda_adapter.DynamoDBPersistenceLayer(table_name="t").namespace == "orders"


@pytest.mark.parametrize(
    "data",
    [{"order_id": "o-1"}, {"order_id": None}, {"other": 1}, {}, [1, 2], "order_id", 7, None],
)
def test_a_lone_field_expression_finds_what_jmespath_finds(data: Any) -> None:
    assert Expression("order_id", None).search(data) == jmespath.search("order_id", data)


def _written(value: Any) -> bytes:
    parts: list[str] = []
    _canonical._write(value, parts)
    return "".join(parts).encode()


_TRICKY_TEXT = st.text(
    st.one_of(
        st.characters(exclude_categories=["Cs"]),
        st.sampled_from('"\\/\x00\x1f\x7f\u2028\u2029\ud800\udfff\ue000\uffff\U00010000\U0010ffff'),
    )
)
# Keys whose UTF-16 order (JCS) and code point order (Python) differ.
_ORDER_SENSITIVE_KEYS = st.text(st.sampled_from("a\ue000\uffff\U00010000\U0010ffff"), max_size=3)
_JSON_LIKE = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(2**200), max_value=2**200)
    | st.floats()
    | _TRICKY_TEXT,
    lambda children: (
        st.lists(children, max_size=5)
        | st.tuples(children, children)
        | st.dictionaries(_TRICKY_TEXT, children, max_size=5)
        | st.dictionaries(_ORDER_SENSITIVE_KEYS, children, max_size=4)
        | st.dictionaries(st.integers() | st.booleans() | st.none(), children, max_size=2)
    ),
    max_leaves=20,
)


@settings(max_examples=1000, deadline=None)
@given(_JSON_LIKE)
def test_the_fast_path_writes_what_the_canonical_writer_writes(value: Any) -> None:
    # Any difference would change idempotency keys: same bytes, or the same exception.
    try:
        expected: bytes | type[Exception] = _written(value)
    except (TypeError, ValueError) as exc:
        expected = type(exc)
    try:
        actual: bytes | type[Exception] = canonical_json(value)
    except (TypeError, ValueError) as exc:
        actual = type(exc)
    assert actual == expected


@pytest.mark.parametrize("depth", [2, 300, 600])
def test_deep_nesting_is_written_as_the_canonical_writer_writes_it(depth: int) -> None:
    nested_list: Any = []
    nested_dict: Any = {}
    for _ in range(depth):
        nested_list, nested_dict = [nested_list], {"a": nested_dict}
    assert canonical_json(nested_list) == _written(nested_list)
    assert canonical_json(nested_dict) == _written(nested_dict)
