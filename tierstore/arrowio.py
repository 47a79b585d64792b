"""Arrow side of the shard format: tables to frames and back, and frame validation.

An Arrow shard is a sequence of frames, each at most ``max_frame_bytes``:

- frame 0 is the encapsulated IPC *schema* message (schema metadata included);
- every later frame is exactly one encapsulated IPC message: a *record batch*, or a
  *dictionary batch* placed before the first record batch that uses it (only schemas with
  dictionary-encoded fields have those).

So the concatenation of all frames is a valid IPC stream without the end-of-stream marker,
and every record batch decodes *in place*: its buffers point into its frame (no compression,
native byte order, 8-byte aligned buffers — the pyarrow defaults).

Tensors are framed as such tables by :mod:`tierstore.tensors`.

Every function here is pure (no I/O or shared state of its own: frames made on demand,
such as an encrypted put's, may read a file when asked for) and therefore thread-safe.
"""

from __future__ import annotations

import contextlib
import itertools
import struct
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, NamedTuple, TypeAlias

import numpy as np
import pyarrow as pa

from tierstore.errors import (
    InvalidArgument,
    MalformedArrow,
    OversizeFrame,
    UnsupportedData,
)

__all__ = [
    "DEFAULT_MAX_FRAME_BYTES",
    "ArrowFrames",
    "LettingGo",
    "check_columns",
    "checked_arrow_frames",
    "fixed_list_values",
    "frames_to_table",
    "message_header_bytes",
    "message_is_compressed",
    "message_is_delta",
    "message_rows",
    "open_ipc_file",
    "read_batches",
    "reader_to_frames",
    "repeated_columns",
    "schema_difference",
    "schema_of_message",
    "table_to_frames",
    "validate_arrow_frames",
]

DEFAULT_MAX_FRAME_BYTES = 4 * 1024 * 1024

BufferLike: TypeAlias = pa.Buffer | bytes | bytearray | memoryview

# Errors pyarrow raises on bytes that are not what they claim to be.
_ARROW_ERRORS = (pa.ArrowException, EOFError, OSError, UnicodeDecodeError)


#: Arrow's required buffer alignment.
_ARROW_ALIGNMENT = 8


def _as_buffer(data: BufferLike) -> pa.Buffer:
    """``data`` as an Arrow buffer, in place when it is 8-byte aligned, else a copy.

    LMDB keeps a small value (up to about 2 KiB) inside a B-tree page at any even address;
    Arrow arrays over a misaligned buffer break its alignment contract (and numpy and
    torch views of them), so such frames are copied (a fresh ``bytes`` object is 16-byte
    aligned). Frames with pages of their own start aligned and are never copied.
    """
    buffer = data if isinstance(data, pa.Buffer) else pa.py_buffer(data)
    if buffer.address % _ARROW_ALIGNMENT:
        return pa.py_buffer(buffer.to_pybytes())
    return buffer


def _all_fields(fields: Iterable[pa.Field]) -> Iterator[pa.Field]:
    """Every field, depth first, through nested, dictionary and extension types."""
    for field in fields:
        yield field
        dtype = field.type
        if isinstance(dtype, pa.BaseExtensionType):
            dtype = dtype.storage_type
        if pa.types.is_dictionary(dtype):
            dtype = dtype.value_type
        yield from _all_fields(dtype.field(i) for i in range(dtype.num_fields))


def _keeps_whole_buffers(dtype: pa.DataType) -> bool:
    """Whether Arrow's IPC writer serializes a slice of a ``dtype`` array with buffers
    of the whole array: string and binary views (every data buffer), list views (all
    the values), dense unions (whole children), or a type nesting one."""
    if pa.types.is_string_view(dtype) or pa.types.is_binary_view(dtype):
        return True
    if pa.types.is_list_view(dtype) or pa.types.is_large_list_view(dtype):
        return True
    if pa.types.is_union(dtype):
        return dtype.mode == "dense" or any(_keeps_whole_buffers(f.type) for f in dtype)
    if pa.types.is_dictionary(dtype) or isinstance(dtype, pa.BaseExtensionType):
        return False  # a dictionary has a message of its own; extensions are left as they are
    return any(_keeps_whole_buffers(dtype.field(i).type) for i in range(dtype.num_fields))


def _without_views(dtype: pa.DataType) -> pa.DataType:
    """``dtype`` with the string and binary views that it (or what it nests through
    structs, lists and maps) holds made large strings and binaries, which a cast
    copies compactly and casts back."""
    if pa.types.is_string_view(dtype):
        return pa.large_string()
    if pa.types.is_binary_view(dtype):
        return pa.large_binary()
    if pa.types.is_struct(dtype):
        return pa.struct([field.with_type(_without_views(field.type)) for field in dtype])
    if pa.types.is_map(dtype):
        key, item = dtype.key_field, dtype.item_field
        return pa.map_(
            key.with_type(_without_views(key.type)),
            item.with_type(_without_views(item.type)),
            dtype.keys_sorted,
        )
    if pa.types.is_fixed_size_list(dtype):
        value = dtype.value_field
        return pa.list_(value.with_type(_without_views(value.type)), dtype.list_size)
    for is_list, make in ((pa.types.is_list, pa.list_), (pa.types.is_large_list, pa.large_list)):
        if is_list(dtype):
            return make(dtype.value_field.with_type(_without_views(dtype.value_type)))
    return dtype


def _compacted_column(array: pa.Array) -> pa.Array:
    """``array`` copied to hold its own rows only, if it is of a type whose slice
    Arrow's IPC writer serializes with the whole array's buffers (see
    :func:`_keeps_whole_buffers`); else ``array`` itself. The copy equals ``array``,
    type included (a list view, or a union, nesting a view is left uncompacted)."""
    dtype = array.type
    if not _keeps_whole_buffers(dtype):
        return array
    try:
        if pa.types.is_union(dtype) and dtype.mode == "dense":
            return array.take(pa.array(np.arange(len(array))))
        compact = pa.concat_arrays([array])  # trims offsets and children to the rows
        plain = _without_views(dtype)
        if plain != dtype:  # a view's data buffers are copied by a cast alone
            compact = compact.cast(plain).cast(dtype)
        return compact
    except pa.ArrowException:  # a kernel Arrow lacks (a take of views): left as it is
        return array


def _compacted(batch: pa.RecordBatch) -> pa.RecordBatch:
    """``batch`` with each column of such a type compacted (see
    :func:`_compacted_column`): a slice of a 300 KB string-view column serialized
    to 300 KB however few its rows, so every piece of it was over the frame limit,
    down to one row, and refused; and its ``nbytes`` counted the whole column's
    buffers too. ``batch`` itself when it has none."""
    columns = batch.columns
    compacted = [_compacted_column(column) for column in columns]
    if all(new is old for new, old in zip(compacted, columns, strict=True)):
        return batch
    return pa.RecordBatch.from_arrays(compacted, schema=batch.schema)


