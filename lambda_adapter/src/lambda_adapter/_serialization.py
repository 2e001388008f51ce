"""Results as stored JSON, and the output serializers of ``idempotent_function``.

A result is stored as compact UTF-8 JSON, its size counted in those bytes, as the gateway counts
it. The types Powertools' encoder stores are stored the same way here: a ``Decimal`` (what
boto3's DynamoDB resource returns for numbers) as its string, a dataclass as ``asdict``, a
pydantic model as ``model_dump(mode="json")``; so are ``datetime``, ``date`` and ``time``, as ISO
8601 text. A replay returns the stored JSON value, passed through the output serializer's
``from_dict`` when there is one.

A result that cannot be stored (not JSON, or too large) leaves a marker in its place, so the
record still completes and a duplicate never runs the work again: ``{NOT_STORED_KEY: {...}}``.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import typing
from abc import ABC, abstractmethod
from collections.abc import Callable
from types import UnionType
from typing import Any

from ._exceptions import IdempotencyModelTypeError, IdempotencyNoSerializationModelError

__all__ = [
    "NOT_STORED_KEY",
    "BaseIdempotencyModelSerializer",
    "BaseIdempotencySerializer",
    "CustomDictSerializer",
    "DataclassSerializer",
    "NoOpSerializer",
    "PydanticSerializer",
    "encode_result",
    "not_stored_marker",
    "not_stored_reason",
    "resolve_serializer",
]

NOT_STORED_KEY = "idemgate:result_not_stored"


def _stored_form(value: Any) -> Any:
    # Imported here: decimal is only needed for the odd result, not at every cold start.
    from decimal import Decimal

    if isinstance(value, Decimal):
        return float("nan") if value.is_nan() else str(value)
    if callable(getattr(value, "model_dump", None)):  # a pydantic model, without importing it
        return value.model_dump(mode="json")
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if isinstance(value, datetime.date | datetime.time):  # datetime is a date
        return value.isoformat()
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


_UTF8 = json.JSONEncoder(
    ensure_ascii=False, allow_nan=False, separators=(",", ":"), default=_stored_form
)
_ASCII = json.JSONEncoder(allow_nan=False, separators=(",", ":"), default=_stored_form)


def encode_result(result: Any) -> bytes:
    """Compact UTF-8 JSON; TypeError or ValueError when ``result`` has no JSON form."""
    text = _UTF8.encode(result)
    try:
        return text.encode()
    except UnicodeEncodeError:
        # A lone surrogate cannot be UTF-8: escaped, it is still valid JSON (as the gateway does).
        return _ASCII.encode(result).encode()


def not_stored_marker(reason: str, size: int | None) -> bytes:
    """What a completed record holds when its result could not be kept."""
    return _ASCII.encode({NOT_STORED_KEY: {"reason": reason, "bytes": size}}).encode()


def not_stored_reason(stored: Any) -> str | None:
    """The reason, when ``stored`` is the marker; else None."""
    if type(stored) is dict and len(stored) == 1 and NOT_STORED_KEY in stored:
        details = stored[NOT_STORED_KEY]
        return str(details.get("reason")) if isinstance(details, dict) else "unknown"
    return None


class BaseIdempotencySerializer(ABC):
    """Turns a function's result into a JSON value to store, and a stored value back."""

    @abstractmethod
    def to_dict(self, data: Any) -> Any: ...

    @abstractmethod
    def from_dict(self, data: Any) -> Any: ...


class BaseIdempotencyModelSerializer(BaseIdempotencySerializer):
    """A serializer built from the decorated function's return annotation."""

    @classmethod
    @abstractmethod
    def instantiate(cls, model_type: Any) -> BaseIdempotencySerializer: ...


class NoOpSerializer(BaseIdempotencySerializer):
    def to_dict(self, data: Any) -> Any:
        return data

    def from_dict(self, data: Any) -> Any:
        return data


class CustomDictSerializer(BaseIdempotencySerializer):
    def __init__(self, to_dict: Callable[[Any], Any], from_dict: Callable[[Any], Any]) -> None:
        self._to_dict = to_dict
        self._from_dict = from_dict

    def to_dict(self, data: Any) -> Any:
        return self._to_dict(data)

    def from_dict(self, data: Any) -> Any:
        return self._from_dict(data)


class DataclassSerializer(BaseIdempotencyModelSerializer):
    def __init__(self, model: type[Any]) -> None:
        self._model = model

    def to_dict(self, data: Any) -> Any:
        return dataclasses.asdict(data)

    def from_dict(self, data: Any) -> Any:
        return self._model(**data)

    @classmethod
    def instantiate(cls, model_type: Any) -> BaseIdempotencySerializer:
        model = _single_type(model_type)
        if not (isinstance(model, type) and dataclasses.is_dataclass(model)):
            raise IdempotencyModelTypeError(f"{model!r} is not a dataclass")
        return cls(model)


class PydanticSerializer(BaseIdempotencyModelSerializer):
    """For pydantic v2 models; pydantic is the caller's dependency, never imported here."""

    def __init__(self, model: type[Any]) -> None:
        self._model = model

    def to_dict(self, data: Any) -> Any:
        return data.model_dump(mode="json")

    def from_dict(self, data: Any) -> Any:
        return self._model.model_validate(data)

    @classmethod
    def instantiate(cls, model_type: Any) -> BaseIdempotencySerializer:
        model = _single_type(model_type)
        if not (isinstance(model, type) and callable(getattr(model, "model_validate", None))):
            raise IdempotencyModelTypeError(f"{model!r} is not a pydantic model")
        return cls(model)


def _single_type(model_type: Any) -> Any:
    """``T`` from ``T``, ``T | None`` or ``Optional[T]``."""
    if model_type is None:
        raise IdempotencyNoSerializationModelError(
            "output_serializer needs the function's return annotation to know what to build"
        )
    if typing.get_origin(model_type) in (typing.Union, UnionType):
        members = [arg for arg in typing.get_args(model_type) if arg is not type(None)]
        if len(members) != 1:
            raise IdempotencyModelTypeError(f"{model_type!r} is not one type, or one or None")
        return members[0]
    return model_type


def resolve_serializer(
    serializer: BaseIdempotencySerializer | type[BaseIdempotencyModelSerializer] | None,
    function: Callable[..., Any],
) -> BaseIdempotencySerializer | None:
    """An instance for ``function``: model serializer classes are built from its return type."""
    if isinstance(serializer, type) and issubclass(serializer, BaseIdempotencyModelSerializer):
        try:
            hints = typing.get_type_hints(function)
        except (NameError, TypeError):  # an annotation that names something not importable
            hints = getattr(function, "__annotations__", {})
        return serializer.instantiate(hints.get("return"))
    return serializer
