"""Data-protection requests: export everything held about a customer, erase it."""
