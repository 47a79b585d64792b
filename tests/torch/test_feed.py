"""Tests of tierstore.torch.feed: CPU passthrough and errors, then the copies.

The copy tests check what a consumer can see: values, order, read-ahead, buffer reuse and the
absence of stale data when a staging buffer is rewritten while later copies are queued. They
run twice over: against :class:`CudaModel` (CUDA's ordering rules on the CPU, with every copy
as late as CUDA allows, so ordering bugs always show) on machines without CUDA, and against a
real device where there is one. Last, resume states: a feeder in front of real DataLoaders
(workers included) over the real server of tests/torch/conftest.py.
"""

from __future__ import annotations

import contextlib
import pickle
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import pytest

torch = pytest.importorskip("torch")

from torch.utils.data import DataLoader  # noqa: E402
from torchdata.stateful_dataloader import StatefulDataLoader  # noqa: E402

from tierstore.errors import FailedPrecondition, InvalidArgument  # noqa: E402
from tierstore.torch import IterableDataset  # noqa: E402
from tierstore.torch.feed import DeviceFeeder, _map_tensors  # noqa: E402

from .conftest import Samples  # noqa: E402

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


class Pair(NamedTuple):
    image: Any
    label: Any


# Everywhere.


def test_cpu_passes_batches_through_untouched_and_lazily() -> None:
    batches = [{"x": torch.arange(4)}, torch.ones(2), "not a tensor"]
    pulled: list[int] = []

    def source() -> Iterator[Any]:
        for i, batch in enumerate(batches):
            pulled.append(i)
            yield batch

    feeder = DeviceFeeder(source(), "cpu")
    assert feeder.device == torch.device("cpu")
    assert pulled == []
    out = list(feeder)
    assert all(got is want for got, want in zip(out, batches, strict=True))
    assert feeder.staging_buffers == 0


def test_length_is_the_sources() -> None:
    assert len(DeviceFeeder([torch.zeros(1)] * 3, "cpu")) == 3
    with pytest.raises(TypeError):
        len(DeviceFeeder(iter([torch.zeros(1)]), "cpu"))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error of a CUDA-less torch")
@pytest.mark.parametrize("device", ["cuda", "cuda:0", torch.device("cuda", 1)])
def test_cuda_without_cuda_is_a_clear_error(device: Any) -> None:
    with pytest.raises(FailedPrecondition, match=r"no CUDA device.*device='cpu'"):
        DeviceFeeder([torch.zeros(1)], device)


@pytest.mark.parametrize("device", ["meta", "bogus", "cuda:x", 3.5])
def test_other_devices_are_refused(device: Any) -> None:
    with pytest.raises(InvalidArgument):
        DeviceFeeder([torch.zeros(1)], device)


def test_negative_prefetch_is_refused() -> None:
    with pytest.raises(InvalidArgument, match="prefetch"):
        DeviceFeeder([], "cpu", prefetch=-1)


def test_batch_structure_is_kept_and_every_tensor_visited_once() -> None:
    a, b, c, d = (torch.full((2,), float(i)) for i in range(4))
    batch = {"pair": Pair(a, [b, "tag"]), "t": (c,), "meta": None, "d": d}
    seen: list[tuple[Any, ...]] = []

    def negate(path: tuple[Any, ...], tensor: Any) -> Any:
        seen.append(path)
        return -tensor

    out = _map_tensors(batch, negate)
    assert seen == [("pair", 0), ("pair", 1, 0), ("t", 0), ("d",)]
    assert list(out) == ["pair", "t", "meta", "d"]
    assert isinstance(out["pair"], Pair) and isinstance(out["t"], tuple)
    assert out["pair"].label[1] == "tag" and out["meta"] is None
    assert torch.equal(out["pair"].label[0], -b) and torch.equal(out["d"], -d)


def _numbered(count: int, shape: tuple[int, ...] = (64, 1024)) -> Iterator[Any]:
    """Batches whose every element is their index, fresh (pageable) tensors each time."""
    for i in range(count):
        yield torch.full(shape, float(i))


