"""Segments: a rule language compiled to SQL (batch) and to a predicate (one customer, real time)."""