def _fit_batch(batch: pa.RecordBatch, limit: int) -> Iterator[tuple[pa.RecordBatch, pa.Buffer]]:
    """Yield (piece, its record-batch message) covering ``batch`` in order, each message ≤ limit."""
    batch = _compacted(batch)
    message = batch.serialize()
    if message.size <= limit:
        yield batch, message
        return
    if batch.num_rows == 1:
        whole = [field.name for field in batch.schema if _keeps_whole_buffers(field.type)]
        raise OversizeFrame(
            f"a single row serializes to a {message.size}-byte record batch, "
            f"over max_frame_bytes={limit}"
            + (
                f" (Arrow writes a row of column(s) {whole} with the whole column's "
                "buffers: a union or list view of views; store them as strings)"
                if whole
                else ""
            )
        )
    # Estimate from the measured size, aim 10% low, and verify each piece recursively.
    rows = max(1, min(batch.num_rows - 1, int(batch.num_rows * limit / message.size * 0.9)))
    for start in range(0, batch.num_rows, rows):
        yield from _fit_batch(batch.slice(start, rows), limit)


def _message_overhead(schema: pa.Schema) -> int:
    """Bytes of a record-batch message beyond its rows (an estimate; pieces are measured)."""
    # A fresh empty batch, not an empty *slice*: slices of length 0 serialize whole buffers.
    try:
        arrays = [pa.nulls(0, field.type) for field in schema]
        return int(pa.RecordBatch.from_arrays(arrays, schema=schema).serialize().size)
    except pa.ArrowException:
        return 0


def _rows_per_piece(batch: pa.RecordBatch, limit: int, overhead: int) -> int:
    per_row = batch.nbytes / batch.num_rows
    if per_row == 0:
        return int(batch.num_rows)
    return max(1, int((limit - overhead) * 0.9 / per_row))


#: A record batch smaller than this is joined to its small neighbours (see
#: :func:`_coalesced`): each frame costs a message on the wire and a check.
SMALL_BATCH_BYTES = 64 * 1024
#: A run of small batches is joined up to about this many bytes.
COALESCED_BATCH_BYTES = 1024 * 1024


def _coalesced(batches: Iterable[pa.RecordBatch], schema: pa.Schema) -> Iterator[pa.RecordBatch]:
    """``batches`` in order, each run of consecutive ones under ``SMALL_BATCH_BYTES``
    joined into one batch of up to about ``COALESCED_BATCH_BYTES`` (copied: they are
    small). A table of 10,000 one-row batches made 10,000 frames, each a message and a
    check of its own (about 300 us a frame through the service); rows and their order
    are the same either way. Larger batches pass as they are (zero-copy)."""
    run: list[pa.RecordBatch] = []
    run_bytes = 0

    def joined() -> Iterator[pa.RecordBatch]:
        if len(run) == 1:
            yield run[0]
        elif run:
            yield from pa.Table.from_batches(run, schema).combine_chunks().to_batches()

    for batch in batches:
        if batch.nbytes >= SMALL_BATCH_BYTES:
            yield from joined()
            run, run_bytes = [], 0
            yield batch
            continue
        run.append(batch)
        run_bytes += batch.nbytes
        if run_bytes >= COALESCED_BATCH_BYTES:
            yield from joined()
            run, run_bytes = [], 0
    yield from joined()


def _split_messages(stream: pa.Buffer) -> list[pa.Buffer]:
    """Cut a writer's IPC stream into zero-copy slices, one message each (EOS dropped)."""
    reader = pa.BufferReader(stream)
    messages = []
    start = 0
    while start < stream.size:
        try:
            pa.ipc.read_message(reader)
        except EOFError:
            break
        messages.append(stream.slice(start, reader.tell() - start))
        start = reader.tell()
    return messages


def _checked_frame_limit(max_frame_bytes: int) -> None:
    if not isinstance(max_frame_bytes, int) or max_frame_bytes <= 0:
        raise InvalidArgument(f"max_frame_bytes must be a positive int, got {max_frame_bytes!r}")


def _schema_frame(schema: pa.Schema, max_frame_bytes: int) -> pa.Buffer:
    """Frame 0: ``schema``'s message. Raises OversizeFrame past ``max_frame_bytes``."""
    frame = schema.serialize()
    if frame.size > max_frame_bytes:
        raise OversizeFrame(
            f"the schema message is {frame.size} bytes, over max_frame_bytes={max_frame_bytes}"
        )
    return frame


def table_to_frames(
    data: pa.Table | pa.RecordBatch, max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES
) -> list[pa.Buffer]:
    """Frame a table (or record batch): the schema message, then one message per frame.

    Each record batch is fully validated first, once: frames made here are stored as
    they are, unlike frames from elsewhere (:func:`checked_arrow_frames`).
    Record batches are split by rows until each serialized message fits in ``max_frame_bytes``
    (estimated first, then measured); runs of small ones are joined first (see
    :func:`_coalesced`; not with dictionary fields). Zero-row batches are dropped, so a
    zero-row table yields the schema frame alone; ``frames_to_table`` returns it with its
    schema and metadata intact.
    Record-batch frames are the serialized bytes themselves (no further copy); with dictionary
    fields they are slices of what a stream writer wrote.

    Raises:
        InvalidArgument: ``max_frame_bytes`` is not a positive int.
        UnsupportedData: ``data`` is neither a ``pa.Table`` nor a ``pa.RecordBatch``.
        MalformedArrow: a record batch fails ``validate(full=True)`` (an offset past its
            data, bad UTF-8, a dictionary index past its dictionary).
        OversizeFrame: the schema message, a single row, or a dictionary message is larger
            than ``max_frame_bytes`` (the message says which, and the sizes).
    """
    _checked_frame_limit(max_frame_bytes)
    if isinstance(data, pa.RecordBatch):
        data = pa.Table.from_batches([data])
    if not isinstance(data, pa.Table):
        raise UnsupportedData(f"expected a pyarrow Table or RecordBatch, got {type(data)!r}")
    schema_frame = _schema_frame(data.schema, max_frame_bytes)
    return [schema_frame, *_batch_frames(data.schema, data.to_batches(), max_frame_bytes)]


