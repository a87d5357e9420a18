"""The supervisor's TOML configuration: policy, databases and settings.

Loading is strict: an unknown section or key, or a value of the wrong type,
fails the load with :class:`ConfigError` naming the file, the key and what is
wrong. A configuration that half-loads would be a policy nobody wrote.
"""

from __future__ import annotations

import os
import tomllib
import urllib.parse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from capsup.supervisor.confinement.sandbox import Sandbox, sandboxes_of
from capsup.supervisor.environment import agent_environment, check_name_pattern
from capsup.supervisor.policy import Ceiling, Policy, PolicyError, parse_ceiling, strict_table
from capsup.validators import ValidatorRegistry, default_registry

__all__ = [
    "Config",
    "ConfigError",
    "DatabaseConfig",
    "Settings",
    "load_config",
    "parse_config",
    "secret_files",
    "sqlite_path",
]

_SECTIONS = frozenset({"agents", "databases", "supervisor"})

#: URL scheme of a database -> sqlglot dialect.
_DIALECTS = {"sqlite": "sqlite", "postgresql": "postgres", "postgres": "postgres", "mysql": "mysql"}


class ConfigError(ValueError):
    """The configuration is wrong; the message names file, key and problem."""


@dataclass(frozen=True, slots=True)
class DatabaseConfig:
    """``[databases.NAME]``: where a ``db://NAME`` is, and its SQL dialect.
    The URL (and any password in it) never leaves the supervisor."""

    name: str
    url: str
    dialect: str

    def __repr__(self) -> str:
        return f"DatabaseConfig(name={self.name!r}, dialect={self.dialect!r})"


def sqlite_path(url: str) -> str:
    """The file of a ``sqlite:///ABSOLUTE/PATH`` URL; ValueError for anything else."""
    parts = urllib.parse.urlsplit(url)
    path = urllib.parse.unquote(parts.path)
    if parts.scheme.lower() != "sqlite" or parts.netloc or not path.startswith("/"):
        raise ValueError(f"a SQLite database is sqlite:///ABSOLUTE/PATH, not {url[:100]!r}")
    return path


@dataclass(frozen=True, slots=True)
class Settings:
    """``[supervisor]``: how the supervisor runs, as opposed to what it allows."""

    grace_period: float = 5.0
    tombstone_retention: float = 86400.0
    #: Most ended capabilities remembered (their ids answer ``revoked`` or
    #: ``expired``); older ones are forgotten first, and their ids answer
    #: ``unknown_capability``: still refused.
    max_tombstones: int = 200_000
    max_message_bytes: int = 1 << 20
    max_capabilities_per_agent: int = 10_000
    #: Live sub-agents one agent may have, and live agents in all: each
    #: costs the supervisor descriptors (a pidfd, a control socket, an
    #: endpoint) and memory, which a spawning agent must not exhaust.
    max_sub_agents: int = 64
    max_agents: int = 1024
    #: Connections the supervisor holds at once, over every endpoint (at
    #: most half its descriptor limit), and per connecting process on one
    #: endpoint: one past either is shut down as soon as it is accepted.
    max_connections: int = 2048
    max_connections_per_peer: int = 32
    #: "batch": agents run under SCHED_BATCH, so their wakeups never preempt
    #: the supervisor's loop; "inherit": they keep the supervisor's policy.
    agent_scheduling: str = "batch"
    #: Variables of the supervisor's environment that agents get besides
    #: :data:`~capsup.supervisor.environment.DEFAULT_PASSED`: names, or
    #: ``NAME*`` prefixes, or ``*`` for all.
    pass_environment: tuple[str, ...] = ()
    #: "required": an agent starts confined or not at all; "best-effort":
    #: what this kernel cannot enforce is left out, said and recorded;
    #: "off": no confinement (``capsup run --no-confine``).
    confine: str = "required"
    #: Records of refused requests one peer (an agent, or a process that is
    #: not one) may have written, on average per second and in a row; what
    #: is held back beyond is counted in a summary record
    #: (supervisor/refusal_limit.py).
    refusal_records_per_second: float = 20.0
    refusal_records_burst: int = 100
    #: An absolute path: the audit chain is sealed with an HMAC under the
    #: key this file holds (supervisor/audit_record.py); None: bare hashes.
    audit_key_file: str | None = None


