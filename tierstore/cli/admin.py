"""Administering a node: ``stats``, ``trace export``, ``token`` and ``keys``."""

from __future__ import annotations

import gzip
import io
import itertools
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Annotated, Any, TextIO

import typer
from rich.console import Group
from rich.table import Table

from tierstore import errors
from tierstore.cli.app import command_client
from tierstore.cli.output import (
    checked_output_file,
    emit,
    emit_report,
    emit_warned,
    err,
    fail,
    hit_ratio_text,
    plural,
    run_or_fail,
    utc_minute,
    write_failed,
    yes_no,
)
from tierstore.cli.state import state
from tierstore.client.download import open_in_place, output_target, partial_file
from tierstore.client.placementcalls import ARCHIVE_DATASET_FIGURES
from tierstore.naming import validate_dataset_name
from tierstore.types import ALL_DATASETS, Grant, Role

__all__ = [
    "keys_ls",
    "keys_retire",
    "keys_rotate",
    "stats",
    "token_create",
    "token_ls",
    "token_revoke",
    "trace_export",
]


def stats(dataset: Annotated[str | None, typer.Argument()] = None) -> None:
    """Show what each tier holds, per dataset, and how well the hot tier serves reads.
    The hot tier's usage; per dataset its shards and bytes, the hot and archived ones,
    the backlog, its policy and live hit ratio; and the sizing curve: the miss ratio
    recent reads would have had at other hot-tier sizes, from an empty hot tier (a
    shard's first read is a miss there, though a put leaves the shard hot: at 1x the
    curve can read worse than the live ratio)."""
    if dataset is not None:  # "" too ("$DATASET" unset): not every dataset's instead
        run_or_fail(lambda: validate_dataset_name(dataset))
    figures = run_or_fail(lambda: command_client().stats(dataset or "", sizing=True))
    table = Table(
        "dataset",
        "policy",
        "shards",
        "bytes",
        "hot shards",
        "hot bytes",
        "archived shards",
        "archived bytes",
        "backlog shards",
        "backlog bytes",
        "pinned",
        "hits",
        "misses",
        "hit ratio",
    )
    for name, d in figures["datasets"].items():
        table.add_row(
            name,
            d["policy"],
            str(d["shards"]),
            f"{d['bytes']:,}",
            str(d["hot_shards"]),
            f"{d['hot_bytes']:,}",
            *(_figure_text(d, name) for name in ARCHIVE_DATASET_FIGURES),
            _pinned_text(d),
            str(d["hits"]),
            str(d["misses"]),
            hit_ratio_text(d),
        )
    failing = figures.get("archive_error")
    table.caption = (
        f"{_hot_tier_text(figures)}; {_movement_text(figures)}{_pins_waiting_text(figures)}"
        f"{figures['backlog_bytes']:,} bytes waiting for the archive; "
        f"{_journal_text(figures['journal_entries'], figures['oldest_journal_age_s'])}"
        + (f"; the archive is failing: {failing}" if failing else "")
    )
    capacity = figures["hot_capacity_bytes"]
    sizing = Table("hot-tier size", "of capacity", "miss ratio (LRU)")
    traced = figures["traced_reads"]
    for point in figures["sizing"] if traced else []:  # no reads: no curve, not 100% misses
        share = point["capacity_bytes"] / capacity if capacity else 0.0
        sizing.add_row(f"{point['capacity_bytes']:,}", f"{share:g}x", f"{point['miss_ratio']:.1%}")
    sizing.caption = (
        # Reads alone, from an empty tier: each shard's first read counts as a miss,
        # though a put left it hot (the live hit ratio counts that read as a hit).
        f"sizing curve over the last {traced:,} traced reads, from an empty hot tier "
        "(first reads miss)"
        if traced
        else "sizing curve: no traced reads yet"
    )
    shown: list[Any] = [table, sizing]
    if figures["data_loss"]:
        omitted = figures.get("data_loss_omitted", 0)
        more = f"{omitted:,} more not shown; " if omitted else ""
        lost = Table("shard: why", title=f"data loss reported ({more}the node's log has more)")
        for entry in figures["data_loss"]:
            lost.add_row(entry)
        shown.append(lost)
    emit(_stats_for_scripts(figures), Group(*shown))


def _stats_for_scripts(figures: dict[str, Any]) -> dict[str, Any]:
    """``figures`` as --json prints them: no traced reads give no sizing curve, not
    100 % misses. (A dataset not yet read has a null hit ratio, from the client.)"""
    sizing = figures["sizing"] if figures["traced_reads"] else []
    return {**figures, "sizing": sizing}


