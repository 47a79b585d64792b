"""``tierstore serve``: one node — engine, archive, security material, gRPC server.

Everything lives under the data directory::

    <data-dir>/serve.lock     held by the running node (its process id inside)
    <data-dir>/hot/           the LMDB hot tier (frames, catalog, journal)
    <data-dir>/archive/       the embedded SeaweedFS archive (unless an external S3 is given)
    <data-dir>/tls/           local CA and server certificate (ca.pem for clients)
    <data-dir>/admin.token    the first admin token (mode 0600)
    <data-dir>/tokens.json    token hashes and grants (mode 0600)
    <data-dir>/master.keys    master keys for encryption at rest (mode 0600)
    <data-dir>/master.keys.lock  held while a key rotation rewrites master.keys
    <data-dir>/spool/         incoming puts until their stream completes

The master key file is created on first start so that encrypted datasets work
out of the box; keep a copy apart from the data (it is the only way to read
encrypted shards), or point ``--master-key-file`` at one you manage. A node whose
keys do not read the shards it holds (the key file lost, or the wrong one) refuses to
start (:mod:`tierstore.cli.masterkeys`).

One node per data directory: a second ``serve`` on a directory in use exits at once
with one line naming the running node's process id (LMDB itself would let both open
the hot tier, and two movers would race over one journal). The lock goes with the
process however it ends, so a node killed outright can be started again at once; the
embedded archive's weed goes with it too (:mod:`tierstore.tiers.seaweedfs`).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import math
import os
import shutil
import signal
import threading
import time
from contextlib import ExitStack
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TextIO, cast

from tierstore.cli.banner import connect_host, ensure_admin_client_certificate, print_banner
from tierstore.cli.claimwatch import ClaimWatch
from tierstore.cli.masterkeys import (
    DeferredKeyCheck,
    KeyRotation,
    check_master_key_sources,
    load_node_keys,
)
from tierstore.cli.processlimits import no_core_dumps, raise_open_file_limit
from tierstore.cli.servearchive import archive_with_flags, node_archive, warn_of_an_open_prefix
from tierstore.cli.startcheck import (
    UNCHECKED_MARK,
    open_checked_store,
    through_embedded_restarts,
)
from tierstore.config import EngineSettings, load_settings
from tierstore.crypto import retired_keys_path
from tierstore.engine.allocator import ARENAS, tune_allocator
from tierstore.engine.diskreserve import DiskReserve
from tierstore.engine.store import Store, hot_tier_dir
from tierstore.errors import ArchiveUnavailable, FailedPrecondition, InvalidArgument
from tierstore.private_files import (
    ensure_private_dir,
    hold_lock_or_name_holder,
    lock_holder,
    refuse_dangling_link,
    restrict_mode,
    write_private_file,
)
from tierstore.server.app import (
    ServerSettings,
    check_listen_addresses,
    check_listen_ports_free,
    create_server,
)
from tierstore.server.localreads import check_grant_ttl
from tierstore.server.metrics import ServerMetrics
from tierstore.server.places import CALLER_SHARE, check_caller_share
from tierstore.server.tls import (
    RENEW_BEFORE_DAYS,
    TlsMaterial,
    check_hostnames,
    ensure_tls_material,
)
from tierstore.server.tokens import TokenStore
from tierstore.tiers.s3_connection import check_bucket_name, check_endpoint_url

__all__ = ["ServeOptions", "serve"]

log = logging.getLogger(__name__)

#: For tests only, and no setting: how long before its end (seconds) a serving node
#: reissues its certificate instead of RENEW_BEFORE_DAYS, for a test to see it happen
#: without waiting days. (Not TIERSTORE_*: the settings refuse names they do not know.)
RENEW_CERTIFICATE_BEFORE_VARIABLE = "_TIERSTORE_TEST_RENEW_CERTIFICATE_BEFORE_S"
#: For tests only, likewise: how often (seconds) a serving node looks whether the admin
#: CLI's certificate is due to be reissued, instead of ADMIN_CERTIFICATE_CHECK_S.
CHECK_VARIABLE = "_TIERSTORE_TEST_TLS_CHECK_S"
#: How often a node serving mutual TLS looks whether the admin CLI's certificate
#: (tls/admin-cli.pem, 365 days) is due to be reissued (seconds).
ADMIN_CERTIFICATE_CHECK_S = 3600.0


@dataclass(frozen=True, slots=True)
class ServeOptions:
    """What ``tierstore serve`` was asked for."""

    #: None: the settings' data_dir (the settings file, TIERSTORE_DATA_DIR, else
    #: ./tierstore-data)
    data_dir: Path | None
    listen: str = "127.0.0.1:7443"
    health_listen: str = "127.0.0.1:7444"
    metrics_listen: str = "127.0.0.1:7445"
    #: label hits and misses by dataset (names visible to whoever reaches /metrics).
    metrics_dataset_labels: bool = False
    insecure: bool = False
    require_client_cert: bool = False
    hostnames: tuple[str, ...] = ()
    #: archive flags; "" = not given (the settings file's, else the defaults).
    s3_endpoint: str = ""
    bucket: str = ""
    #: None = not given; "" = no prefix, even where the settings file names one.
    prefix: str | None = None
    s3_access_key: str = ""
    s3_secret_key: str = field(default="", repr=False)
    master_key_file: Path | None = None
    config_file: Path | None = None
    hot_capacity_bytes: int | None = None
    grace_s: float = 20.0
    #: readers on this host may read the hot tier in place (docs/local-reads.md).
    local_reads: bool = True
    local_grant_ttl_s: float = 60.0
    #: connections open at once (0: automatic, from the open-file limit).
    max_connections: int = 0
    #: the share of the node's workers, shard streams and archive calls one caller may hold.
    caller_share: float = CALLER_SHARE
    #: a new hot tier over an archive with objects: rebuild the catalog from it
    #: (without: refuse to start).
    rebuild_from_archive: bool = False
    #: a rebuild may leave out archive objects it does not believe (without: refused).
    accept_partial_rebuild: bool = False
    #: write another admin token to admin.token, whatever live one exists.
    new_admin_token: bool = False
    #: the key file was lost and no dataset is encrypted: seal the archive's metadata
    #: under the keys given now (masterkeys.check_node_keys).
    reseal_archive: bool = False
    #: the archive is lost for good (or replaced by an empty one): archive again what
    #: the hot tier holds (masterkeys.check_node_keys).
    archive_lost: bool = False


def _open_tokens(
    store: Store, data_dir: Path, out: TextIO, *, new_admin_token: bool = False
) -> tuple[TokenStore, str | None]:
    """The node's token store, with the grants made for datasets deleted since dropped
    (a grant a restored token file or a rebuild gave to another dataset of its name:
    grants end with their dataset), and the admin token this start wrote (None: a live
    one exists). Says on ``out`` what it dropped, and when ``admin.token`` is missing
    although a live admin token exists (a restore without it); ``new_admin_token``
    writes another whatever exists. Raises OSError."""
    tokens = TokenStore(data_dir / "tokens.json")
    stale = tokens.drop_stale_grants(store.dataset_incarnation)
    for line in stale:
        log.warning("removed a stale grant: %s", line)
    if stale:
        out.write(
            f"tierstore: removed {len(stale)} grant(s) made for datasets deleted since, or "
            "left out of a rebuild (the token file, or the dataset, came back from before "
            "the delete); the log names them\n"
        )
    token_file = data_dir / "admin.token"
    admin_token = tokens.ensure_admin_token(token_file, another=new_admin_token)
    if admin_token is None and not token_file.exists():
        out.write(
            f"tierstore: {token_file} is missing, and tokens.json holds a live admin token, "
            "so none was written: use a copy of that token (a backup's admin.token), or "
            "start the node once with --new-admin-token\n"
        )
    return tokens, admin_token


def _owned_by_another_user(path: Path) -> bool:
    """Whether ``path`` exists and belongs to a user other than this process's."""
    try:
        return path.stat().st_uid != os.geteuid()
    except OSError:
        return False


