"""Writing a shard's bytes to a file without holding them in memory.

``Client.get`` returns one buffer of the whole range: a 1 GiB shard took the CLI's
``get -o FILE`` to 1.2 GB of memory (a scale review). A download instead verifies
(and decrypts) each frame straight into a shared mapping of the file, whose pages
the OS writes back and reclaims as it needs: memory no longer grows with the shard.

Until whole, output goes to a new file of its own beside the target
(``.<name>.<random>.part``), made with ``O_EXCL``: a fixed ``<name>.part`` clobbered,
and on failure deleted, a user's file of that name, and followed a link placed there
(a security review). Only the file made here is ever renamed or removed.
"""

from __future__ import annotations

import errno
import logging
import mmap
import os
import stat
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

if TYPE_CHECKING:  # the CLI imports this module; the receiving side brings pyarrow
    import pyarrow as pa

    from tierstore.client.receive import ShardStream

__all__ = [
    "file_allocator",
    "open_in_place",
    "output_target",
    "partial_file",
    "stream_into_file",
    "write_all",
]

log = logging.getLogger(__name__)


def output_target(path: str | os.PathLike[str]) -> tuple[Path, bool]:
    """The file that output asked for at ``path`` goes to, and whether it is written
    through a partial file (:func:`partial_file`) renamed over it once whole, so that
    a failed write leaves it as it was. A link is followed, so that the file it names
    gets the output, not a file in its place; a device or a pipe is written in place
    (False: renaming a file over /dev/null would replace the device), and so is one of
    this process's descriptors (``/dev/stdout``, ``/dev/fd/N``, ``/proc/self/fd/N``,
    ``/proc/thread-self/fd/N``), named as given: :func:`open_in_place` writes to the
    descriptor itself. Raises
    IsADirectoryError for a directory (or a link to one, or a name ending in a slash,
    as ``open`` does), and PermissionError for a link that the kernel's
    ``fs.protected_symlinks`` would not follow (:func:`_refuse_a_planted_link`) or
    for a file this user may not write (the shell's ``>`` and ``cp`` refuse it; the
    rename needs only the directory's write, so it replaced a read-only file), before
    anything is fetched for it."""
    named = os.fspath(path)
    path = Path(named)  # (which drops a trailing slash)
    if _descriptor_named(path) is not None:
        # A pipe's link reads "pipe:[...]", a path to nothing; a file's names the file,
        # which a rename would replace whatever the descriptor's mode (>> appends).
        return path, False
    if path.is_symlink():
        _refuse_a_planted_link(path, named)
    target = path.resolve() if path.is_symlink() else path
    if target.is_dir() or named.endswith(os.sep):
        raise IsADirectoryError(errno.EISDIR, "is a directory; name a file to write", named)
    if target.is_file() and not _writable(target):
        raise PermissionError(
            errno.EACCES, "is a file this user may not write: not replaced", named
        )
    return target, not (target.exists() and not target.is_file())


def _writable(file: Path) -> bool:
    """Whether this process may write ``file``, by its effective user and groups, as
    ``open`` decides (root may write any file but one on a read-only mount)."""
    return os.access(file, os.W_OK, effective_ids=os.access in os.supports_effective_ids)


def _refuse_a_planted_link(link: Path, named: str) -> None:
    """Refuse, as the kernel's ``fs.protected_symlinks`` refuses ``open``, to follow a
    link in a sticky directory that every user may write (``/tmp``) unless it is this
    user's or the directory owner's, at each link of the chain from ``link``: resolved
    here and renamed over, a link another user planted there had root's ``get -o
    /tmp/out`` replace a file only root may write (a review), where the shell's
    ``> /tmp/out`` is refused."""
    current = Path(os.path.abspath(link))
    for _ in range(40):  # as many links as the kernel follows
        if not current.is_symlink():
            return
        directory = current.parent.stat()
        shared = directory.st_mode & stat.S_ISVTX and directory.st_mode & stat.S_IWOTH
        owner = current.lstat().st_uid
        if shared and owner not in (os.geteuid(), directory.st_uid):
            raise PermissionError(
                errno.EACCES,
                f"leads through {current}, a link of another user's (uid {owner}) in a "
                "directory every user may write to: not followed, as the kernel does not "
                "(its fs.protected_symlinks); name another file",
                named,
            )
        current = Path(os.path.abspath(current.parent / os.readlink(current)))


