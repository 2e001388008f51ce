"""FastAPI dependencies, declared ``async`` so resolving them never costs a thread hop."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from idemgate._records import RecordService
from idemgate._settings import Settings

__all__ = ["RecordsDep", "SettingsDep", "get_records", "get_settings"]


async def get_settings(request: Request) -> Settings:
    """The settings the app was created with; tests may override this dependency."""
    settings: Settings = request.app.state.settings
    return settings


async def get_records(request: Request) -> RecordService:
    records: RecordService = request.app.state.records
    return records


SettingsDep = Annotated[Settings, Depends(get_settings)]
RecordsDep = Annotated[RecordService, Depends(get_records)]
