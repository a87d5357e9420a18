"""Credentials a capability carries: headers the HTTP broker adds for an agent.

A policy ceiling for an ``http``/``https`` resource may name headers whose
values come from the supervisor's environment or from a file::

    inject = { headers = { Authorization = "Bearer ${env:GITHUB_TOKEN}" } }

The templates are resolved once, when the configuration is loaded, so a
missing variable or an unreadable file fails the load instead of the first
request, and a file changed later changes nothing until a restart. The
values then live only in the supervisor's memory: not in the capability, its
wire form, the state file or the audit trail. The agent never sees them.

Template syntax: ``${env:NAME}`` is the variable ``NAME`` of the supervisor's
environment; ``${file:/absolute/path}`` is the content of that file, less one
trailing newline; ``$$`` is a literal ``$``; any other ``$`` is an error.

Every error message names the entry, the header and the placeholder that
failed, and never a resolved value.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import AnyStr, Final, overload

from capsup.supervisor.brokers.http_checks import HttpRefused, check_header_pairs
from capsup.supervisor.secret_file import SecretFileError, read_secret_file

__all__ = [
    "MAX_INJECTED_BYTES",
    "MAX_INJECTED_HEADERS",
    "REDACTED",
    "Injection",
    "InjectionError",
    "parse_injection",
    "redact",
]

#: Most headers one ceiling may inject, and most bytes of their names and
#: resolved values together: credentials are short, and what the broker adds
#: must leave the agent's own headers room under a server's 8-32 KiB limit.
MAX_INJECTED_HEADERS: Final = 16
MAX_INJECTED_BYTES: Final = 8 << 10

#: What :func:`redact` puts in place of a secret.
REDACTED: Final = "[redacted]"

#: One placeholder at a ``$``: ``$$``, or ``${kind:argument}``.
_PLACEHOLDER: Final = re.compile(r"\$(?:(\$)|\{([^:}]*):([^}]*)\})")
_VARIABLE: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class InjectionError(ValueError):
    """An ``inject`` table is malformed or cannot be resolved; the message
    names the key and the placeholder, never a value.
    (:func:`~capsup.supervisor.policy.parse_ceiling` raises it as a
    :class:`~capsup.supervisor.policy.PolicyError`.)"""


@dataclass(frozen=True, slots=True, repr=False)
class Injection:
    """The resolved headers one ceiling adds to every brokered request under it.

    ``headers`` hold the values themselves: this object must stay in the
    supervisor. Its ``repr`` names the headers only, so that logging a
    ceiling, or an exception that holds one, shows no credential.
    """

    headers: tuple[tuple[str, str], ...]
    #: What each placeholder gave, so that a bare token (the part after
    #: ``Bearer ``, as a server may quote it back) is scrubbed too.
    parts: tuple[str, ...] = ()
    #: The environment variables and files the values were read from: not
    #: secret, but no agent may be given them. The configuration refuses a
    #: variable ``pass_environment`` hands to agents; the files are for the
    #: runtime to keep out of every sandbox, as it does the audit key.
    variables: tuple[str, ...] = ()
    files: tuple[str, ...] = ()

    def __repr__(self) -> str:
        return f"Injection(headers={[name for name, _ in self.headers]!r})"

    @property
    def secrets(self) -> tuple[str, ...]:
        """Every resolved value and every placeholder's part of one, longest
        first (so that a value is replaced whole before a part of it)."""
        found = {value for _, value in self.headers if value} | {p for p in self.parts if p}
        return tuple(sorted(found, key=lambda s: (-len(s), s)))


@overload
def redact(text: str, secrets: Iterable[str]) -> str: ...
@overload
def redact(text: bytes, secrets: Iterable[str]) -> bytes: ...
def redact(text: str | bytes, secrets: Iterable[str]) -> str | bytes:
    """``text`` with every occurrence of each secret replaced by ``[redacted]``.

    A secret is found as it is written, and as a Python ``repr`` quotes it
    (error texts often show values that way). Occurrences that overlap or
    touch are replaced by one mark, so two secrets sharing characters leave
    no piece of either behind. An encoded form (base64, percent- or JSON
    escapes) is not found.
    """
    forms: set[str] = set()
    for secret in secrets:
        if secret:
            forms.update((secret, repr(secret)[1:-1]))
    if isinstance(text, bytes):
        return _replace_all(text, [form.encode() for form in forms], REDACTED.encode())
    return _replace_all(text, list(forms), REDACTED)


def _replace_all(text: AnyStr, needles: list[AnyStr], mark: AnyStr) -> AnyStr:
    """``text`` with the union of every needle's occurrences replaced by ``mark``."""
    spans: list[tuple[int, int]] = []
    for needle in needles:
        start = text.find(needle)
        while start != -1:
            spans.append((start, start + len(needle)))
            start = text.find(needle, start + 1)
    if not spans:
        return text
    spans.sort()
    pieces: list[AnyStr] = []
    kept = 0  # text[:kept] is already in pieces
    run_start, run_end = spans[0]
    for start, end in spans[1:]:
        if start <= run_end:
            run_end = max(run_end, end)
            continue
        pieces += (text[kept:run_start], mark)
        kept, (run_start, run_end) = run_end, (start, end)
    pieces += (text[kept:run_start], mark, text[run_end:])
    return mark[:0].join(pieces)