def _refuse_another_users_entries(data_dir: Path) -> None:
    """InvalidArgument when the data directory, an entry in it, or an entry in one of its
    directories belongs to a user other than this process's and root: that user could
    plant tokens, keys or certificates for the node to trust, or swap them later. (A
    node run as root, which may make anyone's directory private, took the token store
    that another user had left in an empty directory for its own, and that user's
    token as an admin's.) A link is judged by its own owner, not its target's; what
    cannot be read is left to the steps that read it."""
    trusted = {os.geteuid(), 0}
    paths = [data_dir]
    for directory in _entries(data_dir):
        paths.append(directory)
        if directory.is_dir() and not directory.is_symlink():
            # Each on its own: one that cannot be read (a root-owned lost+found at the
            # top of a disk) ended the scan, and what came after it went unchecked.
            paths.extend(_entries(directory))
    for path in paths:
        try:
            owner = os.lstat(path).st_uid
        except OSError:
            continue
        if owner not in trusted:
            raise InvalidArgument(
                f"cannot use {str(data_dir)!r} as the data directory: {str(path)!r} "
                f"belongs to another user (uid {owner}), who could plant tokens, keys "
                "or certificates there for the node to trust: give it a directory of "
                "its own, or make everything in it this user's"
            )


def _entries(directory: Path) -> list[Path]:
    """What ``directory`` holds; nothing if it cannot be read (not there yet, or not
    this user's to read)."""
    try:
        with os.scandir(directory) as entries:
            return [Path(entry.path) for entry in entries]
    except OSError:
        return []


