"""Fixtures for the kernel tests."""

from kernel_world import world

__all__ = ["world"]
