"""JMESPath with Powertools' helper functions, so existing key expressions keep working."""

from __future__ import annotations

import base64
import gzip
import json
from typing import Any

import jmespath  # type: ignore[import-untyped,unused-ignore]
from jmespath import functions  # type: ignore[import-untyped,unused-ignore]

__all__ = ["Expression"]


class _PowertoolsFunctions(functions.Functions):  # type: ignore[misc,unused-ignore]
    @functions.signature({"types": ["string"]})  # type: ignore[untyped-decorator,unused-ignore]
    def _func_powertools_json(self, value: str) -> Any:
        return json.loads(value)

    @functions.signature({"types": ["string"]})  # type: ignore[untyped-decorator,unused-ignore]
    def _func_powertools_base64(self, value: str) -> str:
        return base64.b64decode(value).decode()

    @functions.signature({"types": ["string"]})  # type: ignore[untyped-decorator,unused-ignore]
    def _func_powertools_base64_gzip(self, value: str) -> str:
        return gzip.decompress(base64.b64decode(value)).decode()


class Expression:
    """A compiled expression; ``jmespath_options`` are ``jmespath.Options`` keywords."""

    def __init__(self, expression: str, options: dict[str, Any] | None) -> None:
        self._parsed = jmespath.compile(expression)
        self._options = jmespath.Options(
            **{"custom_functions": _PowertoolsFunctions(), **(options or {})}
        )

        tree = self._parsed.parsed
        # A lone field name, the usual key expression, is looked up as jmespath's interpreter
        # would, without building an interpreter for every search.
        self._field: str | None = tree["value"] if tree["type"] == "field" else None

    def search(self, data: Any) -> Any:
        if self._field is not None:
            try:
                return data.get(self._field)
            except AttributeError:
                return None
        return self._parsed.search(data, options=self._options)
