"""What runs inside an agent process: the client SDK and the wire protocol."""

from capsup.agents.capability import Capability
from capsup.agents.errors import *  # noqa: F403
from capsup.agents.errors import __all__ as _errors_all

__all__ = ["Capability", *_errors_all]
