"""The records lane's fast JSON path parses a body exactly as the standard library path does,
or leaves it to that path: same value (types included), same refusal."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from idemgate._exceptions import InvalidRequestError
from idemgate._routers.records import _parse_json, _parse_json_exactly


def _outcome(parse: Any, raw: bytes) -> tuple[str, str]:
    try:
        return "value", repr(parse(raw))
    except InvalidRequestError as refused:
        return "refused", refused.detail


def _same(raw: bytes) -> None:
    assert _outcome(_parse_json, raw) == _outcome(_parse_json_exactly, raw)


scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=8),
)
members = st.lists(st.tuples(st.text(max_size=6), scalars), max_size=5)


def _object(pairs: list[tuple[str, Any]], ascii_only: bool, spaced: bool) -> bytes:
    separator = ", " if spaced else ","
    inner = separator.join(
        f"{json.dumps(name, ensure_ascii=ascii_only)}:{json.dumps(value, ensure_ascii=ascii_only)}"
        for name, value in pairs
    )
    return ("{" + inner + "}").encode()


@settings(max_examples=400, deadline=None)
@given(members, st.booleans(), st.booleans())
def test_objects_of_scalars_parse_alike(
    pairs: list[tuple[str, Any]], ascii_only: bool, spaced: bool
) -> None:
    _same(_object(pairs, ascii_only, spaced))


@settings(max_examples=200, deadline=None)
@given(members.filter(bool), st.booleans())
def test_repeated_members_are_refused_alike(pairs: list[tuple[str, Any]], ascii_only: bool) -> None:
    _same(_object([*pairs, pairs[0]], ascii_only, spaced=False))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=40))
def test_any_bytes_parse_or_fail_alike(raw: bytes) -> None:
    _same(raw)


@pytest.mark.parametrize(
    "raw",
    [
        b'{"lease_ms":60000,"ttl_s":86400}',
        b'{"a":1,"a":1}',
        b'{"a":"x","a":"x"}',
        b'{"a":"\\"","b":1}',
        b'{"a":"\\ud800"}',
        b'{"a":1e400}',
        b'{"a":NaN}',
        b'{"a":123456789012345678901234567890}',
        b'{"a":{"b":1}}',
        b'{"a":[1,2]}',
        b'{"\xc3\xa9":"\xe2\x82\xac"}',
        b'{"a":"\xff"}',
        b'  {"a" : true , "b" : null}  ',
        b"[]",
        b'"text"',
        b"{}",
    ],
)
def test_known_edges_parse_alike(raw: bytes) -> None:
    _same(raw)
