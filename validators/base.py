"""The interface between the kernel and the per-scheme validators.

The kernel decides whether a capability covers an operation; a validator
decides whether a concrete resource really lies inside the capability's
resource and constraints. Validators are pure: they never grant, never touch
kernel state, and import neither the supervisor nor the agent SDK. Anything a
validator cannot parse, resolve or decide is a deny.

One validator object serves each URI scheme. Besides :meth:`Validator.check`,
which decides a concrete use, it owns the scheme's algebra, which the kernel
uses for policy ceilings and delegation:

- :meth:`~Validator.canonical_resource` parses a capability's resource once;
- :meth:`~Validator.resource_within` compares two canonical resources segment
  by segment (never by string prefix);
- :meth:`~Validator.normalize_constraints` checks the scheme's closed
  constraint vocabulary (an unknown or ill-typed key is an error), and
  :meth:`~Validator.prepare_constraints` readies a capability's constraints
  for its checks;
- :meth:`~Validator.rebase_constraints` restates constraints for a narrower
  resource, :meth:`~Validator.meet_constraints` gives the strictest of two constraint
  maps, and :meth:`~Validator.constraints_within` tells whether one is at
  least as strict as another.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

__all__ = [
    "ALLOW",
    "COMMON_CONSTRAINTS",
    "ConstraintError",
    "Decision",
    "OperationError",
    "Refusal",
    "ResourceError",
    "Use",
    "Validator",
    "ValidatorRegistry",
    "deny",
    "scheme_of",
]

#: Constraint keys every scheme accepts; the kernel enforces them itself.
COMMON_CONSTRAINTS = frozenset({"max_delegation_depth"})


class ResourceError(ValueError):
    """A resource URI cannot be parsed or is not allowed in a capability."""


class OperationError(ValueError):
    """An operation is not one of the scheme's operations."""


class ConstraintError(ValueError):
    """A constraint map has an unknown key or an ill-typed value."""


class Refusal(ValueError):
    """Raised inside a validator to deny a use; ``reason`` is the reason code
    the denial carries (``str(error)`` its detail)."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Decision:
    """A validator's verdict. ``reason`` is a stable snake_case code when denied."""

    allowed: bool
    reason: str = ""
    detail: str = ""


ALLOW = Decision(True)


def deny(reason: str, detail: str = "") -> Decision:
    """A denial with a stable reason code and a human-readable detail."""
    return Decision(False, reason, detail)


def validator_failed(error: Exception) -> Decision:
    """The verdict on a validator that raised instead of deciding: a denial
    (``validator_error``), so that a bug in a check can only ever refuse."""
    return deny("validator_error", f"{type(error).__name__}: {error}")


@dataclass(frozen=True, slots=True)
class Use:
    """One concrete use of a capability that the kernel asks a validator about.

    ``target`` is the concrete resource (a path or file URI, an URL, a
    ``db://NAME``); ``size`` is the number of bytes to be written or sent when
    the caller knows it; ``statement`` is the SQL text for ``db://``.
    """

    operation: str
    target: str
    size: int | None = None
    statement: str | None = None


