"""Tante Emma: open-source, AI-driven marketing automation."""

__version__ = "0.1.0"
