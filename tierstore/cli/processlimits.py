"""The process limits a node sets for itself as it starts: no core files (its memory
holds keys and plaintext), and as many open files as its user may give it."""

from __future__ import annotations

import logging
import resource

log = logging.getLogger(__name__)

#: The soft open-file limit a node raises its own to, where the hard limit allows:
#: twice the most connections it takes by default (each holds a descriptor) with room
#: for the hot tier, spool files, archive connections and the embedded archive's weed,
#: which inherits it. Not the hard limit itself, which may be 2^30 in a container.
OPEN_FILES_WANTED = 65536
#: Below this a node warns: it serves, but takes few connections at once (half the
#: limit) and its embedded archive may run out ("too many open files").
OPEN_FILES_ENOUGH = 1024


def no_core_dumps() -> None:
    """Turn off this process's core files (its soft RLIMIT_CORE to 0): a node's memory
    holds its master keys, the data keys it unwraps and the plaintext of puts it spools,
    which a crash would otherwise write into a core file for anyone who may read it.
    Where the kernel pipes dumps to a crash handler instead (``core_pattern`` starting
    with ``|``), the handler still receives the dump and decides: systemd-coredump
    keeps none under a limit of 0; others may (a dumpable flag of 0 would stop those
    too, but also keep the node's own user from /proc/<pid>/fd and debuggers).
    The hard limit is left as it is: ``prlimit --core=... --pid`` turns them on again,
    to debug a crash."""
    try:
        _, hard = resource.getrlimit(resource.RLIMIT_CORE)
        resource.setrlimit(resource.RLIMIT_CORE, (0, hard))
    except (OSError, ValueError) as exc:  # not where dumps are up to the process
        log.warning("could not turn off core dumps: %s", exc)


def raise_open_file_limit() -> int:
    """Raise this process's soft open-file limit (RLIMIT_NOFILE) to its hard limit, at
    most OPEN_FILES_WANTED (never lower it), and return the soft limit it has then.

    The soft limit is often 1024 where the hard one is far higher (a login shell, a
    systemd service, a container): the node's connection cap is half of it, and the
    embedded archive's weed failed to start at 64 with "too many open files". A process
    may raise its soft limit up to the hard one by itself, as Go programs do; so this
    does, and only a hard limit under OPEN_FILES_ENOUGH is left to the operator, with a
    warning saying how to raise it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    ceiling = OPEN_FILES_WANTED if hard == resource.RLIM_INFINITY else min(hard, OPEN_FILES_WANTED)
    if soft != resource.RLIM_INFINITY and soft < ceiling:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (ceiling, hard))
            soft = ceiling
        except (OSError, ValueError) as exc:  # above the kernel's nr_open, say
            log.warning("could not raise the open-file limit from %d to %d: %s", soft, ceiling, exc)
    if soft != resource.RLIM_INFINITY and soft < OPEN_FILES_ENOUGH:
        log.warning(
            "the open-file limit is %d, and its hard limit is %s: the node takes at most "
            "half as many connections at once (each holds a descriptor), and its embedded "
            "archive may fail with 'too many open files'; raise the hard limit to %d or "
            "more (ulimit -Hn as root, LimitNOFILE= in a systemd unit, docker run --ulimit "
            "nofile=)",
            soft,
            "unlimited" if hard == resource.RLIM_INFINITY else hard,
            OPEN_FILES_ENOUGH,
        )
    return soft
