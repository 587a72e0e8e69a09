"""/v1/decide: the request (placement, who, page context) and the answer (blocks of items, coupon, reasons)."""

from __future__ import annotations

import datetime as dt
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

PLACEMENTS = ("exit_intent", "product_page", "cart", "home")
Placement = Literal["exit_intent", "product_page", "cart", "home"]


def _to_str(v: object) -> object:
    # Shops send numeric ids and skus as numbers; they are strings to us.
    if isinstance(v, int | float) and not isinstance(v, bool):
        return str(int(v)) if float(v).is_integer() else str(v)
    return v


class DecideContext(BaseModel):
    """What the page knows: the product shown, the cart, the browser's language."""

    model_config = ConfigDict(extra="ignore")

    sku: str | None = Field(default=None, max_length=128)
    cart_skus: list[str] = Field(default_factory=list, max_length=100)
    locale: str | None = Field(default=None, max_length=35)
    url: str | None = Field(default=None, max_length=2048)

    @field_validator("sku", mode="before")
    @classmethod
    def _sku(cls, v: object) -> object:
        v = _to_str(v)
        return None if isinstance(v, str) and not v.strip() else v

    @field_validator("cart_skus", mode="before")
    @classmethod
    def _skus(cls, v: object) -> object:
        return [_to_str(x) for x in v] if isinstance(v, list) else v


class DecideRequest(BaseModel):
    """A placement and a visitor (Segment ids); unknown fields are ignored."""

    model_config = ConfigDict(extra="ignore")

    placement: Placement
    userId: str | None = Field(default=None, max_length=255)
    anonymousId: str | None = Field(default=None, max_length=255)
    context: DecideContext = Field(default_factory=DecideContext)
    limit: int | None = Field(default=None, ge=1, le=12)

    @field_validator("userId", "anonymousId", mode="before")
    @classmethod
    def _ids(cls, v: object) -> object:
        v = _to_str(v)
        return None if isinstance(v, str) and not v.strip() else v

    @model_validator(mode="after")
    def _shape(self) -> DecideRequest:
        if not self.userId and not self.anonymousId:
            raise ValueError("userId: userId or anonymousId is required")
        if self.placement == "product_page" and not self.context.sku:
            raise ValueError("context.sku: is required for the product_page placement")
        return self


class Item(BaseModel):
    sku: str
    name: str
    price: float | None
    price_text: str | None
    currency: str
    url: str | None
    image_url: str | None


class Block(BaseModel):
    kind: Literal["recommendations", "popular", "co_purchase", "accessories"]
    heading: str
    reason: str
    items: list[Item]


class CouponOffer(BaseModel):
    code: str
    value: str | None
    expires_at: dt.datetime
    heading: str
    text: str
    reason: str


class DecideResponse(BaseModel):
    """The content to show; an empty answer (no blocks, no coupon) means: show nothing."""

    decision_id: str
    placement: Placement
    locale: Literal["de", "en"]
    personalized: bool
    blocks: list[Block]
    coupon: CouponOffer | None
    reasons: dict[str, str]
