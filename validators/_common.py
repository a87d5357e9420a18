"""Checks shared by the scheme validators: plain-value constraint types.

Constraint values travel over msgpack and are stored as JSON, so every
normalized value is a plain ``int``, ``float``, ``str``, ``list`` or ``dict``;
lists are sorted and deduplicated so that two equal constraint sets compare
equal, which :meth:`~capsup.validators.base.Validator.constraints_within`
relies on.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from capsup.validators.base import ConstraintError, OperationError

__all__ = [
    "CONTROL_CHARS",
    "MAX_INT",
    "MAX_LIST_ENTRIES",
    "Normalizer",
    "bad_size",
    "has_control_char",
    "meet_keys",
    "normalize_keys",
    "normalize_operation_names",
    "positive_int",
    "positive_number",
    "string_list",
]

#: The largest integer msgpack and SQLite both store as a number.
MAX_INT = 2**63 - 1

#: C0 controls, DEL and C1 controls.
CONTROL_CHARS = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def has_control_char(text: str) -> bool:
    """Whether ``text`` holds a C0 control character, DEL or a C1 control.

    NUL truncates paths in C, newlines split headers and log lines, and tabs
    or newlines are silently dropped by WHATWG URL parsing: none of them has a
    legitimate place in a resource name.
    """
    return CONTROL_CHARS.search(text) is not None


def bad_size(size: object) -> bool:
    """Whether a use's ``size`` is neither ``None`` nor a non-negative ``int``.

    A negative size would slip under every ``max_bytes``.
    """
    return size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 0)


def normalize_operation_names(
    operations: object, allowed: frozenset[str], fold: Callable[[str], str]
) -> frozenset[str]:
    """Fold every operation name with ``fold`` and check it is in ``allowed``.

    A bare string is refused rather than iterated character by character.
    """
    if isinstance(operations, str | bytes) or not hasattr(operations, "__iter__"):
        raise OperationError("operations must be a collection of strings")
    result: set[str] = set()
    for item in operations:
        if not isinstance(item, str):
            raise OperationError(f"operation must be a string, not {type(item).__name__}")
        # ASCII only: str.upper() folds "po\u017ft" (long s) to "POST", and a broker that
        # trusted the spelling sent would then disagree with the decision.
        name = fold(item) if item.isascii() else ""
        if name not in allowed:
            raise OperationError(f"unknown operation {item[:100]!r}; one of {sorted(allowed)}")
        result.add(name)
    if not result:
        raise OperationError("at least one operation is required")
    return frozenset(result)


def positive_int(key: str, value: object) -> int:
    """A positive ``int`` (``bool`` is not an integer here) that fits in 64 bits."""
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConstraintError(f"{key} must be a positive integer")
    if value > MAX_INT:
        raise ConstraintError(f"{key} must be at most {MAX_INT}")
    return value


def positive_number(key: str, value: object) -> int | float:
    """A positive, finite ``int`` or ``float`` (not ``bool``) that fits in 64 bits."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConstraintError(f"{key} must be a positive number")
    if isinstance(value, float) and not math.isfinite(value):
        raise ConstraintError(f"{key} must be a finite number")
    if value <= 0:
        raise ConstraintError(f"{key} must be a positive number")
    if value > MAX_INT:
        raise ConstraintError(f"{key} must be at most {MAX_INT}")
    return value


#: Most entries in one list-valued constraint (``deny``, ``tables``).
MAX_LIST_ENTRIES = 256


def string_list(
    key: str,
    value: object,
    item: Callable[[str], str],
    *,
    max_entries: int = MAX_LIST_ENTRIES,
    check_all: Callable[[Sequence[str]], None] | None = None,
) -> list[str]:
    """A sorted, deduplicated list of strings, each normalized by ``item``.

    ``item`` raises :class:`ValueError` for a bad entry, and ``check_all``
    for a list that is too costly as a whole; either is reported as a
    :class:`ConstraintError` naming ``key``. The list's length, and
    ``check_all``, are checked before any entry is normalized: the lists
    come from agents, and what ``item`` costs (compiling a glob) must not be
    theirs to multiply.
    """
    if isinstance(value, str | bytes) or not isinstance(value, list | tuple):
        raise ConstraintError(f"{key} must be a list of strings")
    if len(value) > max_entries:
        raise ConstraintError(f"{key} has more than {max_entries} entries")
    if not all(isinstance(entry, str) for entry in value):
        raise ConstraintError(f"{key} entries must be strings")
    if check_all is not None:
        try:
            check_all(value)
        except ValueError as error:
            raise ConstraintError(f"{key} {error}") from None
    result: set[str] = set()
    for entry in value:
        try:
            result.add(item(entry))
        except ValueError as error:
            raise ConstraintError(f"{key}: {error}") from None
    return sorted(result)


def meet_keys(
    first: Mapping[str, Any],
    second: Mapping[str, Any],
    rules: Mapping[str, Callable[[Any, Any], Any]],
) -> dict[str, Any]:
    """Combine two normalized constraint maps key by key.

    A key present on one side only is kept as it is (the other side does not
    limit it); a key on both sides is combined by its rule. A key without a
    rule cannot come from a normalized map, so it is an error.
    """
    result: dict[str, Any] = {}
    for key in sorted(set(first) | set(second)):
        if key not in rules:
            raise ConstraintError(f"unknown constraint {key!r}")
        if key not in first:
            result[key] = second[key]
        elif key not in second:
            result[key] = first[key]
        else:
            result[key] = rules[key](first[key], second[key])
    return result


Normalizer = Callable[[str, object], Any]


def normalize_keys(
    raw: Mapping[str, object], normalizers: Mapping[str, Normalizer], scheme: str
) -> dict[str, Any]:
    """Normalize a constraint map key by key; a key without a normalizer is an
    error naming it (the vocabulary is closed)."""
    result: dict[str, Any] = {}
    for key, value in raw.items():
        normalize = normalizers.get(key)
        if normalize is None:
            raise ConstraintError(f"unknown constraint {key!r} for {scheme} resources")
        result[key] = normalize(key, value)
    return result
