"""Kernel benchmark: prints its figures; docs/performance.md records them.

    .venv/bin/python benchmarks/kernel.py [--live 1000000] [--tree 100000]

Measures, in one process, on whatever machine runs it:
- validate calls per second, kernel checks only (a validator that always
  allows, so the figure is the kernel's own cost: lookup, revocation, expiry,
  holder, operation, rate-limit bookkeeping);
- durable grants per second, each committed to SQLite (WAL) before returning;
- the time to revoke a delegation tree of --tree nodes, persisted;
- validate latency with 1,000 and with --live live capabilities, and the
  resident memory with --live live capabilities.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import psutil
from capsup.supervisor.kernel import CapabilityRequest, Delegation, Kernel
from capsup.supervisor.policy import Ceiling, Policy
from capsup.supervisor.principal import Principal
from capsup.supervisor.store import Store
from capsup.validators import ALLOW, Decision, HttpValidator, Use, Validator, ValidatorRegistry

ME = Principal("agent-bench", "bench")


class AllowAll(Validator):
    """A validator that allows everything: isolates the kernel's own cost."""

    schemes = frozenset({"bench"})
    operations = frozenset({"use"})

    def canonical_resource(self, uri: str) -> str:
        return uri

    def resource_within(self, inner: str, outer: str) -> bool:
        return inner == outer or inner.startswith(outer.rstrip("/") + "/")

    def normalize_operations(self, operations: Iterable[object]) -> frozenset[str]:
        return frozenset(str(o) for o in operations)

    def normalize_constraints(self, raw: Mapping[str, object]) -> dict[str, Any]:
        return dict(raw)

    def meet_constraints(
        self, first: Mapping[str, Any], second: Mapping[str, Any]
    ) -> dict[str, Any]:
        return {**second, **first}

    def check(self, resource: str, constraints: Mapping[str, Any], use: Use) -> Decision:
        return ALLOW


BENCH_USE = Use("use", "bench://r/x")
HTTP_ROOT = "https://api.example.com/v1"
HTTP_TARGET = "https://api.example.com/v1/repos/capsup/issues?state=open"


def make_kernel(path: str) -> Kernel:
    policy = Policy(
        {
            "bench": [
                Ceiling("bench://r", frozenset({"use"}), {}, 1e9, max_delegation_depth=8),
                Ceiling(HTTP_ROOT, frozenset({"GET"}), {}, 1e9),
            ]
        }
    )
    validators = ValidatorRegistry([AllowAll(), HttpValidator()])
    # One principal holds every capability here, far past the per-agent quota.
    kernel = Kernel(store=Store(path), policy=policy, validators=validators, max_per_holder=10**8)
    kernel.start(now=time.time(), trace_id="bench")
    kernel.register_principal(ME)
    return kernel


def grant_many(
    kernel: Kernel, n: int, batch: int = 1000, resource: str = "bench://r/x", op: str = "use"
) -> list[str]:
    ids: list[str] = []
    request = CapabilityRequest(resource, [op])
    now = time.time()
    while len(ids) < n:
        size = min(batch, n - len(ids))
        caps = kernel.request_for_plan(ME, [request] * size, now=now, trace_id="b")
        ids.extend(c.id for c in caps)
    return ids


def validate_rate(kernel: Kernel, ids: list[str], seconds: float = 2.0) -> float:
    use = Use("use", "bench://r/x")
    now = time.time()
    validate = kernel.validate
    count = 0
    sample = ids[:1000]
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        for cap_id in sample:
            validate(ME, cap_id, use, now=now, trace_id="")
        count += len(sample)
    return count / (time.perf_counter() - start)


