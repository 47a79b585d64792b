"""Engine settings: one typed object, loaded in one place (file → environment → overrides).

Nothing else in the package reads ``os.environ``; the service and the CLI load
settings here and pass them down.
"""

from __future__ import annotations

import difflib
import logging
import math
import numbers
import os
import re
import stat
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, cast

from tierstore.engine.background import MAX_NICENESS
from tierstore.errors import InvalidArgument
from tierstore.private_files import narrow_mode_hint
from tierstore.wire.limits import MAX_FRAME_BYTES

__all__ = ["ArchiveSettings", "EngineSettings", "load_settings"]

MiB = 1 << 20
GiB = 1 << 30
#: the largest hot-tier capacity or map size taken (256 TiB; a typo's 10**20 is refused)
_MAX_BYTES = 1 << 48
#: the most archive upload parts in flight at once (each holds one part in memory)
MAX_MOVER_THREADS = 64
#: the memory one event of the trace ring takes up front (engine/trace.py: its time,
#: name, size and kind), and the most events it may be made for (about 2.3 GiB)
TRACE_EVENT_BYTES = 25
MAX_TRACE_CAPACITY = 100_000_000
#: how often an idle node may ask its archive (archive_probe_s): not back to back, and
#: at least daily (a larger wait overflowed the probe thread's timer and ended it)
MIN_PROBE_S = 0.01
MAX_PROBE_S = 86_400.0

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ArchiveSettings:
    """Where the archive tier lives (any S3-compatible endpoint)."""

    endpoint_url: str = ""
    bucket: str = "tierstore"
    prefix: str = ""
    access_key_id: str = "tierstore"
    secret_access_key: str = field(default="tierstore", repr=False)
    region: str = "us-east-1"


