"""Stores, stock rows and scheduled events as they come in (API, CLI import) and go out."""

from __future__ import annotations

import datetime as dt

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


class StoreIn(_In):
    store_id: str = Field(min_length=1, max_length=128)
    name: str = Field(min_length=1, max_length=255)
    street: str | None = Field(default=None, max_length=255)
    postal_code: str | None = Field(default=None, max_length=32)
    city: str | None = Field(default=None, max_length=255)
    country: str | None = Field(default=None, pattern=r"^[A-Za-z]{2}$")
    lat: float | None = Field(default=None, ge=-90, le=90)
    lon: float | None = Field(default=None, ge=-180, le=180)
    opens_on: dt.date | None = None
    active: bool = True
    stock: dict[str, int] | None = None  # sku -> quantity; replaces the listed skus' quantities

    @field_validator("country")
    @classmethod
    def _upper(cls, v: str | None) -> str | None:
        return v.upper() if v else v

    @field_validator("stock")
    @classmethod
    def _stock(cls, v: dict[str, int] | None) -> dict[str, int] | None:
        for sku, q in (v or {}).items():
            if not sku or len(sku) > 128:
                raise ValueError(f"sku {sku!r} must have 1 to 128 characters")
            if q < 0:
                raise ValueError(f"quantity of {sku} cannot be negative ({q})")
        return v

    @model_validator(mode="after")
    def _where(self) -> StoreIn:
        if (self.lat is None) != (self.lon is None):
            raise ValueError("lat and lon go together: give both or neither")
        if self.lat is None and not self.postal_code:
            raise ValueError("a store needs coordinates (lat, lon) or a postal_code to find customers nearby")
        return self


class StockIn(_In):
    store_id: str = Field(min_length=1, max_length=128)
    sku: str = Field(min_length=1, max_length=128)
    quantity: int = Field(ge=0)


class EventIn(_In):
    event_id: str = Field(min_length=1, max_length=128)
    name: str = Field(min_length=1, max_length=255)
    description: str | None = None
    starts_at: dt.datetime
    ends_at: dt.datetime | None = None
    store_id: str | None = Field(default=None, max_length=128)  # held at this store (its address and location)
    location: str | None = Field(default=None, max_length=512)
    postal_code: str | None = Field(default=None, max_length=32)
    city: str | None = Field(default=None, max_length=255)
    country: str | None = Field(default=None, pattern=r"^[A-Za-z]{2}$")
    lat: float | None = Field(default=None, ge=-90, le=90)
    lon: float | None = Field(default=None, ge=-180, le=180)

    @field_validator("starts_at", "ends_at")
    @classmethod
    def _aware(cls, v: dt.datetime | None) -> dt.datetime | None:
        return v.replace(tzinfo=dt.UTC) if v is not None and v.tzinfo is None else v

    @model_validator(mode="after")
    def _where(self) -> EventIn:
        if (self.lat is None) != (self.lon is None):
            raise ValueError("lat and lon go together: give both or neither")
        if self.lat is None and not self.postal_code and not self.store_id:
            raise ValueError("an event needs a store_id, coordinates (lat, lon) or a postal_code")
        if self.ends_at is not None and self.ends_at < self.starts_at:
            raise ValueError("ends_at lies before starts_at")
        return self


class RowError(BaseModel):
    index: int  # position of the row in the batch (0-based)
    field: str
    reason: str


class UpsertResult(BaseModel):
    created: int = 0
    updated: int = 0
    unchanged: int = 0
    rejected: list[RowError] = []


class StoreOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    store_id: str
    name: str
    street: str | None
    postal_code: str | None
    city: str | None
    country: str | None
    lat: float | None
    lon: float | None
    opens_on: dt.date | None
    active: bool


class StoreDetail(StoreOut):
    stock: dict[str, int]


class EventOut(BaseModel):
    event_id: str
    name: str
    description: str | None
    starts_at: dt.datetime
    ends_at: dt.datetime | None
    store_id: str | None
    location: str | None
    postal_code: str | None
    city: str | None
    lat: float | None
    lon: float | None


class NearbyOut(BaseModel):
    store_id: str
    radius_km: float
    customers: int
    by_coordinates: int
    by_postal_code: int
