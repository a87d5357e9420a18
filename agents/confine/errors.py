"""The confinement's one exception."""

from __future__ import annotations

__all__ = ["ConfinementError"]


class ConfinementError(Exception):
    """A confinement step could not be applied.

    ``feature`` names the guarantee that is missing (``"landlock"``,
    ``"seccomp"``, ``"limits"``, ``"privileges"``, ``"namespaces"``, ...), so the
    bootstrap can say in one line what this kernel lacks and the way out.
    Pickles cleanly: the message and the feature are its only state.
    """

    def __init__(self, feature: str, message: str) -> None:
        super().__init__(feature, message)
        self.feature = feature
        self.message = message

    def __str__(self) -> str:
        return f"{self.feature}: {self.message}"
