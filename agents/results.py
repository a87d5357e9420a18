"""What a brokered ``http`` or ``query`` gives an agent back.

The supervisor made the request, so the agent gets plain values: a status,
headers and a body, or columns and rows. Nothing here talks to anyone.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from capsup.agents.errors import InternalError
from capsup.agents.protocol import SqlValue

__all__ = ["HttpResponse", "QueryResult"]


@dataclass(frozen=True, slots=True)
class HttpResponse:
    """A response the supervisor received for the agent (a redirect included:
    the supervisor never follows one).

    ``headers`` keep the server's order and repeats; :meth:`header` finds
    one by name, as HTTP compares names, without case."""

    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes

    def header(self, name: str, default: str | None = None) -> str | None:
        """The first value of header ``name``, or ``default``."""
        wanted = name.lower()
        return next((v for k, v in self.headers if k.lower() == wanted), default)

    def header_list(self, name: str) -> list[str]:
        """Every value of header ``name``, in order."""
        wanted = name.lower()
        return [v for k, v in self.headers if k.lower() == wanted]

    @property
    def text(self) -> str:
        """The body as text, in the charset the response names (UTF-8 if none)."""
        content_type = self.header("content-type") or ""
        charset = "utf-8"
        for part in content_type.split(";")[1:]:
            key, _, value = part.strip().partition("=")
            if key.lower() == "charset" and value:
                charset = value.strip('"')
        try:
            return self.body.decode(charset, errors="replace")
        except LookupError:
            return self.body.decode("utf-8", errors="replace")

    def json(self) -> Any:
        """The body parsed as JSON."""
        return json.loads(self.body)

    @property
    def ok(self) -> bool:
        """Whether the status is 2xx."""
        return 200 <= self.status < 300

    @classmethod
    def from_result(cls, result: object) -> HttpResponse:
        """Read ``http``'s result; the supervisor is trusted, so a malformed
        one is a bug (:class:`InternalError`)."""
        if not isinstance(result, dict):
            raise InternalError("malformed http result from the supervisor")
        status, headers, body = result.get("status"), result.get("headers"), result.get("body")
        if (
            isinstance(status, bool)
            or not isinstance(status, int)
            or not isinstance(body, bytes)
            or not isinstance(headers, list)
            or not all(
                isinstance(h, list) and len(h) == 2 and all(isinstance(x, str) for x in h)
                for h in headers
            )
        ):
            raise InternalError("malformed http result from the supervisor")
        return cls(status, tuple((name, value) for name, value in headers), body)


@dataclass(frozen=True, slots=True)
class QueryResult:
    """A statement's columns, rows and row count: the rows returned for a
    select (or a write with ``RETURNING``), else the rows the write changed.

    Iterating gives each row as a dict of column name to value."""

    columns: tuple[str, ...]
    rows: tuple[tuple[SqlValue, ...], ...]
    rowcount: int

    def __iter__(self) -> Iterator[dict[str, SqlValue]]:
        for row in self.rows:
            yield dict(zip(self.columns, row, strict=True))

    def __len__(self) -> int:
        return len(self.rows)

    @classmethod
    def from_result(cls, result: object) -> QueryResult:
        """Read ``query``'s result (see :meth:`HttpResponse.from_result`)."""
        if not isinstance(result, dict):
            raise InternalError("malformed query result from the supervisor")
        columns, rows, rowcount = result.get("columns"), result.get("rows"), result.get("rowcount")
        if (
            not isinstance(columns, list)
            or not all(isinstance(c, str) for c in columns)
            or not isinstance(rows, list)
            or not all(isinstance(r, list) and len(r) == len(columns) for r in rows)
            or isinstance(rowcount, bool)
            or not isinstance(rowcount, int)
        ):
            raise InternalError("malformed query result from the supervisor")
        return cls(tuple(columns), tuple(tuple(r) for r in rows), rowcount)
