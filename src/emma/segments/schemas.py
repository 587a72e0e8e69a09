"""Request and response bodies of the segments API."""

from __future__ import annotations

import datetime as dt
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from emma.segments import rules
from emma.segments.exceptions import InvalidRule


def _valid_rule(rule: dict[str, Any]) -> dict[str, Any]:
    try:
        rules.parse(rule)
    except InvalidRule as exc:
        raise ValueError(str(exc)) from exc
    return rule


class SegmentIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    key: str = Field(min_length=1, max_length=64, pattern=r"^[a-z0-9][a-z0-9_-]*$")
    name: str | None = Field(default=None, max_length=255)
    description: str | None = None
    rule: dict[str, Any]
    active: bool = True

    _rule = field_validator("rule")(_valid_rule)


class SegmentPatch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(default=None, max_length=255)
    description: str | None = None
    rule: dict[str, Any] | None = None
    active: bool | None = None

    @field_validator("rule")
    @classmethod
    def _rule(cls, v: dict[str, Any] | None) -> dict[str, Any] | None:
        return None if v is None else _valid_rule(v)


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