def _restrict_secrets(data_dir: Path) -> None:
    """Take group and other bits off the secrets the data directory holds at its top.
    The directory may keep group read for local readers, and an operator's
    ``chmod -R g+rX`` for them reaches these files too: the group would read the admin
    token and the master keys, retired ones included (a retired key still unwraps any
    copy of a data key wrapped before the rotation). (The token store and the TLS
    files are restricted where they are loaded.) A link (to a key file kept elsewhere)
    is left alone, and a file whose mode cannot be changed is named in a warning: the
    node runs on."""
    key_file = data_dir / "master.keys"
    for secret in (data_dir / "admin.token", key_file, retired_keys_path(key_file)):
        try:
            restrict_mode(secret)
        except FileNotFoundError:
            continue
        except OSError as exc:
            log.warning(
                "cannot take group and other permissions off %s (%s): chmod 600 it",
                secret,
                exc.strerror or exc,
            )


def serve(options: ServeOptions, out: TextIO, ready: threading.Event | None = None) -> int:
    """Run a node until SIGTERM or SIGINT; returns the exit code (0 after a clean stop)."""
    no_core_dumps()  # first: the settings read next may hold a master key
    raise_open_file_limit()  # before the embedded archive inherits it
    out = cast(TextIO, _StatusLines(out))
    check_listen_addresses(options.listen, options.health_listen, options.metrics_listen)
    check_endpoint_url(options.s3_endpoint)  # before it could be named in an error
    if options.insecure:
        # Refuse before anything is started or written (ServerSettings checks it again).
        ServerSettings(
            listen=options.listen, insecure=True, require_client_cert=options.require_client_cert
        )
        if options.hostnames:
            raise InvalidArgument(
                "--hostname names the TLS certificate's names: it cannot be given with "
                "--insecure, which serves no certificate"
            )
    else:
        check_hostnames(options.hostnames)  # the certificate's names, checked there again
    # Read (and so checked) before anything is made: a bad settings file once left a
    # data directory behind, and its data_dir was never read. The flags win, as below.
    overrides = _setting_flags(options)
    configured = load_settings(options.config_file, **overrides)
    check_grant_ttl(options.local_grant_ttl_s, "--local-grant-ttl")
    check_caller_share(options.caller_share)
    archive = archive_with_flags(options, configured.archive)
    check_endpoint_url(archive.endpoint_url)  # the settings file's or the environment's too
    if not archive.endpoint_url and (options.s3_access_key or options.s3_secret_key):
        # Ignored: the node started its embedded archive, and what it "archived" stayed
        # on its own disk, for an operator who only forgot the endpoint.
        raise InvalidArgument(
            "--s3-access-key and --s3-secret-key (or TIERSTORE_S3_ACCESS_KEY and "
            "TIERSTORE_S3_SECRET_KEY) are an external archive's, and none is named: give "
            "--s3-endpoint (or the settings' [archive] endpoint_url), or leave the keys out "
            "for the embedded archive"
        )
    # The embedded archive makes its bucket: S3's rules for a new one apply.
    check_bucket_name(archive.bucket, strict=not archive.endpoint_url)
    warn_of_an_open_prefix(archive.prefix)
    data_dir = _absolute(options.data_dir or configured.data_dir)
    # Likewise keys that would be refused only after the embedded archive had started
    # (and the node's token was made: the next start would not say where it came from).
    check_master_key_sources(configured, data_dir)
    # A node running here holds the ports too: say so, not only that a port is taken.
    holder = lock_holder(data_dir / "serve.lock")
    if holder is not None:
        raise _in_use(data_dir, holder)
    if data_dir.exists() and not data_dir.is_dir():
        # Said for what it is, before the ports are tried: with a node of the README's
        # first command on the default port, it was refused as "cannot listen".
        raise InvalidArgument(
            f"cannot use {str(data_dir)!r} as the data directory: it is not a directory"
        )
    check_listen_ports_free(options.listen, options.health_listen, options.metrics_listen)
    _refuse_another_users_entries(data_dir)
    # Local readers of another user reach hot/ through a group search bit an
    # operator gives (docs/local-reads.md); the secrets in here stay 0600.
    try:
        ensure_private_dir(data_dir, keep_group_read=True)
    except OSError as exc:  # a file in the way, no permission...
        # Not this user's (a volume mounted for a group, say): the node may write in it
        # but not make it private, as it must (its keys, tokens and CA are in there).
        hint = (
            " (it belongs to another user, and the node must make its data directory "
            "private: give it a directory of its own, such as one inside this one)"
            if exc.errno == errno.EPERM and _owned_by_another_user(data_dir)
            else ""
        )
        raise InvalidArgument(
            f"cannot use {str(data_dir)!r} as the data directory: {exc.strerror or exc}{hint}"
        ) from None
    _restrict_secrets(data_dir)
    _give_back_the_reserve_on_a_full_disk(data_dir, configured.disk_reserve_bytes)
    _warn_of_too_little_disk(data_dir, configured.hot_capacity_bytes)
    stop = threading.Event()
    serving = threading.Event()  # set as the server starts: a start is cut short before

    def on_signal(signum: int, frame: object) -> None:
        if not stop.is_set():
            stop.set()  # the first: stop gracefully
            if not serving.is_set():
                # A start may wait minutes on an archive that answers nothing (its
                # requests' time-outs and retries): end it now, through its cleanup.
                # Nothing was served, so nothing was acknowledged.
                raise _StoppedWhileStarting
            return
        # The second, while calls in flight have their grace: the operator will not wait.
        # What was acknowledged is on disk, and the next start takes up the journal.
        out.write("tierstore: second signal: exiting now, calls in flight are cut\n")
        out.flush()
        _kill_children()  # the embedded archive: no cleanup runs after this
        os._exit(128 + signum)  # as a shell reports a death by the signal: 130, 143, 129

    # A hangup (its terminal closed) killed the node at once, no graceful stop, not a
    # word; one started under nohup (the hangup ignored) keeps ignoring it.
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        if signum == signal.SIGHUP and signal.getsignal(signum) is signal.SIG_IGN:
            continue
        signal.signal(signum, on_signal)
    try:
        _run(options, configured, data_dir, out, ready, stop, serving)
    except _StoppedWhileStarting:
        out.write("tierstore: stopped before it was ready\n")
    else:
        out.write("tierstore: stopped\n")
    out.flush()
    return 0


