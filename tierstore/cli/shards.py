"""The commands on shards by name: ``get``, ``ls``, ``stat``, ``rm``, ``pin``, ``unpin``,
``prefetch`` and ``evict``."""

from __future__ import annotations

import itertools
import shlex
import sys
from collections.abc import Callable
from typing import Annotated, Any, TypeVar

import typer
from rich.table import Table
from rich.text import Text

from tierstore import errors
from tierstore.cli.app import command_client
from tierstore.cli.output import (
    already_text,
    checked_output_file,
    emit,
    emit_report,
    emit_warned,
    err,
    fail,
    interrupted,
    interrupted_partway,
    plural,
    print_as_fetched,
    print_plain,
    run_or_fail,
    stopped_partway,
    utc_minute,
    write_failed,
    yes_no,
)
from tierstore.cli.state import state
from tierstore.cli.stopsignal import stopped_by
from tierstore.client.download import write_all

__all__ = ["evict", "get", "ls", "pin", "prefetch", "rm", "stat", "unpin"]


T = TypeVar("T")


SHARD_COLUMNS = (
    "name",
    "size",
    "frames",
    "kind",
    "hot",
    "pinned",
    "archived",
    "encrypted",
    "reads",
)
#: listings of more shards print as plain aligned columns: a table measures every cell
#: before its first line (50,000 shards took 82 s, against 7.8 s with --json)
PLAIN_LISTING_ROWS = 1000
#: shards a long listing fetches before it prints them (a ListShards page's default)
LISTING_PAGE = 1000


def _shard_row(s: Any) -> tuple[str, ...]:
    return (
        s.name,
        f"{s.size:,}",
        str(s.frame_count),
        s.kind.value,
        yes_no(s.hot),
        _pin_state(s.pinned, s.pinned_until, s.waiting_for_room),
        yes_no(s.archived),
        yes_no(s.encrypted),
        str(s.access_count),
    )


def _shard_table(shards: list[Any]) -> Table:
    table = Table(*SHARD_COLUMNS)
    for s in shards:
        table.add_row(*_shard_row(s))
    return table


def _pin_state(pinned: bool, until: float, waiting_for_room: bool = False) -> str:
    """ "no", "yes" (until unpinned), or "until <UTC minute>" for a pin with a TTL; then
    ", waiting for room" for a pinned shard left cold for want of room."""
    if not pinned:
        return "no"
    state = f"until {utc_minute(until)}" if until else "yes"
    return f"{state}, waiting for room" if waiting_for_room else state


def get(
    dataset: str,
    shard: str,
    given: Annotated[
        str | None, typer.Option("-o", "--output", help="file (default, or -: stdout)")
    ] = None,
    offset: int = 0,
    length: int | None = None,
) -> None:
    """Download a shard (or a byte range of it). Without -o (or with -o -) the bytes go
    to stdout as they are, --json or not (with -o FILE, --json prints what was written:
    on stderr when FILE is stdout by another name, -o /dev/stdout). Without -o, a stdout
    that is a terminal is refused before any call: a shard's bytes would garble it (-o -
    writes them there all the same). To a file, the shard is
    streamed into it (and written whole or not at all); to stdout (or a pipe or device)
    it is written a frame at a time as it arrives, so a stream cut off part way (or by a
    reader that stops taking bytes for a minute) leaves part of it written, and the
    command fails."""
    if given is None and sys.stdout.isatty():
        raise fail(
            errors.InvalidArgument(
                "stdout is a terminal: give -o FILE for the shard's bytes, redirect "
                "stdout, or -o - to print them to the terminal all the same"
            )
        )
    # "-" is the usual spelling of stdout (a file named "-": its full path).
    output = None if given in (None, "-") else checked_output_file(given)
    if output is None:
        # Handed on a frame at a time as it arrives: memory does not grow with the shard.
        pieces = run_or_fail(
            lambda: command_client().iter_bytes(dataset, shard, offset=offset, length=length)
        )

        def write_pieces() -> None:
            for piece in pieces:
                write_all(sys.stdout.buffer, memoryview(piece))

        run_or_fail(write_pieces)
        sys.stdout.buffer.flush()
        return
    # To a file: streamed into it, so memory does not grow with the shard.
    try:
        written = run_or_fail(
            lambda: command_client().download(dataset, shard, output, offset=offset, length=length)
        )
    except OSError as exc:
        raise write_failed(output, exc) from None
    if state.json:
        report = {"shard": shard, "bytes": written, "output": str(output)}
        emit_report(report, "", output)