def _hot_tier_text(figures: dict[str, Any]) -> str:
    """The hot tier's fill against its capacity and watermarks (from a node that sends
    them), and whether it is past its capacity."""
    hot, capacity = figures["hot_bytes"], figures["hot_capacity_bytes"]
    text = f"hot tier {hot:,} of {capacity:,} bytes"
    if "high_watermark_bytes" in figures:  # not from a node older than them
        high, low = figures["high_watermark_bytes"], figures["low_watermark_bytes"]
        text += f" (eviction from {high:,} down to {low:,})"
    if capacity and hot > capacity:
        # Only archived shards are evicted: un-archived writes (an archive down) and
        # pins can hold it past its capacity, towards the disk's end.
        text += f", OVER CAPACITY by {hot - capacity:,} (un-archived writes or pins)"
    return text


def _movement_text(figures: dict[str, Any]) -> str:
    """Promotions, skipped ones and evictions since the node started, then "; " (none
    from a node that does not send them)."""
    if "promotions" not in figures:
        return ""
    skipped = figures["promotions_skipped"]
    text = f"since start {figures['promotions']:,} promoted, {figures['evictions']:,} evicted"
    if skipped:
        # A prefetch or pin that said "queued" and never turned hot: this is why.
        text += f", {skipped:,} promotions skipped for want of room (watermark or quota)"
    return text + "; "


def _figure_text(dataset: dict[str, Any], name: str) -> str:
    """A dataset's figure ``name`` (bytes with thousands separators); "-" when its node
    did not send it (a node older than the figure)."""
    if name not in dataset:
        return "-"
    return f"{dataset[name]:,}" if name.endswith("_bytes") else str(dataset[name])


def _pinned_text(dataset: dict[str, Any]) -> str:
    """A dataset's pinned shards, and how many of them are cold ("-" from a node that
    does not send them)."""
    if "pinned_shards" not in dataset:
        return "-"
    cold = dataset["pinned_cold_shards"]
    text = str(dataset["pinned_shards"])
    return f"{text} ({cold} cold, {dataset['pinned_cold_bytes']:,} bytes)" if cold else text


def _pins_waiting_text(figures: dict[str, Any]) -> str:
    """The pinned shards the node left cold for want of room, then "; " (nothing when
    none, or from a node that does not send them)."""
    waiting = figures.get("pins_waiting_for_room", 0)
    if not waiting:
        return ""
    return (
        f"{plural(waiting, 'pinned shard')} ({figures['pins_waiting_for_room_bytes']:,} bytes) "
        "cold for want of room (the quota or the high watermark, held by other pins or "
        "un-archived writes): hot once other pins end or the room grows; "
    )


def _journal_text(entries: int, oldest_age_s: float) -> str:
    """The journal's size for an operator, and how long its oldest entry has waited:
    deletes and reseals carry no bytes, so a journal of them shows only here."""
    if entries == 0:
        return "journal empty"
    return (
        f"{entries:,} journal {'entry' if entries == 1 else 'entries'} pending, "
        f"the oldest for {oldest_age_s:,.0f} s"
    )


# traces