def reader_to_frames(
    source: pa.RecordBatchReader | Iterable[pa.RecordBatch],
    max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
) -> Iterator[pa.Buffer]:
    """Frame a record-batch reader (or an iterable of record batches, of the first one's
    schema) as :func:`table_to_frames` frames the table of all its batches, byte for
    byte, each frame made as the batches it holds are read: the schema frame first
    (the reader's schema, metadata included), then a frame at a time, so that a stream
    larger than memory is never held whole (a run of small batches, joined, up to about
    ``COALESCED_BATCH_BYTES``). A reader of no batches yields the schema frame alone.

    ``max_frame_bytes`` and the schema frame are checked here (a reader's schema is
    known before its batches); its batches as the frames are taken.

    Raises:
        InvalidArgument: ``max_frame_bytes`` is not a positive int.
        UnsupportedData: ``source`` is neither, an iterable holds something other than
            record batches or none at all (no schema: pass a reader), or a batch has
            another schema (a shard holds one).
        MalformedArrow: the reader failed as it was read (a file cut short, an error of
            its source: the cause is chained), or a batch is invalid (as for
            :func:`table_to_frames`).
        OversizeFrame: as for :func:`table_to_frames`.
    """
    _checked_frame_limit(max_frame_bytes)
    schema, batches = _batch_source(source)
    schema_frame = _schema_frame(schema, max_frame_bytes)
    frames = _batch_frames(schema, _checked_batches(schema, batches), max_frame_bytes)
    return itertools.chain([schema_frame], frames)


def _next_batch(batches: Iterator[Any], index: int) -> Any:
    """The next of ``batches`` (batch ``index``); StopIteration past the last.
    Raises MalformedArrow for any other error of the reader's (chained)."""
    try:
        return next(batches)
    except StopIteration:
        raise
    except MalformedArrow as exc:  # the reader's own (open_ipc_file's): no batch is named
        raise MalformedArrow(f"after {index} record batches: {exc}") from exc
    except Exception as exc:
        raise MalformedArrow(
            f"reading record batch {index} of the stream failed: {type(exc).__name__}: {exc}"
        ) from exc


def _batch_source(source: Any) -> tuple[pa.Schema, Iterator[Any]]:
    """``source``'s schema and its batches, one pass (see :func:`reader_to_frames`)."""
    if isinstance(source, pa.RecordBatchReader):
        return source.schema, iter(source)
    if not isinstance(source, list | tuple | Iterator):
        raise UnsupportedData(
            f"expected a pyarrow RecordBatchReader or an iterable of RecordBatches, "
            f"got {type(source).__name__}"
        )
    batches = iter(source)
    try:
        first = _next_batch(batches, 0)
    except StopIteration:
        raise UnsupportedData(
            "no record batches, so no schema: pass a pyarrow.RecordBatchReader (an "
            "empty one stores a zero-row table of its schema)"
        ) from None
    if not isinstance(first, pa.RecordBatch):
        raise UnsupportedData(f"an iterable of {type(first).__name__}, not of RecordBatches")
    return first.schema, itertools.chain([first], batches)


def _checked_batches(schema: pa.Schema, batches: Iterator[Any]) -> Iterator[pa.RecordBatch]:
    """``batches`` as they are read, each checked to be a record batch of ``schema``
    (its metadata aside: the shard keeps ``schema``'s)."""
    for index in itertools.count():
        try:
            batch = _next_batch(batches, index)
        except StopIteration:
            return
        if not isinstance(batch, pa.RecordBatch):
            raise UnsupportedData(f"item {index} of the stream is a {type(batch).__name__}")
        if not batch.schema.equals(schema):
            raise UnsupportedData(
                f"record batch {index} has another schema than the stream's (a shard holds "
                f"one): {batch.schema.to_string(show_schema_metadata=False)!r} against "
                f"{schema.to_string(show_schema_metadata=False)!r}"
            )
        yield batch


def _batch_frames(
    schema: pa.Schema, batches: Iterable[pa.RecordBatch], max_frame_bytes: int
) -> Iterator[pa.Buffer]:
    """The frames after the schema frame of ``batches`` (of ``schema``), each made as
    the batches it holds are taken (see :func:`table_to_frames`)."""
    overhead = _message_overhead(schema)
    has_dictionaries = any(pa.types.is_dictionary(field.type) for field in _all_fields(schema))
    # Validated before anything reads their data (the joining copies by their offsets),
    # and only here: these frames are not checked again before they are stored.
    # Compacted first, as their sizes lead the joining and the cutting (see _compacted).
    validated = _BatchValidator()
    compacted = (
        _compacted(validated(index, batch))
        for index, batch in enumerate(batches)
        if batch.num_rows > 0
    )
    # Dictionary batches are left as they come: joining them would unify their
    # dictionaries, and their messages are cut from a stream writer's output below.
    whole = compacted if has_dictionaries else _coalesced(compacted, schema)
    pieces = (
        piece
        for batch in whole
        for start, rows in _row_runs(batch, max_frame_bytes, overhead)
        for piece in _fit_batch(batch.slice(start, rows), max_frame_bytes)
    )
    if not has_dictionaries:
        return (message for _, message in pieces)
    return _dictionary_frames(schema, (piece for piece, _ in pieces), max_frame_bytes)


class _BatchValidator:
    """Validates the batches of one put, each once: ``validate(full=True)`` (offsets
    within their data, UTF-8 strings, dictionary indices within their dictionary), so
    that a put of invalid data is refused rather than stored (a read of a string offset
    past its data segfaulted).

    A column's dictionary that the next batches share (a chunked column of one
    dictionary) is validated whole once; their indices are checked against it.
    Validated whole in every batch, 300 batches of one dictionary of a million strings
    took 40 times as long to frame. (A dictionary inside a nested column is validated
    with its column, in every batch.)"""

    def __init__(self) -> None:
        #: by column: the dictionary last validated whole, held (so that its memory is
        #: not reused for another while it is remembered) with what tells it apart
        self._last: dict[int, tuple[tuple[object, ...], pa.Array]] = {}

    def __call__(self, index: int, batch: pa.RecordBatch) -> pa.RecordBatch:
        """``batch`` (batch ``index`` of those framed) once valid; MalformedArrow if not."""
        try:
            batch.validate()
            for position, column in enumerate(batch.columns):
                if not pa.types.is_dictionary(column.type):
                    column.validate(full=True)
                    continue
                identity = _dictionary_identity(column.dictionary)
                last = self._last.get(position)
                if last is not None and last[0] == identity:
                    column.indices.validate(full=True)
                    # safe=True: every index within the dictionary
                    pa.DictionaryArray.from_arrays(column.indices, column.dictionary, safe=True)
                else:
                    column.validate(full=True)
                    self._last[position] = (identity, column.dictionary)
        except _ARROW_ERRORS as exc:
            raise MalformedArrow(f"record batch {index}: invalid: {exc}") from exc
        return batch


def _dictionary_identity(dictionary: pa.Array) -> tuple[object, ...]:
    """What tells one dictionary's memory from another's while both are alive: the
    same buffers, offset and length hold the same (already validated) values."""
    return (
        dictionary.type,
        dictionary.offset,
        len(dictionary),
        tuple(None if b is None else (b.address, b.size) for b in dictionary.buffers()),
    )


