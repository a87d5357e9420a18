"""The security kernel: the only writer of capability state.

A pure state machine. Every operation takes the time as an argument and the
acting :class:`~capsup.supervisor.principal.Principal` as the supervisor
proved it; it does no I/O but through the :class:`~capsup.supervisor.store.Store`,
which commits before the operation returns, and it tells audit and metrics
what happened through one event sink, synchronously, so that a denial is
recorded before the reply that reports it exists.

State kept in memory for the hot path:

- ``_live``: id -> capability, for every capability that may still validate;
- ``_children`` and ``_by_holder``: the delegation tree and who holds what,
  so that cascades and per-agent revocation are proportional to their size;
- ``_tombstones``: ids that were revoked or expired, so a late use answers
  ``revoked``/``expired`` (after a restart too) instead of ``unknown_capability``;
  oldest first, and at most ``max_tombstones`` of them: grant/revoke churn
  must not grow memory without bound, and a forgotten id is still refused
  (as ``unknown_capability``);
- ``_expiry``: a heap of (expires_at, id), so a sweep costs what it expires;
- ``_buckets``: the token buckets a use must spend, the capability's own and
  every rate-limited ancestor's;
- ``_checks``: each capability's validator check, bound to its resource and
  its constraints as the validator prepared them (its deny list, compiled
  at the first check and kept), so a use never looks the validator up, and
  only a capability's first use compiles anything;
- ``_injections``: the credentials (supervisor/injection.py) of capabilities
  granted under a ceiling that ``inject``s headers, and of their delegates;
  never persisted, so a capability loaded at start has none (agents' ones
  are revoked at start anyway, and a credential must not reach the disk).
"""

from __future__ import annotations

import contextlib
import functools
import gc
import heapq
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, NoReturn

from capsup.agents.capability import Capability
from capsup.agents.errors import (
    CapsupError,
    DelegationWidening,
    DeniedByPolicy,
    Expired,
    InternalError,
    NotAuthorized,
    NotHolder,
    OperationNotAllowed,
    RateLimited,
    Revoked,
    UnknownAgent,
    UnknownCapability,
)
from capsup.agents.errors import (
    ConstraintViolation as ConstraintViolationError,
)
from capsup.supervisor.derive import (
    CapabilityRequest,
    Delegation,
    delegate_from,
    grant_within,
)
from capsup.supervisor.events import Event, EventSink, EventType, ViolationKind, record_all
from capsup.supervisor.injection import Injection
from capsup.supervisor.policy import Ceiling, Policy
from capsup.supervisor.principal import Principal
from capsup.supervisor.ratelimit import TokenBucket, spend_all
from capsup.supervisor.store import EndState, Store, Tombstone
from capsup.validators import Decision, Use, ValidatorRegistry, validator_failed

__all__ = ["CapabilityRequest", "Delegation", "Kernel"]

_NO_BUCKETS: tuple[TokenBucket, ...] = ()
#: How often (seconds of kernel time) sweeps also prune old tombstones.
_PRUNE_EVERY = 60.0


