"""Batches from host memory to a CUDA device, each copy overlapped with reading the next batch.

:class:`DeviceFeeder` wraps any iterable of batches (a DataLoader, a generator of tensors read
from tierstore) and yields the same batches with every CPU tensor moved to the device:

* Each CPU tensor goes through a **pinned staging buffer** (one host copy, then a DMA): the GPU
  can only copy asynchronously from page-locked memory, and pinning each batch afresh costs
  more than the copy. Buffers are kept per (position in the batch, dtype) in a ring of
  ``prefetch + 2``; each is flat, its length rounded up to a power of two, and stages any
  shape that fits in a view of its first elements. So a stream of batches allocates them
  once, and batches of many shapes (padded text) reuse them too: the pinned memory stays
  under ``2 * (prefetch + 2)`` times the largest batch. A tensor that
  is already pinned and contiguous is copied from where it is, with no staging (so, as with any
  ``non_blocking`` copy, it must not be written until the consumer's work on the batch is done).
* Copies run on the feeder's own **CUDA stream** with ``non_blocking=True``. While up to
  ``prefetch`` batches are being copied, the host is already reading the next one from the
  source, so storage reads, host copies and DMA overlap.
* The consumer's stream (the **current** stream when a batch is handed over) waits on an event
  recorded after the batch's copies, so kernels the consumer queues never see a half-copied
  tensor; the host does not block. The device tensors are recorded on the consumer's stream so
  the caching allocator does not hand their memory to a later copy while the consumer still
  uses them.

**Buffer lifetime.** A staging buffer is rewritten by the host only after the event of the copy
that last read it has completed; an in-flight batch keeps the host tensors its copies read
alive until it is handed over, and when iteration ends (exhausted, ``break`` or error) the
feeder waits for its outstanding copies. Device memory held ahead of the consumer: about
``prefetch + 1`` batches.

**Resume.** Because the source is read ahead, its own ``state_dict()`` counts batches the
consumer has not been handed yet, and a resume from it skips them. The feeder's
:meth:`DeviceFeeder.state_dict` is the source's state as of the batch last handed over: it is
taken right after each batch is read (tens of microseconds at most; docs/torch.md, Resume) and
handed out with its batch.

With device ``"cpu"`` the feeder passes batches through untouched.
"""

from __future__ import annotations

import collections
import copy
from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping
from typing import Any, Final, Generic, TypeVar

import torch

from tierstore.errors import FailedPrecondition, InvalidArgument
from tierstore.torch.arguments import check_int

__all__ = ["DeviceFeeder"]

B = TypeVar("B")

_STAGING_SLACK: Final = 2  # ring size is prefetch + this (see _StagingRing)
# torch leaves torch.cuda.Stream and Event untyped; the three calls carry an ignore for that.

_Path = tuple[Hashable, ...]
_Key = tuple[_Path, torch.dtype]