@dataclass(frozen=True, slots=True)
class EngineSettings:
    """Settings of one storage engine (one node, one LMDB environment)."""

    data_dir: Path = Path("./tierstore-data")
    #: bytes of stored frames the hot tier may hold before eviction starts.
    hot_capacity_bytes: int = 64 * GiB
    #: eviction starts above high_watermark x capacity and stops at low_watermark x capacity.
    high_watermark: float = 0.90
    low_watermark: float = 0.75
    #: LMDB map size; 0 means 1.5 x hot capacity + 256 MiB (room for catalog and free pages).
    map_size_bytes: int = 0
    #: bytes set aside on the data directory's disk, given back when it is full so that
    #: deletes and evictions still commit (engine/diskreserve.py); 0: none.
    disk_reserve_bytes: int = 16 * MiB
    max_frame_bytes: int = 4 * MiB
    #: un-archived bytes above which write-back puts fail with BacklogFull.
    backlog_cap_bytes: int = 16 * GiB
    #: how long a put into a dataset at its hot-tier quota waits for the mover to archive
    #: shards it may evict (0: fail at once with QuotaExceeded).
    quota_wait_s: float = 30.0
    #: puts that may wait for quota room at once (each holds its caller's thread, in the
    #: service an RPC worker); beyond that a put at its quota fails at once.
    max_quota_waiters: int = 8
    #: archive: parallel ranged GETs per cold read, and the parts of one upload the mover
    #: (or a write-through put) sends at once. 1 by default: with the archive on the
    #: node's own cores, more uploads at once took CPU from puts (docs/engine.md); raise
    #: it for a remote archive, where one connection carries a fraction of the bandwidth.
    cold_read_parallelism: int = 16
    mover_threads: int = 1
    #: archive requests: the longest one socket read of an answer may wait, and the time
    #: after a request's first attempt past which no other starts (a frozen archive fails
    #: a cold read in about their sum).
    archive_read_timeout_s: float = 20.0
    archive_retry_budget_s: float = 30.0
    #: with no archive request begun for this long, the node asks the archive for one
    #: dataset's settings object, so an outage (and its end) shows on an idle node too.
    archive_probe_s: float = 30.0
    #: retry back-off of the mover for a failing archive (seconds, doubled per attempt).
    mover_retry_initial_s: float = 0.2
    mover_retry_max_s: float = 30.0
    #: access statistics are flushed to the catalog at most this often.
    access_flush_interval_s: float = 1.0
    #: half-life of a shard's decayed read frequency (each read counts 1, halved per half-life).
    access_half_life_s: float = 3600.0
    #: reads and plan events kept in memory for trace export and sizing (0: no trace).
    trace_capacity: int = 1_000_000
    #: placement: the archive bandwidth the prefetcher may plan with, and how far ahead
    #: (seconds of that bandwidth) it fetches; prefetches in flight at once at most.
    archive_bandwidth_bytes_per_s: float = 200 * MiB
    prefetch_horizon_s: float = 10.0
    prefetch_depth: int = 8
    #: the prefetcher asks the policies at least this often (and whenever a plan changes).
    prefetch_interval_s: float = 1.0
    #: threads copying shards from the archive into the hot tier.
    promotion_threads: int = 4
    #: a promotion of a shard of more payload than this fetches and writes it this much
    #: at a time, the most it holds in memory (engine/spool.py).
    promotion_chunk_bytes: int = 64 * MiB
    #: a put of more payload than this is written this much at a time, each part in a
    #: transaction of its own, so it neither holds its whole shard in memory as LMDB's
    #: uncommitted copy nor the writer from other puts (engine/writepath.py).
    put_chunk_bytes: int = 64 * MiB
    #: nice steps the mover's journal thread (uploads, evictions) and the fill thread (cache
    #: fills) run below the threads serving callers (0: the same priority); promotions
    #: that fetch are not lowered. See engine/background.py.
    background_niceness: int = 10
    #: hot reads hand out zero-copy views for at most this many concurrent leases;
    #: beyond that a read gets a private copy rather than pinning more LMDB pages.
    max_read_leases: int = 64
    #: a lease older than this is reported (stats, log) as a slow reader.
    read_lease_warn_s: float = 30.0
    master_key_file: Path | None = None
    master_key_b64: str | None = field(default=None, repr=False)
    archive: ArchiveSettings = ArchiveSettings()

    def __post_init__(self) -> None:
        # Types first, by name: embedders pass values that no file or variable was read
        # for. A float niceness killed the mover's threads after the store had opened
        # (nothing was archived again), and a str key file path failed on .open().
        for setting in fields(self):
            if setting.name != "archive":
                value = getattr(self, setting.name)
                typed = _coerce(setting.name, setting.type, value, numbers_from_text=False)
                object.__setattr__(self, setting.name, typed)
        if not 0 < self.low_watermark < self.high_watermark <= 1:
            raise InvalidArgument(
                "watermarks must satisfy 0 < low < high <= 1, got low_watermark "
                f"{self.low_watermark} and high_watermark {self.high_watermark}"
            )
        if not 4096 <= self.max_frame_bytes <= MAX_FRAME_BYTES:
            # Past it, a frame fits in no message of the protocol (tierstore.wire.limits).
            raise InvalidArgument(
                f"max_frame_bytes must be 4096 to {MAX_FRAME_BYTES:,} (64 MiB), not "
                f"{self.max_frame_bytes:,}"
            )
        if self.hot_capacity_bytes < self.max_frame_bytes:
            raise InvalidArgument(
                f"hot_capacity_bytes must hold at least one frame: {self.hot_capacity_bytes} "
                f"is less than max_frame_bytes, {self.max_frame_bytes} (give the hot tier "
                "more, or lower max_frame_bytes to 4096 or more: in the settings file, or "
                "TIERSTORE_MAX_FRAME_BYTES)"
            )
        positive = {
            "access_half_life_s": self.access_half_life_s,
            "archive_bandwidth_bytes_per_s": self.archive_bandwidth_bytes_per_s,
            "prefetch_interval_s": self.prefetch_interval_s,
            "promotion_threads": self.promotion_threads,
            "archive_read_timeout_s": self.archive_read_timeout_s,
            "archive_retry_budget_s": self.archive_retry_budget_s,
            "mover_retry_initial_s": self.mover_retry_initial_s,
            "mover_retry_max_s": self.mover_retry_max_s,
            "access_flush_interval_s": self.access_flush_interval_s,
            "read_lease_warn_s": self.read_lease_warn_s,
        }
        for name, value in positive.items():
            if not value > 0 or value == float("inf"):
                raise InvalidArgument(f"{name} must be a positive finite number, got {value}")
        if not MIN_PROBE_S <= self.archive_probe_s <= MAX_PROBE_S:
            raise InvalidArgument(
                f"archive_probe_s must be {MIN_PROBE_S} to {MAX_PROBE_S:,.0f} seconds (a day), "
                f"got {self.archive_probe_s}"
            )
        if self.max_quota_waiters < 0:
            raise InvalidArgument(
                f"max_quota_waiters must not be negative, got {self.max_quota_waiters}"
            )
        if not 0 <= self.quota_wait_s < float("inf"):
            raise InvalidArgument(f"quota_wait_s must be 0 or more seconds: {self.quota_wait_s}")
        if not 0 <= self.background_niceness <= MAX_NICENESS:
            raise InvalidArgument(
                f"background_niceness must be 0..{MAX_NICENESS}, got {self.background_niceness}"
            )
        if self.trace_capacity < 0 or self.prefetch_depth < 0 or not self.prefetch_horizon_s >= 0:
            raise InvalidArgument(
                "trace_capacity, prefetch_depth and prefetch_horizon_s must not be negative"
            )
        if not math.isfinite(self.prefetch_horizon_s):  # the prefetch budget is whole bytes
            raise InvalidArgument(
                "prefetch_horizon_s must be a finite number of seconds, got "
                f"{self.prefetch_horizon_s}"
            )
        if self.trace_capacity > MAX_TRACE_CAPACITY:  # a typo's 10**11 was a MemoryError
            raise InvalidArgument(
                f"trace_capacity must be at most {MAX_TRACE_CAPACITY:,} events (about "
                f"{MAX_TRACE_CAPACITY * TRACE_EVENT_BYTES >> 30} GiB), got {self.trace_capacity:,}"
            )
        at_least_one = {
            "cold_read_parallelism": self.cold_read_parallelism,
            "mover_threads": self.mover_threads,
            "promotion_chunk_bytes": self.promotion_chunk_bytes,
            "put_chunk_bytes": self.put_chunk_bytes,
        }
        for name, count in at_least_one.items():
            if count < 1:
                raise InvalidArgument(f"{name} must be at least 1, got {count}")
        # Each holds a part in memory: 8 MiB, or a 10,000th of a shard over 78.125 GiB.
        if self.mover_threads > MAX_MOVER_THREADS:
            raise InvalidArgument(
                f"mover_threads must be at most {MAX_MOVER_THREADS}, got {self.mover_threads}"
            )
        if self.max_read_leases < 0:  # 0: every hot read gets a private copy
            raise InvalidArgument(f"max_read_leases must not be negative: {self.max_read_leases}")
        for name in ("backlog_cap_bytes", "map_size_bytes", "disk_reserve_bytes"):
            if getattr(self, name) < 0:
                raise InvalidArgument(f"{name} must not be negative, got {getattr(self, name)}")
        if self.hot_capacity_bytes > _MAX_BYTES or self.map_size_bytes > _MAX_BYTES:
            raise InvalidArgument(
                f"hot_capacity_bytes and map_size_bytes must be at most {_MAX_BYTES} (2**48)"
            )
        if 0 < self.map_size_bytes < self.hot_capacity_bytes and _warn_once(
            (self.map_size_bytes, self.hot_capacity_bytes)
        ):
            log.warning(
                "map_size_bytes (%d) is below hot_capacity_bytes (%d): the hot tier's map "
                "fills before eviction starts, and puts then fail HotTierFull; leave "
                "map_size_bytes at 0 (1.5 x capacity + 256 MiB) unless testing that",
                self.map_size_bytes,
                self.hot_capacity_bytes,
            )

    @property
    def effective_map_size(self) -> int:
        """The LMDB map size in bytes."""
        if self.map_size_bytes:
            return self.map_size_bytes
        return int(self.hot_capacity_bytes * 1.5) + 256 * MiB


