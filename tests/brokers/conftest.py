"""Fixtures for the broker tests."""

from broker_world import world

__all__ = ["world"]