def ls(
    dataset: str,
    prefix: Annotated[str, typer.Argument()] = "",
    limit: Annotated[
        int | None, typer.Option(help="list at most this many shards (at least 1)")
    ] = None,
    after: Annotated[
        str, typer.Option(help="list only names after this one (to page on from the last)")
    ] = "",
) -> None:
    """List a dataset's shards, in name order. Over 1,000 of them are printed as plain
    aligned columns, quicker to print than a table, a page at a time as they come
    (columns as wide as the first page's; with --json, one array all the same). A
    large dataset can also be listed a page at a time: --limit N, then --after the
    last name printed (a page that leaves shards out says so on stderr). With --limit,
    --json prints {"shards": [...], "next_after": the name to give --after for the
    next page, or null after the last page}."""
    if limit is not None and limit < 1:  # 0 listed nothing, as if the dataset were empty
        raise fail(errors.InvalidArgument(f"--limit must be at least 1, not {limit}"))
    # One more than asked for tells whether any follow.
    asked = None if limit is None else limit + 1
    listing = run_or_fail(
        lambda: command_client().iter_list(dataset, prefix, limit=asked, start_after=after)
    )
    shards = run_or_fail(lambda: list(itertools.islice(listing, PLAIN_LISTING_ROWS + 1)))
    if limit is None and len(shards) > PLAIN_LISTING_ROWS:
        # Printed as it comes: 70,000 shards waited 6.6 s and 182 MB for the first line.
        print_as_fetched(
            SHARD_COLUMNS, _shard_row, shards, listing, LISTING_PAGE, lambda info: info.name
        )
        return
    shards += run_or_fail(lambda: list(listing))
    next_after = None
    if limit is not None and len(shards) > limit:
        shards = shards[:limit]
        next_after = shards[-1].name
        err.print(
            f"more shards follow: --after {shlex.quote(next_after)}",
            highlight=False,
            markup=False,
            soft_wrap=True,
        )
    if limit is not None and state.json:  # a page: where the next one starts, too
        emit({"shards": shards, "next_after": next_after})
        return
    if len(shards) > PLAIN_LISTING_ROWS and not state.json:
        print_plain(SHARD_COLUMNS, [_shard_row(s) for s in shards])
        return
    emit(shards, _shard_table(shards))


def stat(dataset: str, shard: str) -> None:
    """Show what the server knows of a shard."""
    info = run_or_fail(lambda: command_client().stat(dataset, shard))
    table = _shard_table([info])
    if info.waiting_for_room:
        # It said only "hot no, pinned yes": not why, nor that it would stay so.
        table.caption = (
            "pinned, waiting for room: its dataset's quota or the hot tier (below its high "
            "watermark) is held by other pins or writes not archived yet; it turns hot once "
            "other pins end or the room grows (tierstore stats counts the pins waiting)"
        )
    emit(info, table)


def rm(dataset: str, shards: list[str]) -> None:
    """Delete shards, in the order given. Stops at the first one it cannot delete; the
    ones deleted before it are still reported on stdout (with --json too: "deleted" and
    "not_deleted", which --json always holds, empty when all went), the error on stderr.
    pin, unpin and evict do the same."""
    client = command_client()
    shards = list(dict.fromkeys(shards))  # each once: the second of two was ShardNotFound
    _shard_by_shard(shards, lambda shard: client.delete(dataset, shard), "deleted")
    emit(
        {"deleted": shards, "not_deleted": [], "in_doubt": None},
        f"deleted {plural(len(shards), 'shard')}",
    )


