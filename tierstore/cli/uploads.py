"""``tierstore put``: files and directories up as shards, in order, every name checked
first; it stops at the first that cannot go and says which went (and which is in doubt
after Ctrl-C)."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, Progress, TextColumn, TransferSpeedColumn

from tierstore import errors
from tierstore.cli.app import command_client
from tierstore.cli.output import (
    emit,
    err,
    fail,
    interrupted_partway,
    plural,
    rate_text,
    stopped_partway,
)
from tierstore.cli.state import state
from tierstore.naming import validate_shard_name

__all__ = ["put"]


def _warn(text: str) -> None:
    """One warning line on stderr, as it is (no markup): the command goes on."""
    err.print(f"warning: {text}", highlight=False, markup=False, soft_wrap=True)


def put(
    dataset: str,
    paths: Annotated[list[str], typer.Argument(help="files or directories")],
    prefix: Annotated[str, typer.Option(help="shard name prefix")] = "",
    kind: Annotated[
        str,
        typer.Option(
            help="raw: each file's bytes as they are; arrow: each file is an Arrow IPC "
            "file or stream, stored as an Arrow shard (what the DataLoader plugin reads)"
        ),
    ] = "raw",
    frame_bytes: Annotated[
        int | None,
        typer.Option(
            "--frame-bytes",
            help="the most bytes of one frame sent (4 MiB unless given): at most the "
            "node's max_frame_bytes, which is smaller on a node whose hot tier is",
        ),
    ] = None,
) -> None:
    """Upload files (directories recursively) as shards named by their relative paths, in
    order. In a directory, links to files are followed; a link to a directory or to
    nothing, or a pipe, is refused before anything is uploaded, and so is a file that
    cannot be opened for reading or is not Arrow with --kind arrow. Stops at the first one
    it cannot upload; the ones uploaded before it are still
    reported on stdout (with --json too: "uploaded" and "not_uploaded", and "shards",
    "bytes" and "bytes_per_s" for those uploaded, as when all go: bytes of the puts
    that returned, not of a write-through one the archive has not taken), the error on
    stderr."""
    if kind not in ("raw", "arrow"):
        raise fail(errors.InvalidArgument(f"--kind must be raw or arrow, not {kind!r}"))
    client = command_client()
    if frame_bytes is not None:
        try:
            client.frame_bytes = frame_bytes
        except errors.InvalidArgument as exc:
            raise fail(exc, f"--frame-bytes: {exc}") from None
    files: list[tuple[Path, str]] = []
    for given in paths:
        if not given:  # "$DIR" of an unset variable: not the working directory (".")
            raise fail(
                errors.InvalidArgument(
                    "a path is empty: give a file or directory (. for this one); nothing uploaded"
                )
            )
        path = Path(given)
        if path.is_dir():
            files += [(f, prefix + f.relative_to(path).as_posix()) for f in _files_under(path)]
        elif path.is_file():
            files.append((path, prefix + path.name))
        else:
            raise fail(errors.InvalidArgument(f"{path} is not a file or directory"))
    files = _checked_uploads(files)
    if not files:  # empty directories: succeeds (as cp -r does), but not silently
        _warn("nothing to upload: the directories given hold no files")
    elif prefix and not prefix.endswith("/"):  # a name prefix, not a folder: say so
        _warn(
            f"--prefix {prefix!r} does not end in '/': the first shard is named "
            f"{files[0][1]!r} (give --prefix {prefix + '/'!r} for a folder)"
        )
    if kind == "arrow":
        _check_arrow_files([file for file, _ in files])
    else:
        _check_readable([file for file, _ in files])
    total = sum(f.stat().st_size for f, _ in files)
    uploaded = []
    started = time.monotonic()
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TransferSpeedColumn(),
        console=err,
        # Off a terminal a progress bar cannot be redrawn: it would only leave an
        # empty line before an error, or bar text in a log.
        disable=state.json or not err.is_terminal,
        transient=True,  # gone when done: a failure leaves its one error line, alone
    ) as progress:
        task = progress.add_task("uploading", total=total)
        failure: errors.TierstoreError | None = None
        interrupted = False
        sending: str | None = None  # the shard whose put is under way, if any
        try:
            for file, name in files:
                try:
                    size = file.stat().st_size
                    with _put_value(file, kind) as value:
                        sending = name
                        uploaded.append(client.put(dataset, name, value))
                        sending = None
                except OSError as exc:  # unreadable, or gone since it was listed
                    raise errors.InvalidArgument(
                        f"cannot read {file}: {exc.strerror or exc}"
                    ) from None
                progress.advance(task, size)
        except errors.TierstoreError as exc:
            failure = exc
        except KeyboardInterrupt:
            interrupted = True
    names = [name for _, name in files]
    # What was stored: a /proc file says it holds 0 bytes, a sysfs one 4096.
    total = sum(info.size for info in uploaded)
    bytes_per_s = total / max(time.monotonic() - started, 1e-9)
    # --json holds these keys (and "shards") when the put stops part way too: the
    # bytes of the shards whose put returned.
    totals = {"bytes": total, "bytes_per_s": bytes_per_s}
    if interrupted:
        # the server stores a stream it received whole even when its answer finds nobody
        raise interrupted_partway(
            names,
            len(uploaded),
            "uploaded",
            sending,
            totals=totals,
            maybe="stored",
            done_also_as="shards",
        )
    if failure is not None:
        raise stopped_partway(
            failure, names, len(uploaded), "uploaded", totals=totals, done_also_as="shards"
        )
    shards = [info.name for info in uploaded]
    emit(
        {"shards": shards, "uploaded": shards, "not_uploaded": [], "in_doubt": None, **totals},
        f"uploaded {plural(len(uploaded), 'shard')}, {total:,} bytes, {rate_text(bytes_per_s)}",
    )


def _files_under(directory: Path) -> list[Path]:
    """The files under ``directory``, at any depth, sorted. A link to a file is
    followed (the shard, named by the link, holds its target's bytes). Exits
    (InvalidArgument, nothing uploaded) at a link to a directory (not followed: links
    can loop), a link to nothing, anything else that is not a file (a pipe would block
    the upload), or a directory that cannot be listed: each was skipped without a
    word, so a dataset could go up with shards missing."""

    def refuse(entry: Path, why: str) -> typer.Exit:
        return fail(errors.InvalidArgument(f"{entry} {why}; nothing uploaded"))

    def unlisted(exc: OSError) -> None:
        raise refuse(Path(exc.filename), f"cannot be listed: {exc.strerror or exc}")

    found = []
    for root, directories, names in os.walk(directory, onerror=unlisted):
        here = Path(root)
        for name in directories:
            if (here / name).is_symlink():
                raise refuse(here / name, "is a link to a directory, which is not followed")
        for name in names:
            entry = here / name
            if entry.is_file():
                found.append(entry)
            elif entry.is_symlink() and not entry.exists():
                raise refuse(entry, "is a link to nothing")
            else:
                raise refuse(entry, "is not a regular file")
    return sorted(found)


def _checked_uploads(files: list[tuple[Path, str]]) -> list[tuple[Path, str]]:
    """``files`` with a file given twice (under one name) once. Exits (InvalidArgument,
    nothing uploaded) when a name is not a valid shard name, or two inputs would get one
    shard name: the second would silently replace the first."""
    first_of: dict[str, Path] = {}
    for file, name in files:
        try:
            validate_shard_name(name)
        except errors.InvalidArgument as exc:
            raise fail(exc, f"{str(file)!r}: {exc}; nothing uploaded") from None
        earlier = first_of.setdefault(name, file)
        if earlier != file:
            raise fail(
                errors.InvalidArgument(
                    f"{earlier} and {file} would both be shard {name!r}; nothing uploaded "
                    "(upload them separately with different --prefix values)"
                )
            )
    return list(dict.fromkeys(files))


def _check_readable(files: list[Path]) -> None:
    """Refuse (InvalidArgument, nothing uploaded) a file this user cannot open for
    reading: found only when its turn came, it stopped the upload part way, after the
    files before it had gone up (a filesystem review)."""
    for file in files:
        try:
            os.close(os.open(file, os.O_RDONLY))
        except OSError as exc:
            raise _unreadable(file, exc) from None


def _check_arrow_files(files: list[Path]) -> None:
    """Refuse (MalformedArrow or InvalidArgument, nothing uploaded) a file that is not
    an Arrow IPC file or stream, or cannot be read, reading only its schema."""
    from tierstore.arrowio import check_ipc_file  # pyarrow only when it is needed

    for file in files:
        try:
            check_ipc_file(file)
        except errors.MalformedArrow as exc:
            raise fail(exc, f"{exc}; nothing uploaded") from None
        except OSError as exc:
            raise _unreadable(file, exc) from None


def _unreadable(file: Path, exc: OSError) -> typer.Exit:
    """The refusal (InvalidArgument, nothing uploaded) of a file that cannot be read."""
    return fail(
        errors.InvalidArgument(f"cannot read {file}: {exc.strerror or exc}; nothing uploaded")
    )


@contextlib.contextmanager
def _put_value(file: Path, kind: str) -> Iterator[Any]:
    """What ``put --kind`` uploads of ``file``: the file itself (raw), or a reader of
    the record batches it holds (arrow; MalformedArrow if it holds none), which the put
    reads a batch at a time: a file larger than memory goes up all the same."""
    if kind == "raw":
        yield file
        return
    from tierstore.arrowio import open_ipc_file  # pyarrow only when it is needed

    with open_ipc_file(file) as reader:
        try:
            yield reader
        except errors.MalformedArrow as exc:  # a batch past its schema: name the file
            raise errors.MalformedArrow(f"{file}: {exc}") from None