_ENV_PREFIX = "TIERSTORE_"
#: TIERSTORE_ variables that are no engine setting: the client's and the CLI's (an
#: operator exports them, as serve's banner says, in the shell that may start a node)
#: and serve's archive credentials. Any other is refused: a mistyped one was ignored.
_OTHER_VARIABLES = frozenset(
    {
        "TIERSTORE_ADDRESS",
        "TIERSTORE_TOKEN",
        "TIERSTORE_TOKEN_FILE",
        "TIERSTORE_CA",
        "TIERSTORE_INSECURE",
        "TIERSTORE_CLIENT_CERT",
        "TIERSTORE_CLIENT_KEY",
        "TIERSTORE_LOCAL_READS",
        "TIERSTORE_S3_ACCESS_KEY",
        "TIERSTORE_S3_SECRET_KEY",
    }
)
#: The variables Kubernetes gives a pod for each Service of its namespace (its "service
#: links"), by name shape and value shape: a Service named tierstore-<x> makes
#: TIERSTORE_<X>_SERVICE_HOST and the like, which are no setting and were refused, so a
#: node could not start beside such a Service. A variable of a link's name whose value
#: is not a link's (TIERSTORE_METRICS_PORT=9090) is still refused as a typo.
_ADDRESS = r"(?:[0-9.]+|[0-9A-Fa-f:]+)"
_SERVICE_LINKS = (
    (re.compile(r"TIERSTORE(?:_\w+)?_SERVICE_HOST"), re.compile(_ADDRESS)),
    (re.compile(r"TIERSTORE(?:_\w+)?_SERVICE_PORT(?:_\w+)?"), re.compile(r"\d+")),
    (
        re.compile(r"TIERSTORE(?:_\w+)?_PORT(?:_\d+_(?:TCP|UDP|SCTP))?"),
        re.compile(rf"(?:tcp|udp|sctp)://(?:{_ADDRESS}|\[[0-9A-Fa-f:]+\]):\d+"),
    ),
    (
        re.compile(r"TIERSTORE(?:_\w+)?_PORT_\d+_(?:TCP|UDP|SCTP)_PROTO"),
        re.compile(r"tcp|udp|sctp"),
    ),
    (re.compile(r"TIERSTORE(?:_\w+)?_PORT_\d+_(?:TCP|UDP|SCTP)_PORT"), re.compile(r"\d+")),
    (re.compile(r"TIERSTORE(?:_\w+)?_PORT_\d+_(?:TCP|UDP|SCTP)_ADDR"), re.compile(_ADDRESS)),
)
_warned: set[object] = set()