def _row_runs(batch: pa.RecordBatch, limit: int, overhead: int) -> Iterator[tuple[int, int]]:
    """(start, rows) of the runs of ``batch``'s rows estimated to fit a frame each."""
    rows = _rows_per_piece(batch, limit, overhead)
    return ((start, rows) for start in range(0, batch.num_rows, rows))


class _Collected:
    """A write-only file for a stream writer: what it was given since :meth:`take`."""

    def __init__(self) -> None:
        self.chunks: list[bytes] = []
        self.position = 0
        self.closed = False

    def write(self, data: Any) -> int:
        chunk = bytes(data)
        self.chunks.append(chunk)
        self.position += len(chunk)
        return len(chunk)

    def tell(self) -> int:
        return self.position

    def flush(self) -> None:
        pass

    def writable(self) -> bool:
        return True

    def close(self) -> None:
        self.closed = True

    def take(self) -> pa.Buffer:
        taken = pa.py_buffer(b"".join(self.chunks))
        self.chunks.clear()
        return taken


def _dictionary_frames(
    schema: pa.Schema, pieces: Iterable[pa.RecordBatch], max_frame_bytes: int
) -> Iterator[pa.Buffer]:
    """The frames after the schema frame of ``pieces`` (each fit to a frame) of a
    schema with dictionary fields: dictionary batches exist only inside a stream
    writer's state, so the pieces go through one writer (it emits a dictionary message
    when a piece's dictionary changes), and its messages are cut out as each piece is
    written. Raises OversizeFrame for a message over ``max_frame_bytes``."""
    sink = _Collected()
    index = 1
    with pa.ipc.new_stream(sink, schema) as writer:
        for piece in pieces:
            writer.write_batch(piece)
            messages = _split_messages(sink.take())
            # The writer writes the schema's message with the first piece: frame 0 already.
            for frame in messages[1:] if index == 1 else messages:
                if frame.size > max_frame_bytes:
                    kind = pa.ipc.read_message(frame).type
                    raise OversizeFrame(
                        f"frame {index} ({kind} message) is {frame.size} bytes, over "
                        f"max_frame_bytes={max_frame_bytes}"
                    )
                yield frame
                index += 1


class _FrameStream:
    """A read-only file over frames for ``pa.PythonFile``.

    Reads return zero-copy slices of the frames and never cross a frame boundary, so a
    message that does not fit its frame reads short and fails instead of borrowing bytes from
    the next frame. The decoded buffers keep the frames alive (they hold references).
    Each frame is asked of ``frames`` once, as the stream reaches it, and only the
    current one is kept here: frames made on demand (decrypted from a spool) are held
    no longer than what was decoded from them.
    """

    def __init__(self, frames: Sequence[pa.Buffer]) -> None:
        self.frames = frames
        self.index = 0  # frame being read; names the culprit in errors
        self.offset = 0
        #: frame ``index``, or None past the last
        self.current: pa.Buffer | None = frames[0] if len(frames) else None
        self.closed = False

    def _next_frame(self) -> None:
        self.index += 1
        self.offset = 0
        self.current = self.frames[self.index] if self.index < len(self.frames) else None

    def read_buffer(self, nbytes: int = -1) -> pa.Buffer:
        while self.current is not None and self.offset >= self.current.size:
            self._next_frame()
        if self.current is None:
            return pa.py_buffer(b"")
        frame = self.current
        out = frame.slice(self.offset) if nbytes < 0 else frame.slice(self.offset, nbytes)
        self.offset += out.size
        return out

    read = read_buffer

    def at_end(self) -> bool:
        return self.current is None or (
            self.index == len(self.frames) - 1 and self.offset >= self.current.size
        )

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def close(self) -> None:
        self.closed = True


#: called with each record batch as it is decoded, its frame's index and that frame
BatchCheck: TypeAlias = Callable[[int, pa.RecordBatch, pa.Buffer], None]


def _read_stream(
    frames: Sequence[pa.Buffer], on_batch: BatchCheck | None = None
) -> tuple[pa.Schema, list[tuple[int, pa.RecordBatch]]]:
    """Decode frames as one IPC stream; return the schema and (frame index, batch) pairs.

    With ``on_batch``, each batch is handed to it as it is decoded instead, and none is
    kept (the list comes back empty): only the frame being read stays in memory."""
    if not frames:
        raise MalformedArrow("no frames: an Arrow shard has at least its schema frame")
    stream = _FrameStream(frames)
    batches = []
    try:
        reader = pa.ipc.open_stream(pa.PythonFile(stream, mode="r"))
        for field in _all_fields(reader.schema):  # strings are decoded lazily: bad UTF-8
            _ = field.name, getattr(field.type, "tz", None)  # must fail here, not later
        while True:
            try:
                batch = reader.read_next_batch()
            except StopIteration:
                break
            batch.validate()  # cheap (no data scan); keeps a foreign batch from reading wild
            if on_batch is None:
                batches.append((stream.index, batch))
                continue
            assert stream.current is not None  # a batch was just read from it
            on_batch(stream.index, batch, stream.current)  # its errors are not _ARROW_ERRORS
    except _ARROW_ERRORS as exc:
        raise MalformedArrow(f"frame {stream.index}: not a valid Arrow IPC message: {exc}") from exc
    if not stream.at_end():
        raise MalformedArrow(f"frame {stream.index}: the stream ended before the last frame")
    return reader.schema, batches


def check_columns(columns: object) -> None:
    """Refuse (InvalidArgument) a column selection that is not None or an iterable of
    names, without taking anything from it (a generator is read once, by
    :func:`frames_to_table`): a bare string is iterable too, of its letters, and
    ``columns="xs"`` read the columns ``x`` and ``s``."""
    if isinstance(columns, str | bytes):
        raise InvalidArgument(
            f"columns must be a list of column names, not the string {columns!r} "
            f"(for one column: columns=[{columns!r}])"
        )
    if columns is not None and not isinstance(columns, Iterable):
        raise InvalidArgument(
            f"columns must be a list of column names, not a {type(columns).__name__}"
        )


def repeated_columns(schema: pa.Schema, names: Iterable[str] | None = None) -> list[str]:
    """The names (sorted, each once) that ``schema`` gives to more than one column: of
    ``names`` only, when given. Arrow allows such a schema; no name selects one of those
    columns. Pure and thread-safe."""
    counts = Counter(schema.names)
    among = counts if names is None else set(names)
    return sorted(name for name in among if counts[name] > 1)