def _check_read_ahead(count: int, prefetch: int) -> None:
    """Batch i arrives in order, with the next ``prefetch`` read and their copies started."""
    pulled = 0

    def source() -> Iterator[Any]:
        nonlocal pulled
        for batch in _numbered(count, (8,)):
            pulled += 1
            yield batch

    for i, batch in enumerate(DeviceFeeder(source(), "cuda", prefetch=prefetch)):
        assert pulled == min(i + 1 + prefetch, count)
        torch.cuda.synchronize()
        assert torch.equal(batch.cpu(), torch.full((8,), float(i)))


# With CUDA modelled on the CPU.


class _Stream:
    """A CUDA stream in the model: queued work runs only when something waits for it."""

    def __init__(self, device: Any = None) -> None:
        self.queue: list[Callable[[], Any]] = []
        self.ran = 0
        self.waited_on: list[_Event] = []

    def run_until(self, mark: int) -> None:
        while self.ran < mark:
            self.queue[self.ran]()
            self.ran += 1

    def synchronize(self) -> None:
        self.run_until(len(self.queue))

    def wait_event(self, event: _Event) -> None:
        self.waited_on.append(event)


class _Event:
    def record(self, stream: _Stream) -> None:
        self.stream, self.mark = stream, len(stream.queue)

    def query(self) -> bool:
        return self.stream.ran >= self.mark

    def synchronize(self) -> None:
        self.stream.run_until(self.mark)


class CudaModel:
    """The CUDA semantics the feeder relies on, with every copy run as late as CUDA may.

    A ``non_blocking`` copy to the device is queued on the current stream and runs only when
    an event after it, its stream or the device is synchronized; an event reports done only
    then. So a staging buffer rewritten before its copy ran hands its new contents to the
    earlier batch, which the tests see; on a real GPU the same bug shows only now and then.
    """

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.current = self.default = _Stream()
        self.streams = [self.default]
        self.recorded_on: list[tuple[Any, _Stream]] = []
        real_to, real_empty = torch.Tensor.to, torch.empty

        def new_stream(device: Any = None) -> _Stream:
            self.streams.append(_Stream())
            return self.streams[-1]

        def to(tensor: Any, *args: Any, **kwargs: Any) -> Any:
            target = args[0] if args else kwargs.get("device")
            if not (isinstance(target, torch.device) and target.type == "cuda"):
                return real_to(tensor, *args, **kwargs)
            assert kwargs.get("non_blocking") is True, "a synchronous copy would stall the feed"
            copy = real_empty(tensor.shape, dtype=tensor.dtype)
            self.current.queue.append(lambda: copy.copy_(tensor))
            return copy

        @contextlib.contextmanager
        def use_stream(stream: _Stream) -> Iterator[None]:
            before, self.current = self.current, stream
            try:
                yield
            finally:
                self.current = before

        def empty(*args: Any, pin_memory: bool = False, **kwargs: Any) -> Any:
            return real_empty(*args, **kwargs)

        cuda = torch.cuda
        for name, value in {
            "is_available": lambda: True,
            "device_count": lambda: 1,
            "current_device": lambda: 0,
            "Stream": new_stream,
            "Event": _Event,
            "stream": use_stream,
            "current_stream": lambda device=None: self.current,
            "synchronize": lambda device=None: [s.synchronize() for s in self.streams],
        }.items():
            monkeypatch.setattr(cuda, name, value)
        monkeypatch.setattr(torch, "empty", empty)
        monkeypatch.setattr(torch.Tensor, "to", to)
        monkeypatch.setattr(
            torch.Tensor, "record_stream", lambda t, s: self.recorded_on.append((t, s))
        )


@pytest.fixture
def cuda_model(monkeypatch: pytest.MonkeyPatch) -> CudaModel:
    if torch.cuda.is_available():
        pytest.skip("the real CUDA tests below cover this machine")
    return CudaModel(monkeypatch)


@pytest.mark.parametrize("prefetch", [0, 1, 2, 5])
def test_model_late_copies_never_read_a_rewritten_buffer(
    cuda_model: CudaModel, prefetch: int
) -> None:
    feeder = DeviceFeeder(_numbered(30, (4, 8)), "cuda", prefetch=prefetch)
    kept = list(feeder)
    torch.cuda.synchronize()
    assert [batch.unique().tolist() for batch in kept] == [[float(i)] for i in range(30)]
    assert feeder.staging_buffers <= prefetch + 2


