"""Segment-spec messages: validation with errors that name the field path and the reason."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

MESSAGE_TYPES = ("track", "identify", "page", "screen", "alias", "group")
ORDER_STATUS_EVENTS = {"Order Updated": None, "Order Shipped": "shipped", "Order Delivered": "delivered",
                       "Order Cancelled": "cancelled", "Order Refunded": "refunded", "Order Returned": "returned"}
PRODUCT_EVENTS = {"Product Viewed", "Product Clicked", "Product Added", "Product Removed",
                  "Product Added to Wishlist", "Product Removed from Wishlist", "Product Reviewed",
                  "Product Shared"}


class FieldError(BaseModel):
    field: str
    reason: str


def _to_str(v: Any) -> Any:
    # Segment libraries send numeric user ids as numbers; ids are strings to us.
    if isinstance(v, bool):
        return v
    if isinstance(v, int | float):
        return str(int(v)) if float(v).is_integer() else str(v)
    return v


class Message(BaseModel):
    """One Segment message (track, identify, page, screen, alias, group). Unknown fields are kept."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)

    type: Literal["track", "identify", "page", "screen", "alias", "group"]
    userId: str | None = Field(default=None, max_length=255)
    anonymousId: str | None = Field(default=None, max_length=255)
    previousId: str | None = Field(default=None, max_length=255)
    groupId: str | None = Field(default=None, max_length=255)
    messageId: str | None = Field(default=None, max_length=255)
    event: str | None = Field(default=None, max_length=255)
    name: str | None = Field(default=None, max_length=255)
    category: str | None = Field(default=None, max_length=255)
    properties: dict[str, Any] = Field(default_factory=dict)
    traits: dict[str, Any] = Field(default_factory=dict)
    context: dict[str, Any] = Field(default_factory=dict)
    integrations: dict[str, Any] = Field(default_factory=dict)
    timestamp: dt.datetime | None = None
    originalTimestamp: dt.datetime | None = None
    sentAt: dt.datetime | None = None

    @field_validator("userId", "anonymousId", "previousId", "groupId", "messageId", mode="before")
    @classmethod
    def _ids(cls, v: Any) -> Any:
        v = _to_str(v)
        if isinstance(v, str) and not v.strip():
            return None
        return v

    @field_validator("timestamp", "originalTimestamp", "sentAt")
    @classmethod
    def _aware(cls, v: dt.datetime | None) -> dt.datetime | None:
        if v is not None and v.tzinfo is None:
            return v.replace(tzinfo=dt.UTC)  # ISO 8601 without offset: UTC, as Segment assumes
        return v

    @model_validator(mode="after")
    def _shape(self) -> Message:
        if self.type == "alias":
            if not self.previousId:
                raise ValueError("previousId: required for alias")
            if not self.userId:
                raise ValueError("userId: required for alias")
        elif not self.userId and not self.anonymousId:
            raise ValueError("userId: userId or anonymousId is required")
        if self.type == "track" and not (self.event and self.event.strip()):
            raise ValueError("event: required for track and must not be empty")
        if self.type == "group" and not self.groupId:
            raise ValueError("groupId: required for group")
        return self


# What the tables hold (orders.models, profiles.models): longer ids and larger amounts are rejected here, with
# the field, instead of failing the whole batch in the database (PostgreSQL enforces lengths, SQLite does not).
ID_LENGTH = 128
MAX_PRICE = 9_999_999_999.99  # Numeric(12, 2)
MAX_AMOUNT = 999_999_999_999.99  # Numeric(14, 2)
MAX_QUANTITY = 2**31 - 1
TRAIT_LENGTHS = {"email": 320, "phone": 64, "firstName": 255, "first_name": 255, "lastName": 255,
                 "last_name": 255, "locale": 16, "timezone": 64}
ADDRESS_LENGTHS = {"postalCode": 32, "postal_code": 32, "city": 255}
COORDINATES = ("lat", "lon", "latitude", "longitude")


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _id_errors(props: dict[str, Any], path: str, keys: tuple[str, ...]) -> list[FieldError]:
    return [FieldError(field=f"{path}.{k}", reason=f"must be at most {ID_LENGTH} characters")
            for k in keys if props.get(k) is not None and len(str(props[k])) > ID_LENGTH]


def _product_errors(p: Any, path: str, *, need_price: bool = False) -> list[FieldError]:
    if not isinstance(p, dict):
        return [FieldError(field=path, reason="must be an object")]
    errs: list[FieldError] = []
    if not (p.get("sku") or p.get("product_id")):
        errs.append(FieldError(field=f"{path}.sku", reason="sku or product_id is required"))
    elif len(str(p.get("sku") or p.get("product_id"))) > ID_LENGTH:
        errs.append(FieldError(field=f"{path}.sku", reason=f"must be at most {ID_LENGTH} characters"))
    q = p.get("quantity", 1)
    if not (isinstance(q, int) and not isinstance(q, bool) and 1 <= q <= MAX_QUANTITY):
        errs.append(FieldError(field=f"{path}.quantity", reason=f"must be a whole number from 1 to {MAX_QUANTITY}"))
    if "price" in p and p["price"] is not None and not (_is_number(p["price"]) and 0 <= p["price"] <= MAX_PRICE):
        errs.append(FieldError(field=f"{path}.price", reason=f"must be a number from 0 to {MAX_PRICE:.2f}"))
    if need_price and p.get("price") is None:
        errs.append(FieldError(field=f"{path}.price", reason="is required for order lines"))
    return errs