class _StoppedWhileStarting(BaseException):
    """Raised by serve's signal handler in a start that a signal cut short (as
    KeyboardInterrupt would be): the start unwinds through its cleanup."""


def _run(
    options: ServeOptions,
    configured: EngineSettings,
    data_dir: Path,
    out: TextIO,
    ready: threading.Event | None,
    stop: threading.Event,
    serving: threading.Event,
) -> None:
    """Start the node and run it until ``stop`` is set (``serving`` set as its server
    starts), then stop it gracefully."""
    # Before any thread of the node's starts: threads that allocated before it keep
    # arenas of their own (tierstore.engine.allocator).
    tune_allocator(configured.max_frame_bytes, arenas=ARENAS)
    with ExitStack() as cleanup:
        _claim(data_dir, cleanup)
        settings = replace(configured, data_dir=data_dir)  # read above, flags and all
        archive_settings, embedded = node_archive(
            options, settings.archive, data_dir, cleanup, stop
        )
        settings = replace(settings, archive=archive_settings)
        keys = load_node_keys(settings, data_dir)
        metrics = ServerMetrics(dataset_labels=options.metrics_dataset_labels)
        # A hot tier this start makes (the node is new, or its hot tier was lost) is
        # checked against the archive before serving. The mark is durable before LMDB
        # makes the hot tier and goes only once the check has passed, so a start killed
        # in between (mid-rebuild, say) leaves the check to the next start.
        unchecked = data_dir / UNCHECKED_MARK
        # A link to nothing (a device not mounted yet) is refused before the mark: the
        # hot tier it names is not new.
        refuse_dangling_link(hot_tier_dir(data_dir), "the hot tier's directory")
        if not (hot_tier_dir(data_dir) / "data.mdb").exists():
            write_private_file(unchecked, b"hot tier not yet checked against the archive\n")
        with ExitStack() as refused:
            refused.callback(keys.forget_created)  # dropped once the keys are kept

            def open_checked() -> tuple[Store, ArchiveUnavailable | None]:
                return open_checked_store(
                    settings,
                    keys,
                    metrics,
                    out,
                    unchecked,
                    rebuild_from_archive=options.rebuild_from_archive,
                    accept_partial_rebuild=options.accept_partial_rebuild,
                    reseal_archive=options.reseal_archive,
                    archive_lost=options.archive_lost,
                )

            store, archive_down = through_embedded_restarts(open_checked, embedded, stop)
            cleanup.callback(store.close)
            refused.pop_all()
        if archive_down is not None:
            waiting = DeferredKeyCheck(keys, store)  # holds the journal from now on
            cleanup.callback(waiting.stop)
            waiting.start()
            out.write(
                f"tierstore: {_archive_down_said(archive_down)}: serving the hot "
                "tier; cold reads and write-through puts and deletes fail until it "
                "answers, and uploads wait until its seals verify under these keys\n"
            )
        store.start_background()
        watch = ClaimWatch(store)  # a rebuild elsewhere while this node runs holds its journal
        cleanup.callback(watch.stop)
        watch.start()
        if options.reseal_archive:
            store.reseal_archive()  # journalled: the mover rewrites them from now on
            out.write(
                "tierstore: the archive's metadata is being sealed under these keys; drop "
                "--reseal-archive from the next start on: a start without it finishes a "
                "reseal cut short, and checks the keys against the archive once it is "
                "done (while the flag is given, no start checks them)\n"
            )
        try:  # a file of another user's (a first start as root): one line, no traceback
            had_tokens = (data_dir / "tokens.json").exists()  # not a first start
            tokens, admin_token = _open_tokens(
                store, data_dir, out, new_admin_token=options.new_admin_token
            )
            tls = None
            client_files: tuple[Path, Path] | None = None
            if not options.insecure:
                ca_existed = (data_dir / "tls" / "ca.pem").exists()
                tls = ensure_tls_material(data_dir, _certificate_names(options))
                if not ca_existed and had_tokens:
                    out.write(
                        "tierstore: made a new TLS CA (tls/ca.pem was missing): hand every "
                        "client the new ca.pem; the copy they hold no longer verifies "
                        "this node\n"
                    )
                if options.require_client_cert:
                    client_files = ensure_admin_client_certificate(data_dir, tls)
        except OSError as exc:
            owner = (
                " (the data directory's files must be the node's user's)"
                if exc.errno in (errno.EACCES, errno.EPERM)
                else ""
            )
            raise InvalidArgument(
                f"cannot use {exc.filename or data_dir}: {exc.strerror or exc}{owner}"
            ) from None
        # Read before the node is up: a bad value is refused before any banner.
        check_s = _test_seconds(CHECK_VARIABLE, ADMIN_CERTIFICATE_CHECK_S)
        server, port = create_server(
            ServerSettings(
                listen=options.listen,
                health_listen=options.health_listen,
                insecure=options.insecure,
                require_client_cert=options.require_client_cert,
                tls=tls,
                spool_dir=data_dir / "spool",
                metrics_listen=options.metrics_listen,
                local_reads=options.local_reads,
                local_grant_ttl_s=options.local_grant_ttl_s,
                max_connections=options.max_connections,
                caller_share=options.caller_share,
                renew_certificate_before_s=_test_seconds(
                    RENEW_CERTIFICATE_BEFORE_VARIABLE, RENEW_BEFORE_DAYS * 86400.0
                ),
            ),
            store,
            tokens,
            KeyRotation(keys, store),
            metrics,
        )
        serving.set()
        server.start()
        print_banner(
            out,
            options.listen.rsplit(":", 1)[0],
            port,
            server,
            data_dir,
            admin_token,
            tls is None,
            client_files,
            metrics_host=options.metrics_listen.rsplit(":", 1)[0],
        )
        if ready is not None:
            ready.set()
        # Wait in short slices: the kernel may deliver SIGTERM to one of gRPC's threads,
        # and then Python runs the handler only when the main thread next wakes up.
        next_check = time.monotonic() + check_s
        while not stop.wait(0.1):
            if client_files is not None and time.monotonic() >= next_check:
                assert tls is not None  # client files are made for TLS only
                _renew_admin_client_certificate(data_dir, tls)
                next_check = time.monotonic() + check_s
        out.write(f"tierstore: stopping (in-flight calls get {options.grace_s:.0f} s)\n")
        out.flush()
        server.stop(options.grace_s)


