"""What runs inside an agent process: the client SDK and the wire protocol.

``from capsup.agents import connect`` is all an agent needs; the error
classes are here too, so ``except capsup.agents.Revoked`` reads naturally.
The wire protocol itself lives in :mod:`capsup.agents.protocol`.
"""

from capsup.agents.capability import Capability
from capsup.agents.client import Client, CurveKeys, Identity, SpawnedAgent, connect
from capsup.agents.errors import *  # noqa: F403
from capsup.agents.errors import __all__ as _errors_all

__all__ = [
    "Capability",
    "Client",
    "CurveKeys",
    "Identity",
    "SpawnedAgent",
    "connect",
    *_errors_all,
]