def ecommerce_errors(msg: Message) -> list[FieldError]:
    """Shape checks for the Segment Ecommerce v2 events whose properties update carts, orders, wishlists."""
    if msg.type != "track":
        return []
    name, props = msg.event, msg.properties
    if name in PRODUCT_EVENTS:
        return _product_errors(props, "properties") + _id_errors(props, "properties", ("cart_id",))
    if name in ("Checkout Started", "Cart Viewed"):
        return _id_errors(props, "properties", ("cart_id",))
    if name == "Order Completed":
        errs: list[FieldError] = _id_errors(props, "properties", ("order_id", "cart_id", "coupon"))
        if not props.get("order_id"):
            errs.append(FieldError(field="properties.order_id", reason="is required for Order Completed"))
        currency = props.get("currency")
        if currency is not None and not (isinstance(currency, str) and len(currency) == 3):
            errs.append(FieldError(field="properties.currency", reason="must be a three-letter ISO 4217 code"))
        products = props.get("products", [])
        if not isinstance(products, list):
            errs.append(FieldError(field="properties.products", reason="must be a list"))
        else:
            for i, p in enumerate(products):
                errs += _product_errors(p, f"properties.products[{i}]", need_price=True)
        for key in ("revenue", "total", "discount", "shipping", "tax"):
            if props.get(key) is not None and not (_is_number(props[key]) and abs(props[key]) <= MAX_AMOUNT):
                errs.append(FieldError(field=f"properties.{key}",
                                       reason=f"must be a number of at most {MAX_AMOUNT:.2f}"))
        return errs
    if name in ORDER_STATUS_EVENTS:
        errs = _id_errors(props, "properties", ("order_id",))
        if props.get("status") is not None and len(str(props["status"])) > 32:
            errs.append(FieldError(field="properties.status", reason="must be at most 32 characters"))
        if not props.get("order_id"):
            errs.append(FieldError(field="properties.order_id", reason=f"is required for {name}"))
        if name == "Order Updated" and not props.get("status"):
            errs.append(FieldError(field="properties.status", reason="is required for Order Updated"))
        return errs
    return []


def trait_errors(msg: Message) -> list[FieldError]:
    """Traits that become profile fields must fit them: text lengths, a real date, numeric coordinates."""
    if msg.type != "identify":
        return []
    errs: list[FieldError] = []
    values = [(f"traits.{k}", k, v) for k, v in msg.traits.items()]
    values += [(f"context.{k}", k, msg.context[k]) for k in ("locale", "timezone")
               if k in msg.context and k not in msg.traits]
    address = msg.traits.get("address")
    if isinstance(address, dict):
        values += [(f"traits.address.{k}", k, v) for k, v in address.items()]
    for field, key, value in values:
        if value is None:
            continue
        limit = TRAIT_LENGTHS.get(key) if not field.startswith("traits.address.") else ADDRESS_LENGTHS.get(key)
        if limit is not None:
            if key == "email" and not isinstance(value, str):
                errs.append(FieldError(field=field, reason="must be a string"))
            elif len(str(value)) > limit:
                errs.append(FieldError(field=field, reason=f"must be at most {limit} characters"))
        elif key == "birthday" and field == "traits.birthday":
            try:
                dt.date.fromisoformat(str(value)[:10])
            except ValueError:
                errs.append(FieldError(field=field, reason="must be a date (YYYY-MM-DD)"))
        elif key in COORDINATES and field.startswith("traits.address."):
            try:
                float(value)
            except (TypeError, ValueError):
                errs.append(FieldError(field=field, reason="must be a number"))
    return errs


def validation_errors(exc: ValidationError, prefix: str = "") -> list[FieldError]:
    """Pydantic errors as (field path, reason) pairs."""
    out = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"])
        reason = err["msg"]
        if reason.startswith("Value error, "):
            # our model validators say "field: reason"
            field, _, reason = reason[len("Value error, "):].partition(": ")
            loc = field if not loc else f"{loc}.{field}"
        out.append(FieldError(field=f"{prefix}{loc}" if loc else prefix.rstrip("."), reason=reason))
    return out


def derived_message_id(raw: dict[str, Any]) -> str:
    """A stable id for a message that came without one, so that a resend is still recognised."""
    blob = json.dumps(raw, sort_keys=True, separators=(",", ":"), default=str)
    return "h-" + hashlib.sha256(blob.encode()).hexdigest()[:40]


class Rejected(BaseModel):
    index: int
    errors: list[FieldError]


class IngestResult(BaseModel):
    success: bool = True
    accepted: int = 0
    duplicates: int = 0
    rejected: list[Rejected] = Field(default_factory=list)
    warnings: list[str] = Field(default_factory=list)
    # For the bulk import, which reports them per file rather than per chunk; not part of the response.
    unknown_skus: set[str] = Field(default_factory=set, exclude=True)
    conflicts: int = Field(default=0, exclude=True)
