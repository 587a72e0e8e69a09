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


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _product_errors(p: Any, path: str, *, need_price: bool = False) -> list[FieldError]:
    if not isinstance(p, dict):
        return [FieldError(field=path, reason="must be an object")]
    errs: list[FieldError] = []
    if not (p.get("sku") or p.get("product_id")):
        errs.append(FieldError(field=f"{path}.sku", reason="sku or product_id is required"))
    q = p.get("quantity", 1)
    if not (isinstance(q, int) and not isinstance(q, bool) and q >= 1):
        errs.append(FieldError(field=f"{path}.quantity", reason="must be a whole number >= 1"))
    if "price" in p and p["price"] is not None and not (_is_number(p["price"]) and p["price"] >= 0):
        errs.append(FieldError(field=f"{path}.price", reason="must be a number >= 0"))
    if need_price and p.get("price") is None:
        errs.append(FieldError(field=f"{path}.price", reason="is required for order lines"))
    return errs


def ecommerce_errors(msg: Message) -> list[FieldError]:
    """Shape checks for the Segment Ecommerce v2 events whose properties update carts, orders, wishlists."""
    if msg.type != "track":
        return []
    name, props = msg.event, msg.properties
    if name in PRODUCT_EVENTS:
        return _product_errors(props, "properties")
    if name == "Order Completed":
        errs: list[FieldError] = []
        if not props.get("order_id"):
            errs.append(FieldError(field="properties.order_id", reason="is required for Order Completed"))
        products = props.get("products", [])
        if not isinstance(products, list):
            errs.append(FieldError(field="properties.products", reason="must be a list"))
        else:
            for i, p in enumerate(products):
                errs += _product_errors(p, f"properties.products[{i}]", need_price=True)
        for key in ("revenue", "total", "discount", "shipping", "tax"):
            if props.get(key) is not None and not _is_number(props[key]):
                errs.append(FieldError(field=f"properties.{key}", reason="must be a number"))
        return errs
    if name in ORDER_STATUS_EVENTS:
        errs = [] if props.get("order_id") else [FieldError(field="properties.order_id",
                                                            reason=f"is required for {name}")]
        if name == "Order Updated" and not props.get("status"):
            errs.append(FieldError(field="properties.status", reason="is required for Order Updated"))
        return errs
    return []


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