#: The positive numbers among the settings, and the types each may be.
_NUMBER_SETTINGS: dict[str, tuple[type, ...]] = {
    "grace_period": (int, float),
    "tombstone_retention": (int, float),
    "max_tombstones": (int,),
    "max_message_bytes": (int,),
    "max_capabilities_per_agent": (int,),
    "max_sub_agents": (int,),
    "max_agents": (int,),
    "max_connections": (int,),
    "max_connections_per_peer": (int,),
    "refusal_records_per_second": (int, float),
    "refusal_records_burst": (int,),
}
#: The settings that take one of a few words.
_CHOICE_SETTINGS: dict[str, frozenset[str]] = {
    "agent_scheduling": frozenset({"batch", "inherit"}),
    "confine": frozenset({"required", "best-effort", "off"}),
}


@dataclass(frozen=True, slots=True)
class Config:
    policy: Policy = field(default_factory=Policy)
    databases: Mapping[str, DatabaseConfig] = field(default_factory=dict)
    settings: Settings = field(default_factory=Settings)
    #: Per policy name: OS-level grants and limits (``sandbox = {...}``).
    sandboxes: Mapping[str, Sandbox] = field(default_factory=dict)
    validators: ValidatorRegistry = field(default_factory=default_registry)
    source: str = "<defaults>"