def _selection(columns: Iterable[str], schema: pa.Schema) -> list[str]:
    """``columns`` as a list, taken once (a generator has nothing left for a second
    pass), checked against ``schema``. Raises InvalidArgument."""
    names = list(columns)
    strange = [name for name in names if not isinstance(name, str)]
    if strange:  # table.select() reads an int as a position
        raise InvalidArgument(f"column names are strings, got {strange!r:.200}")
    unknown = [name for name in names if name not in schema.names]
    if unknown:
        raise InvalidArgument(f"unknown columns {unknown}; the shard has {schema.names}")
    # A name is no way to pick one of several columns of that name (table.select()
    # raised a bare KeyError for it).
    ambiguous = repeated_columns(schema, names)
    if ambiguous:
        raise InvalidArgument(
            f"columns {ambiguous} appear more than once in the shard, so a name cannot "
            "select them; read the shard without columns= and pick them by position"
        )
    return names


def frames_to_table(frames: Sequence[BufferLike], columns: Iterable[str] | None = None) -> pa.Table:
    """Rebuild the table from an Arrow shard's frames without copying.

    The returned table's buffers point into ``frames`` (keep in mind that mutating or freeing
    the memory behind them — e.g. a closed LMDB read transaction — invalidates the table).
    Frames are trusted to have passed ``validate_arrow_frames`` once; they are decoded but
    not fully validated again. ``columns`` selects (and orders) columns by name: any
    iterable of names (a list, a tuple, a generator, read once), not a bare string.

    Raises:
        InvalidArgument: ``columns`` is not such an iterable, or names a column that is
            not in the schema or is in it more than once.
        MalformedArrow: the frames do not decode as an Arrow shard.
    """
    check_columns(columns)
    schema, batches = _read_stream([_as_buffer(frame) for frame in frames])
    table = pa.Table.from_batches([batch for _, batch in batches], schema=schema)
    if columns is None:
        return table
    return table.select(_selection(columns, schema))


def schema_of_message(message: BufferLike) -> pa.Schema:
    """The schema in ``message``, an Arrow IPC schema message (an Arrow shard's first
    frame, or ``pyarrow.Schema.serialize()``). Raises MalformedArrow for anything else."""
    try:
        return pa.ipc.read_schema(_as_buffer(message))
    except _ARROW_ERRORS as exc:
        raise MalformedArrow(f"not an Arrow IPC schema message: {exc}") from exc


def schema_difference(got: pa.Schema, expected: pa.Schema) -> str:
    """What first tells ``got`` from ``expected`` (field names, types and nullability,
    in order; schema and field metadata aside), or "" when nothing does."""
    if got.equals(expected, check_metadata=False):
        return ""
    if got.names != expected.names:
        return f"its columns are {got.names!r:.300}, the dataset's {expected.names!r:.300}"
    for field, wanted in zip(got, expected, strict=True):
        if not field.equals(wanted, check_metadata=False):
            return (
                f"column {field.name!r} is {_field_type(field)}, the dataset's is "
                f"{_field_type(wanted)}"
            )
    return "the schemas differ"  # pragma: no cover - equals() and the fields agree


def _field_type(field: pa.Field) -> str:
    return f"{field.type}{'' if field.nullable else ' not null'}"[:300]


def read_batches(frames: Sequence[pa.Buffer], on_batch: BatchCheck) -> pa.Schema:
    """Decode an Arrow shard's frames as :func:`frames_to_table` does (trusting them as
    it does), but hand each record batch to ``on_batch(frame index, batch, frame)`` as
    it is decoded and keep none; return the schema.

    Each frame is asked of ``frames`` once, in order, as the stream reaches it, and held
    here only until the stream moves past it. With a sequence that lets go of what it
    handed out (:class:`LettingGo` over a list, or frames made as they arrive), the read
    holds what ``on_batch`` keeps plus a frame or two, not the whole shard.

    Raises MalformedArrow as :func:`frames_to_table`, and what ``on_batch`` raises.
    """
    return _read_stream(frames, on_batch)[0]


class LettingGo(Sequence[pa.Buffer]):
    """A list of frames read once each, in order: an item asked for is taken out of
    the list (set to None), so that it is freed once its reader lets go of it (as
    long as nothing else refers to it). Asking for it again is IndexError."""

    def __init__(self, frames: list[pa.Buffer]) -> None:
        self._frames: list[pa.Buffer | None] = frames

    def __len__(self) -> int:
        return len(self._frames)

    def __getitem__(self, index: int) -> pa.Buffer:  # type: ignore[override]  # no slices
        frame = self._frames[index]
        if frame is None:
            raise IndexError(f"frame {index} was read already")
        self._frames[index] = None
        return frame


def _message_type(index: int, frame: pa.Buffer) -> str:
    reader = pa.BufferReader(frame)
    try:
        message = pa.ipc.read_message(reader)
    except _ARROW_ERRORS as exc:
        raise MalformedArrow(f"frame {index}: not an Arrow IPC message: {exc}") from exc
    if reader.tell() != frame.size:
        raise MalformedArrow(
            f"frame {index}: {frame.size - reader.tell()} bytes follow its {message.type} "
            "message; a frame holds exactly one message"
        )
    return str(message.type)


_CONTINUATION = b"\xff\xff\xff\xff"
# From Arrow's Message.fbs: MessageHeader union types, and RecordBatch's field number
# of its (optional) BodyCompression.
_DICTIONARY_BATCH = 2
_RECORD_BATCH = 3
_BATCH_COMPRESSION = 3
_MESSAGE_CUSTOM_METADATA = 4
_DICTIONARY_IS_DELTA = 2  # DictionaryBatch's field number of isDelta
_V4 = 3  # MetadataVersion of Arrow 0.15 to 0.17
_V5 = 4  # MetadataVersion since Arrow 1.0
# RecordBatch's field numbers of its field nodes, its buffers and its variadic buffer
# counts (one per string or binary view array: its data buffers)
_BATCH_NODES = 1
_BATCH_BUFFERS = 2
_BATCH_VARIADIC_COUNTS = 4
_LEGACY_COMPRESSION = b"ARROW:experimental_compression"


def message_header_bytes(prefix: BufferLike) -> int:
    """How many leading bytes of an encapsulated IPC message hold its metadata:
    the 8-byte prefix (4 for the pre-1.0 form without the continuation marker) and the
    flatbuffer it announces. ``prefix`` is at least the message's first 8 bytes.
    Raises MalformedArrow when they announce no metadata."""
    head = bytes(memoryview(prefix)[:8])
    if len(head) < 8:
        raise MalformedArrow(f"an IPC message starts with 8 bytes, got {len(head)}")
    start = 8 if head[:4] == _CONTINUATION else 4
    length = int.from_bytes(head[start - 4 : start], "little", signed=True)
    if length <= 0:
        raise MalformedArrow(f"an IPC message announces {length} bytes of metadata")
    return start + length


