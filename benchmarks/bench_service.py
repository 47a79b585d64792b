"""pytest-benchmark view of the service cases in :mod:`service_cases`.

Run::

    python -m pytest benchmarks/bench_service.py --benchmark-only [--service-bench-mib 256]

Not collected by the default test run (``benchmarks/`` is not in
``testpaths``). Each case is two benchmarks in one group, its ceiling first and
then tierstore; the tierstore test records tierstore / ceiling (from the best
rounds) in ``extra_info`` and in the summary printed at the end of the run.
Ratio targets are not asserted here (a loaded machine makes single ratios
noisy; ``service_report.py`` interleaves both sides and prints PASS/MISS). The
memory case asserts its bound, a property rather than a speed: the server's
peak VmRSS while ``--service-bench-clients`` processes stream one
``--service-bench-large-mib`` shard stays under 512 MiB. It runs last: it
restarts the server.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from engine_cases import Case, GiB, MiB
from pytest_benchmark.fixture import BenchmarkFixture
from service_cases import (
    ArchiveGet,
    BareTlsCost,
    EncryptedHotGet,
    HotGet,
    ServiceBench,
    ServicePut,
    run_memory_case,
)

FACTORIES: dict[str, Callable[[ServiceBench], Case]] = {
    "hot-get": HotGet,
    "hot-get-local": lambda bench: HotGet(bench, path="local"),
    "archive-get": ArchiveGet,
    "archive-get-grpc": lambda bench: ArchiveGet(bench, path="grpc"),
    "encrypted-hot-get": EncryptedHotGet,
    "bare-tls-cost": BareTlsCost,
    "put": ServicePut,
}


class CaseBook:
    """One instance per case for the module, finished in creation order (before the memory
    case, or at teardown)."""

    def __init__(self, bench: ServiceBench) -> None:
        self._bench = bench
        self._cases: dict[str, Case] = {}
        self.ceiling_s: dict[str, float] = {}

    def get(self, key: str) -> Case:
        if key not in self._cases:
            self._cases[key] = FACTORIES[key](self._bench)
        return self._cases[key]

    def finish(self) -> None:
        """Finish every case made so far (once each)."""
        for case in self._cases.values():
            case.finish()
        self._cases.clear()


@pytest.fixture(scope="module")
def cases(service_bench: ServiceBench) -> Iterator[CaseBook]:
    book = CaseBook(service_bench)
    yield book
    book.finish()


@pytest.mark.parametrize(
    ("key", "side"), [(key, side) for key in FACTORIES for side in ("ceiling", "tierstore")]
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
        (case.setup_engine, case.engine)
        if side == "tierstore"
        else (case.setup_ceiling, case.ceiling)
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


def test_server_memory(
    benchmark: BenchmarkFixture,
    service_bench: ServiceBench,
    cases: CaseBook,
    request: pytest.FixtureRequest,
) -> None:
    """Server RSS while several client processes stream one large shard at once."""
    cases.finish()  # the memory case restarts the server: the ratio cases are done
    shard_bytes = request.config.getoption("--service-bench-large-mib") * MiB
    clients = request.config.getoption("--service-bench-clients")
    benchmark.group = "server memory"
    result = benchmark.pedantic(
        run_memory_case, args=(service_bench, shard_bytes, clients), rounds=1, iterations=1
    )
    benchmark.extra_info.update(
        {
            "shard_bytes": shard_bytes,
            "clients": clients,
            "peak_rss_mib": result.peak_rss / MiB,
            "peak_anon_mib": result.peak_anon / MiB,
            "peak_file_mib": result.peak_file / MiB,
            "hwm_mib": result.hwm / MiB,
            "gib_s": result.gib_s,
        }
    )
    assert result.error is None, result.error
    assert result.passed, (
        f"server peak VmRSS {max(result.peak_rss, result.hwm) / MiB:.0f} MiB (RssAnon "
        f"{result.peak_anon / MiB:.0f}, RssFile {result.peak_file / MiB:.0f}) is over "
        f"{result.limit_bytes / MiB:.0f} MiB"
    )