def trace_export(
    given: Annotated[
        str, typer.Option("-o", "--output", help="trace file (.gz: gzipped; -: stdout)")
    ],
    dataset: Annotated[str | None, typer.Option(help="only this dataset's events")] = None,
) -> None:
    """Save the node's recent reads and plan events as a trace file for the simulator
    (admin on every dataset). The file is private (mode 0600): it names every dataset
    and shard read. With -o - the trace goes to stdout and the summary to stderr. No
    events to export is not an error, but a warning says so: simulate has nothing to
    replay then."""
    from tierstore.sim.tracefile import TraceWriter
    from tierstore.types import TracedClose, TracedPlan, TracedPosition, TracedRead

    # "-" is stdout, as usual (a file named "-" is given by its full path).
    to_stdout = given == "-"
    output = Path(given) if to_stdout else checked_output_file(given)
    target, through_partial = output_target(output)
    counts: Counter[str] = Counter()

    def write(stream: TextIO) -> None:
        events = iter(command_client().export_trace(dataset))
        # The call's refusal (no such dataset) comes with its first event: before the
        # trace's first line, which a pipe would have read as a trace cut short.
        first = next(events, None)
        writer = TraceWriter(stream)
        for event in itertools.chain(() if first is None else (first,), events):
            if isinstance(event, TracedRead):
                writer.read(
                    event.t, event.dataset, event.shard, event.size, reported=event.reported
                )
            elif isinstance(event, TracedPlan):
                writer.plan(event.t, event.job, event.dataset, event.shards, event.sizes)
            elif isinstance(event, TracedPosition):
                writer.position(event.t, event.job, event.position)
            elif isinstance(event, TracedClose):
                writer.close(event.t, event.job)
            counts[type(event).__name__.removeprefix("Traced").lower()] += 1

    def export() -> None:
        if not through_partial:  # a device, a pipe or one of our descriptors
            with open_in_place(target) as file, io.TextIOWrapper(file, encoding="utf-8") as stream:
                write(stream)
            return
        # Private (0600), and renamed over the target only when complete.
        with partial_file(target, private=True) as private:
            if output.suffix == ".gz":
                with gzip.open(private, "wt") as stream:
                    write(stream)
            else:
                with io.TextIOWrapper(private, encoding="utf-8") as stream:
                    write(stream)

    def to_stream() -> None:
        write(sys.stdout)
        sys.stdout.flush()

    try:
        run_or_fail(to_stream if to_stdout else export)
    except BrokenPipeError:
        raise  # its reader went away (`| head`): click ends quietly, with status 1
    except OSError as exc:
        raise write_failed(Path("stdout") if to_stdout else output, exc) from None
    total = sum(counts.values())
    kinds = ("read", "plan", "position", "close")  # every kind, 0 too: a script reads them
    summary = {"output": "-" if to_stdout else str(output), "events": total}
    summary.update({kind: counts[kind] for kind in kinds})
    where = "stdout" if to_stdout else str(output)
    line = f"wrote {plural(total, 'event')} ({plural(counts['read'], 'read')}) to {where}"
    emit_report(summary, line, None if to_stdout else output)
    if not total:  # not an error (an idle node), but no trace simulate can replay
        of = f" of {dataset}" if dataset is not None else ""
        err.print(
            f"warning: the node had no events{of} to export (none traced since it started, "
            "or its trace_capacity is 0): the trace holds its header alone, and simulate "
            "has nothing to replay",
            highlight=False,
            markup=False,
            soft_wrap=True,
        )


# tokens and keys


def token_create(
    principal: str,
    grant: Annotated[
        list[str], typer.Option(help="DATASET=ROLE (role: reader, writer, admin; DATASET may be *)")
    ],
    ttl: Annotated[
        float, typer.Option(help="seconds until it expires: 1 to ten years (0: never)")
    ] = 0,
) -> None:
    """Issue a token; it is printed once."""
    grants = []
    for item in grant:
        dataset, _, role = item.partition("=")
        try:
            grants.append(Grant(dataset, Role(role)))
        except ValueError:
            raise fail(
                errors.InvalidArgument(f"grant {item!r} is not DATASET=reader|writer|admin")
            ) from None
    client = command_client()
    namesakes = _live_tokens_of(client, principal)  # before: the new one is not among them
    token_id, token = run_or_fail(lambda: client.create_token(principal, grants, ttl_s=ttl))
    warnings = _weaker_than_every_dataset(grants)
    if namesakes:
        # Audit lines and shared access plans go by the principal's name.
        warnings.append(
            f"warning: {len(namesakes)} live token(s) already name principal {principal!r} "
            f"({', '.join(namesakes)}): the audit log and the access plans cannot tell "
            "them apart; give each team or job a name of its own"
        )
    emit_warned(
        {
            "token_id": token_id,
            "token": token,
            "principal": principal,
            "grants": [{"dataset": g.dataset, "role": g.role.value} for g in grants],
        },
        f"token {token_id} for {principal}:\n{token}",
        "\n".join(warnings) or None,
    )


def _weaker_than_every_dataset(grants: list[Grant]) -> list[str]:
    """Warnings for grants on one dataset that the grant on "*" already gives: a token's
    roles add up, the strongest applying, so ``ds=reader`` beside ``*=writer`` still
    writes to ds (a review took it for a read-only exception)."""
    everywhere = max((g.role.rank for g in grants if g.dataset == ALL_DATASETS), default=0)
    return [
        f"warning: the grant {g.dataset}={g.role.value} adds nothing: the grant on '*' "
        "gives as much there (a token's roles add up, the strongest applying)"
        for g in grants
        if g.dataset != ALL_DATASETS and g.role.rank <= everywhere
    ]


def _live_tokens_of(client: Any, principal: str) -> list[str]:
    """The ids of live tokens that name ``principal`` (none if they cannot be listed:
    the create says what is wrong)."""
    try:
        tokens = client.list_tokens()
    except (errors.TierstoreError, OSError):
        return []
    now = time.time()
    return [t["token_id"] for t in tokens if t["principal"] == principal and _live(t, now)]


