"""Plain-number counters and histograms export what prometheus_client's would."""

from __future__ import annotations

import threading

import pytest
from capsup.supervisor.metric_families import (
    OTHER,
    CounterFamily,
    HistogramFamily,
    PlainCollector,
)
from capsup.supervisor.metrics import LATENCY_BUCKETS
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.samples import Sample

LABELS = ["a", "b"]


def samples(registry: CollectorRegistry) -> list[Sample]:
    """Every sample but ``_created`` (a clock reading), in a stable order."""
    found = [
        Sample(s.name, s.labels, s.value)
        for family in registry.collect()
        for s in family.samples
        if not s.name.endswith("_created")
    ]
    return sorted(found, key=lambda s: (s.name, sorted(s.labels.items())))


def assert_exported_alike(
    family: CounterFamily | HistogramFamily,
    reference: Counter | Histogram,
    theirs: CollectorRegistry,
    updates: list[tuple[str, float]],
) -> None:
    """Feed ``updates`` (label, amount) to both; our family counts a label
    outside the set as ``other``, which the library is told explicitly."""
    ours = CollectorRegistry()
    ours.register(PlainCollector([family]))
    for label in [*LABELS, OTHER]:
        reference.labels(label)
    for label, amount in updates:
        series = reference.labels(label if label in LABELS else OTHER)
        if isinstance(family, HistogramFamily):
            series.observe(amount)
            family.observe(amount, label)
        else:
            series.inc(amount)
            family.inc(label, int(amount))
    assert samples(ours) == samples(theirs)


LABEL_OR_STRANGER = st.sampled_from([*LABELS, "stranger"])


@given(
    st.lists(
        st.tuples(
            LABEL_OR_STRANGER,
            st.one_of(
                st.sampled_from(LATENCY_BUCKETS),  # exactly on a bound: le is inclusive
                st.floats(min_value=0.0, max_value=2.0, allow_nan=False),
            ),
        ),
        max_size=50,
    )
)
def test_a_histogram_exports_what_prometheus_client_would(
    observations: list[tuple[str, float]],
) -> None:
    theirs = CollectorRegistry()
    reference = Histogram("h_seconds", "doc", ["op"], buckets=LATENCY_BUCKETS, registry=theirs)
    family = HistogramFamily("h_seconds", "doc", LATENCY_BUCKETS, "op", LABELS)
    assert_exported_alike(family, reference, theirs, observations)


@given(st.lists(st.tuples(LABEL_OR_STRANGER, st.integers(0, 1000))))
def test_a_counter_exports_what_prometheus_client_would(counts: list[tuple[str, int]]) -> None:
    theirs = CollectorRegistry()
    reference = Counter("c", "doc", ["kind"], registry=theirs)
    family = CounterFamily("c", "doc", "kind", LABELS)
    assert_exported_alike(family, reference, theirs, [(k, float(n)) for k, n in counts])


def test_a_closed_counter_has_no_other_and_ignores_strangers() -> None:
    registry = CollectorRegistry()
    family = CounterFamily("c", "doc", "kind", LABELS, other=False)
    registry.register(PlainCollector([family]))
    family.inc("a")
    family.inc("stranger")
    assert {s.labels["kind"]: s.value for s in samples(registry)} == {"a": 1.0, "b": 0.0}


def test_unlabelled_families_export_one_series() -> None:
    registry = CollectorRegistry()
    counter = CounterFamily("records", "doc")
    histogram = HistogramFamily("size", "doc", [1, 10])
    registry.register(PlainCollector([counter, histogram]))
    counter.inc(amount=2)
    counter.inc("stray", 1)  # a label it does not have: still its one series
    histogram.observe(10, "stray")
    assert registry.get_sample_value("records_total") == 3
    assert registry.get_sample_value("size_bucket", {"le": "1.0"}) == 0
    assert registry.get_sample_value("size_bucket", {"le": "10.0"}) == 1
    assert registry.get_sample_value("size_count") == 1
    assert registry.get_sample_value("records_created") is not None


@pytest.mark.parametrize("bad", [[], [2, 1], [1, 1], [1, float("inf")]])
def test_buckets_must_be_finite_distinct_and_increasing(bad: list[float]) -> None:
    with pytest.raises(ValueError, match="buckets"):
        HistogramFamily("h", "doc", bad)


def test_a_scrape_on_another_thread_sees_whole_numbers() -> None:
    """The loop updates while a scraper reads: no error, and the last scrape
    after the updates sees every one of them."""
    registry = CollectorRegistry()
    counter = CounterFamily("c", "doc", "kind", LABELS)
    histogram = HistogramFamily("h", "doc", LATENCY_BUCKETS, "op", LABELS)
    registry.register(PlainCollector([counter, histogram]))
    stop = threading.Event()
    errors: list[BaseException] = []

    def scrape() -> None:
        try:
            while not stop.is_set():
                for s in samples(registry):
                    assert s.value >= 0
        except BaseException as error:  # reported below, on the test's thread
            errors.append(error)

    scraper = threading.Thread(target=scrape)
    scraper.start()
    try:
        for n in range(20_000):
            counter.inc(LABELS[n % 2])
            histogram.observe(n * 1e-6, LABELS[n % 2])
    finally:
        stop.set()
        scraper.join()
    assert not errors
    assert registry.get_sample_value("c_total", {"kind": "a"}) == 10_000
    assert registry.get_sample_value("h_count", {"op": "b"}) == 10_000
