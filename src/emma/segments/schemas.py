"""Request and response bodies of the segments API."""

from __future__ import annotations

import datetime as dt
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

# The rule itself is validated by the service (emma.segments.rules), which names the path of every error inside
# it (rule.all[2].within_days); the router answers 400 with one entry per error.


class SegmentIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    key: str = Field(min_length=1, max_length=64, pattern=r"^[a-z0-9][a-z0-9_-]*$")
    name: str | None = Field(default=None, max_length=255)
    description: str | None = None
    rule: Any
    active: bool = True


class SegmentPatch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(default=None, max_length=255)
    description: str | None = None
    rule: Any = None
    active: bool | None = None


class SegmentOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    key: str
    name: str
    description: str | None
    rule: dict[str, Any]
    version: int
    active: bool
    created_at: dt.datetime
    updated_at: dt.datetime


class CountOut(BaseModel):
    key: str
    count: int
    at: dt.datetime


class MembersOut(BaseModel):
    key: str
    at: dt.datetime
    customer_ids: list[int]
    next_after_id: int | None