class _StatusLines:
    """The node's stdout for its status lines (banner, "stopping", "stopped"), whose
    reader may go away while it runs (a ``| tee`` or log shipper restarted): a write or
    flush that fails with an OSError is logged once, and the rest are dropped, so that
    the node still stops gracefully and exits 0. (A BrokenPipeError from the "stopping"
    line skipped the server's stop: calls in flight were cut, exit 1, not a word.)"""

    def __init__(self, out: TextIO) -> None:
        self._out = out
        self._gone = False

    def write(self, text: str) -> int:
        if not self._gone:
            try:
                return self._out.write(text)
            except OSError as exc:
                self._went_away(exc)
        return len(text)

    def flush(self) -> None:
        if not self._gone:
            try:
                self._out.flush()
            except OSError as exc:
                self._went_away(exc)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._out, name)

    def _went_away(self, exc: OSError) -> None:
        self._gone = True
        log.warning(
            "stdout is gone (%s): the node runs on, its status lines no longer written",
            exc.strerror or exc,
        )
        # What the stream still buffers would fail again as the interpreter exits (and
        # make the exit code 120): its descriptor writes to nothing from here on.
        with contextlib.suppress(OSError, ValueError, AttributeError):
            devnull = os.open(os.devnull, os.O_WRONLY)
            try:
                os.dup2(devnull, self._out.fileno())
            finally:
                os.close(devnull)


