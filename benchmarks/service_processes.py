"""The service benchmark's child processes: ``tierstore serve`` and the bare grpcio server.

Both run as subprocesses, so neither shares the benchmark's interpreter (and
its GIL) with the clients, and the tierstore server's memory can be read from
``/proc/<pid>/status``. Everything listens on ``127.0.0.1`` only; each child's
stdout and stderr go to a log file in the benchmark's work directory, which is
also where a start failure's message points.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from tierstore.tiers.s3 import S3Settings

__all__ = ["BareProcess", "MemoryStatus", "ServerProcess", "memory_status"]

BENCH_DIR = Path(__file__).resolve().parent
START_TIMEOUT_S = 180.0
STOP_TIMEOUT_S = 60.0


@dataclass(frozen=True, slots=True)
class MemoryStatus:
    """Memory figures of one process from ``/proc/<pid>/status`` (bytes)."""

    rss: int  # VmRSS = RssAnon + RssFile + RssShmem
    hwm: int  # VmHWM: peak VmRSS since the process started
    anon: int
    file: int
    shmem: int


def memory_status(pid: int) -> MemoryStatus:
    """Read ``/proc/<pid>/status``; raises OSError when the process is gone."""
    fields: dict[str, int] = {}
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile", "RssShmem"):
                fields[key] = int(value.split()[0]) * 1024  # kB
    return MemoryStatus(
        fields["VmRSS"], fields["VmHWM"], fields["RssAnon"], fields["RssFile"], fields["RssShmem"]
    )


def _stop(process: subprocess.Popen[bytes] | None) -> None:
    if process is None or process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _log_text(log_path: Path, offset: int) -> str:
    with log_path.open("rb") as log:
        log.seek(offset)
        return log.read().decode(errors="replace")


def _wait_for_line(
    process: subprocess.Popen[bytes],
    log_path: Path,
    offset: int,
    pattern: re.Pattern[str],
    what: str,
) -> re.Match[str]:
    """Poll the child's log past ``offset`` until ``pattern`` matches; raises if the child
    exits or takes too long."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        match = pattern.search(_log_text(log_path, offset))
        if match is not None:
            return match
        if process.poll() is not None:
            break
        time.sleep(0.05)
    tail = _log_text(log_path, offset)[-4000:]
    _stop(process)
    raise RuntimeError(f"{what} did not start (log {log_path}):\n{tail}")


class ServerProcess:
    """``tierstore serve`` (TLS, tokens: as shipped) over an external SeaweedFS archive.

    The node's data directory survives :meth:`stop`, so a new instance on the
    same directory restarts the same node (same certificate, token, shards).
    """

    _READY = re.compile(r"tierstore: serving on (\S+) .*?tierstore: ready", re.S)

    def __init__(
        self,
        data_dir: Path,
        archive: S3Settings,
        hot_capacity_bytes: int,
        log_path: Path,
        what_if: bool = False,
    ) -> None:
        self.data_dir = data_dir
        #: run through serve_what_if.py (suspected hot spots patched out in the server)
        self.what_if = what_if
        self.log_path = log_path
        self._archive = archive
        self._hot_capacity = hot_capacity_bytes
        self._process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self.address = ""

    def start(self) -> ServerProcess:
        """Start the server and return once its banner says ready."""
        program = [str(BENCH_DIR / "serve_what_if.py")] if self.what_if else ["-m", "tierstore"]
        command = [
            sys.executable,
            *program,
            "serve",
            f"--data-dir={self.data_dir}",
            "--listen=127.0.0.1:0",
            "--health-listen=127.0.0.1:0",
            "--metrics-listen=127.0.0.1:0",
            f"--s3-endpoint={self._archive.endpoint_url}",
            f"--bucket={self._archive.bucket}",
            f"--hot-capacity={self._hot_capacity}",
        ]
        environment = dict(os.environ)
        # The archive's secret travels in the environment, not on the command line.
        environment["TIERSTORE_S3_ACCESS_KEY"] = self._archive.access_key_id
        environment["TIERSTORE_S3_SECRET_KEY"] = self._archive.secret_access_key
        start_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        self._log = self.log_path.open("ab")
        self._process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=environment,
        )
        match = _wait_for_line(
            self._process, self.log_path, start_offset, self._READY, "tierstore serve"
        )
        self.address = match.group(1)
        return self

    @property
    def pid(self) -> int:
        assert self._process is not None, "not started"
        return self._process.pid

    @property
    def token(self) -> str:
        return (self.data_dir / "admin.token").read_text().strip()

    @property
    def ca_path(self) -> Path:
        return self.data_dir / "tls" / "ca.pem"

    def memory(self) -> MemoryStatus:
        return memory_status(self.pid)

    def stop(self) -> None:
        """SIGTERM (graceful stop), then SIGKILL after a minute. Idempotent."""
        _stop(self._process)
        self._process = None
        if self._log is not None:
            self._log.close()
            self._log = None


class BareProcess:
    """``bare_grpc.py`` serving the benchmark's payload from memory (TLS and plaintext ports)."""

    _READY = re.compile(r"bare: tls=(\d+) plain=(\d+)")

    def __init__(self, total_bytes: int, seed: int, cert: Path, key: Path, log_path: Path) -> None:
        self._args = [
            f"--total-bytes={total_bytes}",
            f"--seed={seed}",
            f"--cert={cert}",
            f"--key={key}",
        ]
        self.log_path = log_path
        self._process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self.tls_address = self.plain_address = ""

    def start(self) -> BareProcess:
        self._log = self.log_path.open("ab")
        self._process = subprocess.Popen(
            [sys.executable, str(BENCH_DIR / "bare_grpc.py"), *self._args],
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=BENCH_DIR,
        )
        match = _wait_for_line(self._process, self.log_path, 0, self._READY, "bare grpcio server")
        self.tls_address = f"127.0.0.1:{match.group(1)}"
        self.plain_address = f"127.0.0.1:{match.group(2)}"
        return self

    @property
    def pid(self) -> int:
        assert self._process is not None, "not started"
        return self._process.pid

    def stop(self) -> None:
        _stop(self._process)
        self._process = None
        if self._log is not None:
            self._log.close()
            self._log = None