def test_model_each_batch_is_complete_once_its_event_is(cuda_model: CudaModel) -> None:
    batches = [{"x": torch.full((3, 3), float(i)), "y": torch.tensor([i])} for i in range(9)]
    for i, batch in enumerate(DeviceFeeder(batches, "cuda", prefetch=2)):
        # What the consumer's stream was told to wait for covers this batch's copies.
        cuda_model.current.waited_on[-1].synchronize()
        assert torch.equal(batch["x"], batches[i]["x"]) and torch.equal(batch["y"], batches[i]["y"])
        assert all(stream is cuda_model.current for _, stream in cuda_model.recorded_on[-2:])
        assert {id(t) for t, _ in cuda_model.recorded_on[-2:]} == {id(batch["x"]), id(batch["y"])}


def test_model_stopping_early_waits_for_the_queued_copies(cuda_model: CudaModel) -> None:
    feeder = DeviceFeeder(_numbered(10), "cuda", prefetch=3)
    iterator = iter(feeder)
    next(iterator)
    copy_stream = cuda_model.streams[-1]
    assert copy_stream.ran < len(copy_stream.queue)
    iterator.close()  # what a `break` out of the loop does, once the generator is dropped
    assert copy_stream.ran == len(copy_stream.queue)


def test_model_source_is_read_prefetch_ahead(cuda_model: CudaModel) -> None:
    _check_read_ahead(count=7, prefetch=2)


def _check_a_failing_source(prefetch: int) -> None:
    """The batches read before the source failed come out, then its error, unchanged."""
    failure = RuntimeError("shard part-003 is gone")

    def source() -> Iterator[Any]:
        yield from _numbered(5, (8,))
        raise failure

    got = []
    with pytest.raises(RuntimeError) as raised:
        for batch in DeviceFeeder(source(), "cuda", prefetch=prefetch):
            torch.cuda.synchronize()
            got.append(int(batch[0].item()))
    assert raised.value is failure
    assert got == [0, 1, 2, 3, 4]


@pytest.mark.parametrize("prefetch", [0, 3, 8])
def test_model_batches_read_before_a_failure_come_out_before_it(
    cuda_model: CudaModel, prefetch: int
) -> None:
    # The error was raised as soon as the feeder read it, and the `prefetch` batches read
    # before it, which the source had handed out whole, were dropped.
    _check_a_failing_source(prefetch)


def _check_padded_batches(prefetch: int) -> None:
    """Padded text batches, each as long as its longest row: every shape arrives intact,
    and the pinned staging memory stays within a few of the largest batch."""
    lengths = [(i * 37) % 64 + 1 for i in range(64)]  # 1..64, in a scattered order
    batches = [
        {"tokens": torch.full((8, n), i, dtype=torch.int64), "mask": torch.ones(8, n) > 0}
        for i, n in enumerate(lengths)
    ]
    feeder = DeviceFeeder(batches, "cuda", prefetch=prefetch)
    kept = list(feeder)
    torch.cuda.synchronize()
    for i, (got, want) in enumerate(zip(kept, batches, strict=True)):
        assert torch.equal(got["tokens"].cpu(), want["tokens"]), i
        assert torch.equal(got["mask"].cpu(), want["mask"]), i
    largest = 8 * 64 * (8 + 1)  # the longest batch's bytes, both tensors
    # A buffer's size may be rounded up to twice what it holds.
    assert feeder.staging_bytes <= 2 * (prefetch + 2) * largest


def test_model_batches_of_many_shapes_reuse_their_staging_memory(cuda_model: CudaModel) -> None:
    # A ring of pinned buffers was kept for every shape ever seen, for good: a stream of
    # padded batches of many lengths pinned ever more host memory.
    _check_padded_batches(prefetch=2)


# With CUDA.


@needs_cuda
def test_values_and_structure_arrive_intact() -> None:
    pinned = torch.arange(1000, dtype=torch.int32).pin_memory()
    strided = torch.arange(24, dtype=torch.float64).reshape(4, 6).t()  # not contiguous
    batch = {
        "x": torch.randn(3, 5, 7),
        "y": torch.randint(0, 1 << 40, (9,)),
        "strided": strided,
        "pinned": pinned,
        "flags": torch.tensor([True, False, True]),
        "name": "shard-7",
    }
    (out,) = list(DeviceFeeder([batch], "cuda"))
    assert out["name"] == "shard-7"
    for key in ("x", "y", "strided", "pinned", "flags"):
        assert out[key].device.type == "cuda"
        assert out[key].dtype == batch[key].dtype
        assert torch.equal(out[key].cpu(), batch[key])


