"""Errors of the predictive layer."""

from __future__ import annotations


class PredictError(Exception):
    """Base class."""


class InvalidContext(PredictError, ValueError):
    """A recommendation context that is neither `cart` nor `product:SKU`."""