def _test_seconds(variable: str, default: float) -> float:
    """The seconds an internal variable for tests gives, else ``default``;
    InvalidArgument unless a positive finite number."""
    raw = os.environ.get(variable, "")
    if not raw:
        return default
    try:
        seconds = float(raw)
    except ValueError:
        raise InvalidArgument(f"{variable} is not a number") from None
    if not (math.isfinite(seconds) and seconds > 0):
        raise InvalidArgument(f"{variable} must be a positive number of seconds, not {raw}")
    return seconds


def _renew_admin_client_certificate(data_dir: Path, tls: TlsMaterial) -> None:
    """Reissue the admin CLI's certificate if it nears its end, as a start does: it
    lasts a year, and a node serving longer left the CLI on its host unable to connect."""
    try:
        ensure_admin_client_certificate(data_dir, tls)
    except (FailedPrecondition, InvalidArgument, OSError, ValueError) as exc:
        log.warning("could not reissue the admin CLI's certificate: %s", exc)


def _certificate_names(options: ServeOptions) -> tuple[str, ...]:
    """The names the server certificate holds besides the loopback ones: the
    ``--hostname`` s, and the host ``--listen`` names (the address the banner has
    clients connect to: a certificate without it failed their host name check)."""
    host = connect_host(options.listen.rsplit(":", 1)[0])
    try:
        check_hostnames((host,))
    except InvalidArgument:  # a name no certificate may hold: the node serves as it did
        return options.hostnames
    return (*options.hostnames, host)


def _kill_children() -> None:
    """SIGKILL this process's child processes (the embedded archive), where Linux lists
    them: for an exit that skips every cleanup."""
    with contextlib.suppress(OSError):
        for task in Path("/proc/self/task").iterdir():
            for child in (task / "children").read_text().split():
                with contextlib.suppress(OSError):
                    os.kill(int(child), signal.SIGKILL)


