"""Which shards a dataset object reads, with what columns: resolved once, checked early.

:func:`resolve` runs when a dataset object is made, in the main process, so every worker
(and a resumed run) partitions the same fixed list, and bad input fails there with a
clear error instead of inside a worker: an unknown dataset or shard, raw (non-Arrow)
shards, no shards at all, unknown column names, columns with no tensor form. The schema
of the first shard (read from its schema frame alone: one small ranged read) is the
reference; :func:`conform` holds every shard read later to it, so schema drift between
shards is an error naming both shards, never a silently different tensor.

Resolution costs one ListShards page per 1,000 shards and one small read, then a second
listing of the shards read: the reads are placed by the listed frame sizes, so a shard
rewritten in between (caught by its generation) has everything listed and read again. A
dataset that gains shards later is not re-listed: make a new dataset
object to read them.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from itertools import accumulate
from typing import Any, TypeVar

import pyarrow as pa
import xxhash

from tierstore.arrowio import message_header_bytes, message_rows, repeated_columns
from tierstore.client.client import Client
from tierstore.errors import (
    FailedPrecondition,
    InvalidArgument,
    MalformedArrow,
    NotFound,
    ShardNotFound,
    TierstoreError,
    WrongShardKind,
)
from tierstore.tensors import TENSOR_COLUMN
from tierstore.torch.arrow_tensors import (
    Strings,
    check_schema,
    check_tensor_rows,
    recorded_dtype,
    scalar_samples,
)
from tierstore.torch.batches import ShardRows
from tierstore.torch.source import ShardSource, ShardTable, retried_by
from tierstore.types import ShardInfo, ShardKind

__all__ = [
    "ShardSet",
    "conform",
    "read_shard",
    "resolve",
    "resolve_through",
    "row_counts",
    "survey",
]

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class ShardSet:
    """The shards a dataset object reads (sorted by name) and the columns it yields."""

    dataset: str
    names: tuple[str, ...]
    #: the prefix they were listed by ("" for all), or None when the user named them
    #: (or empty shards were left out of them: :meth:`without_empty`)
    prefix: str | None
    #: the yielded columns (in order) and their types, from shard ``reference``
    schema: pa.Schema
    reference: str
    strings: Strings
    #: each shard's row count (in ``names`` order), when counted (``even_ranks``)
    rows: tuple[int, ...] | None = None
    #: each shard's generation when it was listed (in ``names`` order)
    generations: tuple[int, ...] = ()
    #: each shard's row count as recorded at put time (in ``names`` order; None for a
    #: shard written before counts were recorded), from the listing: no read needed
    recorded_rows: tuple[int | None, ...] = ()

    def row_counts(self) -> dict[str, int]:
        """``rows`` by shard name. Raises FailedPrecondition when they were not counted."""
        if self.rows is None:
            raise FailedPrecondition("the row counts of these shards were not counted")
        return dict(zip(self.names, self.rows, strict=True))

    def without_empty(self) -> ShardSet:
        """This set less its shards of no rows, when they were counted (even ranks) and
        some have rows: shards go to readers whole, and a reader that some epoch's
        shuffle handed only empty shards would make every reader's share zero then.
        Its ``prefix`` is then None: the server would regenerate a sampler's order over
        every shard the prefix lists, the empty ones included, so an access plan names
        the shards read instead."""
        if self.rows is None or all(self.rows) or not any(self.rows):
            return self
        kept = [index for index, rows in enumerate(self.rows) if rows]

        def pick(values: tuple[Any, ...]) -> tuple[Any, ...]:
            return tuple(values[index] for index in kept) if values else values

        return replace(
            self,
            names=pick(self.names),
            prefix=None,
            rows=pick(self.rows),
            generations=pick(self.generations),
            recorded_rows=pick(self.recorded_rows),
        )

    @property
    def digest(self) -> str:
        """A fingerprint of the shard list, kept in resume states to catch a changed one."""
        return xxhash.xxh64_hexdigest("\0".join(self.names).encode())

    @property
    def contents_digest(self) -> str:
        """A fingerprint of the shards' generations, kept in resume states to catch a
        shard rewritten since (a position inside it would name other rows)."""
        if not self.generations:
            return ""  # not known: not checked
        pairs = zip(self.names, self.generations, strict=True)
        return xxhash.xxh64_hexdigest("\0".join(f"{n}@{g}" for n, g in pairs).encode())


def _listed(
    client: Client, dataset: str, shards: Sequence[str] | None, prefix: str
) -> tuple[list[ShardInfo], str | None]:
    if shards is None:
        infos = client.list(dataset, prefix)
        if not infos:
            where = f"with prefix {prefix!r}" if prefix else "at all"
            raise InvalidArgument(f"dataset {dataset!r} has no shards {where}: nothing to read")
        return infos, prefix
    if prefix:
        raise InvalidArgument("give shards= or prefix=, not both")
    if isinstance(shards, str | bytes) or not isinstance(shards, Iterable):
        raise InvalidArgument(f"shards= must be a list of shard names, not {shards!r:.40}")
    shards = list(shards)  # once: a generator is read here, not consumed by a check
    if not all(isinstance(name, str) for name in shards):
        raise InvalidArgument("shards= must be a list of shard names")
    if not shards:
        raise InvalidArgument("shards= is empty: nothing to read")
    if len(set(shards)) != len(shards):
        raise InvalidArgument("shards= names a shard more than once")
    # One listing under the names' common prefix finds them all (and usually little else).
    wanted = set(shards)
    infos = [
        info
        # A character prefix on purpose: ListShards filters names by string prefix.
        for info in client.list(dataset, os.path.commonprefix(list(shards)))  # noqa: RUF071
        if info.name in wanted
    ]
    missing = sorted(wanted - {info.name for info in infos})
    if missing:
        shown = ", ".join(repr(name) for name in missing[:5])
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise ShardNotFound(f"dataset {dataset!r} has no shard {shown}{more}")
    return infos, None


def _reference_schema(client: Client, info: ShardInfo) -> pa.Schema:
    """The schema of an Arrow shard, from its first frame (the IPC schema message) alone."""
    frame = client.get(info.dataset, info.name, offset=0, length=info.frame_sizes[0])
    try:
        return pa.ipc.read_schema(frame)
    except (pa.ArrowException, EOFError, OSError) as exc:
        raise MalformedArrow(
            f"{info.dataset}/{info.name}: its first frame is not an Arrow schema: {exc}"
        ) from exc


#: Frame headers read in parallel when rows are counted.
_COUNT_THREADS = 8
#: Leading bytes of a frame read first: a record batch's metadata usually fits.
_HEADER_GUESS = 4096


def _frame_rows(client: Client, info: ShardInfo, index: int, start: int) -> int:
    """Rows in frame ``index`` of ``info`` (a record batch; 0 for another message), which
    starts at byte ``start``, from the frame's IPC metadata alone: one small ranged
    read, two for very wide schemas."""
    size = info.frame_sizes[index]
    head = client.get(info.dataset, info.name, offset=start, length=min(size, _HEADER_GUESS))
    needed = message_header_bytes(head)
    if needed > size:
        raise MalformedArrow(
            f"{info.dataset}/{info.name}: frame {index} announces {needed} bytes of "
            f"metadata in {size} bytes"
        )
    if needed > head.size:
        head = client.get(info.dataset, info.name, offset=start, length=needed)
    return message_rows(head)


def survey(
    client: Client,
    infos: Sequence[ShardInfo],
    expected: pa.Schema,
    reference: str,
    threads: int = _COUNT_THREADS,
) -> tuple[int, ...]:
    """Each shard's row count, after checking every shard's schema against ``expected``
    (the selected columns of shard ``reference``): ``threads`` small ranged reads at a
    time, no shard read whole. The count is the one recorded at put time
    (``ShardInfo.rows``); for a shard written before rows were recorded, it comes from the
    metadata of its frames (a few KiB read of each).

    Raises what :meth:`Client.get` raises, MalformedArrow, and InvalidArgument for
    schema drift (naming both shards).
    """
    with ThreadPoolExecutor(max(1, threads), thread_name_prefix="tierstore-rows") as pool:
        # The reference's own schema was read by the caller: the others are checked.
        others = [info for info in infos if info.name != reference]
        schemas = pool.map(lambda info: _reference_schema(client, info), others)
        totals = _counted_rows(client, infos, pool)
        for info, schema in zip(others, schemas, strict=True):
            check_conforms(info.dataset, expected, reference, info.name, schema)
    return tuple(totals[info.name] for info in infos)


def _counted_rows(
    client: Client, infos: Sequence[ShardInfo], pool: ThreadPoolExecutor
) -> dict[str, int]:
    """Each shard's rows by name: as recorded at put time, else counted on ``pool`` from
    the metadata of its frames (a few KiB read of each)."""
    jobs = [
        (info, index, start)
        for info in infos
        if info.rows is None
        for index, start in enumerate(accumulate(info.frame_sizes[:-1], initial=0))
        if index > 0
    ]
    counts = pool.map(lambda job: _frame_rows(client, *job), jobs)
    totals = {info.name: info.rows or 0 for info in infos}
    for (info, _, _), rows in zip(jobs, counts, strict=True):
        totals[info.name] += rows
    return totals


def row_counts(
    client: Client, shard_set: ShardSet, threads: int = _COUNT_THREADS
) -> tuple[int, ...]:
    """Each shard's rows (in ``names`` order): as counted or recorded when the set was
    made, and for a shard written before counts were recorded, counted now from the
    metadata of its frames (a few KiB read of each, ``threads`` at a time; no schema is
    read; listed and counted again while one is rewritten in between:
    :func:`_of_one_generation`). Raises what :meth:`Client.list` and :meth:`Client.get`
    raise, MalformedArrow, ShardNotFound for such a shard deleted since, and
    FailedPrecondition while they keep being rewritten."""
    known = shard_set.rows or shard_set.recorded_rows or (None,) * len(shard_set.names)
    missing = [name for name, rows in zip(shard_set.names, known, strict=True) if rows is None]
    counted: dict[str, int] = {}
    if missing:

        def count(placed: list[ShardInfo]) -> dict[str, int]:
            infos, _ = _listed(client, shard_set.dataset, missing, "")
            placed.extend(infos)
            with ThreadPoolExecutor(max(1, threads), thread_name_prefix="tierstore-rows") as pool:
                return _counted_rows(client, infos, pool)

        counted = _of_one_generation(client, shard_set.dataset, count)
    return tuple(
        counted[name] if rows is None else rows
        for name, rows in zip(shard_set.names, known, strict=True)
    )


def _select(schema: pa.Schema, given: Iterable[str] | None, reference: str) -> pa.Schema:
    if given is None:
        return schema
    if isinstance(given, str | bytes) or not isinstance(given, Iterable):
        raise InvalidArgument("columns= must be a list of column names")
    columns = list(given)  # taken once: a generator has nothing left for a second look
    if not all(isinstance(name, str) for name in columns):
        raise InvalidArgument("columns= must be a list of column names")
    if not columns:
        raise InvalidArgument("columns= is empty: name at least one column")
    if len(set(columns)) != len(columns):
        raise InvalidArgument("columns= names a column more than once")
    unknown = [name for name in columns if name not in schema.names]
    if unknown:
        raise InvalidArgument(
            f"unknown column(s) {unknown}: shard {reference!r} has columns {schema.names}"
        )
    ambiguous = repeated_columns(schema, columns)
    if ambiguous:  # schema.field() raised a bare KeyError for them
        raise InvalidArgument(
            f"columns {ambiguous} appear more than once in shard {reference!r}, so a name "
            "cannot select them: choose other columns with columns="
        )
    # The schema's metadata stays: a tensor shard's says what its samples are.
    return pa.schema([schema.field(name) for name in columns], metadata=schema.metadata)


def resolve_through(source: ShardSource, dataset: str, **options: Any) -> ShardSet:
    """:func:`resolve` (``options`` are its keyword arguments) with ``source``'s client,
    made again as the source makes its reads while the node is unavailable
    (:func:`~tierstore.torch.source.retried_by`)."""
    return retried_by(
        source,
        lambda client: resolve(client, dataset, **options),
        f"listing dataset {dataset}",
    )


def resolve(
    client: Client,
    dataset: str,
    *,
    shards: Sequence[str] | None = None,
    prefix: str = "",
    columns: Iterable[str] | None = None,
    strings: Strings = "error",
    with_rows: bool = False,
    count_threads: int = _COUNT_THREADS,
) -> ShardSet:
    """List and check what to read: ``shards`` by name, else every shard whose name starts
    with ``prefix`` (all when empty); ``with_rows`` also counts each shard's rows and
    checks each shard's schema (:func:`survey`, ``count_threads`` reads at a time),
    reading no shard whole.

    Raises:
        DatasetNotFound: no such dataset (or no role on it).
        ShardNotFound: a name in ``shards`` is not in the dataset.
        WrongShardKind: a shard holds raw bytes, not Arrow data.
        InvalidArgument: no shards to read, both ``shards`` and ``prefix``, malformed or
            unknown ``columns``; with ``with_rows``, schema drift between shards.
        UnsupportedData: a selected column has no tensor form (see ``arrow_tensors``), or
            the first shard (with ``with_rows``, any) is a tensor stored one element per
            row though it has rows (``arrow_tensors.check_tensor_rows``).
        MalformedArrow: the first shard's schema frame does not parse (with ``with_rows``,
            any shard's, or a frame's metadata).
        FailedPrecondition: shards read kept being rewritten (or deleted) between their
            listing and the reads it placed (:func:`_of_one_generation`).
    """

    def resolved(placed: list[ShardInfo]) -> ShardSet:
        infos, listed_by = _listed(client, dataset, shards, prefix)
        raw = [info.name for info in infos if info.kind is ShardKind.RAW]
        if raw:
            more = f" and {len(raw) - 5} more" if len(raw) > 5 else ""
            raise WrongShardKind(
                f"dataset {dataset!r}: shard(s) {raw[:5]}{more} hold raw bytes, not Arrow "
                "data; tierstore.torch reads Arrow shards (choose others with shards= or "
                "prefix=; upload Arrow IPC files with `tierstore put --kind arrow`)"
            )
        infos.sort(key=lambda info: info.name)
        first = infos[0]
        placed.extend(infos if with_rows else [first])  # the shards ranges are read of
        reference = _reference_schema(client, first)
        check_tensor_rows(reference, first.name)
        schema = _select(reference, columns, first.name)
        check_schema(schema, strings)
        return ShardSet(
            dataset=dataset,
            names=tuple(info.name for info in infos),
            prefix=listed_by,
            schema=schema,
            reference=first.name,
            strings=strings,
            rows=survey(client, infos, schema, first.name, count_threads) if with_rows else None,
            generations=tuple(info.generation for info in infos),
            recorded_rows=tuple(info.rows for info in infos),
        )

    return _of_one_generation(client, dataset, resolved)


#: How many times shards are listed and read when one read is rewritten in between.
_LISTINGS = 3


def _of_one_generation(client: Client, dataset: str, attempt: Callable[[list[ShardInfo]], T]) -> T:
    """``attempt(placed)``, which lists shards, adds to ``placed`` the infos by whose frame
    sizes it reads ranges of shards, and reads them: once those shards are listed again
    at the generations it read them by, its result (or its error) is of that one
    listing. A shard rewritten or deleted in between (its ranges placed by another
    generation's frame sizes: a schema frame read cut short, a frame header read at a
    wrong offset) is the attempt's to make again, on a new listing, up to
    ``_LISTINGS`` times in all; then FailedPrecondition names the shards still changing.
    """
    changed: list[str] = []
    failure: TierstoreError | None = None
    for _ in range(_LISTINGS):
        placed: list[ShardInfo] = []
        try:
            result = attempt(placed)
        except (InvalidArgument, NotFound) as exc:
            # What a read placed by stale frame sizes raises (or a shard deleted since):
            # an error only when those shards are still as listed.
            changed, failure = _changed(client, dataset, placed), exc
            if not changed:
                raise
        else:
            changed, failure = _changed(client, dataset, placed), None
            if not changed:
                return result
    shown = ", ".join(repr(name) for name in changed[:5])
    more = f" and {len(changed) - 5} more" if len(changed) > 5 else ""
    raise FailedPrecondition(
        f"dataset {dataset!r}: shard(s) [{shown}{more}] were rewritten or deleted while this "
        f"dataset object was made (listed {_LISTINGS} times): make it again once their "
        "writers are done"
    ) from failure


def _changed(client: Client, dataset: str, infos: Sequence[ShardInfo]) -> list[str]:
    """The names of ``infos`` whose shards are now at another generation, or gone
    (generations are never reused: one listed again was not rewritten in between)."""
    if not infos:
        return []
    names = [info.name for info in infos]
    # One shard: the first name listed by its own name is its own (others extend it).
    limit = 1 if len(names) == 1 else None
    # A character prefix on purpose: ListShards filters names by string prefix.
    now = {
        info.name: info.generation
        for info in client.list(dataset, os.path.commonprefix(names), limit=limit)  # noqa: RUF071
    }
    return [info.name for info in infos if now.get(info.name) != info.generation]


def check_conforms(
    dataset: str, expected: pa.Schema, reference: str, shard: str, schema: pa.Schema
) -> None:
    """Raise InvalidArgument (schema drift, naming both shards) unless ``schema``, shard
    ``shard``'s, has every column of ``expected`` (shard ``reference``'s) with its type
    (and, for a tensor shard, its layout and the dtype it records); UnsupportedData for
    a tensor shard with no samples to read (:func:`check_tensor_rows`: its type can be
    the same as a vector's)."""
    check_tensor_rows(schema, shard)
    # The reference itself drifts when it is rewritten after its schema was read.
    rewritten = shard == reference
    since = "when this dataset object was made (it was rewritten since)"
    missing = [name for name in expected.names if name not in schema.names]
    if missing:
        had = f"it had {since}" if rewritten else f"shard {reference!r} has"
        raise InvalidArgument(
            f"schema drift in {dataset!r}: shard {shard!r} has no column(s) {missing}, which {had}"
        )
    repeated = repeated_columns(schema, expected.names)
    if repeated:
        had = f"it had them once {since}" if rewritten else f"shard {reference!r} has them once"
        raise InvalidArgument(
            f"schema drift in {dataset!r}: shard {shard!r} has column(s) {repeated} more "
            f"than once, and {had}"
        )
    for field in expected:
        found = schema.field(field.name).type
        if not found.equals(field.type):
            was = since if rewritten else f"in shard {reference!r}"
            raise InvalidArgument(
                f"schema drift in {dataset!r}: column {field.name!r} is {found} in "
                f"shard {shard!r} but {field.type} {was}"
            )
    if TENSOR_COLUMN in expected.names and scalar_samples(schema) != scalar_samples(expected):
        kinds = {True: "a vector (a scalar sample per element)", False: "a tensor with rows"}
        was = f"it was {since}" if rewritten else f"shard {reference!r} is"
        raise InvalidArgument(
            f"schema drift in {dataset!r}: shard {shard!r} is {kinds[scalar_samples(schema)]}, "
            f"but {was} {kinds[scalar_samples(expected)]}: their samples would not batch "
            "together"
        )
    stored, listed = recorded_dtype(schema), recorded_dtype(expected)
    if TENSOR_COLUMN in expected.names and stored != listed:
        # bfloat16 is stored as uint16, bool as uint8, complex64 as float32 pairs: the
        # types above match, but the samples would be read as different dtypes.
        had = (
            f"it held one {_of_dtype(listed)} {since}"
            if rewritten
            else f"shard {reference!r} holds one {_of_dtype(listed)}"
        )
        raise InvalidArgument(
            f"schema drift in {dataset!r}: shard {shard!r} holds a tensor "
            f"{_of_dtype(stored)}, but {had}: both are stored as "
            f"{expected.field(TENSOR_COLUMN).type}, and their samples would be read as "
            "different dtypes"
        )


def _of_dtype(dtype: str | None) -> str:
    return "of no recorded dtype" if dtype is None else f"of dtype {dtype}"


def conform(shard_set: ShardSet, shard: str, table: pa.Table) -> pa.Table:
    """``table`` (shard ``shard``) cut to the selected columns, after checking that they
    have the reference types. Raises InvalidArgument for schema drift, naming both shards."""
    expected = shard_set.schema
    check_conforms(shard_set.dataset, expected, shard_set.reference, shard, table.schema)
    return table.select(expected.names)


def read_shard(
    source: ShardSource, shard_set: ShardSet, shard: str, stop: threading.Event | None = None
) -> ShardRows:
    """Read ``shard`` from ``source``, hold it to the reference schema and convert it.

    Raises what :meth:`ShardSource.read`, :func:`conform` and :class:`ShardRows` raise,
    with a note naming the shard; ShardNotFound saying that the shard was deleted after
    the dataset object was made (``shard_set`` lists it). Thread-safe (read-ahead threads
    call it).
    """
    try:
        read = source.read(shard_set.dataset, shard, stop)
    except ShardNotFound as exc:
        # The service's "no shard 's' in dataset 'd'" reads as a mistyped name, and was
        # raised again every epoch: the name was listed, and only a new listing helps.
        deleted = ShardNotFound(
            f"shard {shard!r} of dataset {shard_set.dataset!r} was deleted after this "
            "dataset object was made (it was listed then): make a new dataset object to "
            "read the shards the dataset has now, from an epoch's start (a state saved "
            "with the old list does not fit the new one)"
        )
        for note in getattr(exc, "__notes__", ()):
            deleted.add_note(note)
        raise deleted from None
    if not isinstance(read, ShardTable):  # a table would unpack as two of its columns
        raise InvalidArgument(
            f"{type(source).__name__}.read returned a {type(read).__name__}, not a "
            "ShardTable(table, generation) (docs/torch.md, Shard sources)"
        )
    table, generation = read
    try:
        return ShardRows(conform(shard_set, shard, table), shard_set.strings, generation)
    except TierstoreError as exc:
        exc.add_note(f"tierstore.torch: in shard {shard_set.dataset}/{shard}")
        raise
