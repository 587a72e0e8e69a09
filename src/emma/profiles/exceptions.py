"""Errors of the profiles domain."""


class ProfileError(Exception):
    """Base class."""


class CustomerNotFound(ProfileError):
    def __init__(self, ref: str) -> None:
        super().__init__(f"customer {ref!r} not found")
        self.ref = ref


class MergeNotRevertible(ProfileError):
    """The merge was already reverted, or its rows changed since."""