@needs_cuda
def test_order_is_kept_and_the_source_is_read_prefetch_ahead() -> None:
    _check_read_ahead(count=12, prefetch=3)


@needs_cuda
def test_staging_buffers_are_reused_across_batches_and_epochs() -> None:
    feeder = DeviceFeeder([torch.full((256, 256), float(i)) for i in range(40)], "cuda")
    for _ in range(2):
        for i, batch in enumerate(feeder):
            assert batch[0, 0].item() == i
    # One ring for the one shape: at most prefetch + 2 buffers, however many batches.
    assert 1 <= feeder.staging_buffers <= 2 + 2
    assert feeder.staging_bytes == feeder.staging_buffers * 256 * 256 * 4


@needs_cuda
def test_no_stale_data_when_buffers_are_rewritten_under_queued_copies() -> None:
    # Large batches and a consumer that keeps every one: copies queue up behind each other,
    # so a buffer rewritten before its DMA ran would show a later batch's value here.
    count = 48
    feeder = DeviceFeeder(_numbered(count, (1024, 1024)), "cuda", prefetch=1)
    kept = list(feeder)
    torch.cuda.synchronize()
    firsts = torch.stack([batch.view(-1)[0] for batch in kept]).cpu()
    lasts = torch.stack([batch.view(-1)[-1] for batch in kept]).cpu()
    expected = torch.arange(count, dtype=torch.float32)
    assert torch.equal(firsts, expected) and torch.equal(lasts, expected)
    assert feeder.staging_buffers <= 1 + 2


@needs_cuda
def test_a_consumer_on_its_own_stream_sees_complete_batches() -> None:
    side = torch.cuda.Stream()
    checks = []
    with torch.cuda.stream(side):
        for i, batch in enumerate(DeviceFeeder(_numbered(24, (2048, 512)), "cuda")):
            # Queued on `side` without any host synchronization: only the event orders it.
            checks.append((batch * 2 == 2 * i).all())
    side.synchronize()
    assert all(bool(check) for check in checks)


@needs_cuda
def test_stopping_early_then_iterating_again() -> None:
    feeder = DeviceFeeder([torch.full((32,), float(i)) for i in range(10)], "cuda")
    for i, batch in enumerate(feeder):
        if i == 3:
            break
        assert batch[0].item() == i
    assert [int(batch[0].item()) for batch in feeder] == list(range(10))


@needs_cuda
def test_batches_read_before_a_failure_come_out_before_it() -> None:
    _check_a_failing_source(prefetch=3)


@needs_cuda
def test_batches_of_many_shapes_reuse_their_staging_memory() -> None:
    _check_padded_batches(prefetch=1)


@needs_cuda
def test_pinned_and_device_tensors_are_not_staged() -> None:
    on_device = torch.ones(4, device="cuda")
    pinned = torch.full((4,), 5.0).pin_memory()
    feeder = DeviceFeeder([(on_device, pinned)], "cuda")
    ((same, moved),) = list(feeder)
    assert same is on_device
    assert torch.equal(moved.cpu(), pinned)
    assert feeder.staging_buffers == 0


# Resume states, with the plugin's datasets on the real server.


