"""What request handlers take from the app: its records service and its settings."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from idemgate._records import RecordService
from idemgate._settings import Settings

__all__ = ["RecordsDep", "get_records", "records_of", "settings_of"]


def records_of(request: Request) -> RecordService:
    records: RecordService = request.app.records
    return records


def settings_of(request: Request) -> Settings:
    settings: Settings = request.app.settings
    return settings


async def get_records(request: Request) -> RecordService:
    """``records_of`` as a dependency, declared ``async`` so it never costs a thread hop."""
    return records_of(request)


RecordsDep = Annotated[RecordService, Depends(get_records)]
