"""What the three scheme validators have in common, written once.

Each scheme's operations are a fixed set of names in one spelling, its
constraints a closed map of keys (each with its own normalizer and meet rule),
and its check must never raise. A subclass states those as class attributes
and implements :meth:`SchemeValidator.decide`; the algebra's plumbing and the
fail-closed wrapper live here.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Callable, Iterable, Mapping
from typing import Any, ClassVar

from capsup.validators._common import (
    Normalizer,
    meet_keys,
    normalize_keys,
    normalize_operation_names,
)
from capsup.validators.base import Decision, Refusal, Use, Validator, deny, validator_failed

__all__ = ["SchemeValidator"]


class SchemeValidator(Validator):
    """A validator described by its vocabulary, deciding in :meth:`decide`."""

    #: The scheme's name in error messages (``file``, ``http``, ``db``).
    kind: ClassVar[str]
    #: Spells an operation name the canonical way (``str.lower``, ``str.upper``).
    fold_operation: ClassVar[staticmethod[[str], str]]
    #: The closed constraint vocabulary: how each key's value is checked...
    constraint_normalizers: ClassVar[Mapping[str, Normalizer]]
    #: ...and how two values of it combine into the stricter one.
    constraint_meets: ClassVar[Mapping[str, Callable[[Any, Any], Any]]]

    def normalize_operations(self, operations: Iterable[object]) -> frozenset[str]:
        return normalize_operation_names(operations, self.operations, self.fold_operation)

    def normalize_constraints(self, raw: Mapping[str, object]) -> dict[str, Any]:
        return normalize_keys(raw, self.constraint_normalizers, self.kind)

    def meet_constraints(
        self, first: Mapping[str, Any], second: Mapping[str, Any]
    ) -> dict[str, Any]:
        return meet_keys(first, second, self.constraint_meets)

    def check(self, resource: str, constraints: Mapping[str, Any], use: Use) -> Decision:
        try:
            return self.decide(resource, constraints, use)
        except Refusal as refusal:
            return deny(refusal.reason, str(refusal))
        except Exception as error:  # fail closed on anything unforeseen
            return validator_failed(error)

    @abstractmethod
    def decide(self, resource: str, constraints: Mapping[str, Any], use: Use) -> Decision:
        """:meth:`check` without the safety net: may raise :class:`Refusal`
        to deny with its reason; anything else it raises is a deny too."""
