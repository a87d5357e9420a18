"""The environment an agent starts with.

An agent's rights are the capabilities the kernel grants it, and nothing
else. An environment variable is authority the kernel never sees: a cloud
key, an API token, ``SSH_AUTH_SOCK`` (the operator's SSH agent, ready to
sign). So an agent does not inherit the supervisor's environment. It gets
the variables that describe the session, the locale and the toolchain
(:data:`DEFAULT_PASSED`), those the operator names in ``[supervisor]
pass_environment``, and ``CAPSUP_ENDPOINT`` and ``CAPSUP_AGENT_ID``, which
grant nothing by themselves: the supervisor knows an agent by its process,
never by what it says.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

__all__ = ["DEFAULT_PASSED", "agent_environment", "check_name_pattern"]

#: What every agent gets, when the supervisor has it: names that say where
#: things are and how to print them, never a secret by design. Exact names,
#: no prefixes: any name can carry a token (``LC_*`` travels over SSH, and
#: ``PYTHON_KEYRING_PASSWORD`` starts like Python's own variables).
DEFAULT_PASSED: tuple[str, ...] = (
    "PATH",
    "HOME",
    "USER",
    "LOGNAME",
    "SHELL",
    "PWD",
    "TMPDIR",
    "TZ",
    "LANG",
    "LANGUAGE",
    "LC_ALL",
    "LC_CTYPE",
    "LC_COLLATE",
    "LC_MESSAGES",
    "LC_MONETARY",
    "LC_NUMERIC",
    "LC_TIME",
    "LC_ADDRESS",
    "LC_IDENTIFICATION",
    "LC_MEASUREMENT",
    "LC_NAME",
    "LC_PAPER",
    "LC_TELEPHONE",
    "TERM",
    "COLORTERM",
    "NO_COLOR",
    "COLUMNS",
    "LINES",
    "XDG_CACHE_HOME",
    "XDG_CONFIG_HOME",
    "XDG_DATA_HOME",
    "XDG_STATE_HOME",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
    # The agent's bootstrap runs under the supervisor's interpreter and must
    # import capsup as the supervisor did: the same library and module paths.
    "LD_LIBRARY_PATH",
    "VIRTUAL_ENV",
    "PYENV_VERSION",
    "PYTHONPATH",
    "PYTHONHOME",
    "PYTHONNOUSERSITE",
    "PYTHONUSERBASE",
    "PYTHONSAFEPATH",
    "PYTHONUNBUFFERED",
    "PYTHONIOENCODING",
    "PYTHONUTF8",
    "PYTHONDONTWRITEBYTECODE",
    "PYTHONWARNINGS",
)

_NAME_PATTERN = re.compile(r"\*|[A-Za-z_][A-Za-z0-9_]*\*?")


def check_name_pattern(pattern: object) -> str:
    """``pattern`` if it is a variable name, a name prefix ending in ``*``, or
    ``*`` (everything); else :class:`ValueError` saying what is accepted."""
    if not isinstance(pattern, str) or not _NAME_PATTERN.fullmatch(pattern):
        raise ValueError(
            f"{pattern!r} is not a variable name (letters, digits, _), "
            "a name prefix ending in '*', or '*'"
        )
    return pattern


def agent_environment(
    environ: Mapping[str, str], passed: Iterable[str], *, endpoint: str, agent_id: str
) -> dict[str, str]:
    """The environment of a new agent: the variables of ``environ`` that
    :data:`DEFAULT_PASSED` or ``passed`` name, then capsup's own two. A
    ``CAPSUP_`` variable of the supervisor is never passed on: an agent
    learns its endpoint and id from the supervisor that started it."""
    names: set[str] = set()
    prefixes: list[str] = []
    for pattern in (*DEFAULT_PASSED, *passed):
        if pattern.endswith("*"):
            prefixes.append(pattern[:-1])
        else:
            names.add(pattern)
    prefix_tuple = tuple(prefixes)
    env = {
        name: value
        for name, value in environ.items()
        if not name.startswith("CAPSUP_") and (name in names or name.startswith(prefix_tuple))
    }
    env["CAPSUP_ENDPOINT"] = endpoint
    env["CAPSUP_AGENT_ID"] = agent_id
    return env