def message_rows(header: BufferLike) -> int:
    """The row count of the encapsulated IPC message that starts with ``header`` (at
    least :func:`message_header_bytes` long; the body is not needed): a record batch's
    length, 0 for a schema or dictionary batch.

    Reads the flatbuffer ``Message`` table by hand (pyarrow reads no message without its
    body). Raises MalformedArrow for metadata that does not parse.
    """
    data = _metadata(header)
    header_type, batch = _batch_table(data)
    if header_type != _RECORD_BATCH:
        return 0
    rows = _field(data, batch, 0, "<q")
    if rows < 0:
        raise MalformedArrow(f"a record batch of {rows} rows")
    return rows


def message_is_compressed(header: BufferLike) -> bool:
    """Whether the encapsulated IPC message that starts with ``header`` (as for
    :func:`message_rows`) is a record or dictionary batch with a compressed body: told
    from its metadata, before anything is decompressed (a few KiB of zstd may inflate to
    gigabytes). Raises MalformedArrow for metadata that does not parse."""
    data = _metadata(header)
    header_type, batch = _batch_table(data)
    if header_type not in (_RECORD_BATCH, _DICTIONARY_BATCH):
        return False
    if _field_position(data, batch, _BATCH_COMPRESSION) is not None:
        return True
    # Arrow still reads the pre-1.0 marker in a V4 message: the codec named in the
    # message's custom metadata, and no compression field (V5 ignores it).
    return _message_version(data) <= _V4 and _LEGACY_COMPRESSION in _custom_metadata_keys(data)


def _message_version(data: bytes) -> int:
    return _field(data, _message_table(data), 0, "<h")


def _custom_metadata_keys(data: bytes) -> list[bytes]:
    """The keys of the ``Message`` table's ``custom_metadata`` (a vector of
    ``KeyValue`` tables). Raises MalformedArrow for metadata that does not parse."""
    at = _field_position(data, _message_table(data), _MESSAGE_CUSTOM_METADATA)
    if at is None:
        return []
    vector = at + _u32(data, at)
    keys = []
    for entry in range(_u32(data, vector)):
        slot = vector + 4 + 4 * entry
        key_at = _field_position(data, slot + _u32(data, slot), 0)
        if key_at is not None:
            text = key_at + _u32(data, key_at)
            size = _u32(data, text)
            if text + 4 + size > len(data):
                raise MalformedArrow("IPC message metadata points outside itself")
            keys.append(data[text + 4 : text + 4 + size])
    return keys


class _Layout(NamedTuple):
    """How many field nodes and buffers a record batch message declares."""

    nodes: int
    #: buffers, the views' variadic data buffers left out
    buffers: int
    #: string and binary view arrays (each declares a variadic buffer count)
    views: int

    def __str__(self) -> str:
        views = f" and {self.views} view arrays" if self.views else ""
        return f"{self.nodes} field nodes and {self.buffers} buffers{views}"


def _declared_layout(header: BufferLike) -> tuple[int, _Layout]:
    """The metadata version of the record batch message that starts with ``header``,
    and the layout it declares. Raises MalformedArrow for metadata that does not parse."""
    data = _metadata(header)
    _, batch = _batch_table(data)
    counts = [
        _unpack("<q", data, at)
        for at in _vector_items(data, batch, _BATCH_VARIADIC_COUNTS, item_bytes=8)
    ]
    if any(count < 0 for count in counts):
        raise MalformedArrow(f"a record batch declares variadic buffer counts {counts!r:.200}")
    nodes = len(_vector_items(data, batch, _BATCH_NODES, item_bytes=16))
    buffers = len(_vector_items(data, batch, _BATCH_BUFFERS, item_bytes=16))
    return _message_version(data), _Layout(nodes, buffers - sum(counts), len(counts))


def _vector_items(data: bytes, table: int, index: int, item_bytes: int) -> range:
    """Where each item of the vector in field ``index`` of the table at ``table`` is
    (none when the field is absent). Raises MalformedArrow for a vector that runs past
    the metadata."""
    at = _field_position(data, table, index)
    if at is None:
        return range(0)
    vector = at + _u32(data, at)
    first = vector + 4
    end = first + _u32(data, vector) * item_bytes
    if end > len(data):
        raise MalformedArrow("IPC message metadata points outside itself")
    return range(first, end, item_bytes)


def _schema_layout(fields: Iterable[pa.Field], version: int) -> _Layout:
    """The layout a record batch of ``fields`` declares in a message of metadata
    ``version``, as Arrow's writer makes it: a field node for each field and each
    field it nests (a dictionary's values are in dictionary batches), and the buffers
    of each field's type's layout but a validity slot that is always null and left out
    (a null array's; a union's or run-end encoded array's since V5)."""
    nodes = buffers = views = 0
    for field in fields:
        dtype = field.type
        if isinstance(dtype, pa.BaseExtensionType):
            dtype = dtype.storage_type
        unions_or_runs = pa.types.is_union(dtype) or pa.types.is_run_end_encoded(dtype)
        left_out = pa.types.is_null(dtype) or (unions_or_runs and version >= _V5)
        nodes += 1
        buffers += dtype.num_buffers - int(left_out)
        views += int(pa.types.is_string_view(dtype) or pa.types.is_binary_view(dtype))
        if not pa.types.is_dictionary(dtype):
            inner = _schema_layout((dtype.field(i) for i in range(dtype.num_fields)), version)
            nodes += inner.nodes
            buffers += inner.buffers
            views += inner.views
    return _Layout(nodes, buffers, views)


def message_is_delta(header: BufferLike) -> bool:
    """Whether the encapsulated IPC message that starts with ``header`` is a delta
    dictionary batch (one that extends the dictionary before it), from its metadata.
    Raises MalformedArrow for metadata that does not parse."""
    data = _metadata(header)
    header_type, table = _header_table(data)
    return header_type == _DICTIONARY_BATCH and _field(data, table, _DICTIONARY_IS_DELTA, "<B") != 0


def _metadata(header: BufferLike) -> bytes:
    return bytes(memoryview(header)[: message_header_bytes(header)])


def _message_table(data: bytes) -> int:
    """Where the ``Message`` table of the encapsulated message's metadata is."""
    base = 8 if data[:4] == _CONTINUATION else 4
    return base + _u32(data, base)


def _header_table(data: bytes) -> tuple[int, int]:
    """The message header's type and, for a record or dictionary batch, where its
    header table is (else -1). Raises MalformedArrow for metadata that does not parse."""
    message = _message_table(data)
    header_type = _field(data, message, 1, "<B")
    if header_type not in (_RECORD_BATCH, _DICTIONARY_BATCH):
        return header_type, -1
    at = _field_position(data, message, 2)
    if at is None:
        raise MalformedArrow("a batch message without its header")
    return header_type, at + _u32(data, at)