def parse_injection(raw: object, where: str) -> Injection:
    """The ``inject`` table ``raw`` (``where`` names it, e.g.
    ``agents.x.allow[0].inject``), resolved now, or :class:`InjectionError`.

    Header names and resolved values pass the very check the HTTP broker
    applies when it sends them (``check_header_pairs``): RFC 9110 tokens, no
    hop-by-hop or framing header, no CR, LF, NUL or other control character,
    so a policy that loads is a policy whose headers can be sent.
    """
    if not isinstance(raw, Mapping):
        raise InjectionError(f"{where}: must be a table, not {type(raw).__name__}")
    unknown = set(raw) - {"headers"}
    if unknown:
        raise InjectionError(f"{where}: unknown key {sorted(unknown)[0]!r} (only headers)")
    headers = raw.get("headers")
    if not isinstance(headers, Mapping) or not headers:
        raise InjectionError(f"{where}.headers: required, a table of header names to templates")
    if len(headers) > MAX_INJECTED_HEADERS:
        raise InjectionError(f"{where}.headers: more than {MAX_INJECTED_HEADERS} headers")
    resolved: list[tuple[str, str]] = []
    parts: list[str] = []
    variables: list[str] = []
    files: list[str] = []
    seen: set[str] = set()
    for name, template in headers.items():
        key = f"{where}.headers.{name}"
        if not isinstance(name, str):
            raise InjectionError(f"{where}.headers: header names must be strings")
        if name.lower() in seen:
            raise InjectionError(f"{key}: named twice (header names ignore case)")
        seen.add(name.lower())
        if not isinstance(template, str):
            raise InjectionError(f"{key}: must be a string template")
        value = _resolve(template, key, parts, variables, files)
        try:
            check_header_pairs(((name, value),), "header")
        except HttpRefused as refusal:  # its message shows no value
            raise InjectionError(f"{key}: {refusal.message}") from None
        resolved.append((name, value))
    size = sum(len(name) + len(value) for name, value in resolved)
    if size > MAX_INJECTED_BYTES:
        raise InjectionError(
            f"{where}.headers: the resolved headers take {size} bytes, "
            f"more than {MAX_INJECTED_BYTES}"
        )
    return Injection(
        tuple(resolved),
        tuple(dict.fromkeys(parts)),
        tuple(dict.fromkeys(variables)),
        tuple(dict.fromkeys(files)),
    )


def _resolve(
    template: str, key: str, parts: list[str], variables: list[str], files: list[str]
) -> str:
    """``template`` with its placeholders replaced; each value read is added
    to ``parts``, and its source to ``variables`` or ``files``."""
    out: list[str] = []
    at = 0
    while (dollar := template.find("$", at)) != -1:
        out.append(template[at:dollar])
        match = _PLACEHOLDER.match(template, dollar)
        if match is None:
            raise InjectionError(
                f"{key}: a '$' at offset {dollar} must start ${{env:NAME}} or "
                "${file:/absolute/path}, or be written $$ for a literal '$'"
            )
        literal, kind, argument = match.groups()
        if literal:
            out.append("$")
        else:
            reader = _READERS.get(kind)
            if reader is None:
                raise InjectionError(
                    f"{key}: unknown placeholder ${{{kind}:...}} (only env and file)"
                )
            part = reader(argument, key)
            if not part:  # an empty credential is a mistake, not a credential
                raise InjectionError(f"{key}: ${{{kind}:{argument}}} is empty")
            (variables if kind == "env" else files).append(argument)
            parts.append(part)
            out.append(part)
        at = match.end()
    out.append(template[at:])
    return "".join(out)


def _read_env(name: str, key: str) -> str:
    if not _VARIABLE.fullmatch(name):
        raise InjectionError(f"{key}: ${{env:{name}}} does not name a variable")
    value = os.environ.get(name)
    if value is None:
        raise InjectionError(
            f"{key}: the variable {name} is not set in the supervisor's environment"
        )
    return value


def _read_file(path: str, key: str) -> str:
    """The file's text, less one trailing newline (``echo TOKEN > FILE``
    makes one). Refused unless it is a regular file, not a symlink, that only
    its owner may read or write, as the audit key is: a credential others
    can read is no longer the supervisor's to keep, and a symlink is refused
    so that the policy names the file that holds the secret, not a pointer
    to wherever it leads when the supervisor starts."""
    placeholder = f"${{file:{path}}}"
    try:
        data = read_secret_file(path, MAX_INJECTED_BYTES)
    except SecretFileError as error:
        raise InjectionError(f"{key}: {placeholder} {error}") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:  # its message would quote a byte of the file
        raise InjectionError(f"{key}: {placeholder} is not UTF-8 text") from None


_READERS: Final = {"env": _read_env, "file": _read_file}