def validate_latency_us(
    kernel: Kernel, ids: list[str], n: int = 20000, use: Use = BENCH_USE
) -> tuple[float, float]:
    now = time.time()
    step = max(1, len(ids) // n)
    picks = ids[::step][:n]
    samples = []
    for cap_id in picks:
        t = time.perf_counter_ns()
        kernel.validate(ME, cap_id, use, now=now, trace_id="")
        samples.append((time.perf_counter_ns() - t) / 1000)
    samples.sort()
    return statistics.median(samples), samples[int(len(samples) * 0.95)]


def durable_grant_rate(path: str, n: int = 5000) -> float:
    kernel = make_kernel(path)
    request = CapabilityRequest("bench://r/x", ["use"])
    start = time.perf_counter()
    for _ in range(n):
        kernel.request(ME, request, now=time.time(), trace_id="")
    return n / (time.perf_counter() - start)


def revoke_tree_seconds(path: str, nodes: int) -> float:
    kernel = make_kernel(path)
    root = kernel.request(ME, CapabilityRequest("bench://r", ["use"]), now=time.time(), trace_id="")
    fanout = max(1, int(nodes**0.5))
    now = time.time()
    made = 0
    middles = []
    while made < nodes and len(middles) < fanout:
        middles.append(kernel.delegate(ME, root.id, Delegation(ME.id), now=now, trace_id=""))
        made += 1
    index = 0
    while made < nodes:
        kernel.delegate(
            ME, middles[index % len(middles)].id, Delegation(ME.id), now=now, trace_id=""
        )
        made += 1
        index += 1
    start = time.perf_counter()
    revoked = kernel.revoke(ME, root.id, now=now, trace_id="")
    elapsed = time.perf_counter() - start
    assert len(revoked) == nodes + 1
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--live", type=int, default=1_000_000)
    parser.add_argument("--tree", type=int, default=100_000)
    args = parser.parse_args()
    cpu = platform.processor() or platform.machine()
    print(f"machine: {os.cpu_count()} cores, {cpu}, Python {platform.python_version()}")
    with tempfile.TemporaryDirectory() as tmp:
        tmpdir = Path(tmp)
        rate = durable_grant_rate(str(tmpdir / "grants.db"))
        print(f"durable grants:                {rate:>12,.0f} /s   (target >= 5,000/s)")

        seconds = revoke_tree_seconds(str(tmpdir / "tree.db"), args.tree)
        print(f"revoke a {args.tree:,}-node tree:    {seconds:>12.3f} s    (target < 0.5 s)")

        kernel = make_kernel(str(tmpdir / "live.db"))
        ids = grant_many(kernel, 1000)
        rate = validate_rate(kernel, ids)
        print(f"validate, kernel checks only:  {rate:>12,.0f} /s   (target >= 300,000/s)")
        p50_small, p95_small = validate_latency_us(kernel, ids)
        print(f"validate latency, 1,000 live:  p50 {p50_small:.2f} us  p95 {p95_small:.2f} us")
        http_use = Use("GET", HTTP_TARGET)
        http_ids = grant_many(kernel, 1000, resource=HTTP_ROOT, op="GET")
        h50_small, h95_small = validate_latency_us(kernel, http_ids, use=http_use)
        print(
            f"validate latency with the real http validator, 2,000 live: p50 {h50_small:.2f} us"
            f"  p95 {h95_small:.2f} us"
        )

        rss_before = psutil.Process().memory_info().rss
        ids.extend(grant_many(kernel, args.live - len(ids)))
        rss = psutil.Process().memory_info().rss
        p50_big, p95_big = validate_latency_us(kernel, ids)
        print(
            f"validate latency, {args.live:,} live: p50 {p50_big:.2f} us  p95 {p95_big:.2f} us"
            f"  (p50 ratio {p50_big / p50_small:.2f}x, target <= 1.5x)"
        )
        h50_big, h95_big = validate_latency_us(kernel, http_ids, use=http_use)
        print(
            f"validate latency with the real http validator, {args.live:,} live:"
            f" p50 {h50_big:.2f} us  p95 {h95_big:.2f} us"
            f"  (p50 ratio {h50_big / h50_small:.2f}x, target <= 1.5x)"
        )
        print(
            f"resident memory, {args.live:,} live: {rss / 2**20:,.0f} MiB"
            f" ({(rss - rss_before) / max(1, args.live - 1000):,.0f} bytes per capability;"
            " target < 1,024 MiB)"
        )


if __name__ == "__main__":
    main()