def _batch_table(data: bytes) -> tuple[int, int]:
    """The message header's type and, for a record or dictionary batch, where its
    ``RecordBatch`` table is (the dictionary batch's own ``data``; else -1). Raises
    MalformedArrow for metadata that does not parse."""
    header_type, table = _header_table(data)
    if header_type == _DICTIONARY_BATCH:
        at = _field_position(data, table, 1)
        if at is None:
            raise MalformedArrow("a dictionary batch without its data")
        table = at + _u32(data, at)
    return header_type, table


def _unpack(layout: str, data: bytes, at: int) -> int:
    """The scalar at ``at`` in ``data``; MalformedArrow when it lies outside ``data``
    (a negative offset would silently read from the end)."""
    if not 0 <= at <= len(data) - struct.calcsize(layout):
        raise MalformedArrow(f"IPC message metadata points outside itself (offset {at})")
    value: int = struct.unpack_from(layout, data, at)[0]
    return value


def _u32(data: bytes, at: int) -> int:
    return _unpack("<I", data, at)


def _field_position(data: bytes, table: int, index: int) -> int | None:
    """Where field ``index`` of the flatbuffer table at ``table`` is, None if absent."""
    vtable = table - _unpack("<i", data, table)
    vtable_bytes = _unpack("<H", data, vtable)
    slot = 4 + 2 * index
    if slot + 2 > vtable_bytes:
        return None
    offset = _unpack("<H", data, vtable + slot)
    return table + offset if offset else None


def _field(data: bytes, table: int, index: int, layout: str) -> int:
    """Scalar field ``index`` of the table at ``table`` (0, the default, if absent)."""
    at = _field_position(data, table, index)
    return 0 if at is None else _unpack(layout, data, at)


def _check_in_place(index: int, batch: pa.RecordBatch, frame: pa.Buffer) -> None:
    """Refuse a batch (frame ``index``) with a buffer outside its frame: decoded, not
    served in place; or one not 8-byte aligned (frames are: see :func:`_as_buffer`):
    metadata padded to other than a multiple of 8 shifts the whole body, and numpy and
    torch views of it were misaligned. (Dictionaries are not checked here: compressed
    and delta ones, and those of misaligned bodies, were refused from their metadata.)"""
    low, high = frame.address, frame.address + frame.size
    for column in batch.columns:
        for buffer in column.buffers():
            if buffer is None or not buffer.size:
                continue
            if not (low <= buffer.address and buffer.address + buffer.size <= high):
                raise MalformedArrow(
                    f"frame {index}: record batch does not decode in place "
                    "(compressed body or foreign byte order?)"
                )
            if buffer.address % _ARROW_ALIGNMENT:
                raise MalformedArrow(
                    f"frame {index}: a record batch buffer at {buffer.address - low} bytes "
                    f"into its frame is not {_ARROW_ALIGNMENT}-byte aligned (metadata not "
                    "padded to a multiple of 8 bytes?)"
                )


def _check_layout(index: int, declared: _Layout, expected: _Layout) -> None:
    """Refuse (MalformedArrow) a record batch (frame ``index``) that declares other
    field nodes or buffers than its schema's: Arrow decodes the schema's columns from
    the first ones and ignores the rest (a batch of an extra column was stored, and
    read back without it)."""
    if declared != expected:
        raise MalformedArrow(
            f"frame {index}: the record batch declares {declared}; the schema's columns "
            f"make {expected} (a batch written for another schema?)"
        )


def _check_batch(index: int, batch: pa.RecordBatch, frame: pa.Buffer) -> None:
    """Refuse (MalformedArrow) a decoded batch that is invalid or not decoded in place."""
    try:
        batch.validate(full=True)
    except _ARROW_ERRORS as exc:
        raise MalformedArrow(f"frame {index}: invalid record batch: {exc}") from exc
    _check_in_place(index, batch, frame)


class _AsBuffers(Sequence[pa.Buffer]):
    """``frames`` as Arrow buffers (:func:`_as_buffer`), each made when asked for."""

    def __init__(self, frames: Sequence[BufferLike]) -> None:
        self._frames = frames

    def __len__(self) -> int:
        return len(self._frames)

    def __getitem__(self, index: int) -> pa.Buffer:  # type: ignore[override]  # no slices
        return _as_buffer(self._frames[index])


def validate_arrow_frames(
    frames: Iterable[BufferLike], max_frame_bytes: int | None = None
) -> pa.Schema:
    """Check that frames arriving pre-framed form a valid Arrow shard; return its schema.
    As :func:`checked_arrow_frames`; frames given as a one-pass iterable (a generator)
    are listed first."""
    listed = frames if isinstance(frames, Sequence) else list(frames)
    return checked_arrow_frames(listed, max_frame_bytes).schema


class ArrowFrames(NamedTuple):
    """What :func:`checked_arrow_frames` found in valid frames."""

    schema: pa.Schema
    #: rows in all the record batches
    rows: int


