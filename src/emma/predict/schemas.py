"""What the predictive layer hands to other parts: recommendations and campaign forecasts."""

from __future__ import annotations

from pydantic import BaseModel


class Recommendation(BaseModel):
    """One recommended product: score (higher is better) and why (affinity:CATEGORY, also_bought:SKU, ...)."""

    sku: str
    score: float
    reason: str


class CampaignForecast(BaseModel):
    """Expected responders (a purchase within the window) and revenue for a list of customers."""

    customers: int
    scored: int
    expected_responders: float
    expected_revenue: float
    expected_incremental_responders: float | None = None
    window_days: int = 30