def _shard_by_shard(
    shards: list[str],
    action: Callable[[str], T],
    done: str,
    already: tuple[str, list[str]] | None = None,
    totals: Callable[[list[T]], dict[str, Any]] | None = None,
) -> list[T]:
    """``action`` on each shard in order; its results. At the first error, the shards it
    was ``done`` for are reported on stdout (with --json too: ``done`` and ``not_<done>``;
    under ``already``'s key those of its names that needed nothing; and ``totals`` of
    the results so far) and the command ends with the error's one line. Ctrl-C is
    reported so too, the shard whose call was on its way named as in doubt, and the
    command exits 130."""
    results: list[T] = []
    try:
        for shard in shards:
            results.append(action(shard))
    except errors.TierstoreError as exc:
        so_far = None if totals is None else totals(results)
        raise stopped_partway(exc, shards, len(results), done, already, so_far) from None
    except KeyboardInterrupt:
        so_far = None if totals is None else totals(results)
        in_doubt = shards[len(results)] if len(results) < len(shards) else None
        raise interrupted_partway(shards, len(results), done, in_doubt, already, so_far) from None
    return results


def pin(
    dataset: str,
    shards: list[str],
    ttl: Annotated[
        float | None, typer.Option(help="seconds until the pin runs out (default: never)")
    ] = None,
) -> None:
    """Keep shards in the hot tier, whatever the placement policy says. A cold one is
    queued for promotion; where the hot tier or the dataset's quota has no room (pinned
    shards are never evicted to make it), or the archive does not answer, it is tried
    again, up to a minute apart, and at once when the quota is raised: ls shows which
    are hot, stats the archive's error and the pins waiting for room. A warning says
    when the dataset's pins hold more than its quota, or the pins more than the hot
    tier takes below its high watermark: some will stay cold until others are
    unpinned. A cold shard larger than
    the hot tier takes (its high watermark) is refused (HotTierFull), and one larger than
    its dataset's hot-tier quota (QuotaExceeded): it could never be hot."""
    client = command_client()
    shards = list(dict.fromkeys(shards))  # each once, and its bytes queued counted once
    queued = sum(
        _shard_by_shard(
            shards,
            lambda s: client.pin(dataset, s, ttl_s=ttl),
            "pinned",
            totals=lambda queued_each: {"bytes_queued": sum(queued_each)},
        )
    )
    promoting = (
        f"; {queued:,} bytes of them were cold and are queued for promotion, tried again "
        "while there is no room or the archive does not answer (ls shows which are hot, "
        "stats the archive's error)"
        if queued
        else ""
    )
    report: dict[str, Any] = {
        "pinned": shards,
        "not_pinned": [],
        "in_doubt": None,
        "bytes_queued": queued,
    }
    warning = _pins_past_room(client, dataset, "some pins will stay cold until others are unpinned")
    emit_warned(report, f"pinned {plural(len(shards), 'shard')}{promoting}", warning)


def _pins_past_room(client: Any, dataset: str, later: str) -> str | None:
    """A warning when the pins hold more than the room they can have, so that ``later``
    (what follows: "some pins will stay cold ..."): ``dataset``'s pins more than its
    hot-tier quota, or the pins of the datasets the caller sees more than the hot tier
    takes below its high watermark. None otherwise, from a node that does not send the
    pinned figures, and when the figures cannot be had (the pins are made). Asks for
    what ``tierstore stats`` shows: a walk of those datasets' shard records."""
    try:
        figures = client.stats("")
        mine = figures["datasets"].get(dataset, {})
        if "pinned_bytes" not in mine or "high_watermark_bytes" not in figures:
            return None
        quota = client.get_dataset(dataset).hot_quota_bytes
    except errors.TierstoreError:
        return None
    pinned = mine["pinned_bytes"]
    if quota and pinned > quota:
        return (
            f"warning: {dataset}'s pins hold {pinned:,} bytes, more than its hot-tier quota "
            f"({quota:,} bytes): {later} (or the quota is raised)"
        )
    high = figures["high_watermark_bytes"]
    everyone = sum(d.get("pinned_bytes", 0) for d in figures["datasets"].values())
    if everyone > high:
        whose = f"{dataset}'s pins hold" if everyone == pinned else "the pins hold"
        return (
            f"warning: {whose} {everyone:,} bytes, more than the hot tier takes below its "
            f"high watermark ({high:,} bytes): {later}"
        )
    return None