def checked_arrow_frames(
    frames: Sequence[BufferLike], max_frame_bytes: int | None = None
) -> ArrowFrames:
    """Check that frames arriving pre-framed form a valid Arrow shard; return its schema
    and row count. Asks ``frames`` for each frame twice and keeps none.

    Checks: frame 0 is exactly one schema message; every later frame is exactly one record
    batch (or dictionary batch) message with no trailing bytes; everything decodes against
    that schema; every record batch message declares the field nodes and buffers of that
    schema's columns, passes ``RecordBatch.validate(full=True)`` and decodes in
    place (uncompressed, native byte order, 8-byte aligned buffers). Caveat: a batch
    written for another schema with the same physical layout (say int64 vs float64)
    cannot be told apart and passes.

    Raises:
        MalformedArrow: anything else; the message names the frame and what was wrong.
        OversizeFrame: ``max_frame_bytes`` is given and a frame is larger.
    """
    if not len(frames):
        raise MalformedArrow("no frames: an Arrow shard has at least its schema frame")
    # Frame by frame, keeping none: frames made on demand (a large put decrypted from
    # its spool) are held only while looked at.
    for index in range(len(frames)):
        frame = _as_buffer(frames[index])
        if max_frame_bytes is not None and frame.size > max_frame_bytes:
            raise OversizeFrame(
                f"frame {index} is {frame.size} bytes, over max_frame_bytes={max_frame_bytes}"
            )
        kind = _message_type(index, frame)
        expected = ("schema",) if index == 0 else ("record batch", "dictionary")
        if kind not in expected:
            where = "frame 0 must hold the schema" if index == 0 else "only batches may follow"
            raise MalformedArrow(f"frame {index} holds a {kind} message; {where}")
        # Refused before any frame is decoded: decoding decompresses every batch, and
        # joins each delta dictionary to its base in new memory that every later batch
        # keeps (600 deltas in 2.7 MiB of frames took 750 MiB to decode).
        if index and message_is_compressed(frame):
            raise MalformedArrow(
                f"frame {index}: the {kind} message's body is compressed; tierstore "
                "stores batches uncompressed, to serve them in place (write without "
                "compression)"
            )
        if index and message_header_bytes(frame) % _ARROW_ALIGNMENT:
            # The body follows the metadata: every buffer of it would be misaligned (a
            # dictionary batch's too, whose buffers the in-place check does not see).
            raise MalformedArrow(
                f"frame {index}: the {kind} message's body starts "
                f"{message_header_bytes(frame)} bytes in, so its buffers are not "
                f"{_ARROW_ALIGNMENT}-byte aligned (metadata not padded to a multiple of 8)"
            )
        if index and message_is_delta(frame):
            raise MalformedArrow(
                f"frame {index}: a delta dictionary batch; tierstore stores whole "
                "dictionaries, served in place (write with emit_dictionary_deltas off)"
            )
    rows = 0
    # What the schema's record batches declare, by metadata version: made once a shard.
    layouts: dict[int, _Layout] = {}

    def check(index: int, batch: pa.RecordBatch, frame: pa.Buffer) -> None:
        nonlocal rows
        version, declared = _declared_layout(frame)
        if version not in layouts:
            layouts[version] = _schema_layout(batch.schema, version)
        _check_layout(index, declared, layouts[version])
        _check_batch(index, batch, frame)
        rows += batch.num_rows

    schema, _ = _read_stream(_AsBuffers(frames), on_batch=check)
    return ArrowFrames(schema, rows)


def fixed_list_values(array: pa.FixedSizeListArray) -> pa.Array:
    """The values under ``array``'s rows, in order: ``array.flatten()`` for an array
    without null rows (callers refuse those first), as a zero-copy slice.

    ``flatten()`` goes through ``pyarrow.compute``, whose first use in a process imports
    and decorates every compute function (0.03 to 0.2 s): a DataLoader worker forked
    each epoch would pay that before its first batch.
    """
    size = array.type.list_size
    return array.values.slice(array.offset * size, len(array) * size)


@contextlib.contextmanager
def open_ipc_file(path: Path) -> Iterator[pa.RecordBatchReader]:
    """A reader of the record batches of the Arrow IPC file (``.arrow``/Feather v2) or
    IPC stream at ``path``, open while the block runs, each batch read from the file
    only as it is taken: a put of the reader (``Client.put`` takes one) holds a few
    batches at a time, never the file whole. Not mapped, as a file cut short under a
    map kills the process. Its schema (and a file's footer) are read on entry: raises
    :class:`MalformedArrow` for a file that is neither, or a stream whose last bytes
    are no end-of-stream marker, :class:`OSError` for one that cannot be read; a batch
    that cannot be read raises pyarrow's error (an OSError or ArrowInvalid: a stream
    cut short) as it is taken, which a put makes MalformedArrow.

    A stream must end at its end-of-stream marker, and its file there: pyarrow ends a
    stream at the end of its file as it does at the marker, so a stream cut between
    two messages would read as a shorter table, and a second stream after the marker
    would be dropped. Both raise MalformedArrow once the last batch has been taken.
    """
    with pa.OSFile(str(path)) as source:
        try:
            file = pa.ipc.open_file(source)
        except pa.ArrowInvalid:
            source.seek(0)  # not the file format: perhaps a stream
        else:
            batches = (file.get_batch(i) for i in range(file.num_record_batches))
            yield pa.RecordBatchReader.from_batches(file.schema, batches)
            return
        try:
            stream = pa.ipc.open_stream(source)
        except _ARROW_ERRORS as exc:  # a stream cut short is an OSError here
            raise MalformedArrow(
                f"{path} is neither an Arrow IPC file nor an IPC stream: {exc}"
            ) from None
        # Messages since Arrow 0.15 start with the continuation marker, and so does their
        # stream's end marker; before, the end was a length of 0 alone. A file whose last
        # bytes are not its format's marker is refused before a batch is read (most cut
        # files); the read checks that the marker follows the last batch.
        modern = _bytes_from(source, 0, 4) == _END_OF_STREAM[:4]
        marker = _END_OF_STREAM if modern else _LEGACY_END_OF_STREAM
        if _bytes_from(source, source.size() - len(marker)) != marker:
            raise MalformedArrow(f"{path}: {_NO_MARKER}")
        to_the_marker = _up_to_the_marker(stream, source, marker)
        yield pa.RecordBatchReader.from_batches(stream.schema, to_the_marker)


#: how an IPC stream ends (a continuation marker, then a metadata length of 0), and how
#: it ended before Arrow 0.15 (the length alone)
_END_OF_STREAM = b"\xff\xff\xff\xff\x00\x00\x00\x00"
_LEGACY_END_OF_STREAM = b"\x00\x00\x00\x00"
_NO_MARKER = (
    "the IPC stream ends without its end-of-stream marker: it was cut short, or its "
    "writer was never closed"
)


def _up_to_the_marker(
    stream: pa.RecordBatchStreamReader, source: pa.NativeFile, marker: bytes
) -> Iterator[pa.RecordBatch]:
    """``stream``'s batches, read from ``source`` as they are taken; then MalformedArrow
    unless the bytes after the last batch are ``marker`` and the file's last (pyarrow
    reads messages without reading ahead, so the file's position after a batch is where
    that batch ends)."""
    end = source.tell()
    for batch in stream:
        yield batch
        end = source.tell()
    if source.tell() < source.size():
        raise MalformedArrow(
            f"{source.size() - source.tell()} bytes after its end-of-stream marker "
            "(a second stream written after the first, say): write one stream per file"
        )
    if _bytes_from(source, end) != marker:
        raise MalformedArrow(_NO_MARKER)


def _bytes_from(source: pa.NativeFile, offset: int, count: int | None = None) -> bytes:
    """``count`` of ``source``'s bytes from ``offset`` (0 if negative; None: to its end),
    its position kept."""
    here = source.tell()
    offset = max(offset, 0)
    tail = source.read_at(source.size() - offset if count is None else count, offset)
    source.seek(here)  # pyarrow asks for a seek after a read_at before the next read
    return bytes(tail)


def check_ipc_file(path: Path) -> None:
    """Raise as :func:`open_ipc_file` would for a file that is not an Arrow IPC file
    or stream, reading only its schema (and a file's footer): for a command to refuse
    before it uploads anything. Its record batches are read, and checked, only then."""
    with open_ipc_file(path):
        pass