def load_config(path: str | Path) -> Config:
    """Read and check a TOML file."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such config file") from None
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"{path}: cannot read: {error}") from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{path}: not valid TOML: {error}") from None
    return parse_config(data, source=str(path))


def parse_config(data: Mapping[str, Any], *, source: str = "<config>") -> Config:
    """Check an already-parsed TOML document."""
    try:
        return _parse(data, source)
    except PolicyError as error:
        raise ConfigError(f"{source}: {error}") from None


def _parse(data: Mapping[str, Any], source: str) -> Config:
    unknown = set(data) - _SECTIONS
    if unknown:
        raise PolicyError(f"unknown section [{sorted(unknown)[0]}]")
    databases = _parse_databases(_table(data, "databases"))
    validators = default_registry({name: db.dialect for name, db in databases.items()})
    ceilings: dict[str, tuple[Ceiling, ...]] = {}
    spawnable: dict[str, frozenset[str]] = {}
    for name, entry in _table(data, "agents").items():
        where = f"agents.{name}"
        entry = strict_table(entry, where, {"allow", "may_spawn", "sandbox"})
        may_spawn = entry.get("may_spawn", [])
        if not isinstance(may_spawn, list) or not all(isinstance(n, str) for n in may_spawn):
            raise PolicyError(f"{where}.may_spawn: must be a list of agent names")
        spawnable[name] = frozenset(may_spawn)
        allow = entry.get("allow", [])
        if not isinstance(allow, list):
            raise PolicyError(f"{where}.allow: must be a list of tables")
        ceilings[name] = tuple(
            parse_ceiling(item, validators, f"{where}.allow[{i}]") for i, item in enumerate(allow)
        )
    settings = _parse_settings(_table(data, "supervisor"))
    _check_injected_variables(ceilings, settings.pass_environment)
    _check_secret_files(ceilings, settings)
    return Config(
        policy=Policy(ceilings, spawnable),
        databases=databases,
        settings=settings,
        sandboxes=sandboxes_of(_table(data, "agents")),
        validators=validators,
        source=source,
    )


def secret_files(ceilings: Mapping[str, Sequence[Ceiling]], settings: Settings) -> list[str]:
    """Files no agent may reach by any means: the audit key, and the files
    credentials are injected from."""
    files = [settings.audit_key_file] if settings.audit_key_file else []
    for entries in ceilings.values():
        files += [f for c in entries if c.inject is not None for f in c.inject.files]
    return files


def _check_secret_files(ceilings: Mapping[str, tuple[Ceiling, ...]], settings: Settings) -> None:
    """Refuse a ``file://`` ceiling that covers a secret file: a capability
    under it would hand the secret to the agent through the file broker."""
    secrets = [os.path.realpath(f) for f in secret_files(ceilings, settings)]
    for name, entries in ceilings.items():
        for i, ceiling in enumerate(entries):
            if not ceiling.resource.startswith("file://"):
                continue
            root = os.path.realpath(ceiling.resource.removeprefix("file://")).rstrip("/")
            for secret in secrets:
                if secret == root or secret.startswith(root + "/"):
                    raise PolicyError(
                        f"agents.{name}.allow[{i}].resource covers {secret}, which no agent "
                        "may read (the audit key, or a file credentials are injected from): "
                        "grant a narrower resource, or keep the file elsewhere"
                    )


def _check_injected_variables(
    ceilings: Mapping[str, tuple[Ceiling, ...]], passed: tuple[str, ...]
) -> None:
    """Refuse a variable that a ceiling injects as a credential if agents
    would also get it in their environment: the agent would hold the very
    value the broker keeps from it. Asked of ``agent_environment`` itself,
    so the answer is the rule that builds the environment."""
    for name, entries in ceilings.items():
        for i, ceiling in enumerate(entries):
            for variable in ceiling.inject.variables if ceiling.inject else ():
                marker = "\0"  # no real value holds a NUL, so it cannot be capsup's own
                env = agent_environment({variable: marker}, passed, endpoint="", agent_id="")
                if env.get(variable) == marker:
                    raise PolicyError(
                        f"agents.{name}.allow[{i}].inject: the variable {variable} is passed to"
                        " every agent (by default or by [supervisor] pass_environment);"
                        " a credential the broker injects must not be"
                    )


def _table(data: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = data.get(key, {})
    if not isinstance(value, Mapping):
        raise PolicyError(f"[{key}] must be a table")
    return value


def _parse_databases(section: Mapping[str, Any]) -> dict[str, DatabaseConfig]:
    databases = {}
    for name, entry in section.items():
        where = f"databases.{name}"
        entry = strict_table(entry, where, {"url", "dialect"})
        url = entry.get("url")
        if not isinstance(url, str) or "://" not in url:
            raise PolicyError(f"{where}.url: required, a URL such as sqlite:///path/to.db")
        dialect = entry.get("dialect", _DIALECTS.get(url.partition("://")[0].lower()))
        if not isinstance(dialect, str):
            raise PolicyError(f"{where}.dialect: cannot tell the SQL dialect of {url!r}; set it")
        if dialect == "sqlite":
            try:
                sqlite_path(url)
            except ValueError as error:
                raise PolicyError(f"{where}.url: {error}") from None
        databases[name] = DatabaseConfig(name, url, dialect)
    return databases


def _parse_settings(section: Mapping[str, Any]) -> Settings:
    values: dict[str, Any] = {}
    for key, value in section.items():
        if key == "pass_environment":
            values[key] = _name_patterns(value, f"supervisor.{key}")
            continue
        if key == "audit_key_file":
            if not isinstance(value, str) or not value.startswith("/"):
                raise PolicyError(f"supervisor.{key}: must be an absolute path")
            values[key] = value
            continue
        choices = _CHOICE_SETTINGS.get(key)
        if choices is not None:
            if not isinstance(value, str) or value not in choices:
                raise PolicyError(f"supervisor.{key}: must be one of {', '.join(sorted(choices))}")
            values[key] = value
            continue
        types = _NUMBER_SETTINGS.get(key)
        if types is None:
            raise PolicyError(f"supervisor: unknown key {key!r}")
        if not isinstance(value, types):
            raise PolicyError(f"supervisor.{key}: must be a positive number")
        if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
            raise PolicyError(f"supervisor.{key}: must be a positive number")
        values[key] = value
    return Settings(**values)


def _name_patterns(value: object, where: str) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise PolicyError(f"{where}: must be a list of variable names")
    try:
        return tuple(check_name_pattern(item) for item in value)
    except ValueError as error:
        raise PolicyError(f"{where}: {error}") from None