class Kernel:
    """Grant, delegate, validate and revoke capabilities."""

    def __init__(
        self,
        *,
        store: Store,
        policy: Policy,
        validators: ValidatorRegistry,
        sink: EventSink | None = None,
        tombstone_retention: float = 86400.0,
        max_tombstones: int = 200_000,
        max_per_holder: int = 10_000,
    ) -> None:
        if max_tombstones < 1:
            raise ValueError("max_tombstones must be at least 1")
        self._store = store
        self._policy = policy
        self._validators = validators
        self._sink = sink
        self._retention = tombstone_retention
        self._max_tombstones = max_tombstones
        self._max_per_holder = max_per_holder
        self._live: dict[str, Capability] = {}
        self._children: dict[str, list[str]] = {}
        self._by_holder: dict[str, set[str]] = {}
        self._tombstones: OrderedDict[str, Tombstone] = OrderedDict()
        self._expiry: list[tuple[float, str]] = []
        self._buckets: dict[str, tuple[TokenBucket, ...]] = {}
        self._checks: dict[str, Callable[[Use], Decision]] = {}
        self._injections: dict[str, Injection] = {}
        self._principals: dict[str, Principal] = {}
        self._ceiling_buckets: dict[str, dict[int, TokenBucket]] = {}
        self._parent_agent: dict[str, str | None] = {}
        self._last_prune = float("-inf")

    # -- life -----------------------------------------------------------------

    def start(self, *, now: float, trace_id: str) -> None:
        """Load the store, rebuild the in-memory state, expire what ran out."""
        self._emit(Event(EventType.KERNEL_STARTED, now, trace_id))
        with _collector_paused(_PAUSE_COLLECTOR_FROM):
            self._load(now, trace_id)
        self.sweep(now=now, trace_id=trace_id)

    def _load(self, now: float, trace_id: str) -> None:
        loaded = self._store.load()
        ages = sorted(loaded.tombstones.items(), key=lambda item: item[1].ended_at)
        self._tombstones = OrderedDict(ages[-self._max_tombstones :])
        for cap in loaded.live:
            self._live[cap.id] = cap
        reached = set()
        for cap in self._in_tree_order(loaded.live):
            self._index(cap, now)
            reached.add(cap.id)
        # A delegation chain that loops never reaches a root, so the walk
        # above skips it; only an edited state file can hold one. Its
        # capabilities are taken in (so the tree is whole) and revoked.
        looping = [cap for cap in loaded.live if cap.id not in reached]
        for cap in looping:
            self._index(cap, now)
        for cap in looping:
            if cap.id in self._live:  # not ended with a loop met before
                ids = list(self._subtree([cap.id]))
                self._end(ids, "revoked", now, trace_id, None, cause="corrupt_state")
        self._emit(
            Event(
                EventType.KERNEL_STATE_RESTORED,
                now,
                trace_id,
                detail={"live": len(self._live), "tombstones": len(self._tombstones)},
            )
        )

    def register_principal(self, principal: Principal, *, parent: str | None = None) -> None:
        """Make ``principal`` known, so it can be delegated to; ``parent`` is the
        agent that spawned it, who may revoke everything it holds."""
        self._principals[principal.id] = principal
        self._parent_agent[principal.id] = parent

    def forget_principal(self, principal_id: str) -> None:
        self._principals.pop(principal_id, None)
        self._ceiling_buckets.pop(principal_id, None)
        self._parent_agent.pop(principal_id, None)

    # -- queries --------------------------------------------------------------

    @property
    def store(self) -> Store:
        return self._store

    @property
    def policy(self) -> Policy:
        return self._policy

    @property
    def live_count(self) -> int:
        return len(self._live)

    def holders(self) -> set[str]:
        """Every principal id that holds a live capability."""
        return {holder for holder, ids in self._by_holder.items() if ids}

    def get(self, capability_id: str) -> Capability | None:
        return self._live.get(capability_id)

    def is_live(self, capability_id: str, now: float) -> bool:
        """Whether the capability is neither ended nor past its expiry.

        The one question a thread other than the loop may ask (a broker's
        worker, just before it acts on a use the loop validated earlier): a
        lookup in a dict the loop replaces entries of, which CPython makes
        atomic, and a read of an immutable capability. Never stale toward
        allowing: a revocation removes the entry before it returns."""
        cap = self._live.get(capability_id)
        return cap is not None and cap.expires_at > now

    def injection(self, capability_id: str) -> Injection | None:
        """The headers the HTTP broker adds to a use of this live capability:
        its root's ceiling's ``inject``, or None. For the broker only; never
        part of anything an agent is sent."""
        return self._injections.get(capability_id)

    def next_expiry(self) -> float | None:
        """When the earliest live capability expires, to schedule the next sweep."""
        while self._expiry and self._expiry[0][1] not in self._live:
            heapq.heappop(self._expiry)
        return self._expiry[0][0] if self._expiry else None

    def list_capabilities(self, principal: Principal, *, now: float) -> list[Capability]:
        """The principal's own live capabilities, oldest first."""
        caps = (self._live[i] for i in self._by_holder.get(principal.id, ()))
        return sorted((c for c in caps if c.expires_at > now), key=lambda c: c.granted_at)

    # -- grant ----------------------------------------------------------------

    def request(
        self, principal: Principal, request: CapabilityRequest, *, now: float, trace_id: str
    ) -> Capability:
        """Grant ``request`` if a policy ceiling of the principal covers it."""
        return self.request_for_plan(principal, [request], now=now, trace_id=trace_id)[0]

    def request_for_plan(
        self,
        principal: Principal,
        requests: Sequence[CapabilityRequest],
        *,
        now: float,
        trace_id: str,
    ) -> list[Capability]:
        """Grant every request or none: one denial denies the whole plan."""
        granted: list[tuple[Capability, Ceiling]] = []
        self._check_quota(principal, principal.id, len(requests), now, trace_id)
        # The records of the requests, then of the grants, in one batch (one
        # write of the trail); a refusal writes the requests before its own.
        records = [
            Event(
                EventType.CAPABILITY_REQUESTED,
                now,
                trace_id,
                principal.id,
                principal.pid,
                resource=_clip(request.resource),
                operation=_clip(request.operations),
            )
            for request in requests
        ]
        for i, request in enumerate(requests):
            try:
                granted.append(
                    grant_within(
                        request,
                        self._policy.ceilings_for(principal.name),
                        self._validators,
                        principal.id,
                        now,
                    )
                )
            except BaseException as error:
                self._record_all(records[: i + 1])
                if not isinstance(error, CapsupError):
                    raise
                self._refuse(
                    error,
                    EventType.CAPABILITY_DENIED,
                    now,
                    trace_id,
                    principal,
                    resource=_clip(request.resource),
                    operation=_clip(request.operations),
                )
        # Recorded before it is committed: if the trail cannot be written,
        # nothing is granted (fail closed); a crash between the two leaves a
        # record of a grant that never took effect, never an unrecorded one.
        caps = [cap for cap, _ in granted]
        records += [
            _cap_event(EventType.CAPABILITY_GRANTED, cap, now, trace_id, principal) for cap in caps
        ]
        self._record_all(records)
        self._persist_new(caps, trace_id)
        for cap, ceiling in granted:
            bucket = self._ceiling_bucket(principal.id, ceiling, now)
            self._index(cap, now, bucket, ceiling.inject)
        return caps

    def delegate(
        self,
        principal: Principal,
        capability_id: str,
        delegation: Delegation,
        *,
        now: float,
        trace_id: str,
    ) -> Capability:
        """Hand a narrower copy of a capability to another known principal."""
        parent = self._usable(
            principal, capability_id, None, now, trace_id, EventType.CAPABILITY_DENIED
        )
        if delegation.to not in self._principals:
            self._refuse(
                UnknownAgent(f"no agent {_clip(delegation.to)!r} to delegate to"),
                EventType.CAPABILITY_DENIED,
                now,
                trace_id,
                principal,
                capability=parent,
            )
        self._check_quota(principal, delegation.to, 1, now, trace_id)
        try:
            child = delegate_from(parent, delegation, self._validators, now)
        except CapsupError as error:
            self._refuse(
                error,
                EventType.CAPABILITY_DENIED,
                now,
                trace_id,
                principal,
                capability=parent,
                violation=(
                    ViolationKind.DELEGATION_WIDENING
                    if isinstance(error, DelegationWidening)
                    else None
                ),
            )
        # Recorded before it is committed, as a grant is (see request_for_plan).
        self._emit(
            _cap_event(
                EventType.CAPABILITY_DELEGATED, child, now, trace_id, principal, to=child.holder
            )
        )
        self._persist_new([child], trace_id)
        self._index(child, now)
        return child

    # -- validate (the hot path) ----------------------------------------------

    def validate(
        self, principal: Principal, capability_id: str, use: Use, *, now: float, trace_id: str
    ) -> Capability:
        """Decide one use. Checks, in order: unknown, revoked, expired, holder,
        operation, the scheme's validator, the rate limits."""
        failed = EventType.CAPABILITY_VALIDATION_FAILED
        cap = self._usable(principal, capability_id, use.operation, now, trace_id, failed)
        if use.operation not in cap.operations:
            use = self._canonical_use(cap, use, now, trace_id, principal)
        decision = self._decide(cap, use)
        if not decision.allowed:
            error = ConstraintViolationError(
                decision.detail or decision.reason, reason=decision.reason
            )
            self._emit(
                _cap_event(
                    EventType.CONSTRAINT_VIOLATION,
                    cap,
                    now,
                    trace_id,
                    principal,
                    operation=use.operation,
                    target=_clip(use.target),
                    decision="deny",
                    reason=decision.reason,
                )
            )
            self._refuse(error, failed, now, trace_id, principal, capability=cap, use=use)
        buckets = self._buckets.get(cap.id, _NO_BUCKETS)
        if buckets and not spend_all(buckets, now):
            self._refuse(
                RateLimited("rate limit exhausted"), failed, now, trace_id, principal, cap, use
            )
        if self._sink is not None:
            self._emit(
                _cap_event(
                    EventType.CAPABILITY_VALIDATED,
                    cap,
                    now,
                    trace_id,
                    principal,
                    operation=use.operation,
                    target=_clip(use.target),
                    decision="allow",
                )
            )
        return cap

    def _decide(self, cap: Capability, use: Use) -> Decision:
        """The scheme validator's verdict. ``check`` must not raise, but a
        validator is code the kernel does not control: one that raises
        anyway denies, and the denial is recorded like any other."""
        try:
            return self._checks[cap.id](use)
        except Exception as error:
            return validator_failed(error)

    def _prepared_check(self, cap: Capability) -> Callable[[Use], Decision]:
        """``cap``'s check, with its constraints prepared once (its deny list).

        A capability whose constraints cannot be prepared (one stored by a
        version with looser limits, a validator that raises) stays in the
        tree, so that its cascade and its audit trail are intact, and every
        use of it is denied."""
        try:
            validator = self._validators.for_uri(cap.resource)
            prepared = validator.prepare_constraints(cap.constraints)
        except Exception as error:
            return functools.partial(_deny_every_use, validator_failed(error))
        return functools.partial(validator.check, cap.resource, prepared)

    def _canonical_use(
        self, cap: Capability, use: Use, now: float, trace_id: str, principal: Principal
    ) -> Use:
        """Retry the operation check with the scheme's spelling (``get`` -> ``GET``)."""
        try:
            (operation,) = self._validators.for_uri(cap.resource).normalize_operations(
                [use.operation]
            )
        except Exception:  # not an operation of the scheme, or a broken validator
            operation = None
        if operation is None or operation not in cap.operations:
            error = OperationNotAllowed(
                f"operation {_clip(use.operation)!r} is not granted by this capability"
            )
            self._refuse(
                error,
                EventType.CAPABILITY_VALIDATION_FAILED,
                now,
                trace_id,
                principal,
                capability=cap,
                use=use,
            )
        return Use(operation, use.target, use.size, use.statement)

    # -- revoke ---------------------------------------------------------------

    def revoke(
        self, principal: Principal, capability_id: str, *, now: float, trace_id: str
    ) -> list[str]:
        """Revoke a capability and, before returning, everything delegated from it.

        Allowed for its holder, the holder of any ancestor, and the operator."""
        cap = self._usable(principal, capability_id, None, now, trace_id, None)
        if not (principal.is_operator or self._holds_cap_or_ancestor(principal.id, cap)):
            self._refuse(
                NotAuthorized("only the holder, an ancestor's holder or the operator may revoke"),
                EventType.CAPABILITY_DENIED,
                now,
                trace_id,
                principal,
                capability=cap,
                violation=ViolationKind.NOT_AUTHORIZED,
            )
        ids = list(self._subtree([cap.id]))
        self._end(ids, "revoked", now, trace_id, principal, cause="revoked")
        return ids

    def revoke_all_for_agent(
        self,
        principal: Principal,
        agent_id: str,
        *,
        now: float,
        trace_id: str,
        cause: str = "revoked",
    ) -> list[str]:
        """Revoke everything ``agent_id`` holds and everything delegated from it.

        Allowed for the operator, the agent itself and the agents that spawned
        it (its parent, transitively). ``cause`` is recorded (``holder_exited``
        when the watcher calls this for a dead agent)."""
        if agent_id not in self._principals and agent_id not in self._by_holder:
            self._refuse(
                UnknownAgent(f"no agent {_clip(agent_id)!r}"),
                EventType.CAPABILITY_DENIED,
                now,
                trace_id,
                principal,
            )
        if not (principal.is_operator or self._is_self_or_ancestor(principal.id, agent_id)):
            self._refuse(
                NotAuthorized("only the agent, its parent agents or the operator may do that"),
                EventType.CAPABILITY_DENIED,
                now,
                trace_id,
                principal,
                violation=ViolationKind.NOT_AUTHORIZED,
            )
        ids = list(self._subtree(self._by_holder.get(agent_id, ())))
        self._end(ids, "revoked", now, trace_id, principal, cause=cause)
        return ids

    def sweep(self, *, now: float, trace_id: str) -> list[str]:
        """Expire every capability whose time is up (their delegated descendants
        expire no later, and go with them); now and then prune old tombstones."""
        due = []
        while self._expiry and self._expiry[0][0] <= now:
            _, cap_id = heapq.heappop(self._expiry)
            if cap_id in self._live:
                due.append(cap_id)
        ids = list(self._subtree(due))
        if ids:
            self._end(ids, "expired", now, trace_id, None, cause="expired")
        if now - self._last_prune >= _PRUNE_EVERY:
            self._prune(now - self._retention)
            self._last_prune = now
        return ids

    # -- internals ------------------------------------------------------------

    def _usable(
        self,
        principal: Principal,
        capability_id: str,
        operation: str | None,
        now: float,
        trace_id: str,
        failure: EventType | None,
    ) -> Capability:
        """The live capability ``capability_id``, checked for existence, revocation,
        expiry and (unless ``failure`` is None, as for revoke) the holder."""
        failure_event = failure or EventType.CAPABILITY_DENIED
        cap = self._live.get(capability_id)
        if cap is None:
            tomb = self._tombstones.get(capability_id) if isinstance(capability_id, str) else None
            error: CapsupError
            if tomb is None:
                error = UnknownCapability("no such capability")
            elif tomb.state == "revoked":
                error = Revoked("the capability was revoked")
            else:
                error = Expired("the capability expired")
            error.capability_id = _clip(capability_id)
            self._refuse(
                error,
                failure_event,
                now,
                trace_id,
                principal,
                operation=operation,
                violation=ViolationKind.FORGED_ID if tomb is None else None,
            )
        if now >= cap.expires_at:
            self._end(list(self._subtree([cap.id])), "expired", now, trace_id, None, "expired")
            self._refuse(
                Expired("the capability expired"),
                failure_event,
                now,
                trace_id,
                principal,
                capability=cap,
                operation=operation,
            )
        if failure is not None and cap.holder != principal.id:
            self._refuse(
                NotHolder("the capability is held by another principal"),
                failure_event,
                now,
                trace_id,
                principal,
                capability=cap,
                operation=operation,
                violation=ViolationKind.STOLEN_ID,
            )
        return cap

    def _refuse(
        self,
        error: CapsupError,
        event: EventType,
        now: float,
        trace_id: str,
        principal: Principal,
        capability: Capability | None = None,
        use: Use | None = None,
        *,
        resource: str | None = None,
        operation: str | None = None,
        violation: ViolationKind | None = None,
    ) -> NoReturn:
        """Record a refusal (and a violation, if it is one), then raise it."""
        error.trace_id = trace_id
        if capability is not None:
            error.capability_id = capability.id
            resource = capability.resource
        if use is not None:
            operation = use.operation
        if self._sink is not None:
            common: dict[str, Any] = {
                "principal": principal.id,
                "pid": principal.pid,
                "capability_id": error.capability_id,
                "parent_id": capability.parent_id if capability else None,
                "resource": resource,
                "operation": _clip(operation) if operation is not None else None,
                "decision": "deny",
            }
            if violation is not None:
                self._emit(
                    Event(
                        EventType.SECURITY_VIOLATION,
                        now,
                        trace_id,
                        reason=error.code,
                        detail={"kind": violation.value, "message": error.message},
                        **common,
                    )
                )
            detail: dict[str, Any] = {"message": error.message}
            if use is not None:
                detail["target"] = _clip(use.target)
            self._emit(
                Event(
                    event, now, trace_id, reason=error.reason or error.code, detail=detail, **common
                )
            )
        raise error

    def _persist_new(self, caps: Sequence[Capability], trace_id: str) -> None:
        if not caps:
            return
        try:
            self._store.insert(caps)
        except Exception as error:  # nothing was granted, whatever the cause
            raise InternalError(
                f"the state store refused the write: {error}", trace_id=trace_id
            ) from error

    def _check_quota(
        self, principal: Principal, holder: str, adding: int, now: float, trace_id: str
    ) -> None:
        """Bound the live capabilities one holder may have: each costs memory
        here and a record when it ends, so an agent must not mint millions."""
        if len(self._by_holder.get(holder, ())) + adding > self._max_per_holder:
            self._refuse(
                DeniedByPolicy(
                    f"{holder} would hold more than {self._max_per_holder} live capabilities"
                ),
                EventType.CAPABILITY_DENIED,
                now,
                trace_id,
                principal,
            )

    def _ceiling_bucket(self, holder: str, ceiling: Ceiling, now: float) -> TokenBucket | None:
        """The bucket a ceiling's ``rate_limit`` gives one principal: shared by
        every grant under that ceiling, so asking again never buys a fresh rate."""
        limit = ceiling.constraints.get("rate_limit")
        if limit is None:
            return None
        buckets = self._ceiling_buckets.setdefault(holder, {})
        bucket = buckets.get(id(ceiling))
        if bucket is None:
            bucket = TokenBucket(int(limit["requests"]), float(limit["per_seconds"]), now)
            buckets[id(ceiling)] = bucket
        return bucket

    def _index(
        self,
        cap: Capability,
        now: float,
        root_bucket: TokenBucket | None = None,
        root_injection: Injection | None = None,
    ) -> None:
        """Add a capability (persisted, or loaded) to the in-memory state;
        ``root_bucket`` and ``root_injection`` are its ceiling's shared bucket
        and credentials, for a new root grant. A delegate takes its parent's."""
        self._live[cap.id] = cap
        self._by_holder.setdefault(cap.holder, set()).add(cap.id)
        if cap.parent_id is not None:
            self._children.setdefault(cap.parent_id, []).append(cap.id)
        heapq.heappush(self._expiry, (cap.expires_at, cap.id))
        self._checks[cap.id] = self._prepared_check(cap)
        if cap.parent_id is not None:
            inherited = self._buckets.get(cap.parent_id, _NO_BUCKETS)
        else:
            inherited = _NO_BUCKETS if root_bucket is None else (root_bucket,)
        limit = cap.constraints.get("rate_limit")
        if limit is not None:
            own = TokenBucket(int(limit["requests"]), float(limit["per_seconds"]), now)
            self._buckets[cap.id] = (*inherited, own)
        elif inherited:
            self._buckets[cap.id] = inherited
        injection = self._injections.get(cap.parent_id) if cap.parent_id else root_injection
        if injection is not None:
            self._injections[cap.id] = injection

    def _end(
        self,
        ids: list[str],
        state: EndState,
        now: float,
        trace_id: str,
        principal: Principal | None,
        cause: str,
    ) -> None:
        """Persist, forget, then record a set of capabilities (subtrees).

        An ending always takes effect in memory, whatever fails around it:
        neither a store that refuses the write nor an audit trail that cannot
        be written may leave part of a subtree valid (fail closed). Failures
        are raised afterwards; an ending the store missed is redone at the next
        start, which revokes every agent-held capability it finds."""
        if not ids:
            return
        with _collector_paused(len(ids)):
            stored: Exception | None = None
            try:
                self._store.end(ids, state, now)
            except Exception as error:  # any failure: the capabilities still go
                stored = error
            ending: set[str] = set(ids)
            tombstone = Tombstone(state, now)  # immutable, so one serves them all
            ended = []
            for cap_id in ids:
                cap = self._live.pop(cap_id)
                ended.append(cap)
                self._tombstones[cap_id] = tombstone
                held = self._by_holder.get(cap.holder)
                if held is not None:
                    held.discard(cap_id)
                    if not held:
                        del self._by_holder[cap.holder]
                self._children.pop(cap_id, None)
                # Within a subtree the parent's list goes as a whole; only a root's
                # entry in a surviving parent's list needs removing.
                if cap.parent_id is not None and cap.parent_id not in ending:
                    siblings = self._children[cap.parent_id]
                    siblings.remove(cap_id)
                    if not siblings:
                        del self._children[cap.parent_id]
                self._buckets.pop(cap_id, None)
                self._checks.pop(cap_id, None)
                self._injections.pop(cap_id, None)
            for _ in range(len(self._tombstones) - self._max_tombstones):
                self._tombstones.popitem(last=False)
            if self._sink is not None:
                revoked = state == "revoked"
                event = EventType.CAPABILITY_REVOKED if revoked else EventType.CAPABILITY_EXPIRED
                # The first record of a cascade says how large it was (for the
                # cascade-size histogram); the rest name the capability it
                # started from, and all share the revocation's trace id. One
                # batch: one write and one kept head for the whole cascade.
                first = {"cascade_size": len(ids)}
                rest = {"cascade_of": ids[0]}
                record_all(
                    self._sink,
                    [
                        _cap_event(
                            event,
                            cap,
                            now,
                            trace_id,
                            principal,
                            cause=cause,
                            **(first if cap.id == ids[0] else rest),
                        )
                        for cap in ended
                    ],
                )
            if stored is not None:
                raise InternalError(
                    f"the state store refused the write: {stored}", trace_id=trace_id
                ) from stored

    def _prune(self, before: float) -> None:
        self._store.prune_tombstones(before, keep=self._max_tombstones)
        while self._tombstones:
            oldest = next(iter(self._tombstones.values()))
            if oldest.ended_at >= before:
                break
            self._tombstones.popitem(last=False)

    def _subtree(self, roots: Iterable[str]) -> Iterator[str]:
        """Every live id in the subtrees of ``roots``, parents before children."""
        seen: set[str] = set()
        stack = list(roots)
        stack.reverse()
        while stack:
            cap_id = stack.pop()
            if cap_id in seen or cap_id not in self._live:
                continue
            seen.add(cap_id)
            yield cap_id
            stack.extend(reversed(self._children.get(cap_id, ())))

    def _in_tree_order(self, caps: Sequence[Capability]) -> Iterator[Capability]:
        """Loaded capabilities, each after its parent (ids are random, so row
        order says nothing); a parent that is gone makes its child a root."""
        children: dict[str, list[Capability]] = {}
        roots = []
        for cap in caps:
            if cap.parent_id is not None and cap.parent_id in self._live:
                children.setdefault(cap.parent_id, []).append(cap)
            else:
                roots.append(cap)
        stack = roots
        while stack:
            cap = stack.pop()
            yield cap
            stack.extend(children.get(cap.id, ()))

    def _holds_cap_or_ancestor(self, principal_id: str, cap: Capability) -> bool:
        current: Capability | None = cap
        while current is not None:
            if current.holder == principal_id:
                return True
            current = self._live.get(current.parent_id) if current.parent_id else None
        return False

    def _is_self_or_ancestor(self, principal_id: str, agent_id: str) -> bool:
        current: str | None = agent_id
        seen = set()
        while current is not None and current not in seen:
            if current == principal_id:
                return True
            seen.add(current)
            current = self._parent_agent.get(current)
        return False

    def _emit(self, event: Event) -> None:
        if self._sink is not None:
            self._sink(event)

    def _record_all(self, events: Sequence[Event]) -> None:
        if self._sink is not None:
            record_all(self._sink, events)


