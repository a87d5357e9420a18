"""What runs inside an agent process: the client SDK and the wire protocol.

``from capsup.agents import connect`` is all an agent needs; the error
classes are here too, so ``except capsup.agents.Revoked`` reads naturally.
The wire protocol itself lives in :mod:`capsup.agents.protocol`.
"""

from typing import TYPE_CHECKING, Any

from capsup.agents.capability import Capability
from capsup.agents.client import Client, CurveKeys, Identity, SpawnedAgent, connect
from capsup.agents.errors import *  # noqa: F403
from capsup.agents.errors import __all__ as _errors_all
from capsup.agents.results import HttpResponse, QueryResult

if TYPE_CHECKING:
    from capsup.agents.httpx_transport import HttpxTransport

__all__ = [
    "Capability",
    "Client",
    "CurveKeys",
    "HttpResponse",
    "HttpxTransport",
    "Identity",
    "QueryResult",
    "SpawnedAgent",
    "connect",
    *_errors_all,
]


def __getattr__(name: str) -> Any:
    """``HttpxTransport`` is imported on first use: httpx takes longer to
    import than an agent that never uses it should wait at every start."""
    if name == "HttpxTransport":
        from capsup.agents.httpx_transport import HttpxTransport

        return HttpxTransport
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