def _is_service_link(name: str, value: str) -> bool:
    """Whether ``name=value`` is one of the variables Kubernetes gives a pod for a
    Service (see ``_SERVICE_LINKS``)."""
    return any(
        named.fullmatch(name) and valued.fullmatch(value) for named, valued in _SERVICE_LINKS
    )


def _warn_once(about: object) -> bool:
    """Whether a warning about ``about`` is due (the first time in this process):
    settings are made again by each replace(), and a start makes them more than once."""
    if about in _warned:
        return False
    _warned.add(about)
    return True


def load_settings(
    path: Path | None = None,
    environ: Mapping[str, str] | None = None,
    **overrides: Any,
) -> EngineSettings:
    """Build settings from a TOML file, then ``TIERSTORE_*`` variables, then ``overrides``.

    TOML keys and variable names match the field names (``TIERSTORE_HOT_CAPACITY_BYTES``;
    archive fields as ``[archive]`` table or ``TIERSTORE_ARCHIVE_ENDPOINT_URL``).
    Raises :class:`InvalidArgument` for unknown keys or badly typed values.
    """
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    archive: dict[str, Any] = {}
    if path is not None:
        try:
            with Path(path).open("rb") as file:
                mode = stat.S_IMODE(os.fstat(file.fileno()).st_mode)
                document = tomllib.loads(file.read().decode())
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise InvalidArgument(f"cannot read settings file {path}: {exc}") from exc
        table = document.pop("archive", {})
        if not isinstance(table, dict):
            raise InvalidArgument(
                f"settings file {path}: archive must be a table ([archive]), not {table!r}"
            )
        if mode & 0o027 and ("master_key_b64" in document or "secret_access_key" in table):
            # As a key file's mode is (crypto.LocalKeyring.from_file): the same key in
            # here was read by anyone on the host, unsaid.
            log.warning(
                "settings file %s holds a secret (master_key_b64 or the archive's "
                "secret_access_key) and may be used by users other than its owner and "
                "group (mode %o): %s",
                path,
                mode,
                narrow_mode_hint(path),
            )
        archive.update(table)
        values.update(_paths_from(Path(path).parent, document))
    engine_fields = {f.name: f for f in fields(EngineSettings) if f.name != "archive"}
    archive_fields = {f.name: f for f in fields(ArchiveSettings)}
    for name, raw in environ.items():
        if not name.startswith(_ENV_PREFIX):
            continue
        key = name[len(_ENV_PREFIX) :].lower()
        if _is_service_link(name, raw):
            continue
        if key.startswith("archive_") and key[len("archive_") :] in archive_fields:
            if key == "archive_endpoint_url" and not raw.strip():
                # An unset variable in a script: the node took it for no archive named
                # and started its embedded one, the "archived" copies on its own disk.
                raise InvalidArgument(
                    f"{name} is empty: give the archive's URL, or leave the variable out "
                    "for the embedded archive"
                )
            archive[key[len("archive_") :]] = raw
        elif key in engine_fields:
            values[key] = raw
        elif key.startswith("archive_"):
            # That prefix is the archive's alone: a typo there would leave the node on
            # its embedded archive, the "archived" copies on its own disk.
            raise InvalidArgument(
                f"unknown setting {name} (TIERSTORE_ARCHIVE_ takes "
                f"{', '.join(sorted(f.upper() for f in archive_fields))})"
            )
        elif name not in _OTHER_VARIABLES:
            # A typo (TIERSTORE_HOT_CAPACITY) left the node on the default, unsaid.
            raise _unknown_variable(name, engine_fields)
    values.update({k: v for k, v in overrides.items() if k != "archive"})
    try:
        typed = {k: _coerce(k, engine_fields[k].type, v) for k, v in values.items()}
        for key, value in archive.items():
            if key not in archive_fields:
                raise InvalidArgument(
                    f"unknown setting 'archive.{key}' (the [archive] table takes "
                    f"{', '.join(sorted(archive_fields))})"
                )
            if not isinstance(value, str):
                raise InvalidArgument(f"archive.{key} must be a string, not {_a_type(value)}")
        archive_settings = replace(ArchiveSettings(), **archive)
    except KeyError as exc:
        raise InvalidArgument(f"unknown setting {exc.args[0]!r}") from exc
    except (TypeError, ValueError) as exc:
        raise InvalidArgument(f"bad setting: {exc}") from exc
    if "archive" in overrides:
        archive_settings = overrides["archive"]
    return EngineSettings(archive=archive_settings, **typed)