def unpin(dataset: str, shards: list[str]) -> None:
    """Let the policy evict shards again. A shard that was not pinned (or whose pin ran
    out) is named as "already unpinned", not counted as unpinned; it is no error."""
    client = command_client()
    shards = list(dict.fromkeys(shards))  # each once, as rm, pin and evict
    already: list[str] = []

    def unpin_one(shard: str) -> None:
        # Asked first: the server's unpin does not say whether a pin held. Unpinned all
        # the same (a pin whose TTL ran out is cleared, and a pin made since ends).
        if not client.stat(dataset, shard).pinned:
            already.append(shard)
        client.unpin(dataset, shard)

    _shard_by_shard(shards, unpin_one, "unpinned", ("already_unpinned", already))
    needed_nothing = set(already)
    unpinned = [shard for shard in shards if shard not in needed_nothing]
    emit(
        {
            "unpinned": unpinned,
            "already_unpinned": already,
            "not_unpinned": [],
            "in_doubt": None,
        },
        Text(
            f"unpinned {plural(len(unpinned), 'shard')}" + already_text("already_unpinned", already)
        ),
    )


def prefetch(dataset: str, shards: list[str]) -> None:
    """Promote shards to the hot tier ahead of use. Shards already hot (or on their way)
    are not queued again; a shard that does not exist is named, and the command exits as
    for ShardNotFound once the others are queued, so a mistyped name does not pass for
    one already hot. A cold shard larger than the hot tier takes (its high watermark),
    or than its dataset's hot-tier quota, could never be hot: none is queued then, and
    the command exits as for HotTierFull (or QuotaExceeded), naming it."""
    client = command_client()
    refused: errors.HotTierFull | errors.QuotaExceeded | None = None

    def queue() -> int:
        nonlocal refused
        try:
            return int(client.prefetch(dataset, shards))
        except (errors.HotTierFull, errors.QuotaExceeded) as exc:
            refused = exc  # said last, once the report (and the names unknown) is out
            return 0

    queued = run_or_fail(queue)
    missing = []
    if queued < len(set(shards)):  # some were hot, or unknown: only then the stats
        missing = [shard for shard in dict.fromkeys(shards) if not _exists(client, dataset, shard)]
    lines = [f"queued {plural(queued, 'shard')}", *(f"not found: {shard}" for shard in missing)]
    # A review's prefetch said "queued" on a tier full of pins, and its shard stayed
    # cold, only stats saying why ("promotions skipped for want of room").
    warning = (
        _pins_past_room(
            client,
            dataset,
            "shards queued may find no room and stay cold (stats counts the promotions "
            "skipped for want of room)",
        )
        if queued
        else None
    )
    emit_warned({"queued": queued, "not_found": missing}, "\n".join(lines), warning)
    if refused is not None:
        raise fail(refused)
    if missing:
        raise fail(
            errors.ShardNotFound(
                f"no shard {', '.join(map(repr, missing))} in dataset {dataset!r}"
                + _the_others(len(missing), len(set(shards)))
            )
        )


def _the_others(missing: int, named: int) -> str:
    """How many of the ``named`` shards are ``missing``, when others were named too."""
    if missing == named:
        return ""
    return f" ({missing} of the {named} named; the others were queued or are hot)"


def _exists(client: Any, dataset: str, shard: str) -> bool:
    try:
        client.stat(dataset, shard)
    except errors.ShardNotFound:
        return False
    except errors.TierstoreError as exc:
        raise fail(exc) from None
    return True