def token_revoke(
    token_id: str,
    force: Annotated[
        bool, typer.Option(help="revoke it even if it is the last live admin token")
    ] = False,
) -> None:
    """Revoke a token for good. The last live admin token is revoked only with --force
    (admin calls then fail until the node restarts and writes a new admin.token): the
    node refuses it otherwise, whichever client asks, and so does this command (a node
    older than that guard would not). A token revoked already is left
    as it is, and said to be (no error)."""
    client = command_client()
    try:
        tokens = client.list_tokens()
    except errors.PermissionDenied:  # the revoke is refused too, and names itself
        tokens = []
    except errors.TierstoreError as exc:
        raise fail(exc) from None
    last_admin = _live_admin_tokens(tokens) == [token_id]
    if last_admin and not force:  # the node refuses it too; one older than the guard does not
        raise fail(
            errors.FailedPrecondition(
                f"{token_id} is the last live admin token: revoked, every admin call fails "
                "until the node restarts and writes a new admin.token in its data "
                "directory. Create another admin token first (token create NAME --grant "
                "'*=admin'), or give --force"
            )
        )
    already = any(t["token_id"] == token_id and t["revoked"] for t in tokens)
    own = client.token_id == token_id
    run_or_fail(lambda: client.revoke_token(token_id, force=force))
    emit(
        {
            "revoked": token_id,
            "already_revoked": already,
            "last_admin": last_admin,
            "own_token": own,
        },
        f"{token_id} was revoked already" if already else f"revoked {token_id}",
    )
    if own and not already:
        err.print(
            "warning: that was the token this command ran with: the next command with it "
            "is refused (Unauthenticated)",
            highlight=False,
            soft_wrap=True,
        )
    if last_admin:
        err.print(
            "warning: that was the last live admin token: admin calls fail until the node "
            "restarts, which writes a new admin.token in its data directory",
            highlight=False,
            soft_wrap=True,
        )


def _live_admin_tokens(tokens: list[dict[str, Any]]) -> list[str]:
    """The ids of tokens that hold the admin role on every dataset and still work."""
    now = time.time()
    admin = Grant(ALL_DATASETS, Role.ADMIN)
    return [t["token_id"] for t in tokens if admin in t["grants"] and _live(t, now)]


def _live(token: dict[str, Any], now: float) -> bool:
    """Whether a listed token still works at ``now``: not revoked, not expired."""
    return not token["revoked"] and not (token["expires_at"] and token["expires_at"] <= now)


def token_ls() -> None:
    """List tokens (never the tokens themselves)."""
    tokens = run_or_fail(lambda: command_client().list_tokens())
    now = time.time()
    for t in tokens:  # NaN compares false: not marked
        t["expired"] = bool(t["expires_at"] and t["expires_at"] <= now)
    if state.json:
        emit(tokens)
        return
    table = Table("id", "principal", "grants", "expires", "revoked")
    for t in tokens:
        # None left: each went with its dataset (a token is never made without one).
        grants = ", ".join(f"{g.dataset}={g.role.value}" for g in t["grants"]) or "none left"
        expires = utc_minute(t["expires_at"]) if t["expires_at"] else "never"
        if t["expired"]:
            expires += " (expired)"
        table.add_row(t["token_id"], t["principal"], grants, expires, yes_no(t["revoked"]))
    emit(tokens, table)


def keys_ls() -> None:
    """List the master key ids the node holds and those its shards' data keys use.
    It shows which is current, and how many shards each wraps (never the keys)."""
    keys = run_or_fail(lambda: command_client().list_keys())
    table = Table("key id", "current", "held", "shards")
    for k in keys:
        table.add_row(k["key_id"], yes_no(k["current"]), yes_no(k["held"]), f"{k['shards']:,}")
    if any(not k["held"] for k in keys):
        table.caption = (
            "shards under a key the node does not hold cannot be read: give the key back "
            "(in the key file; a retired key is in <key file>.retired)"
        )
    emit(keys, table)


def keys_rotate() -> None:
    """Make a new master key current and rewrap every data key (frames are not rewritten)."""
    rewrapped, key_id = run_or_fail(lambda: command_client().rotate_keys())
    emit(
        {"rewrapped": rewrapped, "key_id": key_id},
        f"master key {key_id}; {rewrapped} data keys rewrapped",
    )


def keys_retire(key_id: str) -> None:
    """Drop an old master key from the node's key file, once nothing needs it. That is
    after a rotation, when the mover has resealed the archive under the new key.
    Refused, with nothing changed, before that, and for the current key. The key is
    kept aside in <key file>.retired (nodes sharing the file may need it)."""
    left, current = run_or_fail(lambda: command_client().retire_key(key_id))
    emit(
        {"retired": key_id, "key_ids": left, "current": current},
        f"retired master key {key_id}; the key file holds {', '.join(left)} "
        f"(current: {current}). The node keeps {key_id} beside its key file, in the "
        "key file's name plus .retired (by default <data dir>/master.keys.retired), for "
        "nodes that share the key file: delete it once none does",
    )
