"""FastAPI dependencies, declared ``async`` so resolving them never costs a thread hop."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from idemgate._records import RecordService
from idemgate._settings import Settings, load_settings

__all__ = ["RecordsDep", "SettingsDep", "get_records", "get_settings"]


async def get_settings() -> Settings:
    """The gateway's settings; tests override this dependency."""
    return load_settings()


async def get_records(request: Request) -> RecordService:
    records: RecordService = request.app.state.records
    return records


SettingsDep = Annotated[Settings, Depends(get_settings)]
RecordsDep = Annotated[RecordService, Depends(get_records)]