def _setting_flags(options: ServeOptions) -> dict[str, Any]:
    """The engine settings serve's flags give, which win over the settings file and
    the environment (the data directory aside: the caller adds it)."""
    overrides: dict[str, Any] = {}
    if options.master_key_file is not None:  # the flag wins over a base64 key too
        overrides.update(master_key_file=options.master_key_file, master_key_b64=None)
    if options.hot_capacity_bytes is not None:  # 0 too: refused by name, not ignored
        overrides["hot_capacity_bytes"] = options.hot_capacity_bytes
    return overrides


def _archive_down_said(archive_down: ArchiveUnavailable) -> str:
    """What a start that serves without its archive says of it: unreachable, or, for an
    archive that answered with a refusal (the keys, most often: a 403 after they were
    changed), that it refuses the node, which only a restart with settings it takes
    ends (the node reads them as it starts; a review's pod kept its old keys)."""
    from tierstore.tiers.s3_retry import is_transient  # boto: loaded by now anyway

    if is_transient(archive_down.__cause__ or archive_down):
        return f"the archive is unreachable ({archive_down})"
    return (
        f"the archive refuses this node ({archive_down}; restart the node once its archive "
        "settings are right: they are read as it starts)"
    )


def _claim(data_dir: Path, cleanup: ExitStack) -> None:
    """Hold ``<data-dir>/serve.lock`` until ``cleanup`` closes; FailedPrecondition if
    another node holds it."""
    fd, holder = hold_lock_or_name_holder(data_dir / "serve.lock")
    if fd is None:
        raise _in_use(data_dir, holder)
    cleanup.callback(os.close, fd)


def _in_use(data_dir: Path, holder: str) -> FailedPrecondition:
    """The error for a data directory another node (process ``holder``) runs on."""
    return FailedPrecondition(
        f"data directory {data_dir} is in use by another tierstore serve (process "
        f"{holder}); stop it first, or give this node a --data-dir of its own"
    )


def _give_back_the_reserve_on_a_full_disk(data_dir: Path, reserve_bytes: int) -> None:
    """Give back the disk reserve (engine/diskreserve.py) when the disk of ``data_dir``
    has less room than it: on a full disk the node could not start (the embedded
    archive writes its pid file first), and only a node that runs can delete or evict
    the shards that fill it."""
    if shutil.disk_usage(data_dir).free < reserve_bytes:
        DiskReserve(data_dir, reserve_bytes).release()


def _absolute(data_dir: Path) -> Path:
    """``data_dir`` resolved; FailedPrecondition for a relative one when the working
    directory is gone (it was FileNotFoundError's traceback)."""
    try:
        return data_dir.resolve()
    except FileNotFoundError as exc:  # only the working directory can be missing here
        raise FailedPrecondition(
            f"cannot tell where the data directory {str(data_dir)!r} is: the working "
            f"directory was deleted ({exc.strerror}); give --data-dir an absolute path, "
            "or start from a directory that exists"
        ) from None


def _warn_of_too_little_disk(data_dir: Path, hot_capacity_bytes: int) -> None:
    """Warn when the disk of the hot tier (``data_dir``'s, or that of the device its
    ``hot`` directory links to) has less room than the hot tier may still take: LMDB's
    file grows as it fills, so nothing fails at the start, but puts and promotions fail
    with HotTierFull once the disk is full, below the capacity set."""
    hot = hot_tier_dir(data_dir)
    hot_file = hot / "data.mdb"
    in_use = hot_file.stat().st_blocks * 512 if hot_file.exists() else 0
    # (A hot directory not made yet will be made on the data directory's disk.)
    free = shutil.disk_usage(hot if hot.is_dir() else data_dir).free
    if free + in_use < hot_capacity_bytes:
        log.warning(
            "the hot tier may hold %s bytes (--hot-capacity, or hot_capacity_bytes), but "
            "the disk of %s has %s bytes free (and the hot tier uses %s): it fills before "
            "eviction starts, and then puts and promotions fail with HotTierFull; lower "
            "the hot tier's capacity",
            f"{hot_capacity_bytes:,}",
            hot if hot.is_dir() else data_dir,
            f"{free:,}",
            f"{in_use:,}",
        )
