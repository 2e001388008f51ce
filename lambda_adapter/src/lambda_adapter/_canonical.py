"""Canonical JSON: one byte string per JSON value, reproducible in any language.

The rules are RFC 8785 (JCS), so Node's and Java's JCS libraries agree with it, plus two
extensions: integers too large for a double keep all their digits instead of being rounded (two
distinct order numbers must never share an idempotency key), and a ``Decimal`` is the number it
spells, with all its digits. docs/lambda-adapter.md states the
rules; docs/canonical-json-vectors.json holds the vectors every client is tested against.
"""

from __future__ import annotations

import hashlib
import math
import re
from json.encoder import JSONEncoder, encode_basestring
from typing import Any

__all__ = ["canonical_json", "sha256_hex"]

_SURROGATE = re.compile("[\ud800-\udfff]")


# json's C encoder writes strings, integers, booleans and null exactly as ``_write`` does, and
# orders keys alike while no key holds a character beyond U+FFFF. It writes floats otherwise
# (1.0, 1e-07) and turns non-string keys into strings, so ``_plain`` keeps those out.
_ENCODER = JSONEncoder(ensure_ascii=False, allow_nan=False, sort_keys=True, separators=(",", ":"))
_PLAIN_SCALARS = frozenset({str, int, bool, type(None)})
_CONTAINERS = frozenset({list, tuple})


def canonical_json(value: Any) -> bytes:
    """The canonical UTF-8 bytes of ``value``: TypeError for non-JSON types, ValueError for NaN."""
    is_str = type(value) is str
    try:
        if is_str or _plain(value):
            return (encode_basestring(value) if is_str else _ENCODER.encode(value)).encode()
    except UnicodeEncodeError:
        pass  # a lone surrogate, which ``_write`` escapes
    except RecursionError:
        pass  # deep nesting: ``_write`` alone decides whether it is too deep
    parts: list[str] = []
    _write(value, parts)
    return "".join(parts).encode()


def sha256_hex(value: Any) -> str:
    return hashlib.sha256(canonical_json(value)).hexdigest()


def _plain(value: Any) -> bool:
    """Whether ``value`` holds only exact dicts with BMP string keys, lists, tuples and
    non-float scalars: the values json's encoder writes canonically."""
    kind = type(value)
    if kind is dict:
        for key, item in value.items():
            if type(key) is not str or (not key.isascii() and max(key) > "\uffff"):
                return False
            if type(item) not in _PLAIN_SCALARS and not _plain(item):
                return False
        return True
    if kind in _CONTAINERS:
        # A loop rather than all() over a generator: one frame per level, as in ``_write``.
        for item in value:  # noqa: SIM110
            if type(item) not in _PLAIN_SCALARS and not _plain(item):
                return False
        return True
    return kind in _PLAIN_SCALARS


def _write(value: Any, parts: list[str]) -> None:
    # bool before int: True is an int in Python.
    if value is None:
        parts.append("null")
    elif value is True:
        parts.append("true")
    elif value is False:
        parts.append("false")
    elif isinstance(value, str):
        parts.append(_string(value))
    elif isinstance(value, int):
        parts.append(str(int(value)))
    elif isinstance(value, float):
        parts.append(_number(value))
    elif isinstance(value, dict):
        parts.append("{")
        for index, key in enumerate(sorted(value, key=_utf16_order)):
            if not isinstance(key, str):
                raise TypeError(f"object keys must be strings, not {type(key).__name__}")
            parts.append("," if index else "")
            parts.append(_string(key))
            parts.append(":")
            _write(value[key], parts)
        parts.append("}")
    elif isinstance(value, list | tuple):
        parts.append("[")
        for index, item in enumerate(value):
            parts.append("," if index else "")
            _write(item, parts)
        parts.append("]")
    else:
        parts.append(_decimal(value))


def _decimal(value: Any) -> str:
    """A ``Decimal`` (boto3's DynamoDB numbers) as the number it is, keeping all its digits."""
    # Imported here: decimal is only needed for the odd key, not at every cold start.
    from decimal import Decimal

    if not isinstance(value, Decimal):
        raise TypeError(f"{type(value).__name__} is not a JSON value")
    if not value.is_finite():
        raise ValueError(f"{value} is not a JSON number")
    if value == value.to_integral_value():
        return str(int(value))  # as an int: Decimal(10) and 10 are one key
    sign, digit_tuple, exponent = value.as_tuple()
    digits = "".join(map(str, digit_tuple))
    # value = 0.DIGITS x 10**point, as in _number
    point = len(digits) + int(exponent)
    stripped = digits.lstrip("0")
    point -= len(digits) - len(stripped)
    return _format("-" if sign else "", stripped.rstrip("0"), point)


def _utf16_order(key: object) -> bytes:
    # JCS sorts by UTF-16 code units, as JavaScript does; Python's str order is by code point,
    # which differs once a key holds characters beyond U+FFFF.
    return key.encode("utf-16-be", "surrogatepass") if isinstance(key, str) else b""


def _string(text: str) -> str:
    quoted: str = encode_basestring(text)
    if text.isascii() or not _SURROGATE.search(quoted):
        return quoted
    # A lone surrogate cannot be UTF-8; JSON.stringify writes it as an escape.
    return _SURROGATE.sub(lambda match: f"\\u{ord(match.group()):04x}", quoted)


def _number(value: float) -> str:
    """ECMAScript's Number::toString, from the same shortest round-trip digits as repr()."""
    if not math.isfinite(value):
        raise ValueError(f"{value} is not a JSON number")
    if value == 0:
        return "0"  # also -0.0
    mantissa, _, exponent = repr(abs(value)).partition("e")
    whole, _, fraction = mantissa.partition(".")
    digits = (whole + fraction).lstrip("0")
    # value = 0.DIGITS x 10**point
    point = len(whole) + int(exponent or 0) - (len(whole + fraction) - len(digits))
    return _format("-" if value < 0 else "", digits.rstrip("0"), point)


def _format(sign: str, digits: str, point: int) -> str:
    """ECMAScript's layout of the number ``sign`` 0.``digits`` x 10**``point``."""
    count = len(digits)
    if count <= point <= 21:
        return sign + digits + "0" * (point - count)
    if 0 < point <= 21:
        return sign + digits[:point] + "." + digits[point:]
    if -6 < point <= 0:
        return sign + "0." + "0" * -point + digits
    power = point - 1
    fraction_part = "." + digits[1:] if count > 1 else ""
    return f"{sign}{digits[0]}{fraction_part}e{'+' if power > 0 else '-'}{abs(power)}"