#: Work on this many capabilities at once (a cascade, a load) pauses the
#: cyclic garbage collector.
_PAUSE_COLLECTOR_FROM = 1000


@contextlib.contextmanager
def _collector_paused(items: int) -> Iterator[None]:
    """Pause the cyclic garbage collector while ``items`` capabilities are
    loaded or ended, when they are many.

    Such work allocates a few container objects per capability (records,
    their details, index entries), which sets off collections that each walk
    every object the kernel holds: a cascade of 100,000 spent about half its
    time there. The state it builds holds no reference cycles to collect, and
    the pause ends with the call, so nothing is held back for long."""
    if items < _PAUSE_COLLECTOR_FROM or not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def _deny_every_use(decision: Decision, use: Use) -> Decision:
    return decision


def _cap_event(
    event: EventType,
    cap: Capability,
    now: float,
    trace_id: str,
    principal: Principal | None,
    *,
    operation: str | None = None,
    decision: str | None = None,
    reason: str | None = None,
    **detail: Any,
) -> Event:
    # Positional: keywords make a named tuple half again as dear to build,
    # and this builds the record of every validation.
    return Event(
        event,
        now,
        trace_id,
        principal.id if principal else None,
        principal.pid if principal else None,
        cap.id,
        cap.parent_id,
        cap.resource,
        operation,
        decision,
        reason,
        {"holder": cap.holder, **detail},
    )


def _clip(value: object, limit: int = 512) -> Any:
    """Bound what a hostile client can make us write into the audit trail."""
    if isinstance(value, str):
        return value if len(value) <= limit else value[:limit] + "..."
    if isinstance(value, list | tuple):
        return ",".join(_clip(v, 64) if isinstance(v, str) else repr(v)[:64] for v in value[:32])
    return repr(value)[:limit]