class DeviceFeeder(Generic[B]):
    """Yields the batches of ``batches`` with their CPU tensors on ``device``.

    A batch is a tensor, or a ``Mapping``, ``list`` or ``tuple`` (named tuples included) of
    batches; other leaves (strings, numbers, ``None``) pass through as they are. Mappings come
    back as ``dict`` in the same key order. Tensors already on ``device`` pass through; the
    source may be iterated afresh each epoch (each ``iter()`` calls ``iter(batches)``).

    ``prefetch`` (at least 0): how many batches are read and have their copies started ahead of
    the one the consumer holds.

    A checkpoint taken inside a loop over the feeder must come from :meth:`state_dict`, not
    from the source, which is ``prefetch`` batches ahead.

    Raises on construction:
        FailedPrecondition: ``device`` is a CUDA device but torch sees no CUDA device.
        InvalidArgument: ``device`` does not parse, is neither ``cpu`` nor ``cuda``, or names a
            CUDA index that does not exist; ``prefetch`` is negative.
    Raises while iterating: :class:`InvalidArgument` for a tensor on a device other than the
    CPU or ``device``; whatever the source raises, unchanged, once the batches it gave before
    have been handed over.

    Not thread-safe: iterate one feeder from one thread at a time. It holds a CUDA stream: make
    it in the process that owns the GPU, around the DataLoader, never inside its workers.
    """

    def __init__(self, batches: Iterable[B], device: str | torch.device, *, prefetch: int = 2):
        self._batches = batches
        self._prefetch = check_int("prefetch", prefetch, 0)  # True is no count
        self._device = _resolve_device(device)
        self._rings: dict[_Key, _StagingRing] = {}
        self._stream: torch.cuda.Stream | None = None
        # The source's state after the batch the consumer holds, while the source is read
        # ahead of it; None while it is not (the source's own state is then the consumer's).
        self._handed_state: dict[str, Any] | None = None
        if self._device.type == "cuda":
            self._stream = torch.cuda.Stream(self._device)  # type: ignore[no-untyped-call]

    @property
    def device(self) -> torch.device:
        """Where the batches go (a CUDA device always has its index)."""
        return self._device

    @property
    def staging_buffers(self) -> int:
        """How many pinned staging buffers the feeder holds (for tests and benchmarks)."""
        return sum(len(ring) for ring in self._rings.values())

    @property
    def staging_bytes(self) -> int:
        """The pinned host memory the staging buffers hold, in bytes."""
        return sum(ring.nbytes for ring in self._rings.values())

    def __len__(self) -> int:
        """The source's length; ``TypeError`` when the source has none."""
        return len(self._batches)  # type: ignore[arg-type]

    def state_dict(self) -> dict[str, Any]:
        """The source's resume state as of the batch last handed to the consumer.

        The source's state is its ``state_dict()``: a ``StatefulDataLoader``'s, the plugin's
        dataset's when the feeder reads it directly, or a plain ``DataLoader``'s dataset's
        when that loader has no workers. While batches are read ahead, this is the state
        taken right after the batch the consumer holds was read (also after a ``break``);
        otherwise it is the source's state now. A resume from it through
        :meth:`load_state_dict` yields exactly the batches not handed over yet.

        Each call returns a dict of its own. Raises TypeError when the source has no
        state (a plain ``DataLoader`` with workers: use torchdata's ``StatefulDataLoader``).
        """
        if self._handed_state is not None:
            # A copy: the caller may add to its checkpoint; the kept one must not change.
            return copy.deepcopy(self._handed_state)
        state: dict[str, Any] = _resumable(self._batches).state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Hand ``state`` (from :meth:`state_dict`) to the source: the next ``iter()``
        continues from it. Raises TypeError as :meth:`state_dict` does; what the source's
        ``load_state_dict`` raises, unchanged."""
        _resumable(self._batches).load_state_dict(state)
        self._handed_state = None

    def __iter__(self) -> Iterator[B]:
        self._handed_state = None
        source = iter(self._batches)  # now, so that state_dict() is the new iterator's
        if self._stream is None:
            return source
        return self._feed(self._stream, source)

    def _feed(self, stream: torch.cuda.Stream, source: Iterator[B]) -> Iterator[B]:
        holder = _state_holder(self._batches)
        in_flight: collections.deque[_InFlight] = collections.deque()
        exhausted = False
        failure: Exception | None = None
        try:
            while True:
                while not exhausted and len(in_flight) <= self._prefetch:
                    try:
                        batch = next(source)
                    except StopIteration:
                        exhausted = True
                    except Exception as error:
                        # Raised once the batches read before it are handed over, as the
                        # source itself would (they were dropped unseen).
                        exhausted, failure = True, error
                    else:
                        launched = self._launch(batch, stream)
                        launched.state = None if holder is None else holder.state_dict()
                        in_flight.append(launched)
                if not in_flight:
                    if failure is not None:
                        try:
                            raise failure
                        finally:
                            del failure  # no cycle through the traceback to this frame
                    self._handed_state = None  # the source stands where the consumer does
                    return
                ready = in_flight.popleft()
                # Taken at each hand-over: the consumer may switch streams between batches.
                consumer = torch.cuda.current_stream(self._device)
                consumer.wait_event(ready.done)
                for tensor in ready.device_tensors:
                    tensor.record_stream(consumer)
                self._handed_state = ready.state
                yield ready.batch
        finally:
            # Dropped in-flight batches release host tensors their copies may still read.
            stream.synchronize()

    def _launch(self, batch: Any, stream: torch.cuda.Stream) -> _InFlight:
        """Stage ``batch`` and queue its copies on ``stream``; returns before they finish."""
        device_tensors: list[torch.Tensor] = []
        host_tensors: list[torch.Tensor] = []
        used: list[_Staging] = []

        def move(path: _Path, tensor: torch.Tensor) -> torch.Tensor:
            if tensor.device == self._device:
                return tensor
            if tensor.device.type != "cpu":
                raise InvalidArgument(f"tensor at {path!r} is on {tensor.device}, not the CPU")
            if tensor.is_pinned() and tensor.is_contiguous():
                source = tensor
            else:
                staging = self._ring(path, tensor).claim(tensor.numel())
                source = staging.buffer[: tensor.numel()].view(tensor.shape)
                source.copy_(tensor)  # the host copy: reads the tensor's pages here
                used.append(staging)
            host_tensors.append(source)
            moved = source.to(self._device, non_blocking=True)
            device_tensors.append(moved)
            return moved

        # no_grad and the stream apply to this call only, never across a yield to the consumer.
        with torch.no_grad(), torch.cuda.stream(stream):
            moved_batch = _map_tensors(batch, move)
            done = torch.cuda.Event()  # type: ignore[no-untyped-call]
            done.record(stream)
        for staging in used:
            staging.last_copy = done
        return _InFlight(moved_batch, done, device_tensors, host_tensors)

    def _ring(self, path: _Path, tensor: torch.Tensor) -> _StagingRing:
        key = (path, tensor.dtype)
        ring = self._rings.get(key)
        if ring is None:
            ring = self._rings[key] = _StagingRing(tensor.dtype, self._prefetch + _STAGING_SLACK)
        return ring


class _InFlight:
    """A batch whose copies are queued: what the consumer gets and what must outlive the copies."""

    __slots__ = ("batch", "device_tensors", "done", "host_tensors", "state")

    def __init__(
        self,
        batch: Any,
        done: torch.cuda.Event,
        device_tensors: list[torch.Tensor],
        host_tensors: list[torch.Tensor],
    ) -> None:
        self.batch = batch
        self.done = done
        self.device_tensors = device_tensors
        # Keeps pinned sources alive until the batch is handed over (staging buffers are also
        # kept by their ring); by then the consumer's stream is ordered after the copies.
        self.host_tensors = host_tensors
        #: the source's state right after this batch was read (None: it has no state)
        self.state: dict[str, Any] | None = None


class _Staging:
    """One pinned host buffer and the event of the last copy that reads it."""

    __slots__ = ("buffer", "last_copy")

    def __init__(self, buffer: torch.Tensor) -> None:
        self.buffer = buffer
        self.last_copy: torch.cuda.Event | None = None


class _StagingRing:
    """Flat pinned buffers of one dtype, handed out oldest first.

    The size bound is ``prefetch + 2``: the batches in flight (``prefetch + 1``, the one just
    handed over included) plus the one being staged, so a host that keeps ahead of the DMA
    never waits here, and one that gets further ahead waits for the oldest copy. A buffer
    too small for a claim is replaced by a larger one, its length a power of two, so the
    ring holds under twice the largest claim per buffer (a ring per shape kept a buffer for
    every shape ever seen, for good).
    """

    def __init__(self, dtype: torch.dtype, size: int) -> None:
        self._dtype = dtype
        self._size = size
        self._buffers: collections.deque[_Staging] = collections.deque()

    def __len__(self) -> int:
        return len(self._buffers)

    @property
    def nbytes(self) -> int:
        return sum(s.buffer.nbytes for s in self._buffers)

    def claim(self, length: int) -> _Staging:
        """A buffer of at least ``length`` elements no queued copy still reads; blocks on the
        oldest copy if all are busy."""
        oldest = self._buffers[0] if self._buffers else None
        idle = oldest is not None and (
            oldest.last_copy is None or oldest.last_copy.query()  # type: ignore[no-untyped-call]
        )
        if oldest is None or (not idle and len(self._buffers) < self._size):
            staging = self._new(length)
        else:
            self._buffers.popleft()
            staging = oldest
            if staging.last_copy is not None:
                # The invariant that keeps data fresh: never rewrite a buffer a DMA still reads.
                staging.last_copy.synchronize()
            if staging.buffer.numel() < length:
                staging = self._new(length)  # the small one goes back to torch's pinned pool
        staging.last_copy = None
        self._buffers.append(staging)
        return staging

    def _new(self, length: int) -> _Staging:
        rounded = 1 << max(length - 1, 0).bit_length()
        return _Staging(torch.empty(rounded, dtype=self._dtype, pin_memory=True))


def _state_holder(source: object) -> Any:
    """What holds ``source``'s resume state, or None: the source itself where it has a
    ``state_dict`` (a StatefulDataLoader, the plugin's dataset), or for a plain DataLoader
    without workers its dataset (the loader reads it in this process, batch by batch)."""
    if callable(getattr(source, "state_dict", None)):
        return source
    if isinstance(source, torch.utils.data.DataLoader) and source.num_workers == 0:
        dataset = source.dataset
        if callable(getattr(dataset, "state_dict", None)):
            return dataset
    return None


def _resumable(source: object) -> Any:
    """What holds ``source``'s state; TypeError, saying why, where nothing does."""
    holder = _state_holder(source)
    if holder is not None:
        return holder
    if isinstance(source, torch.utils.data.DataLoader) and source.num_workers > 0:
        raise TypeError(
            "DeviceFeeder: a plain DataLoader with workers keeps no state of where its workers "
            "stand; use torchdata's StatefulDataLoader (or num_workers=0) to resume mid-epoch"
        )
    raise TypeError(
        f"DeviceFeeder: its source ({type(source).__name__}) has no state_dict(); wrap a "
        "StatefulDataLoader, a DataLoader without workers over a dataset with one, or such "
        "a dataset"
    )


def _resolve_device(device: str | torch.device) -> torch.device:
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise InvalidArgument(f"not a torch device: {device!r}") from exc
    if resolved.type == "cpu":
        return torch.device("cpu")
    if resolved.type != "cuda":
        raise InvalidArgument(f"DeviceFeeder moves batches to cpu or cuda, not {resolved.type}")
    if not torch.cuda.is_available():
        raise FailedPrecondition(
            f"DeviceFeeder was asked for device {str(resolved)!r}, but torch {torch.__version__} "
            f"sees no CUDA device (torch.cuda.is_available() is False; built for CUDA "
            f"{torch.version.cuda}); pass device='cpu' to keep batches in host memory"
        )
    index = resolved.index if resolved.index is not None else torch.cuda.current_device()
    if not 0 <= index < torch.cuda.device_count():
        raise InvalidArgument(
            f"no CUDA device {index}: torch sees {torch.cuda.device_count()} device(s)"
        )
    return torch.device("cuda", index)


def _map_tensors(
    batch: Any, move: Callable[[_Path, torch.Tensor], torch.Tensor], path: _Path = ()
) -> Any:
    """``batch`` with every tensor leaf replaced by ``move(path, tensor)``, in leaf order.

    Pure apart from what ``move`` does. Mappings become dicts; lists, tuples and named tuples
    keep their type; other leaves are returned as they are.
    """
    if isinstance(batch, torch.Tensor):
        return move(path, batch)
    if isinstance(batch, Mapping):
        return {key: _map_tensors(value, move, (*path, key)) for key, value in batch.items()}
    if isinstance(batch, (list, tuple)):
        items = [_map_tensors(value, move, (*path, i)) for i, value in enumerate(batch)]
        if isinstance(batch, tuple) and hasattr(batch, "_fields"):
            return type(batch)(*items)
        return type(batch)(items)
    return batch
