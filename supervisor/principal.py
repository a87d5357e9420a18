"""Principals: who is speaking, as the supervisor proved it."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

__all__ = ["OPERATOR", "Principal", "PrincipalKind"]


class PrincipalKind(StrEnum):
    AGENT = "agent"
    SERVICE = "service"
    OPERATOR = "operator"


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated party.

    ``id`` is unique and is what capabilities name as their holder (an agent
    id for an agent); ``name`` is the policy key its ceilings are looked up
    by. Only the supervisor builds principals, from what the operating system
    or a CURVE handshake proved; nothing a client sends ends up here.
    """

    id: str
    name: str
    kind: PrincipalKind = PrincipalKind.AGENT
    pid: int | None = None

    @property
    def is_operator(self) -> bool:
        return self.kind is PrincipalKind.OPERATOR


OPERATOR = Principal(id="operator", name="operator", kind=PrincipalKind.OPERATOR)