class Validator(ABC):
    """The validator of one or more URI schemes."""

    #: Lower-case URI schemes this validator serves.
    schemes: ClassVar[frozenset[str]]
    #: The canonical spelling of every operation of the scheme.
    operations: ClassVar[frozenset[str]]
    #: Constraint keys whose meet is a union (a deny list): a delegation that
    #: names one adds to the parent's value, which it could never loosen.
    additive_constraints: ClassVar[frozenset[str]] = frozenset()

    @abstractmethod
    def canonical_resource(self, uri: str) -> str:
        """Parse a capability resource into its one canonical URI string.

        Raises :class:`ResourceError`. Two resources that name the same thing
        have the same canonical form, so the kernel may compare them as strings.
        """

    @abstractmethod
    def resource_within(self, inner: str, outer: str) -> bool:
        """Whether canonical resource ``inner`` lies within canonical ``outer``."""

    @abstractmethod
    def normalize_operations(self, operations: Iterable[object]) -> frozenset[str]:
        """Canonical spellings of ``operations``; raises :class:`OperationError`."""

    @abstractmethod
    def normalize_constraints(self, raw: Mapping[str, object]) -> dict[str, Any]:
        """Check and normalize the scheme's constraints.

        ``raw`` never holds the :data:`COMMON_CONSTRAINTS` (the kernel takes
        them out first). Raises :class:`ConstraintError` naming the key.
        """

    @abstractmethod
    def meet_constraints(
        self, first: Mapping[str, Any], second: Mapping[str, Any]
    ) -> dict[str, Any]:
        """The strictest map that satisfies both (normalized) inputs."""

    def rebase_constraints(
        self, constraints: Mapping[str, Any], outer: str, inner: str
    ) -> dict[str, Any]:
        """``constraints`` written for canonical resource ``outer``, restated
        for ``inner`` (within it) so that they limit the same things.

        The kernel calls this before it meets or compares the constraints of
        two different resources. Raises :class:`ConstraintError` when the
        constraints forbid all of ``inner``. The default is for schemes whose
        constraints do not depend on where the resource starts."""
        return dict(constraints)

    def constraints_within(self, child: Mapping[str, Any], parent: Mapping[str, Any]) -> str | None:
        """``None`` if ``child`` is at least as strict as ``parent`` on every key,
        else the first key on which it is wider (a key the parent has and the
        child lacks counts as wider)."""
        met = self.meet_constraints(child, parent)
        for key in sorted(set(met) | set(child)):
            if met.get(key) != child.get(key):
                return key
        return None

    def check_held_constraints(self, constraints: Mapping[str, Any]) -> None:
        """Raise :class:`ConstraintError` if ``constraints`` are more than one
        capability may hold.

        The kernel calls this on the constraints of every capability it
        makes, whichever way they came to be: a meet adds lists together and
        a rebase restates them, so limits on what a request names do not
        bound what a capability ends up holding. The default holds anything."""
        return None

    def prepare_constraints(self, constraints: Mapping[str, Any]) -> Mapping[str, Any]:
        """``constraints`` (normalized) in the form :meth:`check` reads fastest.

        The kernel calls this once, when it takes a capability in, and hands
        the result to every :meth:`check` of that capability, so that work a
        check would otherwise repeat on each use (compiling deny globs) can
        be kept with the capability, done at its first check, not in a cache
        other capabilities can evict. May raise: the kernel then denies
        every use of the capability. The default is the constraints as they
        are."""
        return constraints

    @abstractmethod
    def check(self, resource: str, constraints: Mapping[str, Any], use: Use) -> Decision:
        """Decide one concrete use against a capability's canonical resource and
        constraints, normalized or prepared (:meth:`prepare_constraints`). The
        operation was already checked to be granted. Never raises for hostile
        input: what cannot be decided is a deny."""


def scheme_of(uri: str) -> str:
    """The lower-cased scheme of ``uri``; raises :class:`ResourceError`."""
    scheme, sep, _ = uri.partition("://")
    if not sep or not scheme.isascii() or not scheme.isalpha():
        raise ResourceError(f"not a resource URI with a scheme: {uri[:200]!r}")
    return scheme.lower()


class ValidatorRegistry:
    """Scheme -> validator; the only way the kernel reaches a validator."""

    def __init__(self, validators: Iterable[Validator]) -> None:
        self._by_scheme: dict[str, Validator] = {}
        for validator in validators:
            for scheme in validator.schemes:
                if scheme in self._by_scheme:
                    raise ValueError(f"two validators claim the scheme {scheme!r}")
                self._by_scheme[scheme] = validator

    @property
    def schemes(self) -> frozenset[str]:
        return frozenset(self._by_scheme)

    def for_uri(self, uri: str) -> Validator:
        """The validator of ``uri``'s scheme; raises :class:`ResourceError`."""
        scheme = scheme_of(uri)
        try:
            return self._by_scheme[scheme]
        except KeyError:
            raise ResourceError(f"no validator for the scheme {scheme!r}") from None