@pytest.fixture(params=["cpu", "cuda"])
def feed_device(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Each device a feeder serves: the CUDA device, or the model of one on the CPU."""
    device: str = request.param
    if device == "cuda" and not torch.cuda.is_available():
        CudaModel(monkeypatch)  # inherited by forked workers; they move nothing to CUDA
    return device


def _taken(feeder: DeviceFeeder[Any], iterator: Iterator[Any], count: int) -> list[list[int]]:
    """The ids of the next ``count`` batches, once their copies are done."""
    ids = []
    for _ in range(count):
        batch = next(iterator)
        if feeder.device.type == "cuda":
            torch.cuda.synchronize()
        ids.append(batch["id"].tolist())
    return ids


def _sources(samples: Samples, kind: str) -> Callable[[], Any]:
    """A maker of fresh sources of one kind, each over a fresh dataset object."""

    def source() -> Any:
        if kind.startswith("stateful"):
            dataset = IterableDataset(samples.dataset, seed=4, **samples.connection)
            workers = int(kind.rsplit("-", 1)[1])
            context = "fork" if workers else None
            return StatefulDataLoader(
                dataset, batch_size=8, num_workers=workers, multiprocessing_context=context
            )
        dataset = IterableDataset(
            samples.dataset, seed=4, batch_size=8, batch_threads=2, **samples.connection
        )
        return DataLoader(dataset, batch_size=None) if kind == "dataloader" else dataset

    return source


def _all(feeder: DeviceFeeder[Any]) -> list[Any]:
    batches = list(feeder)
    if feeder.device.type == "cuda":
        torch.cuda.synchronize()
    return batches


@pytest.mark.timeout(120)
def test_a_state_changed_by_its_taker_leaves_the_feeders_own_alone(
    samples: Samples, feed_device: str
) -> None:
    # The feeder handed out the very dict it kept for the batch the loop holds: a caller
    # that added to its checkpoint (a step count, say) changed every later state_dict().
    feeder = DeviceFeeder(_sources(samples, "dataset")(), feed_device, prefetch=3)
    iterator = iter(feeder)
    _taken(feeder, iterator, 2)
    taken = feeder.state_dict()
    kept = pickle.loads(pickle.dumps(taken))
    taken["step"] = 2
    taken.clear()
    assert feeder.state_dict() == kept


@pytest.mark.timeout(120)
@pytest.mark.parametrize("kind", ["stateful-2", "stateful-0", "dataloader", "dataset"])
def test_a_resume_from_the_feeders_state_yields_exactly_the_batches_not_consumed(
    samples: Samples, feed_device: str, kind: str
) -> None:
    # The feeder reads `prefetch` batches ahead of the one the loop holds, so the source's
    # own state counted batches the loop never saw, and a resume from it skipped them.
    source = _sources(samples, kind)
    full = [batch["id"].tolist() for batch in source()]
    assert len(full) > 10
    feeder = DeviceFeeder(source(), feed_device, prefetch=3)
    iterator = iter(feeder)
    head = _taken(feeder, iterator, 5)
    state = pickle.loads(pickle.dumps(feeder.state_dict()))
    head += _taken(feeder, iterator, 1)
    later = feeder.state_dict()
    del iterator  # a `break`: the source stays ahead, the state does not
    assert feeder.state_dict() == later
    resumed = DeviceFeeder(source(), feed_device, prefetch=3)
    resumed.load_state_dict(state)
    rest = [batch["id"].tolist() for batch in _all(resumed)]
    assert head[:5] + rest == full
    again = DeviceFeeder(source(), feed_device, prefetch=3)
    again.load_state_dict(later)
    assert head + [batch["id"].tolist() for batch in _all(again)] == full


@pytest.mark.timeout(120)
def test_a_state_taken_at_an_epochs_end_goes_on_with_the_next_epoch(
    samples: Samples, feed_device: str
) -> None:
    def loader() -> tuple[IterableDataset, StatefulDataLoader]:
        dataset = IterableDataset(samples.dataset, seed=4, **samples.connection)
        return dataset, StatefulDataLoader(
            dataset, batch_size=8, num_workers=2, multiprocessing_context="fork"
        )

    first = DeviceFeeder(loader()[1], feed_device, prefetch=2)
    epoch_0 = [batch["id"].tolist() for batch in _all(first)]
    state = pickle.loads(pickle.dumps(first.state_dict()))
    dataset, resumed = loader()
    second = DeviceFeeder(resumed, feed_device, prefetch=2)
    second.load_state_dict(state)
    dataset.set_epoch(1)
    epoch_1 = [batch["id"].tolist() for batch in _all(second)]
    reference_dataset, reference = loader()
    reference_dataset.set_epoch(1)
    assert epoch_1 != epoch_0
    assert epoch_1 == [batch["id"].tolist() for batch in reference]


def test_a_source_without_a_state_is_refused_clearly() -> None:
    with pytest.raises(TypeError, match="no state_dict"):
        DeviceFeeder(iter([torch.zeros(1)]), "cpu").state_dict()
    with pytest.raises(TypeError, match="StatefulDataLoader"):
        DeviceFeeder(DataLoader([1, 2, 3], num_workers=2), "cpu").state_dict()
    with pytest.raises(TypeError, match="StatefulDataLoader"):
        DeviceFeeder(DataLoader([1, 2, 3], num_workers=2), "cpu").load_state_dict({})
