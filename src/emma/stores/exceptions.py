"""Errors of the stores domain."""

from __future__ import annotations


class StoreNotFound(LookupError):
    def __init__(self, store_id: str) -> None:
        super().__init__(f"store {store_id!r} does not exist")
        self.store_id = store_id
