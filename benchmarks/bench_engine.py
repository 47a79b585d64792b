"""pytest-benchmark view of the engine cases in :mod:`engine_cases`.

Run::

    python -m pytest benchmarks/bench_engine.py --benchmark-only [--engine-bench-mib 256]

Each case is two benchmarks in one group, its ceiling first and then the
engine; the engine test records engine / ceiling (from the best rounds) in
``extra_info`` and in a summary printed at the end of the run. Targets are not
asserted here (a loaded machine makes single ratios noisy; the report script,
``engine_report.py``, interleaves both sides and prints PASS/MISS). The churn
test asserts its file-size bound, a property rather than a speed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from churn_case import run_churn
from engine_cases import (
    Case,
    ColdRead,
    EncryptedHotRead,
    EngineBench,
    GiB,
    HotRead,
    WriteBackPut,
)
from pytest_benchmark.fixture import BenchmarkFixture

#: In the order they must run: the cold case evicts the plaintext shards.
FACTORIES: dict[str, Callable[[EngineBench], Case]] = {
    "hot-read": HotRead,
    "encrypted-hot-read": EncryptedHotRead,
    "cold-read": ColdRead,
    "write-back-put": WriteBackPut,
}


class CaseBook:
    """One instance per case for the module, finished at teardown in creation order."""

    def __init__(self, bench: EngineBench) -> None:
        self._bench = bench
        self._cases: dict[str, Case] = {}
        self.ceiling_s: dict[str, float] = {}

    def get(self, key: str) -> Case:
        if key not in self._cases:
            self._cases[key] = FACTORIES[key](self._bench)
        return self._cases[key]

    def finish(self) -> None:
        for case in self._cases.values():
            case.finish()


@pytest.fixture(scope="module")
def cases(engine_bench: EngineBench) -> Iterator[CaseBook]:
    book = CaseBook(engine_bench)
    yield book
    book.finish()


@pytest.mark.parametrize(
    ("key", "side"), [(key, side) for key in FACTORIES for side in ("ceiling", "engine")]
)
def test_case(
    benchmark: BenchmarkFixture,
    cases: CaseBook,
    bench_rounds: int,
    record_ratio: Callable[[str, int, float, float, float], None],
    key: str,
    side: str,
) -> None:
    case = cases.get(key)
    setup, run = (
        (case.setup_engine, case.engine) if side == "engine" else (case.setup_ceiling, case.ceiling)
    )
    benchmark.group = case.name
    benchmark.extra_info.update({"side": side, "nbytes": case.nbytes, "target": case.target})
    benchmark.pedantic(run, setup=setup, rounds=bench_rounds, warmup_rounds=1, iterations=1)
    assert benchmark.stats is not None
    best = benchmark.stats.stats.min
    benchmark.extra_info["gib_s"] = case.nbytes / best / GiB
    if side == "ceiling":
        cases.ceiling_s[key] = best
    elif key in cases.ceiling_s:
        ceiling = cases.ceiling_s[key]
        benchmark.extra_info["ratio"] = ceiling / best
        record_ratio(case.name, case.nbytes, best, ceiling, case.target)


def test_churn(benchmark: BenchmarkFixture, engine_bench: EngineBench) -> None:
    """Fill the hot tier to its watermark, then 5x its capacity of inserts (write-through)."""
    capacity = engine_bench.total_bytes
    benchmark.group = "churn"
    result = benchmark.pedantic(
        run_churn, args=(capacity, engine_bench.workdir), rounds=1, iterations=1
    )
    benchmark.extra_info.update(
        {
            "capacity": capacity,
            "max_file_bytes": result.max_file_bytes,
            "file_ratio": result.file_ratio,
            "throughput_ratio": result.throughput_ratio,
            "cycle_gib_s": [cycle.gib_s for cycle in result.cycles],
        }
    )
    assert result.error is None, result.error
    assert result.file_passed, (
        f"data.mdb reached {result.file_ratio:.2f}x the hot capacity (bound {result.file_target})"
    )