@contextmanager
def open_in_place(target: Path) -> Iterator[BinaryIO]:
    """``target``, an :func:`output_target` written in place, open for writing
    (buffered: a frame-sized write goes straight through). One of this process's
    descriptors is written through a duplicate of it, at the descriptor's own position
    (a shell's ``>>`` appends), neither truncated nor opened again; a device or a pipe
    is opened by its name (a named pipe with no reader waits for one)."""
    descriptor = _descriptor_named(target)
    if descriptor is None:
        with target.open("wb") as file:
            yield file
        return
    with os.fdopen(os.dup(descriptor), "wb") as file:
        yield file


def _descriptor_named(path: Path) -> int | None:
    """The descriptor of this process that ``path`` names, itself or through links
    (``/dev/stdout`` → ``/proc/self/fd/1``), or None. Linux: a name in ``/proc/<this
    process>/fd``, or in ``/proc/<this process>/task/<one of its threads>/fd`` (as
    ``/proc/thread-self/fd`` is: a process's threads share its descriptors); elsewhere
    always None."""
    own = os.path.realpath("/proc/self")  # this process's, in its own /proc
    current = Path(os.path.abspath(path))
    for _ in range(40):  # as many links as the kernel follows
        if current.name.isdigit() and _lists_own_descriptors(current.parent, own):
            return int(current.name)
        try:
            link = os.readlink(current)
        except OSError:  # not a link (EINVAL), or not one we may read
            return None
        current = Path(os.path.abspath(current.parent / link))
    return None


def _lists_own_descriptors(directory: Path, own: str) -> bool:
    """Whether ``directory`` is (or links to) the ``fd`` directory of the process whose
    /proc directory is ``own``, or of one of its threads."""
    resolved = Path(os.path.realpath(directory))
    if resolved == Path(own, "fd"):
        return True
    task = resolved.parent
    return resolved.name == "fd" and task.name.isdigit() and task.parent == Path(own, "task")


@contextmanager
def partial_file(
    target: Path, *, private: bool = False, private_if_new: Callable[[], bool] = lambda: False
) -> Iterator[BinaryIO]:
    """A new file beside ``target``, open for reading and writing, that replaces
    ``target`` when the block ends without an error and is removed when it raises.

    The file is made with ``O_EXCL`` under a random name, so no file or link already
    there is touched. Its mode is 0600 when ``private``, else that of the file it
    replaces, as ``open`` keeps it (a private file downloaded over became readable by
    every user), or for a new file 0600 when ``private_if_new()`` (the plaintext of
    what was kept encrypted: asked once the block has written it), else what ``open``
    would give it (0666 less the umask). The mode is set once the file is whole: it is
    0600 until then. The file is synced to disk before the rename, and its directory
    after it, so that once the block has ended ``target`` holds the new bytes whole or,
    after a crash before then, the old ones (renamed unsynced, a crash could leave it
    empty or torn, its old contents gone). A process killed while writing leaves its
    partial file behind (a hidden ``.<name>.<random>.part``), for whoever looks to
    remove; no later write reuses it."""
    try:
        descriptor, name = tempfile.mkstemp(
            prefix=f".{target.name}.", suffix=".part", dir=target.parent
        )
    except OSError as exc:  # named as the caller gave it: the partial file is ours
        raise type(exc)(exc.errno, exc.strerror, str(target)) from None
    partial = Path(name)
    try:
        try:
            # The descriptor outlives the file object, which the block may close itself
            # (a text wrapper closes what it wraps): closing it flushes its buffer.
            with os.fdopen(descriptor, "w+b", closefd=False) as file:
                yield file
            if not private:
                os.fchmod(descriptor, _mode_for(target, private_if_new()))
            # Writes through a shared mapping of the file (a download's) are in the
            # page cache as the file's own dirty pages: fsync writes them too, whether
            # or not the mapping is still open.
            os.fsync(descriptor)
        finally:
            os.close(descriptor)
        partial.replace(target)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    _sync_directory(target.parent)


