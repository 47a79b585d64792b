"""``tierstore dataset`` and ``tierstore policy``: datasets, their settings and their
placement policy."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import pyarrow as pa
import typer
from rich.table import Table

from tierstore import errors
from tierstore.arrowio import open_ipc_file, schema_of_message
from tierstore.cli.app import command_client
from tierstore.cli.output import (
    emit,
    emit_warned,
    fail,
    hit_ratio_text,
    jsonable,
    run_or_fail,
    yes_no,
)
from tierstore.client.admincalls import create_or_take, dataset_settings_asked
from tierstore.naming import validate_dataset_name
from tierstore.types import DatasetSettings, Durability, check_backlog_quota, check_hot_quota

__all__ = [
    "dataset_create",
    "dataset_ls",
    "dataset_rm",
    "dataset_update",
    "policy_set",
    "policy_show",
]


_HOT_QUOTA_HELP = (
    "most bytes of the dataset in the hot tier (0: no quota; at most 2**64-1); room is made "
    "by evicting its own archived shards"
)


_BACKLOG_QUOTA_HELP = (
    "most stored bytes of the dataset waiting for the archive at once, its share of the "
    "node's backlog cap (0: only that cap; at most 2**64-1); past it its puts fail "
    "RESOURCE_EXHAUSTED until the mover catches up"
)


def _check_quotas(hot_quota: int | None, backlog_quota: int | None) -> None:
    """Refuse (exit 2, one line, naming the option) a ``--hot-quota`` or
    ``--backlog-quota`` the wire cannot carry, before any call."""
    given = (
        ("--hot-quota", hot_quota, check_hot_quota),
        ("--backlog-quota", backlog_quota, check_backlog_quota),
    )
    for option, quota, check in given:
        if quota is None:
            continue
        try:
            check(quota)
        except errors.InvalidArgument:
            raise fail(
                errors.InvalidArgument(f"{option} must be from 0 to 2**64-1 bytes, not {quota}")
            ) from None


def dataset_create(
    name: str,
    encrypted: Annotated[
        bool,
        typer.Option(
            help="encrypt at rest in both tiers (--no-encrypted: plaintext, faster reads)"
        ),
    ] = True,
    durability: Annotated[str, typer.Option(help="write-back | write-through")] = "write-back",
    policy: Annotated[
        str | None, typer.Option(help="placement policy (default: the server's)")
    ] = None,
    hot_quota: Annotated[int, typer.Option(help=_HOT_QUOTA_HELP)] = 0,
    backlog_quota: Annotated[int, typer.Option(help=_BACKLOG_QUOTA_HELP)] = 0,
    schema: Annotated[
        str | None,  # (a Path would make "" the current directory)
        typer.Option(
            metavar="PATH",
            help="an Arrow IPC file or stream, or a Parquet file (.parquet), whose schema "
            "every shard must have (fixed at creation)",
        ),
    ] = None,
    exist_ok: Annotated[
        bool,
        typer.Option(
            "--exist-ok",
            help="succeed if the dataset exists already with these very settings "
            "(a setup run again); one of other settings is still refused",
        ),
    ] = False,
) -> None:
    """Create a dataset: encrypted at rest unless --no-encrypted is given (fixed at
    creation). With --schema, every shard put into it must have that file's Arrow
    schema (metadata aside); raw bytes are refused there. With --exist-ok, one that
    exists as asked is taken (exit 0, "created": false with --json); one of other
    settings is refused (exit 2), naming those that differ."""
    _check_quotas(hot_quota, backlog_quota)
    if policy == "":  # "$POLICY" of an unset variable: not the server's default instead
        raise fail(
            errors.InvalidArgument(
                "--policy is empty: give a policy's name, or leave --policy out for the "
                "server's default"
            )
        )
    options: dict[str, Any] = {
        "encrypted": encrypted,
        "durability": durability,
        "hot_quota_bytes": hot_quota,
        "backlog_quota_bytes": backlog_quota,
    }
    if policy is not None:
        options["policy"] = policy
    if schema == "":  # an unset variable, say
        raise fail(
            errors.InvalidArgument(
                "--schema is empty: give an Arrow or Parquet file, or leave --schema out"
            )
        )
    if schema is not None:
        options["schema"] = run_or_fail(lambda: _schema_of_file(Path(schema)))
    if not exist_ok:
        settings = run_or_fail(lambda: command_client().create_dataset(name, **options))
        emit({"name": name, **_shown(settings)}, f"created dataset {name}")
        return
    settings, created = run_or_fail(lambda: _create_or_take(name, options))
    emit(
        {"name": name, **_shown(settings), "created": created},
        f"created dataset {name}" if created else f"dataset {name} exists already, as asked",
    )


def _create_or_take(name: str, options: dict[str, Any]) -> tuple[DatasetSettings, bool]:
    """Dataset ``name`` made with ``options``, or as it is if it exists with just those
    settings (AlreadyExists otherwise); whether it was made."""
    client = command_client()
    return create_or_take(
        name,
        dataset_settings_asked(**options),
        lambda: client.create_dataset(name, **options),
        lambda: client.get_dataset(name),
        "--exist-ok",
    )


def _schema_of_file(path: Path) -> pa.Schema:
    """The schema of the Arrow IPC file or stream, or Parquet file (``.parquet``), at
    ``path``. Raises MalformedArrow for a file that is none of them, OSError."""
    try:
        if path.suffix.lower() == ".parquet":
            import pyarrow.parquet as pq

            try:
                return pq.read_schema(path)
            except pa.ArrowException as exc:
                raise errors.MalformedArrow(f"{path} is not a Parquet file: {exc}") from None
        with open_ipc_file(path) as reader:
            return reader.schema
    except OSError as exc:
        raise errors.InvalidArgument(
            f"--schema {path}: cannot read it ({exc.strerror or exc})"
        ) from None


def _shown(settings: DatasetSettings) -> dict[str, Any]:
    """A dataset's settings as ``--json`` shows them: its schema as its columns
    ("name: type"), or null."""
    shown = jsonable(settings)
    del shown["arrow_schema"]
    columns = None
    if settings.arrow_schema:
        schema = schema_of_message(settings.arrow_schema)
        columns = [
            f"{field.name}: {field.type}{'' if field.nullable else ' not null'}" for field in schema
        ]
    return {**shown, "schema": columns}


def dataset_update(
    name: str,
    durability: Annotated[str | None, typer.Option(help="write-back | write-through")] = None,
    hot_quota: Annotated[int | None, typer.Option(help=_HOT_QUOTA_HELP)] = None,
    backlog_quota: Annotated[int | None, typer.Option(help=_BACKLOG_QUOTA_HELP)] = None,
) -> None:
    """Change a dataset's durability, hot-tier quota or backlog quota (admin on the
    dataset). A lower backlog quota refuses the dataset's puts until the mover has
    uploaded its backlog below it. A lower hot quota evicts the dataset's archived,
    unpinned shards down to it, and says how many hot bytes (pinned, or not archived
    yet) stay above it; a warning says when its largest shard stores more than the
    quota: that shard stays cold for good."""
    if durability is None and hot_quota is None and backlog_quota is None:
        raise fail(
            errors.InvalidArgument(
                "nothing to update: give --durability, --hot-quota and/or --backlog-quota"
            )
        )
    _check_quotas(hot_quota, backlog_quota)
    client = command_client()
    settings = run_or_fail(
        lambda: client.update_dataset(
            name,
            durability=durability,
            hot_quota_bytes=hot_quota,
            backlog_quota_bytes=backlog_quota,
        )
    )
    shown = {"name": name, **_shown(settings)}
    figures = _dataset_figures(client, name) if hot_quota or durability else {}
    hot = int(figures.get("hot_bytes", 0))
    note = _backlog_note(settings, figures) if durability else ""
    if note:  # with --json too: the text alone said how many still wait
        shown["backlog_shards"] = int(figures["backlog_shards"])
        shown["backlog_bytes"] = int(figures.get("backlog_bytes", 0))
    if hot_quota and hot > hot_quota:
        # Both: it said the whole of the hot bytes were above the quota.
        shown["hot_bytes"] = hot
        shown["above_quota_bytes"] = hot - hot_quota
        note += (
            f"; {hot:,} bytes of it are still hot, {hot - hot_quota:,} of them above the "
            "quota: pinned shards stay (unpin them to let them go), and shards not "
            "archived yet go as the mover uploads them"
        )
    largest = int(figures.get("largest_shard_bytes", 0))
    warning = None
    if hot_quota and largest > hot_quota:
        # Warned of, not refused: lowering a quota is the admin's call, and the shards
        # stay readable from the archive (docs/service.md, hot-tier quotas).
        warning = (
            f"warning: the largest shard of {name} stores {largest:,} bytes, more than the "
            f"quota ({hot_quota:,} bytes): it, and any shard as large, stays cold for good "
            "(read from the archive), and its puts, pins and prefetches are refused "
            "(QuotaExceeded) until the quota is raised past it"
        )
    capacity = int(figures.get("hot_capacity_bytes", 0))
    if warning is None and hot_quota and capacity and hot_quota >= capacity:
        warning = (
            f"warning: the quota ({hot_quota:,} bytes) is not below the hot tier's "
            f"capacity ({capacity:,} bytes): it never binds, and keeps no room for {name} "
            "either (a quota is a ceiling: the hot tier evicts any dataset's shards once "
            "it passes its high watermark)"
        )
    emit_warned(shown, f"updated dataset {name}{note}", warning)


def _backlog_note(settings: DatasetSettings, figures: dict[str, Any]) -> str:
    """What a durability just set leaves as it was: the dataset's shards still waiting
    for the archive ("" when none do, or its figures are not known)."""
    shards, size = int(figures.get("backlog_shards", 0)), int(figures.get("backlog_bytes", 0))
    if not shards:
        return ""
    if settings.durability is Durability.WRITE_THROUGH:
        return (
            f"; {shards:,} shards ({size:,} bytes) put before wait for the archive still: "
            "write-through holds for puts from now on, and a later put's success says "
            "nothing of them (tierstore stats shows the backlog drain)"
        )
    return (
        f"; {shards:,} shards ({size:,} bytes) wait for the archive, and write-through "
        "puts already under way still wait for it"
    )


def _dataset_figures(client: Any, name: str) -> dict[str, Any]:
    """The dataset's figures as ``tierstore stats`` shows them (a walk of its shard
    records), with the hot tier's ``hot_capacity_bytes``, for what a quota just set
    leaves. Only a hint for the caller: a stats call that fails (no read grant) gives
    none."""
    try:
        stats = client.stats(name)
        figures = stats["datasets"].get(name)
    except (errors.TierstoreError, OSError):
        return {}
    if not figures:
        return {}
    return {**figures, "hot_capacity_bytes": stats.get("hot_capacity_bytes", 0)}


def dataset_ls() -> None:
    """List the datasets you may see."""
    datasets = run_or_fail(lambda: command_client().list_datasets())
    table = Table(
        "name", "encrypted", "durability", "hot quota", "backlog quota", "policy", "schema"
    )
    shown = [{"name": n, **_shown(s)} for n, s in datasets]
    for (name, settings), dataset in zip(datasets, shown, strict=True):
        columns = dataset["schema"]
        table.add_row(
            name,
            yes_no(settings.encrypted),
            settings.durability.value,
            _quota_shown(settings.hot_quota_bytes),
            _quota_shown(settings.backlog_quota_bytes),
            settings.policy,
            f"{len(columns)} columns" if columns is not None else "any",
        )
    emit(shown, table)


def _quota_shown(quota: int) -> str:
    return f"{quota:,}" if quota else "none"


# placement policies


def policy_set(dataset: str, name: str) -> None:
    """Switch a dataset to another placement policy, at once (admin on the dataset)."""
    settings = run_or_fail(lambda: command_client().set_policy(dataset, name))
    emit({"dataset": dataset, "policy": settings.policy}, f"{dataset}: policy {settings.policy}")


def policy_show(dataset: str) -> None:
    """Show a dataset's placement policy and its hit ratio since the server started."""
    run_or_fail(lambda: validate_dataset_name(dataset))  # "" would be every dataset's stats
    figures = run_or_fail(lambda: command_client().stats(dataset))["datasets"][dataset]
    shown = {
        "dataset": dataset,
        "policy": figures["policy"],
        "hits": figures["hits"],
        "misses": figures["misses"],
        "hit_ratio": figures["hit_ratio"],
    }
    emit(
        shown,
        f"{dataset}: policy {figures['policy']}, hit ratio {hit_ratio_text(figures)} "
        f"({figures['hits']} hits, {figures['misses']} misses)",
    )


def dataset_rm(
    name: str, force: Annotated[bool, typer.Option(help="also delete its shards")] = False
) -> None:
    """Delete a dataset. Every token's grant on it goes too (a dataset made again under
    the name is not theirs); grants on "*" stay."""
    removed = run_or_fail(lambda: command_client().delete_dataset(name, force=force))
    # Revoked and run-out tokens lose theirs too (the node's log names every token),
    # but only live ones could still use theirs.
    note = f"; grants on it removed from {removed} live token(s)" if removed else ""
    emit({"deleted": name, "grants_removed": removed}, f"deleted dataset {name}{note}")
