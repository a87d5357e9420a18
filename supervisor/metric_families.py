"""Counters and histograms kept as plain numbers, exported when scraped.

prometheus_client's ``Counter`` and ``Histogram`` may be updated from any
thread, so every update takes a lock: about 0.5 us an ``inc`` and 1 us an
``observe``. A validation made six such updates, a tenth of the
supervisor's time per request. Here the series are plain ``int`` and
``float`` values in dicts and lists, updated by one thread (the
supervisor's loop), and :class:`PlainCollector` turns them into metric
families when ``/metrics`` is scraped, on the HTTP server's thread.

That reader is safe without a lock because each update is a single store
of a new number, so a scrape reads every value whole, as of some moment
during the scrape; a histogram's buckets and sum may then be one
observation apart, as they may be with prometheus_client's own.

Every label takes its values from a closed set fixed at construction;
anything else is counted under ``other`` (which is always in the set), so a
hostile client cannot create series by choosing names.
"""

from __future__ import annotations

import bisect
import itertools
import time
from collections.abc import Iterable, Iterator, Sequence

from prometheus_client.metrics_core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

__all__ = ["OTHER", "CounterFamily", "HistogramFamily", "PlainCollector"]

#: The label value for anything outside a family's set.
OTHER = "other"


class CounterFamily:
    """A counter, with one label over a closed set of values or no label.

    Exported as ``NAME_total`` (and ``NAME_created``), as prometheus_client's
    ``Counter`` is. ``other=False`` is for a set that cannot be left (our own
    enum): there is no ``other`` series, and a value outside is not counted."""

    def __init__(
        self,
        name: str,
        documentation: str,
        label: str | None = None,
        values: Iterable[str] = (),
        *,
        other: bool = True,
    ) -> None:
        self.name = name
        self.documentation = documentation
        self._label = label
        keys = [*values, *([OTHER] if other else [])] if label is not None else [""]
        self._counts: dict[str, int] = dict.fromkeys(keys, 0)
        # Where a value outside the set goes: ``other``, nowhere, or for a
        # family without a label its one series (the label is not its own).
        self._fallback = "" if label is None else (OTHER if other else None)
        self._created = time.time()

    def inc(self, value: str = "", amount: int = 1) -> None:
        """Count ``amount`` under the label ``value`` (``other`` if outside the set)."""
        counts = self._counts
        if value in counts:
            counts[value] += amount
        elif self._fallback is not None:
            counts[self._fallback] += amount

    def collect(self) -> Metric:
        labels = [self._label] if self._label is not None else []
        family = CounterMetricFamily(self.name, self.documentation, labels=labels)
        for value, count in list(self._counts.items()):
            family.add_metric([value] if labels else [], count, created=self._created)
        return family


class _Series:
    """One histogram series: observations per bucket (not cumulative), and their sum."""

    __slots__ = ("counts", "sum")

    def __init__(self, buckets: int) -> None:
        self.counts = [0] * buckets
        self.sum = 0.0


class HistogramFamily:
    """A histogram, with one label over a closed set of values or no label.

    Exported as ``NAME_bucket`` (cumulative, ``le``), ``NAME_count``,
    ``NAME_sum`` and ``NAME_created``, as prometheus_client's ``Histogram`` is."""

    def __init__(
        self,
        name: str,
        documentation: str,
        buckets: Sequence[float],
        label: str | None = None,
        values: Iterable[str] = (),
    ) -> None:
        bounds = tuple(float(bound) for bound in buckets)
        if not bounds or list(bounds) != sorted(set(bounds)) or bounds[-1] == float("inf"):
            raise ValueError("buckets must be finite, distinct and in increasing order")
        self.name = name
        self.documentation = documentation
        self._label = label
        self._bounds = bounds
        # The library's own spelling of ``le``, so series keep their names.
        self._le = [*(floatToGoString(bound) for bound in bounds), "+Inf"]  # type: ignore[no-untyped-call]
        keys = [*values, OTHER] if label is not None else [""]
        self._series = {key: _Series(len(bounds) + 1) for key in keys}
        self._fallback = "" if label is None else OTHER
        self._created = time.time()

    def observe(self, amount: float, value: str = "") -> None:
        """Record ``amount`` under the label ``value`` (``other`` if outside the set)."""
        series = self._series.get(value) or self._series[self._fallback]
        # The first bucket whose bound is >= amount: Prometheus' ``le``.
        series.counts[bisect.bisect_left(self._bounds, amount)] += 1
        series.sum += amount

    def collect(self) -> Metric:
        labels = [self._label] if self._label is not None else []
        family = HistogramMetricFamily(self.name, self.documentation, labels=labels)
        for value, series in list(self._series.items()):
            label_values = [value] if labels else []
            cumulative = itertools.accumulate(list(series.counts))
            buckets = list(zip(self._le, cumulative, strict=True))
            family.add_metric(label_values, buckets, series.sum)
            family.add_sample(
                self.name + "_created", dict(zip(labels, label_values, strict=True)), self._created
            )
        return family


class PlainCollector(Collector):
    """Exports plain families through a ``CollectorRegistry``."""

    def __init__(self, families: Iterable[CounterFamily | HistogramFamily]) -> None:
        self._families = tuple(families)

    def collect(self) -> Iterator[Metric]:
        for family in self._families:
            yield family.collect()
