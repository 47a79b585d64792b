"""The streaming dataset: a dataset's shards, partitioned by rank and worker, as tensors.

Each worker of each rank reads its own slice of the epoch's shard order (see
:mod:`tierstore.torch.order`), fetches the next ``read_ahead`` shards in the background,
converts record batches to tensors without copying where Arrow allows it, and yields
samples or in-worker batches (assembled ahead on ``batch_threads`` threads when asked).
It declares its order to the service as an access plan (:mod:`tierstore.torch.access_plan`)
so the hot tier can prepare for it.

Process model: the object is made in the main process — that is where the shard list is
resolved and bad input is refused — and reaches DataLoader workers by fork, spawn or
forkserver. Its pickled state holds no client, thread or open stream (the shard source
reconnects per process), and the rank/worker slot is resolved when iteration starts, in
the process that iterates.

Resume: ``state_dict()`` is the iterating worker's :class:`~tierstore.torch.order.ResumeState`
— the samples it has yielded, exactly, whatever the batch size — and ``load_state_dict()``
makes the next ``iter()`` continue from it. ``torchdata``'s ``StatefulDataLoader`` keeps one
such state per worker; a plain ``DataLoader`` has no per-worker state, so with it resume
only with ``num_workers=0``, from ``dataset.state_dict()`` (docs/torch.md).

Thread safety: a dataset object and its iterators belong to one thread of one process.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import threading
import warnings
from collections.abc import Generator, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch.utils.data

from tierstore.errors import InvalidArgument
from tierstore.plans import DEFAULT_PLAN_TTL_S, check_plan_ttl
from tierstore.torch.access_plan import PlanReporter
from tierstore.torch.arguments import check_bool, check_int
from tierstore.torch.arrow_tensors import Strings
from tierstore.torch.batches import Part, ShardRows, assemble
from tierstore.torch.catalog import ShardSet, read_shard, resolve_through, row_counts
from tierstore.torch.epochs import SharedEpoch
from tierstore.torch.length import EpochShape, checked_even_share, epoch_items
from tierstore.torch.order import (
    EPOCH_LIMIT,
    Layout,
    Position,
    ResumeState,
    Slot,
    position_after,
    sampler_plan,
    shard_rows,
    shards_from,
    worker_shards,
)
from tierstore.torch.readahead import read_ahead
from tierstore.torch.source import ShardSource, given_source, service_source
from tierstore.torch.topology import (
    current_slot,
    given_rank,
    live_distributed_rank,
    warn_if_idle,
)

__all__ = ["IterableDataset"]

Sample = dict[str, Any]


class IterableDataset(torch.utils.data.IterableDataset[Sample]):
    """Streams ``dataset``'s Arrow shards as ``dict[str, torch.Tensor]`` samples or batches.

    Connection: ``address``, ``token`` and ``ca`` default to ``TIERSTORE_ADDRESS``,
    ``TIERSTORE_TOKEN`` and ``TIERSTORE_CA`` (through :func:`tierstore.connect`);
    ``token_file`` (or ``TIERSTORE_TOKEN_FILE``) names a file holding the token, read
    again by each worker (a pipe or ``/dev/stdin`` is read once, here).
    What to read: ``shards`` (names) or every shard whose name starts with ``prefix`` (all by
    default); ``columns`` selects and orders columns; ``strings="list"`` passes string
    columns through as lists (else they are refused). Order: ``shuffle``, ``seed``, and the
    epoch from :meth:`set_epoch`. ``batch_size``: yield batches of that many rows, built in
    the worker, spanning shard boundaries (the last one short unless ``drop_last``); None
    yields single samples. ``read_ahead``: shards fetched ahead per worker.
    ``batch_threads``: batches assembled ahead by this many threads of the iterating
    process (0: each on the iterating thread when it is due); with ``num_workers=0`` this
    replaces worker processes (docs/torch.md, "Batches from threads"). ``pin_memory``:
    batches assembled outside DataLoader workers go straight into page-locked memory, ready
    for a non-blocking copy to the GPU (where CUDA is available; in workers, use the
    DataLoader's ``pin_memory``).
    ``declare_plan``: send each worker's order to the service as an access plan.
    ``even_ranks``: every rank yields the same number of samples (and batches) in an
    epoch, so that DDP's collectives never wait for a rank that ran out: each reader
    (rank x worker) stops at the fewest rows any reader's shards hold, leaving the rest
    of its shards' rows out of that epoch (like ``DistributedSampler(drop_last=True)``).
    Counting the rows reads a few KiB of every frame here (docs/torch.md).
    ``rank`` and ``world_size``: the data-parallel rank to read as (both or neither), for
    launches where it is not the process group's rank (tensor or pipeline parallelism:
    peers that must see the same data pass the same rank); default: found when
    iteration starts (docs/torch.md).
    ``retry_s``: how long a shard read retries while the service is unavailable, and,
    on its own, making the object (its listing and the first shard's schema).
    ``source``: where shards are read from (default: the service, over gRPC).
    ``num_workers``: the DataLoader's ``num_workers``, which ``len()`` needs when it
    depends on it (in-worker batches, ``even_ranks``): see :meth:`epoch_length`.

    Raises (here, at construction): DatasetNotFound (also for a token with no role on the
    dataset: by design it learns nothing of it), ShardNotFound, WrongShardKind (raw
    shards), InvalidArgument (no shards, bad arguments or columns), UnsupportedData
    (columns with no tensor form), Unauthenticated, PermissionDenied (a role too weak),
    Unavailable (after ``retry_s``: a wrong address or port too, or a plaintext
    ``insecure`` client of a TLS node, which closes its connections; a server
    certificate that does not verify is ServerCertificateRejected at once).
    While iterating: DataLoss (a frame failed verification: nothing unverified is ever
    turned into a tensor), InvalidArgument (schema drift), UnsupportedData (nulls),
    Unavailable (after ``retry_s``), ShardNotFound (a shard deleted after the object was
    made: make a new one) — each with a note naming the shard and the worker.
    """

    def __init__(
        self,
        dataset: str,
        *,
        address: str | None = None,
        token: str | None = None,
        token_file: str | Path | None = None,
        ca: str | Path | None = None,
        shards: Sequence[str] | None = None,
        prefix: str = "",
        columns: Iterable[str] | None = None,
        shuffle: bool = True,
        seed: int = 0,
        batch_size: int | None = None,
        drop_last: bool = False,
        read_ahead: int = 2,
        batch_threads: int = 0,
        pin_memory: bool = False,
        declare_plan: bool = True,
        even_ranks: bool = False,
        rank: int | None = None,
        world_size: int | None = None,
        strings: Strings = "error",
        retry_s: float = 60.0,
        plan_ttl_s: float = DEFAULT_PLAN_TTL_S,
        source: ShardSource | None = None,
        num_workers: int | None = None,
    ) -> None:
        super().__init__()
        self.seed = check_int("seed", seed, 0, 1 << 63)
        self.batch_size = None if batch_size is None else check_int("batch_size", batch_size, 1)
        self.read_ahead = check_int("read_ahead", read_ahead, 0)
        self.batch_threads = check_int("batch_threads", batch_threads, 0)
        if self.batch_threads and self.batch_size is None:
            raise InvalidArgument("batch_threads assembles batches: it needs a batch_size")
        self.pin_memory = check_bool("pin_memory", pin_memory)
        self.shuffle = check_bool("shuffle", shuffle)
        self.drop_last = check_bool("drop_last", drop_last)
        self.declare_plan = check_bool("declare_plan", declare_plan)
        self.even_ranks = check_bool("even_ranks", even_ranks)
        #: the DataLoader's worker count, if given (for len())
        self.num_workers = None if num_workers is None else check_int("num_workers", num_workers, 0)
        #: the data-parallel (rank, world size) given, else None (found when iterating)
        self._given_rank = given_rank(rank, world_size)
        self.plan_ttl_s = check_plan_ttl(plan_ttl_s, "plan_ttl_s")
        given = given_source(source)  # "is None": a source may be falsy (a __len__ of 0)
        self._source = (
            service_source(address, token, ca, retry_s, token_file) if given is None else given
        )
        #: the shards and columns read, fixed now for every worker and resume
        self.shards: ShardSet = resolve_through(
            self._source,
            dataset,
            shards=shards,
            prefix=prefix,
            columns=columns,
            strings=strings,
            with_rows=self.even_ranks,
        ).without_empty()  # with even ranks (rows counted): see ShardSet.without_empty
        #: each shard's rows, once len() has asked (in ``shards.names`` order)
        self._rows: tuple[int, ...] | None = self.shards.rows
        self._shared_epoch = SharedEpoch(0)  # reaches persistent workers too
        self._resume: ResumeState | None = None
        #: where this process's newest epoch iterator stands; the iterator itself (with its
        #: read-ahead threads and the shards they hold) belongs to its loader alone
        self._live: _Cursor | None = None
        self._completed: set[int] = set()  # epochs finished in this process (for a warning)
        #: the rank process's (rank, world size), carried to spawned workers by pickling
        self._carried_rank: tuple[int, int] | None = None

    def __repr__(self) -> str:
        return (
            f"IterableDataset({self.shards.dataset!r}, {len(self.shards.names)} shards, "
            f"shuffle={self.shuffle}, seed={self.seed}, epoch={self._epoch})"
        )

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_live"] = None  # a position in this process's iteration never travels
        state["_completed"] = set()
        # Pickled in the rank process for a spawned (or forkserver) worker, which has no
        # process group: it must still read as this rank, not as rank 0 of 1.
        state["_carried_rank"] = live_distributed_rank() or self._carried_rank
        return state

    @property
    def _epoch(self) -> int:
        return self._shared_epoch.value

    def __bool__(self) -> bool:
        """Always true: a dataset object is no container to test for emptiness (``if
        dataset:`` would otherwise call ``len()``, which may raise or read)."""
        return True

    def __len__(self) -> int:
        """Samples (or batches) this rank yields in a whole epoch, the current one, for a
        DataLoader's ``len()``: :meth:`epoch_length` with the ``num_workers`` given at
        construction.

        Raises TypeError (what ``len()`` of a dataset without a length raises) when the
        count depends on the worker count and ``num_workers`` was not given.
        """
        if self.num_workers is None and self._length_needs_workers:
            raise TypeError(
                "len() of this IterableDataset depends on the DataLoader's worker count "
                "(each worker makes its own batches; with even_ranks, its own share): pass "
                "num_workers= (the DataLoader's) to the dataset, or call "
                "epoch_length(num_workers)"
            )
        return self.epoch_length(self.num_workers or 0)

    @property
    def _length_needs_workers(self) -> bool:
        return self.batch_size is not None or self.even_ranks

    def epoch_length(self, num_workers: int = 0, epoch: int | None = None) -> int:
        """Samples (or batches, with ``batch_size``) this rank yields in the whole of
        ``epoch`` (default: the current one) when read by a DataLoader with
        ``num_workers`` workers. After a mid-epoch resume it is still the whole epoch's
        count, not what the resumed state has left of it.

        Exact for the shards as listed when the object was made (a shard rewritten since
        with other rows is not seen). With ``shuffle`` and in-worker batches it varies
        from epoch to epoch, by up to about one batch per worker, as the shards a worker
        gets change. The rank is found as iteration finds it. Row counts are the ones
        recorded at put time (no read); shards written before counts were recorded are
        counted on the first call, a few KiB read per frame of those shards. Raises
        InvalidArgument for a bad ``num_workers`` or ``epoch``, and as iteration would
        for an ``even_ranks`` layout with a reader of no rows; what counting raises
        (Unavailable, ShardNotFound) on that first call.
        """
        workers = max(1, check_int("num_workers", num_workers, 0))
        epoch = self._epoch if epoch is None else check_int("epoch", epoch, 0, EPOCH_LIMIT)
        slot = current_slot(carried=self._carried_rank, given=self._given_rank)
        if self._rows is None:
            self._rows = row_counts(self._source.client(), self.shards)
        shape = EpochShape(
            self.shuffle, self.seed, self.batch_size, self.drop_last, self.even_ranks
        )
        return epoch_items(
            self.shards.names, self._rows, shape, epoch, slot.rank, slot.world, workers
        )

    def layout(self, slot: Slot | None) -> Layout:
        """What positions of this dataset are relative to, in ``slot``."""
        shards = self.shards
        return Layout(
            len(shards.names), shards.digest, self.shuffle, self.seed, slot, shards.contents_digest
        )

    def set_epoch(self, epoch: int) -> None:
        """Read epoch ``epoch`` on the next ``iter()`` (call it before each epoch, in the main
        process). A resume state of another epoch, loaded before or after it and before
        an iteration begins reading it, is discarded: ``StatefulDataLoader`` hands the
        dataset its state only at the ``iter()``, after a training loop's ``set_epoch()``.

        Raises InvalidArgument unless ``epoch`` is an int in ``[0, 2**63)`` (the epoch is
        kept in 64 signed bits, shared with the workers).
        """
        epoch = check_int("epoch", epoch, 0, EPOCH_LIMIT)
        self._shared_epoch.name(epoch)
        if self._resume is not None and self._resume.position.epoch != epoch:
            self._resume = None
        if self._live is not None and self._live.position.epoch != epoch:
            self._live = None

    def state_dict(self) -> dict[str, Any]:
        """This process's position: the current iterator's, else the pending resume state,
        else the start of the current epoch. A plain dict (see
        :class:`~tierstore.torch.order.ResumeState`).

        In the main process of a plain DataLoader whose workers have begun reading the
        current epoch since it was set (or a state loaded), inside the epoch or at its
        end, that start (or the state loaded) is all it knows: the workers' positions
        stay in the workers. A UserWarning then says that a resume from it reads again
        what they read: use StatefulDataLoader's state to resume mid-epoch with workers,
        or take the state after the next epoch's set_epoch()."""
        live = self._live
        if live is not None and live.pid == os.getpid():
            return live.state_dict()
        epoch = self._epoch
        if self._shared_epoch.begun_by_workers == epoch and _loader_reader() is None:
            warnings.warn(
                f"state_dict(): DataLoader workers have begun reading epoch {epoch}, and "
                "where they stand is known to them alone: this state is where they began, "
                "and a resume from it reads again what they read. Resume mid-epoch with "
                "workers through torchdata's StatefulDataLoader (its state_dict()), or "
                "take this state after the next epoch's set_epoch()",
                UserWarning,
                stacklevel=2,
            )
        if self._resume is not None:
            return self._resume.to_dict()
        return ResumeState(Position(epoch), self.layout(None)).to_dict()

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Make the next ``iter()`` continue from ``state`` (its epoch included), unless
        :meth:`set_epoch` named another epoch that no iteration has begun reading yet (in
        this process or a DataLoader worker of it): the state is then discarded (a state
        saved at the end of epoch 0, resumed with ``set_epoch(1)``, reads epoch 1).

        Raises InvalidArgument for a malformed state; one that does not fit the iterating
        worker's layout raises InvalidArgument when iteration starts.
        """
        parsed = ResumeState.from_dict(state)
        if self._named_other_than(parsed):
            return
        self._resume = parsed
        self._shared_epoch.load(parsed.position.epoch)
        self._live = None

    def __iter__(self) -> _Epoch:
        start, self._resume = self._resume, None
        epoch = self._epoch if start is None else start.position.epoch
        if start is None and self.shuffle and self._read_before(epoch):
            warnings.warn(
                f"epoch {epoch} is read again in the same order: call set_epoch() before each "
                "epoch",
                UserWarning,
                stacklevel=2,
            )
        live = _Epoch(self, epoch, start)
        self._live = live.cursor
        return live

    def _read_before(self, epoch: int) -> bool:
        """Whether ``epoch`` was read to its end before: in this process, or by a
        DataLoader worker of another iteration of the loader (a worker made afresh each
        epoch is a new copy of the main process's dataset, which finished no epoch)."""
        if epoch in self._completed:
            return True
        reader = _loader_reader()
        return reader is not None and self._shared_epoch.finished_before(epoch, *reader)

    def _finished(self, epoch: int) -> None:
        """This process's reader read ``epoch`` to its end."""
        self._completed.add(epoch)
        reader = _loader_reader()
        if reader is not None:
            self._shared_epoch.finish(epoch, *reader)

    def _named_other_than(self, state: ResumeState) -> bool:
        """Whether :meth:`set_epoch` named another epoch than ``state``'s that no
        iteration has begun reading yet (the state is then discarded)."""
        named = self._shared_epoch.named
        return named is not None and named != state.position.epoch

    # Called by the epoch iterators.

    def _fetch(self, shard: str, stop: threading.Event) -> ShardRows:
        """Read, check and convert one shard (in a read-ahead thread)."""
        return read_shard(self._source, self.shards, shard, stop)

    def _plan_reporter(self) -> PlanReporter | None:
        if not self.declare_plan:
            return None
        return PlanReporter(self._source.client(), self.shards.dataset, ttl_s=self.plan_ttl_s)


#: a loader iteration's base seed is kept in 64 signed bits
_ITERATION_MASK = (1 << 63) - 1


def _loader_reader() -> tuple[int, int] | None:
    """Which iteration of its DataLoader this process is a worker of, and which worker,
    or None outside DataLoader workers. The iteration is the base seed the loader drew for
    its workers (each worker's seed is it plus the worker's id); persistent workers keep
    theirs. Loaders that draw the same base seed each iteration (a generator seeded alike
    before each, ``torch.manual_seed(s)`` before each epoch) are told apart by the worker
    id: :meth:`SharedEpoch.finished_before`."""
    info = torch.utils.data.get_worker_info()
    return None if info is None else ((info.seed - info.id) & _ITERATION_MASK, info.id)


def _warn_if_other_workers(owner: IterableDataset, slot: Slot) -> None:
    """Warn when the dataset was told another worker count than the loader has, and its
    ``len()`` depends on it: it then counts for a loader that is not the one reading."""
    declared = owner.num_workers
    if declared is not None and owner._length_needs_workers and max(1, declared) != slot.workers:
        # Outside workers the slot counts the iterating process as the one worker: "read
        # by 1 worker(s)" described a loader made with num_workers=0.
        readers = (
            "without DataLoader workers (num_workers=0)"
            if torch.utils.data.get_worker_info() is None
            else f"by {slot.workers} DataLoader worker(s)"
        )
        warnings.warn(
            f"the dataset was made with num_workers={declared}, but is read {readers}: "
            "its len() is not this loader's",
            UserWarning,
            stacklevel=4,
        )


@dataclass
class _Cursor:
    """Where an epoch iterator stands: what the dataset's ``state_dict()`` reports.

    The dataset keeps this, not the iterator, so that an iterator abandoned mid-epoch
    (a ``break`` out of the loader's loop) goes, with its read-ahead threads and the
    shards they hold, once its loader drops it.
    """

    pid: int
    layout: Layout
    position: Position
    #: the generation of the shard the position is inside, as read (None: not known)
    generation: int | None = None

    def state_dict(self) -> dict[str, Any]:
        inside = self.generation if self.position.row else None
        return ResumeState(self.position, self.layout, inside, tracks_generation=True).to_dict()


class _Epoch:
    """One worker's iteration over one epoch; ``state_dict()`` is where it stands.

    Its samples come from a :class:`_Walk`'s generator, which holds no reference back
    to it: dropping an epoch left early drops the generator at once, and with it the
    read-ahead threads and the shards they hold (a cycle kept them until a collection).
    """

    def __init__(self, owner: IterableDataset, epoch: int, start: ResumeState | None) -> None:
        self._owner = owner
        self._slot = current_slot(carried=owner._carried_rank, given=owner._given_rank)
        self.cursor = _Cursor(os.getpid(), owner.layout(self._slot), Position(epoch))
        warn_if_idle(len(owner.shards.names), self._slot)
        _warn_if_other_workers(owner, self._slot)
        self._steps: Generator[Sample, None, None] | None = None
        self._walk: _Walk
        self._reset(start.position if start is not None else Position(epoch), start)

    def _reset(self, position: Position, state: ResumeState | None) -> None:
        owner = self._owner
        shards = worker_shards(
            owner.shards.names, owner.shuffle, owner.seed, position.epoch, self._slot
        )
        if state is not None:
            state.check(self.cursor.layout, len(shards))
        shared = torch.utils.data.get_worker_info() is not None
        self._walk = _Walk(
            owner,
            self._slot,
            shards,
            self._even_share(position.epoch),
            self.cursor,
            shared=shared,
            pinned=owner.pin_memory and not shared and torch.cuda.is_available(),
            resumed=state,
        )
        self.position = position
        self.cursor.generation = None if state is None else state.generation
        if self._steps is not None:
            self._steps.close()  # stops its read-ahead (its plan expires, as when dropped)
            self._steps = None

    @property
    def position(self) -> Position:
        """The position after the last sample (or batch) yielded."""
        return self.cursor.position

    @position.setter
    def position(self, position: Position) -> None:
        self.cursor.position = position

    def __iter__(self) -> _Epoch:
        return self

    def __next__(self) -> Sample:
        if self._steps is None:
            # From here on, a state of another epoch than set_epoch() named is taken. Not
            # at iter(): StatefulDataLoader loads the state into each worker after its
            # iter(), and holds every worker's first next() until all have loaded it.
            self._owner._shared_epoch.begun()
            if _loader_reader() is not None:
                self._owner._shared_epoch.worker_began(self.cursor.position.epoch)
            self._steps = self._walk.samples()
        return next(self._steps)

    def state_dict(self) -> dict[str, Any]:
        """The position after the last sample yielded (see :class:`ResumeState`)."""
        return self.cursor.state_dict()

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue from ``state`` (it must fit this worker's layout: InvalidArgument),
        unless it is discarded as :meth:`IterableDataset.load_state_dict` discards it.
        ``StatefulDataLoader`` restores a state into the dataset and then into its new
        iterator: a checkpoint taken at an epoch's last batch, resumed with the next epoch
        set, went on here with the old epoch's end and yielded nothing for the new one."""
        parsed = ResumeState.from_dict(state)
        if self._owner._named_other_than(parsed):
            return
        self._reset(parsed.position, parsed)

    def _even_share(self, epoch: int) -> int | None:
        """The samples every reader yields in ``epoch`` with even ranks, else None.
        Raises InvalidArgument when some reader has no rows: every rank would yield none."""
        owner = self._owner
        rows = owner.shards.rows  # counted only with even_ranks
        if rows is None:
            return None
        return checked_even_share(rows, owner.shuffle, owner.seed, epoch, self._slot)


@dataclass
class _Walk:
    """What one reader's walk through its shards of an epoch needs, from ``cursor``'s
    position on, which it moves as it yields. Holds nothing that holds its generator."""

    owner: IterableDataset
    slot: Slot
    #: this reader's shards of the epoch, in order
    shards: list[str]
    #: samples this reader yields with even ranks, else None
    share: int | None
    cursor: _Cursor
    #: whether batches go to a DataLoader worker's shared memory / page-locked memory
    shared: bool
    pinned: bool
    #: the state the walk resumes from, if any (its shard's generation is checked)
    resumed: ResumeState | None = None

    def samples(self) -> Generator[Sample, None, None]:
        """The samples (or batches) still to yield; declares the reader's plan first."""
        owner, start = self.owner, self.cursor.position
        plan = owner._plan_reporter() if self.shards else None
        if plan is not None:
            if owner.shards.prefix is None:
                plan.declare(shards=self.shards, position=start.shard)
            else:
                listed = owner.shards.names
                plan.declare(
                    sampler=sampler_plan(owner.shuffle, owner.seed, start.epoch, self.slot, listed),
                    prefix=owner.shards.prefix,
                    position=start.shard,
                    order=self.shards,  # when the prefix's shards changed since they were listed
                )
        counted, beyond = self._to_read(start)
        # The plan is closed when the epoch ends or fails. An iterator abandoned mid-epoch
        # (GeneratorExit, as its epoch is dropped) leaves it to expire after its TTL: no
        # RPC runs inside a finalizer.
        try:
            with contextlib.ExitStack() as stack:

                def fetch(names: list[str]) -> Iterator[ShardRows]:
                    return stack.enter_context(
                        contextlib.closing(read_ahead(owner._fetch, names, owner.read_ahead))
                    )

                # `beyond` is fetched only once `counted` is read and the share not made up.
                fetched = itertools.chain.from_iterable(map(fetch, (counted, beyond)))
                yield from self._samples(start, fetched, plan)
        except Exception as exc:
            exc.add_note(self._context())
            if plan is not None:
                plan.close()
            raise
        if plan is not None:
            plan.close()
        owner._finished(start.epoch)

    def _context(self) -> str:
        slot, position = self.slot, self.cursor.position
        return (
            f"tierstore.torch: dataset {self.owner.shards.dataset!r}, epoch "
            f"{position.epoch}, rank {slot.rank} of {slot.world}, worker {slot.worker} "
            f"of {slot.workers}, at shard {position.shard} of its {len(self.shards)}"
        )

    def _samples(
        self, start: Position, fetched: Iterator[ShardRows], plan: PlanReporter | None
    ) -> Iterator[Sample]:
        epoch, cursor = start.epoch, self.cursor
        if self.owner.batch_size is None:
            for index, rows, order, done in self._shard_orders(start, fetched, plan):
                cursor.generation = rows.generation
                for offset, row in enumerate(order.tolist(), start=1):
                    cursor.position = position_after(epoch, index, done + offset, len(rows))
                    yield rows.row(row)
        else:
            jobs = self._batch_jobs(start, fetched, plan)
            threads = self.owner.batch_threads
            made = read_ahead(self._assemble, jobs, threads, thread_name="tierstore-batches")
            with contextlib.closing(made):
                # The position moves only when a batch is yielded: rows held for a batch
                # (or in batches assembled ahead) are read again after a resume.
                for position, generation, batch in made:
                    cursor.position, cursor.generation = position, generation
                    yield batch
        cursor.position = Position(epoch, len(self.shards), 0)

    def _shard_orders(
        self, start: Position, fetched: Iterator[ShardRows], plan: PlanReporter | None
    ) -> Iterator[tuple[int, ShardRows, npt.NDArray[np.int64], int]]:
        """``(index, rows, order, done)`` per shard still to read: its rows, the row order
        still to read and how many rows came before; the plan hears of each shard read."""
        owner, share = self.owner, self.share
        taken = self._taken_before(start)
        if share is not None and taken >= share:
            return  # resumed with its share read: nothing more is fetched
        for (index, name), rows in zip(shards_from(self.shards, start), fetched, strict=False):
            if index == start.shard and self.resumed is not None:
                self.resumed.check_generation(name, rows.generation)
            order = shard_rows(index, name, len(rows), owner.shuffle, owner.seed, start)
            done = len(rows) - len(order)
            if share is not None:
                order = order[: max(0, share - taken)]
                taken += len(order)
            yield index, rows, order, done
            if plan is not None:
                plan.report(index + 1)
            if share is not None and taken >= share:
                return  # the epoch's share is read: the rest of the shards stay unread

    def _to_read(self, start: Position) -> tuple[list[str], list[str]]:
        """The shards still to read from ``start`` on, split in two: those read ahead, and
        those read only if the first ones fall short. With even ranks, the first are the
        shards whose rows (as counted) make up the share, and the others are read only
        if a shard was rewritten with fewer rows since: the read-ahead fetched the next
        shards whole, then dropped them unread once the share was yielded."""
        todo = [name for _, name in shards_from(self.shards, start)]
        rows = self.owner.shards.rows
        if self.share is None or rows is None:
            return todo, []
        count = dict(zip(self.owner.shards.names, rows, strict=True))
        taken = self._taken_before(start)  # start.row of them are todo[0]'s
        for needed, name in enumerate(todo):
            if taken >= self.share:
                return todo[:needed], todo[needed:]
            taken += count[name] - (start.row if needed == 0 else 0)
        return todo, []

    def _taken_before(self, start: Position) -> int:
        """Samples of this reader's epoch before ``start`` (with even ranks; else 0)."""
        rows = self.owner.shards.rows
        if rows is None:
            return 0
        count = dict(zip(self.owner.shards.names, rows, strict=True))
        return sum(count[name] for name in self.shards[: start.shard]) + start.row

    def _batch_jobs(
        self, start: Position, fetched: Iterator[ShardRows], plan: PlanReporter | None
    ) -> Iterator[tuple[Position, list[Part]]]:
        """Each batch's rows, in order, with the position once it is yielded."""
        owner = self.owner
        size, epoch = owner.batch_size, start.epoch
        assert size is not None
        parts: list[Part] = []
        held = 0  # rows in `parts`, not yet in a batch
        for index, rows, order, done in self._shard_orders(start, fetched, plan):
            at = 0
            while at < len(order):
                take = order[at : at + size - held]
                parts.append(Part(rows, take))
                held += len(take)
                at += len(take)
                if held == size:
                    yield position_after(epoch, index, done + at, len(rows)), parts
                    parts, held = [], 0
        if held and not owner.drop_last:
            yield Position(epoch, len(self.shards), 0), parts

    def _assemble(
        self, job: tuple[Position, list[Part]], stop: threading.Event
    ) -> tuple[Position, int | None, Sample]:
        """The batch, after the position it leaves and the generation of the shard that
        position is inside (the batch's last rows are that shard's)."""
        position, parts = job
        batch = assemble(parts, shared=self.shared, pinned=self.pinned)
        return position, parts[-1].shard.generation, batch