#: Settings that name a file or directory.
_PATH_SETTINGS = ("data_dir", "master_key_file")


def _paths_from(folder: Path, document: dict[str, Any]) -> dict[str, Any]:
    """``document`` (a settings file's) with its relative paths taken from ``folder``,
    the file's. (From the working directory, one file started by a service manager, at
    /, and from a shell named two nodes.)"""
    resolved = dict(document)
    for name in _PATH_SETTINGS:
        value = document.get(name)
        if isinstance(value, str) and value.strip() and not Path(value).is_absolute():
            resolved[name] = str(folder / value)
    return resolved


def _unknown_variable(name: str, engine_fields: Mapping[str, object]) -> InvalidArgument:
    """The error for ``TIERSTORE_`` variable ``name`` that names no setting (its value
    is not shown: it may be a secret)."""
    known = [_ENV_PREFIX + field_name.upper() for field_name in engine_fields]
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.8)
    hint = (
        f"did you mean {close[0]}?"
        if close
        else "a setting's variable is TIERSTORE_ and its name in capitals, as "
        "TIERSTORE_HOT_CAPACITY_BYTES (README, Configuration)"
    )
    return InvalidArgument(f"unknown setting {name}: {hint}")


def _coerce(name: str, kind: Any, value: Any, *, numbers_from_text: bool = True) -> Any:
    """``value`` (a TOML value, a variable's text or an override) as setting ``name`` of
    type ``kind`` wants it. Raises InvalidArgument for a value of the wrong type (a bool
    is no number: ``true`` for a thread count was taken as 1). Text is read as a number
    only ``numbers_from_text`` (a variable's); a path may always be given as text."""
    text = str(kind)
    # Messages name the type, never the value: some settings are secrets.
    wrong = f"setting {name} must be a {{}}, not {_a_type(value)}"
    if isinstance(value, str) and not numbers_from_text and text.startswith(("int", "float")):
        raise InvalidArgument(wrong.format("whole number" if text.startswith("int") else "number"))
    if isinstance(value, str):
        try:
            if text.startswith("int"):
                return int(value)
            if text.startswith("float"):
                return float(value)
        except ValueError:
            kind_name = "whole number" if text.startswith("int") else "number"
            raise InvalidArgument(
                f"setting {name} (TIERSTORE_{name.upper()} or the settings file) must be "
                f"a {kind_name}, written in digits"
            ) from None
        if "Path" in text and not value.strip():  # an unset variable: not "."
            raise InvalidArgument(f"setting {name} is empty: give a path, or leave it out")
        return Path(value) if "Path" in text else value
    if "Path" in text:
        if value is None and "None" in text:
            return None
        if isinstance(value, os.PathLike):
            return Path(value)
        raise InvalidArgument(wrong.format("path"))
    if text.startswith("int"):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise InvalidArgument(wrong.format("whole number"))
        return int(value)
    if text.startswith("float"):
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise InvalidArgument(wrong.format("number"))
        try:
            return float(value)
        except OverflowError:  # 10**400: past any float; each setting's range refuses inf
            return math.inf if cast(float, value) > 0 else -math.inf
    if text.startswith("str") and value is not None and not isinstance(value, str):
        raise InvalidArgument(wrong.format("string"))
    return value


def _a_type(value: object) -> str:
    """``value``'s type with its article, for an error: "an int", "a str"."""
    name = type(value).__name__
    return f"{'an' if name[0] in 'aeiou' else 'a'} {name}"