def _sync_directory(directory: Path) -> None:
    """Make the entries of ``directory`` (a rename into it) durable, as far as it can
    be: a directory that cannot be opened (write and search only) or synced (some
    network and FUSE mounts) is left as it is, logged, since the file renamed into it
    is whole and in place already, and raising would call a done write failed."""
    try:
        descriptor = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    except OSError as exc:
        log.debug("cannot open %s to sync the rename into it: %s", directory, exc)
        return
    try:
        os.fsync(descriptor)
    except OSError as exc:
        log.debug("cannot sync directory %s: %s", directory, exc)
    finally:
        os.close(descriptor)


def _mode_for(target: Path, private_if_new: bool = False) -> int:
    """The permission bits of the regular file ``target``, or a new file's (0600 when
    ``private_if_new``)."""
    try:
        status = target.stat()
    except OSError:
        status = None
    if status is not None and stat.S_ISREG(status.st_mode):
        return stat.S_IMODE(status.st_mode) & 0o777  # no set-id bit on new contents
    return 0o600 if private_if_new else 0o666 & ~_umask()


def _umask() -> int:
    """The process's umask, read without changing it where Linux tells it (setting
    and restoring it would race with other threads making files)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def stream_into_file(stream: ShardStream, file: BinaryIO) -> int:
    """Verify (and decrypt) ``stream``'s requested bytes into ``file`` (open for
    reading and writing), emptied first (a retried stream starts over); returns how
    many. On IntegrityError the file's bytes are zeroed, as a buffer's are. Raises
    OSError (ENOSPC) when the file's disk has no room for the bytes, before any is
    written."""
    if stream.length == 0:
        _empty(file)
        # Nothing to write, but the stream is read to its end as any other: a frame
        # where none was promised is IntegrityError here too, as it is to get.
        return stream.into(memoryview(bytearray()))
    with _mapped(file, stream.length) as mapping:
        view = memoryview(mapping)
        try:
            return stream.into(view)
        finally:
            view.release()  # a mapping with a view still out cannot close


def file_allocator(file: BinaryIO) -> Callable[[int], pa.Buffer]:
    """A frame allocator whose buffer is ``file`` itself (open for reading and
    writing): emptied, made ``size`` bytes long and mapped, as :func:`stream_into_file`
    does, so that a range read in place lands straight in the file (into a buffer of
    the shard's size first, memory grew with it). The mapping goes with the buffer."""

    def allocate(size: int) -> pa.Buffer:
        import pyarrow as pa  # as the receiving side does: not for the CLI's import

        if size == 0:
            _empty(file)
            return pa.allocate_buffer(0)
        return pa.py_buffer(_mapped(file, size))

    return allocate


def _empty(file: BinaryIO) -> None:
    file.seek(0)
    file.truncate(0)


def _mapped(file: BinaryIO, size: int) -> mmap.mmap:
    """``file`` emptied and made ``size`` (above 0) bytes long, its blocks taken now
    (written through a map, a sparse file's page with no disk for it killed the
    process, SIGBUS, where this raises ENOSPC): a shared mapping of it."""
    _empty(file)
    os.posix_fallocate(file.fileno(), 0, size)
    return mmap.mmap(file.fileno(), size)


def write_all(file: BinaryIO, data: memoryview) -> int:
    """Write all of ``data`` to ``file``; returns its length. (A write cut short, by a
    reader of a pipe that went away, say, returns a count rather than raising.)"""
    view = data
    while view:
        view = view[file.write(view) :]
    return len(data)