def evict(dataset: str, shards: list[str]) -> None:
    """Drop shards from the hot tier (only ones the archive holds, and not pinned). A hot
    shard that stays is reported with the reason ("kept"), and one that was cold already
    as such ("already cold"), so nothing looks evicted that is not."""
    client = command_client()
    shards = list(dict.fromkeys(shards))  # each once: a second evict frees nothing
    freed_each: list[int] = []
    failure: errors.TierstoreError | None = None
    stopped = False  # by Ctrl-C
    try:
        for shard in shards:
            freed_each.append(client.evict(dataset, shard))
    except errors.TierstoreError as exc:
        failure = exc  # the ones before it are reported, kept ones with why
    except KeyboardInterrupt:
        stopped = True
    done = shards[: len(freed_each)]
    kept: dict[str, str] = {}
    already_cold: list[str] = []
    # After an error that stopped it, the first failed stat ends the asking; after
    # Ctrl-C none is asked.
    unknown = _not_asked() if stopped else ""
    for shard, freed in zip(done, freed_each, strict=True):
        if freed:
            continue
        try:
            why = unknown or _why_still_hot(client, dataset, shard)
        except KeyboardInterrupt:
            stopped = True
            why = unknown = _not_asked()
        except errors.TierstoreError as exc:
            if failure is None:
                raise fail(exc) from None
            why = unknown = f"not known ({type(exc).__name__} asking)"
        if why == _EMPTY_AND_COLD:
            continue  # evicted or not, it held nothing: evicted, as it is cold now
        if why == _COLD:
            already_cold.append(shard)  # it held bytes, and the evict freed none
        else:
            kept[shard] = why
    freed = sum(freed_each)
    cold = set(already_cold)  # a list's `in` made this quadratic: 16 s for 40,000 shards
    evicted = [shard for shard in done if shard not in kept and shard not in cold]
    report: dict[str, Any] = {
        "evicted": evicted,
        "already_cold": already_cold,
        "not_evicted": shards[len(done) :],
        "in_doubt": None,
        "freed_bytes": freed,
        "kept": kept,
    }
    notes = [f"kept {shard}: {why}" for shard, why in kept.items()]
    if already_cold:
        notes.append(f"already cold: {', '.join(already_cold)}")
    named = f": {', '.join(evicted)}" if evicted else ""
    if stopped:  # as interrupted_partway reports the others'
        in_flight = shards[len(done)] if len(done) < len(shards) else None
        head = f"evicted {len(evicted)} of {len(shards)} shards before {stopped_by()}{named}"
        emit({**report, "in_doubt": in_flight}, Text("\n".join([head, *notes])))
        raise interrupted(in_flight, "evicted")
    if failure is None:
        emit(report, Text("\n".join([f"freed {freed:,} bytes", *notes])))
        return
    if done or state.json:
        # As the others' reports of an error say (stopped_partway): the shard whose call
        # was cut off before the server answered, so may have been evicted all the same.
        cut_off = failure.outcome_unknown and len(done) < len(shards)
        report["in_doubt"] = shards[len(done)] if cut_off else None
        head = f"evicted {len(evicted)} of {len(shards)} shards before an error{named}"
        emit(report, Text("\n".join([head, *notes])))
    raise fail(failure)


#: what :func:`_why_still_hot` says of a cold shard, and of a cold empty one
_COLD, _EMPTY_AND_COLD = "", "empty"


def _not_asked() -> str:
    """Why a shard whose evict freed nothing stayed, once Ctrl-C stopped the asking."""
    return f"not known (stopped by {stopped_by()} before asking)"


def _why_still_hot(client: Any, dataset: str, shard: str) -> str:
    """Why an evict freed nothing of ``shard``: :data:`_COLD` when it is cold (it was
    already), :data:`_EMPTY_AND_COLD` when it is cold and empty (an evict frees nothing
    of it either way). Raises what the stat raises."""
    info = client.stat(dataset, shard)
    if not info.hot:
        return _EMPTY_AND_COLD if info.size == 0 else _COLD
    if info.pinned:
        return "pinned (unpin it first)"
    if not info.archived:
        return "not archived yet: the hot copy is the only one"
    return "hot again (read or promoted since)"
