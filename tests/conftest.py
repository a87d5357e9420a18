"""Fixtures more than one suite uses: one PostgreSQL cluster for the whole
session (tests/servers/postgres_server.py), whichever suites ask for it."""

from postgres_server import postgres

__all__ = ["postgres"]
