"""The transport's response-head parser against h11's, on generated heads.

The parser is hand-written for speed (``_transport._ResponseHead``); h11 is the reference. It may
refuse more than h11 does (other HTTP versions, control characters, obsolete line folding; both
framings at once are refused when the body is read), never less, and whatever it accepts it must
read as h11 reads it.
"""

from __future__ import annotations

import h11
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from lambda_adapter._exceptions import RemoteProtocolError
from lambda_adapter._transport import _ResponseHead

TOKEN_CHARACTERS = "!#$%&'*+-.^_`|~0123456789abcxyzABCXYZ"
NAMES = st.one_of(
    st.sampled_from(["Content-Length", "Transfer-Encoding", "Connection", "X-Request-Id"]),
    st.text(TOKEN_CHARACTERS, min_size=1, max_size=8),
)
# Visible characters and obs-text (0x80-0xFF): DEL is the one control character in between.
VISIBLE = st.text(
    st.characters(min_codepoint=0x21, max_codepoint=0xFF).filter(lambda c: c != "\x7f"),
    min_size=1,
    max_size=6,
)
VALUES = st.lists(
    st.one_of(VISIBLE, st.sampled_from(["7", "0", "chunked", "close", "keep-alive", ", "])),
    max_size=3,
).map(" ".join)


def _h11_reading(head: bytes) -> h11.Response | h11.InformationalResponse | None:
    """What h11 reads from ``head`` as the answer to a GET; None where it refuses it."""
    connection = h11.Connection(h11.CLIENT)
    connection.send(h11.Request(method="GET", target="/", headers=[("Host", "gateway")]))
    connection.receive_data(head + b"\r\n\r\n")
    try:
        event = connection.next_event()
    except h11.RemoteProtocolError:
        return None
    assert isinstance(event, h11.Response | h11.InformationalResponse)
    return event


def _ours(head: bytes) -> _ResponseHead | None:
    try:
        return _ResponseHead(head)
    except RemoteProtocolError:
        return None


def _agree(head: bytes) -> None:
    """Where ours accepts ``head``, h11 does, with the same status, reason and fields."""
    ours, reference = _ours(head), _h11_reading(head)
    if ours is None:
        return
    assert reference is not None, head
    assert (ours.status, ours.reason.encode("latin-1")) == (
        reference.status_code,
        reference.reason,
    )
    assert ours.version.encode() == b"HTTP/" + reference.http_version
    theirs = [(name.decode(), value.decode("latin-1")) for name, value in reference.headers]
    mine = [(name.lower(), value) for name, value in ours.fields]
    # h11 keeps one Content-Length of several equal ones, and writes it as one number.
    assert [f for f in mine if f[0] != "content-length"] == [
        f for f in theirs if f[0] != "content-length"
    ]
    lengths = [int(value) for name, value in theirs if name == "content-length"]
    assert ours.content_length == (lengths[0] if lengths else None)
    assert ours.chunked == ("transfer-encoding" in dict(theirs))
    if ours.version == "HTTP/1.1":  # h11 never keeps an HTTP/1.0 connection
        closes = any(
            option.strip().lower() == "close"
            for name, value in theirs
            if name == "connection"
            for option in value.split(",")
        )
        assert ours.keep_alive is not closes


@settings(max_examples=400, deadline=None)
@given(
    status=st.sampled_from(
        ["HTTP/1.1 200 OK", "HTTP/1.0 204", "HTTP/1.1 103 ", "HTTP/1.1 409 In Progress"]
    ),
    fields=st.lists(
        st.tuples(
            NAMES,
            st.sampled_from([":", ": ", ":\t", ":  "]),
            VALUES,
            st.sampled_from(["", " ", "\t"]),
        ),
        max_size=5,
    ),
)
def test_well_formed_heads_are_read_as_h11_reads_them(
    status: str, fields: list[tuple[str, str, str, str]]
) -> None:
    head = "\r\n".join(
        [status, *(name + colon + value + blank for name, colon, value, blank in fields)]
    )
    raw = head.encode("latin-1")
    if _h11_reading(raw) is not None and not _both_framings(fields):
        assert _ours(raw) is not None, raw
    _agree(raw)


def _both_framings(fields: list[tuple[str, str, str, str]]) -> bool:
    names = {name.lower() for name, *_ in fields}
    return {"content-length", "transfer-encoding"} <= names


@settings(max_examples=600, deadline=None)
@given(head=st.binary(max_size=80).map(lambda tail: b"HTTP/1.1 200 OK\r\n" + tail))
@example(head=b"HTTP/1.1 200 OK\r\nA: b\nC: d")
@example(head=b"HTTP/1.1 200 OK\r\nA: b\rC: d")
@example(head=b"HTTP/1.1 200 OK\r\nA: b\x00c")
@example(head=b"HTTP/1.1 200 OK\r\n folded: x")
@example(head=b"HTTP/1.1 200 OK\r\nContent-Length: 2, 2")
@example(head=b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3")
def test_any_bytes_ours_accepts_h11_accepts_alike(head: bytes) -> None:
    _agree(head)


@pytest.mark.parametrize(
    "head",
    [
        b"HTTP/2 200 OK",
        b"HTTP/1.1 200 OK\r\nA: b\x01c",
        b"HTTP/1.1 200 OK\r\nA: b\r\n c",
    ],
    ids=["http-2", "control-character", "obsolete-fold"],
)
def test_what_ours_refuses_beyond_h11(head: bytes) -> None:
    assert _ours(head) is None
