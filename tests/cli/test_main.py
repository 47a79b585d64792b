"""The ``tierstore`` admin commands (tierstore/cli/) against a fake client.

What a command does before and after its calls: options, checks that refuse a request
before any call, and output built from whatever the server answered. The commands
against the real server are in tests/server/test_e2e_cli.py.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import socket
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
import typer
from rich.console import Console
from typer.testing import CliRunner, Result

from tierstore import errors
from tierstore.cli import admin, main, shards, uploads
from tierstore.cli import app as app_module
from tierstore.cli import argv as argv_module
from tierstore.cli import output as cli_output
from tierstore.cli.main import app
from tierstore.cli.output import rate_text
from tierstore.types import DatasetSettings, Grant, Role, ShardInfo, ShardKind, TracedRead

CONNECTION = {
    *("address", "token", "token_file", "ca", "client_cert", "client_key"),
    *("insecure", "timeout", "json_output"),
}


@dataclass
class FakeClient:
    """Answers the calls the tests make, and records them."""

    connected: dict[str, Any] = field(default_factory=dict)
    calls: list[tuple[str, tuple[Any, ...]]] = field(default_factory=list)
    archive_error: str | None = None
    journal_entries: int = 0
    backlog_shards: int = 0
    archive_figures: bool = True  # False: a node older than a dataset's archive figures
    tokens: list[dict[str, Any]] = field(default_factory=list)
    hot_bytes: int = 9
    watermarks: tuple[int, int] | None = None  # high, low; None: a node that sends none
    movement: tuple[int, int, int] | None = None  # promotions, skipped, evictions
    shards: set[str] = field(default_factory=set)
    token_id: str | None = None  # of the token it calls with
    #: lines and JSON entries printed when iter_list fetched each page past the first
    printed_at_page: list[tuple[int, int]] = field(default_factory=list)
    listing_fails_at: int | None = None  # iter_list's entry whose page fails

    def list_datasets(self) -> list[Any]:
        self.calls.append(("list_datasets", ()))
        return []

    def close(self) -> None:
        self.calls.append(("close", ()))

    def list_tokens(self) -> list[dict[str, Any]]:
        self.calls.append(("list_tokens", ()))
        return self.tokens

    def revoke_token(self, token_id: str, *, force: bool = False) -> None:
        self.calls.append(("revoke_token", (token_id, force)))

    def create_dataset(self, name: str, **options: Any) -> DatasetSettings:
        self.calls.append(("create_dataset", (name, options["hot_quota_bytes"])))
        return DatasetSettings(hot_quota_bytes=options["hot_quota_bytes"])

    def update_dataset(self, name: str, **options: Any) -> DatasetSettings:
        self.calls.append(("update_dataset", (name, options["hot_quota_bytes"])))
        return DatasetSettings(
            durability=options.get("durability") or "write-back",
            hot_quota_bytes=options["hot_quota_bytes"] or 0,
        )

    def delete(self, dataset: str, shard: str) -> None:
        self.calls.append(("delete", (dataset, shard)))
        if shard not in self.shards:
            raise errors.ShardNotFound(f"no shard {shard!r} in dataset {dataset!r}")
        self.shards.remove(shard)

    def put(self, dataset: str, shard: str, data: Any) -> Any:
        self.calls.append(("put", (dataset, shard)))
        if shard == "unreadable":
            raise PermissionError(13, "Permission denied")  # what reading the file raised
        if shard == "refused":
            raise errors.PermissionDenied("no writer role on 'ds'")
        if shard == "interrupted":
            raise KeyboardInterrupt  # Ctrl-C while its stream was on its way
        if shard == "not-archived":  # a write-through put stored here, the archive down
            raise errors.NotArchivedYet("ds/not-archived is committed locally but ...")
        if shard == "cut-off":  # what the client raises for a put past its deadline
            cut = errors.Unavailable("DEADLINE_EXCEEDED: ... may or may not have been made")
            cut.outcome_unknown = True
            raise cut
        return ShardInfo(dataset, shard, 1, ShardKind.RAW, (1,), 0.0, False, True, False)

    def _known(self, call: str, dataset: str, shard: str) -> None:
        self.calls.append((call, (dataset, shard)))
        if shard not in self.shards:
            raise errors.ShardNotFound(f"no shard {shard!r} in dataset {dataset!r}")

    def pin(self, dataset: str, shard: str, ttl_s: float | None = None) -> int:
        self._known("pin", dataset, shard)
        return 10

    def unpin(self, dataset: str, shard: str) -> None:
        self._known("unpin", dataset, shard)

    def evict(self, dataset: str, shard: str) -> int:
        self._known("evict", dataset, shard)
        return 0 if shard in ("pinned", "ttl", "unarchived", "cold", "empty") else 100

    def stat(self, dataset: str, shard: str) -> ShardInfo:
        self._known("stat", dataset, shard)
        pins = {"ttl": (True, 1_700_003_600.0), "pinned": (True, 0.0)}
        pinned, until = pins.get(shard, (False, 0.0))
        hot, archived = shard not in ("cold", "empty"), shard != "unarchived"
        sizes = () if shard == "empty" else (1,)
        info = ShardInfo(dataset, shard, 1, ShardKind.RAW, sizes, 0.0, False, hot, archived)
        return dataclasses.replace(info, pinned=pinned, pinned_until=until)

    def list(
        self, dataset: str, prefix: str, *, limit: int | None = None, start_after: str = ""
    ) -> list[ShardInfo]:
        self.calls.append(("list", (dataset, prefix)))
        names = [shard for shard in sorted(self.shards) if shard > start_after]
        return [self.stat(dataset, shard) for shard in names[:limit]]

    def iter_list(
        self, dataset: str, prefix: str, *, limit: int | None = None, start_after: str = ""
    ) -> Iterator[ShardInfo]:
        listed = self.list(dataset, prefix, limit=limit, start_after=start_after)
        for index, info in enumerate(listed):
            if index == self.listing_fails_at:
                raise errors.Unavailable("the node went away")
            if index and index % 1000 == 0:  # a page fetched: what was printed so far
                sys.stdout.flush()
                printed = sys.stdout.buffer.getvalue()  # type: ignore[attr-defined]
                self.printed_at_page.append((printed.count(b"\n"), printed.count(b'"name"')))
            yield info

    def stats(self, dataset: str, sizing: bool = False) -> dict[str, Any]:
        self.calls.append(("stats", (dataset,)))
        usage = {"policy": "lru", "shards": 1, "bytes": 9, "hot_shards": 1, "hot_bytes": 9}
        if self.archive_figures:
            usage |= {"archived_shards": 0, "archived_bytes": 0}
            usage |= {
                "backlog_shards": self.backlog_shards,
                "backlog_bytes": 7 * self.backlog_shards,
            }
        return {
            "datasets": {"idle": {**usage, "hits": 0, "misses": 0, "hit_ratio": None}},
            "hot_bytes": self.hot_bytes,
            "hot_capacity_bytes": 100,
            **(
                {}
                if self.movement is None
                else dict(
                    zip(
                        ("promotions", "promotions_skipped", "evictions"),
                        self.movement,
                        strict=True,
                    )
                )
            ),
            **(
                {}
                if self.watermarks is None
                else {
                    "high_watermark_bytes": self.watermarks[0],
                    "low_watermark_bytes": self.watermarks[1],
                }
            ),
            "backlog_bytes": 0,
            "journal_entries": self.journal_entries,
            "oldest_journal_age_s": 3600.0 if self.journal_entries else 0.0,
            "data_loss": [],
            "archive_error": self.archive_error,
            "traced_reads": 0,
            "sizing": [{"capacity_bytes": 50, "miss_ratio": 1.0}],
        }

    def get(self, dataset: str, shard: str, **_: Any) -> Any:
        self.calls.append(("get", (dataset, shard)))
        raise AssertionError("the command should have refused before calling get")

    def export_trace(self, dataset: str | None) -> Iterator[Any]:
        self.calls.append(("export_trace", (dataset,)))
        raise AssertionError("the command should have refused before exporting")


@pytest.fixture
def client(monkeypatch: pytest.MonkeyPatch) -> FakeClient:
    fake = FakeClient()

    def connect(address: str | None, **options: Any) -> FakeClient:
        fake.connected = {"address": address, **options}
        return fake

    monkeypatch.setattr("tierstore.client.connect.connect", connect)
    return fake


def invoke(*args: str) -> Result:
    result = CliRunner().invoke(app, list(args), env={"COLUMNS": "200"})
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise AssertionError(f"{args} raised") from result.exception  # a crash, not an error
    return result


def one_error_line(result: Result) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (["dataset", "update", "x", "--hot-quota", "abc"], "Invalid value for '--hot-quota'"),
        (["token", "create", "p", "--ttl", "soon"], "Invalid value for '--ttl'"),
        (["nosuch"], "No such command 'nosuch'"),
        (["serve", "--listen"], "requires an argument. (see tierstore serve --help)"),
        (["serve", "--max-connections", "-1"], "Invalid value for '--max-connections'"),
        (["dataset", "create", "x", "--hot-quota"], "(see tierstore dataset create --help)"),
        (["--json", "token", "create", "p", "--ttl"], "(see tierstore token create --help)"),
        (["--ca", "token", "token", "create", "p", "--ttl"], "(see tierstore token create --help)"),
        (  # it said "(see tierstore c.pem --help)"
            ["--client-cert", "c.pem", "--client-key", "k.pem", "token", "create", "p", "--ttl"],
            "(see tierstore token create --help)",
        ),
        (["dataset", "create"], "Missing argument"),
    ],
)
def test_a_usage_error_is_one_line_with_exit_2(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
    fragment: str,
) -> None:
    # The option parser's own errors were a boxed panel of several lines; every other
    # error is one line a script can read.
    monkeypatch.delenv("GRPC_VERBOSITY", raising=False)  # main() sets it
    monkeypatch.setattr("sys.argv", ["tierstore", *argv])
    with pytest.raises(SystemExit) as exited:
        main.main()
    assert exited.value.code == 2
    printed = capsys.readouterr()
    (line,) = printed.err.splitlines()
    assert line.startswith("error: ") and fragment in line and "--help)" in line
    assert printed.out == ""


def test_no_command_prints_the_help_and_exits_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("GRPC_VERBOSITY", raising=False)
    monkeypatch.setattr("sys.argv", ["tierstore"])
    with pytest.raises(SystemExit) as exited:
        main.main()
    assert exited.value.code == 2
    printed = capsys.readouterr()
    assert "Usage" in printed.out and printed.err == ""


# connection options


def leaf_commands(command: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    children = getattr(command, "commands", None)
    if children is None:
        yield path, command
        return
    for name, child in children.items():
        yield from leaf_commands(child, f"{path} {name}".strip())


def test_each_command_is_summed_up_in_its_group_s_list_by_its_first_sentence() -> None:
    # The list showed a command's whole first paragraph: `get`'s and `pin`'s caveats,
    # eight lines each, buried the list. Its own --help still shows them all.
    commands = dict(leaf_commands(typer.main.get_command(app)))
    for path, command in commands.items():
        summary, whole = command.short_help, " ".join(command.help.split())
        assert whole.startswith(summary) and summary.endswith("."), path
        assert len(summary) <= 120 and ". " not in summary, (path, summary)
    assert commands["get"].short_help == "Download a shard (or a byte range of it)."
    listed = invoke("--help")
    assert "Download a shard (or a byte range of it)." in listed.output
    # A docstring's line breaks were kept in the list, falling mid-sentence.
    summary = (
        "Upload files (directories recursively) as shards named by their relative paths, in order."
    )
    assert summary in listed.output
    assert "garble" not in listed.output
    assert "garble" in invoke("get", "--help").output


@pytest.mark.parametrize(
    ("text", "first"),
    [
        ("One. Two.", "One."),
        ("One (see x. Y) here. Two.", "One (see x. Y) here."),
        ("Use it, e.g. with care. Then more.", "Use it, e.g. with care."),
        ("Version 1.5 of it! More.", "Version 1.5 of it!"),
        ("No full stop", "No full stop"),
    ],
)
def test_a_summary_ends_at_the_first_full_stop_outside_parentheses(text: str, first: str) -> None:
    assert app_module._first_sentence(text) == first


def test_every_command_that_calls_a_server_takes_the_connection_options() -> None:
    commands = dict(leaf_commands(typer.main.get_command(app)))
    assert {"dataset ls", "token ls", "rm", "trace export", "keys rotate"} <= set(commands)
    for path, command in commands.items():
        names = {param.name for param in command.params}
        if path == "serve":  # runs a server; its --insecure is the server's own
            assert not {"address", "token", "ca", "json_output"} & names
        elif path == "simulate":  # calls no server
            assert "json_output" in names
        else:
            assert names >= CONNECTION, f"tierstore {path} lacks {CONNECTION - names}"


@pytest.mark.parametrize(
    "argv",
    [
        ["--address", "h:1", "--token", "t", "--ca", "ca.pem", "--json", "dataset", "ls"],
        ["dataset", "ls", "--address", "h:1", "--token", "t", "--ca", "ca.pem", "--json"],
        ["--token", "t", "dataset", "ls", "--json", "--address", "h:1", "--ca", "ca.pem"],
    ],
    ids=["before", "after", "both"],
)
def test_connection_options_before_or_after_the_command(
    client: FakeClient, argv: list[str]
) -> None:
    result = invoke(*argv)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == []  # --json, wherever it was given
    assert client.connected == {
        "address": "h:1",
        "token": "t",
        "token_file": None,
        "ca": Path("ca.pem"),
        "client_cert": None,  # not given: TIERSTORE_CLIENT_CERT and _KEY decide
        "client_key": None,
        "insecure": None,  # not given: TIERSTORE_INSECURE decides
    }


def test_an_empty_address_is_refused_not_taken_from_the_environment(
    client: FakeClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    # `--address "$STAGING"` with STAGING unset ran against the exported node.
    monkeypatch.setenv("TIERSTORE_ADDRESS", "production:7443")
    for argv in (["--address", "", "dataset", "ls"], ["dataset", "ls", "--address", ""]):
        refused = invoke(*argv)
        assert refused.exit_code == 2
        assert "--address is empty" in one_error_line(refused)
    assert client.connected == {}


@pytest.mark.parametrize("where", ["before", "after"])
def test_an_empty_token_is_refused_not_taken_from_the_environment(
    client: FakeClient, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    # `--token "$TOKEN"` with TOKEN unset must not run as the exported admin token.
    monkeypatch.setenv("TIERSTORE_TOKEN", "the-admins")
    argv = ["--token", "", "dataset", "ls"] if where == "before" else ["dataset", "ls"]
    if where == "after":
        argv = ["--token", "given-first", *argv, "--token", ""]
    refused = invoke(*argv)
    assert refused.exit_code == 2
    assert "--token is empty" in one_error_line(refused)
    assert client.connected == {}  # no connection was made


@pytest.mark.parametrize("where", ["before", "after"])
@pytest.mark.parametrize(
    ("option", "variable"),
    [
        ("--token-file", "TIERSTORE_TOKEN_FILE"),
        ("--ca", "TIERSTORE_CA"),
        ("--client-cert", "TIERSTORE_CLIENT_CERT"),
        ("--client-key", "TIERSTORE_CLIENT_KEY"),
    ],
)
def test_an_empty_file_option_is_refused_as_empty(
    client: FakeClient,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    option: str,
    variable: str,
    where: str,
) -> None:
    # `--token-file "$TOKEN_FILE"` with the variable unset read "." and said "cannot
    # read token file '.': Is a directory" (the others, the current directory's name).
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(variable, str(tmp_path / "the-environments.pem"))
    argv = [option, "", "dataset", "ls"] if where == "before" else ["dataset", "ls", option, ""]
    refused = invoke(*argv)
    assert refused.exit_code == 2
    assert one_error_line(refused).endswith(
        f"{option} is empty: give a path, or leave {option} out to use {variable}"
    )
    assert client.connected == {}


def test_an_empty_schema_file_is_refused_as_empty(client: FakeClient) -> None:
    # It said "--schema .: cannot read it (... . is a directory)".
    refused = invoke("dataset", "create", "d", "--schema", "")
    assert refused.exit_code == 2
    assert one_error_line(refused).endswith(
        "--schema is empty: give an Arrow or Parquet file, or leave --schema out"
    )
    assert client.connected == {}


def test_timeout_bounds_every_call_and_must_be_positive(client: FakeClient) -> None:
    assert invoke("--timeout", "2.5", "dataset", "ls").exit_code == 0
    assert (client.timeout_s, client.stream_timeout_s) == (2.5, 2.5)  # type: ignore[attr-defined]
    # Past about 9e9 s gRPC's deadline overflowed: every call failed at once.
    for bad in ("0", "-1", "nan", "inf", "1e10", "315576001"):
        refused = invoke("dataset", "ls", "--timeout", bad)
        assert refused.exit_code == 2, bad
        assert "--timeout must be a number of seconds above 0 and at most 315576000" in (
            one_error_line(refused)
        )
    assert invoke("--timeout", "315576000", "dataset", "ls").exit_code == 0


@pytest.mark.parametrize(
    ("failure", "hinted"),
    [("Socket closed", True), ("failed to connect to all addresses; Connection refused", False)],
)
def test_the_insecure_hint_only_for_a_connection_a_tls_server_would_drop(
    client: FakeClient, monkeypatch: pytest.MonkeyPatch, failure: str, hinted: bool
) -> None:
    def unavailable() -> None:
        raise errors.Unavailable(failure)

    monkeypatch.setattr(client, "list_datasets", unavailable)
    refused = invoke("--insecure", "dataset", "ls")
    assert refused.exit_code == 5
    assert ("drop it and give --ca" in one_error_line(refused)) is hinted
    monkeypatch.setenv("TIERSTORE_INSECURE", "1")  # plaintext from the environment
    from_env = invoke("dataset", "ls")
    assert ("drop it and give --ca" in one_error_line(from_env)) is hinted
    # Over TLS with no client certificate, a closed connection most often means the
    # server wants one (--require-client-cert); with one, there is nothing to say.
    monkeypatch.delenv("TIERSTORE_INSECURE")
    monkeypatch.delenv("TIERSTORE_CLIENT_CERT", raising=False)
    over_tls = one_error_line(invoke("dataset", "ls"))
    assert ("export TIERSTORE_CLIENT_CERT" in over_tls) is hinted
    assert "drop it and give --ca" not in over_tls
    monkeypatch.setenv("TIERSTORE_CLIENT_CERT", "client.pem")
    assert "TIERSTORE_CLIENT_CERT" not in one_error_line(invoke("dataset", "ls"))


def test_no_insecure_wins_over_the_environment(
    client: FakeClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    # It was taken as "not given", so TIERSTORE_INSECURE=1 made the call in plaintext.
    monkeypatch.setenv("TIERSTORE_INSECURE", "1")
    for argv in (
        ["--no-insecure", "dataset", "ls"],
        ["dataset", "ls", "--no-insecure"],
        ["--insecure", "dataset", "ls", "--no-insecure"],  # the one after the name
    ):
        assert invoke(*argv).exit_code == 0, argv
        assert client.connected["insecure"] is False, argv
    assert invoke("--no-insecure", "dataset", "ls", "--insecure").exit_code == 0
    assert client.connected["insecure"] is True
    assert invoke("dataset", "ls").exit_code == 0
    assert client.connected["insecure"] is None  # not given: TIERSTORE_INSECURE decides


def test_tls_that_cannot_start_here_points_at_this_sides_files(
    client: FakeClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A client certificate given with another key: the hint asked whether --ca was the
    # server's CA and --address its API port, neither of which was the trouble.
    def unavailable() -> None:
        raise errors.Unavailable(
            "failed to connect to all addresses; last error: UNKNOWN: "
            "ipv4:127.0.0.1:7443: Failed to create security handshaker"
        )

    monkeypatch.setattr(client, "list_datasets", unavailable)
    monkeypatch.delenv("TIERSTORE_CLIENT_CERT", raising=False)
    monkeypatch.delenv("TIERSTORE_CLIENT_KEY", raising=False)
    line = one_error_line(invoke("dataset", "ls"))
    assert "TLS could not start on this side" in line and "PEM CA certificate" in line
    assert "API port" not in line and "TIERSTORE_CLIENT_KEY" not in line
    flagged = invoke("dataset", "ls", "--client-cert", "client.pem", "--client-key", "server.key")
    assert "whose own key is --client-key / TIERSTORE_CLIENT_KEY" in one_error_line(flagged)
    assert client.connected["client_cert"] == Path("client.pem")
    assert client.connected["client_key"] == Path("server.key")
    monkeypatch.setenv("TIERSTORE_CLIENT_CERT", "client.pem")
    monkeypatch.setenv("TIERSTORE_CLIENT_KEY", "server.key")
    line = one_error_line(invoke("dataset", "ls"))
    assert "whose own key is --client-key / TIERSTORE_CLIENT_KEY" in line


def test_an_option_after_the_command_wins(client: FakeClient) -> None:
    result = invoke("--address", "before:1", "--insecure", "dataset", "ls", "--address", "after:2")
    assert result.exit_code == 0, result.output
    assert client.connected["address"] == "after:2"
    assert client.connected["insecure"] is True  # given before only: still given
    assert "name" in result.stdout  # a table: no --json anywhere


# token ls


@pytest.mark.parametrize("expires_at", [1e300, -1e300, float("inf"), float("nan"), 1e17])
def test_token_ls_shows_any_expiry_the_server_sends(client: FakeClient, expires_at: float) -> None:
    client.tokens = [
        {
            "token_id": "0123456789ab",
            "principal": "bob",
            "grants": [Grant("ds", Role.READER)],
            "created_at": 1_700_000_000.0,
            "expires_at": expires_at,
            "revoked": True,
        },
        {
            "token_id": "ba9876543210",
            "principal": "carol",
            "grants": [Grant("ds", Role.ADMIN)],
            "created_at": 1_700_000_000.0,
            "expires_at": 1_700_003_600.0,
            "revoked": False,
        },
    ]
    table = invoke("token", "ls")
    assert table.exit_code == 0, table.output
    assert "0123456789ab" in table.stdout and "2023-11-14 23:13" in table.stdout
    assert f"{expires_at:g}" in table.stdout
    listed = invoke("--json", "token", "ls")
    assert listed.exit_code == 0, listed.output
    assert [t["token_id"] for t in json.loads(listed.stdout)] == ["0123456789ab", "ba9876543210"]


def test_token_ls_marks_expired_tokens(client: FakeClient) -> None:
    now = time.time()
    client.tokens = [
        {
            "token_id": token_id,
            "principal": "bob",
            "grants": [],
            "created_at": 0.0,
            "expires_at": expires_at,
            "revoked": False,
        }
        for token_id, expires_at in (("000000000001", now - 60), ("000000000002", now + 3600))
    ]
    table = invoke("token", "ls")
    assert table.exit_code == 0, table.output
    rows = {line.split()[1]: line for line in table.stdout.splitlines() if "00000000000" in line}
    assert "(expired)" in rows["000000000001"] and "(expired)" not in rows["000000000002"]
    listed = json.loads(invoke("--json", "token", "ls").stdout)  # said in --json too
    assert [t["expired"] for t in listed] == [True, False]
    # Times are UTC, and say so; grants that went with their datasets are not a blank.
    assert "UTC" in rows["000000000002"] and "none left" in rows["000000000002"]


def test_stat_shows_whether_and_until_when_a_shard_is_pinned(client: FakeClient) -> None:
    client.shards = {"ttl", "pinned", "loose"}
    shown = {name: invoke("stat", "ds", name).stdout for name in client.shards}
    assert "pinned" in shown["loose"]  # the column
    assert "until 2023-11-14 23:13" in shown["ttl"]
    assert " yes " in shown["pinned"].replace("│", " ")
    assert "until" not in shown["loose"]


def test_an_update_with_nothing_to_update_is_refused(client: FakeClient) -> None:
    refused = invoke("dataset", "update", "ds")
    assert refused.exit_code == 2
    assert "nothing to update" in one_error_line(refused)
    assert "--backlog-quota" in one_error_line(refused)
    assert not [call for call in client.calls if call[0] == "update_dataset"]


def test_names_that_look_like_console_markup_are_printed_as_they_are(
    client: FakeClient,
) -> None:
    # A writer picks shard names: "[/]" once made ls print a traceback, "[red]x" was
    # shown as "x", and ":fire:" as an emoji, so the table named shards that do not exist.
    names = {"x[/]y", "[red]secret", "m/[bold]b[/bold]", ":fire:"}
    client.shards = set(names)
    listed = invoke("ls", "ds")
    assert listed.exit_code == 0, listed.output
    for name in names:
        assert name in listed.stdout
    stat = invoke("stat", "ds", "x[/]y")
    assert stat.exit_code == 0 and "x[/]y" in stat.stdout
    missing = invoke("rm", "ds", "[red]secret", "nosuch[/]")
    assert missing.exit_code == 3
    assert "deleted 1 of 2 shards before an error: [red]secret" in missing.stdout
    assert "'nosuch[/]'" in missing.stderr


def test_a_long_listing_prints_plain_aligned_columns(client: FakeClient) -> None:
    # A table measures every cell before it prints: 50,000 shards took 82 s.
    names = {f"train/{i:05d}" for i in range(shards.PLAIN_LISTING_ROWS + 1)} | {"[red]x"}
    client.shards = names
    listed = invoke("ls", "ds")
    assert listed.exit_code == 0, listed.output
    lines = listed.stdout.splitlines()
    assert len(lines) == len(names) + 1
    assert lines[0].split() == list(shards.SHARD_COLUMNS)
    assert sorted(line.split()[0] for line in lines[1:]) == sorted(names)  # "[red]x" as is
    assert len({line.index(" 1 ") for line in lines[1:]}) == 1  # the size column lines up
    client.shards = {"a", "b"}
    assert "─" in invoke("ls", "ds").stdout  # few: the table


def test_a_long_listing_is_printed_as_it_is_fetched(client: FakeClient) -> None:
    # Every page was fetched before the first line: 70,000 shards waited 6.6 s and
    # held 182 MB.
    names = [f"s{i:04d}" for i in range(2500)] + ["a-name-wider-than-the-first-page"]
    client.shards = set(names)
    listed = invoke("ls", "ds")
    assert listed.exit_code == 0, listed.output
    # The header and the first 1,001 shards were out before the third page was asked.
    assert [lines for lines, _ in client.printed_at_page] == [0, 1002]
    lines = listed.stdout.splitlines()
    assert [line.split()[0] for line in lines[1:]] == sorted(names)
    assert len({line.index(" 1 ") for line in lines[2:]}) == 1  # the first page's widths
    client.printed_at_page.clear()
    as_json = invoke("--json", "ls", "ds")
    assert as_json.exit_code == 0, as_json.output
    assert [entry["name"] for entry in json.loads(as_json.stdout)] == sorted(names)
    assert as_json.stdout.count("\n") == 1 and client.printed_at_page == [(0, 0), (0, 1001)]


@pytest.mark.parametrize("json_flag", [[], ["--json"]], ids=["plain", "json"])
def test_a_long_listing_cut_short_prints_what_came_and_says_where_it_stopped(
    client: FakeClient, json_flag: list[str]
) -> None:
    names = [f"s{i:04d}" for i in range(2500)]
    client.shards = set(names)
    client.listing_fails_at = 1500  # the second page came in part
    listed = invoke(*json_flag, "ls", "ds")
    assert listed.exit_code == 5, listed.output  # Unavailable
    assert "the listing stopped after s1499 (1,500 printed)" in listed.stderr
    assert "the node went away" in listed.stderr
    if json_flag:  # left open: a cut listing must not parse as a whole one
        assert listed.stdout.startswith("[") and not listed.stdout.rstrip().endswith("]")
        assert listed.stdout.count('"name"') == 1500
    else:
        assert [line.split()[0] for line in listed.stdout.splitlines()[1:]] == names[:1500]


def test_evict_reports_the_hot_shards_it_kept_and_why(client: FakeClient) -> None:
    client.shards = {"a", "pinned", "unarchived", "cold"}
    done = invoke("--json", "evict", "ds", "a", "pinned", "unarchived", "cold")
    assert done.exit_code == 0, done.output
    assert json.loads(done.stdout) == {
        "evicted": ["a"],  # the kept ones stayed hot; "cold" was cold before
        "already_cold": ["cold"],
        "not_evicted": [],
        "in_doubt": None,
        "freed_bytes": 100,
        "kept": {
            "pinned": "pinned (unpin it first)",
            "unarchived": "not archived yet: the hot copy is the only one",
        },
    }
    table = invoke("evict", "ds", "pinned", "a", "cold")
    assert table.exit_code == 0, table.output
    assert table.stdout.splitlines() == [
        "freed 100 bytes",
        "kept pinned: pinned (unpin it first)",
        "already cold: cold",
    ]


def test_evict_names_each_shard_once_and_an_empty_one_as_evicted(client: FakeClient) -> None:
    # Named twice, a shard freed by the first mention was listed as already cold; an
    # empty shard frees nothing either way, and is cold after the evict.
    client.shards = {"a", "empty", "cold"}
    done = invoke("--json", "evict", "ds", "a", "empty", "a", "cold", "empty")
    assert done.exit_code == 0, done.output
    assert json.loads(done.stdout) == {
        "evicted": ["a", "empty"],
        "already_cold": ["cold"],
        "not_evicted": [],
        "in_doubt": None,
        "freed_bytes": 100,
        "kept": {},
    }


def test_stats_without_reads_show_no_ratios(client: FakeClient) -> None:
    shown = invoke("stats")
    assert shown.exit_code == 0, shown.output
    assert "n/a (no reads)" in shown.stdout and "0.0%" not in shown.stdout
    assert "no traced reads yet" in shown.stdout and "100.0%" not in shown.stdout
    # policy show said "hit ratio 0.0%" of the same dataset.
    policy = invoke("policy", "show", "idle")
    assert policy.exit_code == 0, policy.output
    assert "hit ratio n/a (no reads)" in policy.stdout and "0.0%" not in policy.stdout
    # --json said a 0 % hit ratio and 100 % misses at every size for the same figures.
    scripted = json.loads(invoke("--json", "stats").stdout)
    assert scripted["datasets"]["idle"]["hit_ratio"] is None
    assert scripted["traced_reads"] == 0 and scripted["sizing"] == []


def test_stats_say_why_the_archive_backlog_does_not_drain(client: FakeClient) -> None:
    assert "the archive is failing" not in invoke("stats").stdout
    client.archive_error = "put ds/s@1: the archive is down"
    shown = invoke("stats")
    assert shown.exit_code == 0, shown.output
    assert "the archive is failing: put ds/s@1: the archive is down" in shown.stdout
    scripted = json.loads(invoke("--json", "stats").stdout)
    assert scripted["archive_error"] == "put ds/s@1: the archive is down"


def test_stats_show_the_watermarks_and_a_hot_tier_past_its_capacity(client: FakeClient) -> None:
    # Where eviction starts and stops showed nowhere, and a hot tier held past its
    # capacity by un-archived writes (its archive down) read "160,000,640 of 67,108,864
    # bytes" with no word of it.
    assert "hot tier 9 of 100 bytes; " in invoke("stats").stdout  # a node without them
    client.watermarks = (90, 75)
    assert "hot tier 9 of 100 bytes (eviction from 90 down to 75); " in invoke("stats").stdout
    client.hot_bytes = 160
    shown = invoke("stats")
    assert "hot tier 160 of 100 bytes (eviction from 90 down to 75), OVER CAPACITY by 60" in (
        shown.stdout
    )
    scripted = json.loads(invoke("--json", "stats").stdout)
    assert (scripted["high_watermark_bytes"], scripted["low_watermark_bytes"]) == (90, 75)


def test_stats_say_why_a_prefetch_or_pin_that_was_queued_stayed_cold(
    client: FakeClient,
) -> None:
    # Promotions skipped for want of room showed only on /metrics: "queued 2 shards",
    # and then neither turned hot, with no word anywhere the CLI looks.
    assert "promoted" not in invoke("stats").stdout  # a node that sends none
    client.movement = (5, 0, 3)
    assert "; since start 5 promoted, 3 evicted; " in invoke("stats").stdout
    client.movement = (5, 2, 3)
    shown = " ".join(invoke("stats").stdout.split())
    assert "5 promoted, 3 evicted, 2 promotions skipped for want of room" in shown


def test_stats_show_a_journal_of_deletes_and_reseals(client: FakeClient) -> None:
    # Deletes and reseals carry no bytes: "0 bytes waiting" alone hid them, while the
    # README and KeyRotationRefused send the operator to stats to see them drain.
    assert "0 bytes waiting for the archive; journal empty" in invoke("stats").stdout
    client.journal_entries = 55
    shown = invoke("stats")
    assert shown.exit_code == 0, shown.output
    assert "0 bytes waiting for the archive; 55 journal entries pending" in shown.stdout
    client.journal_entries = 1
    assert "1 journal entry pending" in invoke("stats").stdout


def test_stats_show_figures_an_older_node_does_not_send_as_unknown(client: FakeClient) -> None:
    # Shown as 0, they said "nothing archived" of a node whose shards were all archived.
    client.backlog_shards = 1200
    row = next(line for line in invoke("stats").stdout.splitlines() if "idle" in line)
    assert "1200" in row and "8,400" in row
    client.archive_figures = False
    shown = invoke("stats")
    assert shown.exit_code == 0, shown.output
    row = next(line for line in shown.stdout.splitlines() if "idle" in line)
    cells = [cell.strip() for cell in row.split("│")[1:-1]]
    assert cells[6:10] == ["-"] * 4, cells


def test_stats_show_each_datasets_backlog_and_the_oldest_entrys_wait(
    client: FakeClient,
) -> None:
    # Only the node-wide backlog showed: which dataset waited for the archive, and for
    # how long, was nowhere.
    client.journal_entries, client.backlog_shards = 3, 2
    shown = invoke("stats")
    assert shown.exit_code == 0, shown.output
    assert "backlog" in shown.stdout and "the oldest for 3,600 s" in shown.stdout
    scripted = json.loads(invoke("--json", "stats").stdout)
    assert scripted["oldest_journal_age_s"] == 3600.0
    idle = scripted["datasets"]["idle"]
    assert (idle["backlog_shards"], idle["backlog_bytes"]) == (2, 14)


def test_one_shard_is_one_shard(client: FakeClient) -> None:
    client.shards |= {"pinned", "ttl"}  # the fake's pinned shards
    done = invoke("unpin", "ds", "pinned")
    assert done.exit_code == 0, done.output
    assert done.stdout.strip() == "unpinned 1 shard"  # it said "1 shards"
    assert invoke("unpin", "ds", "pinned", "ttl").stdout.strip() == "unpinned 2 shards"


def test_trace_export_json_counts_every_kind_of_event_even_none(
    client: FakeClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # With no events it gave {"output": ..., "events": 0}: the kinds it had not met were
    # missing, and a script reading "read" failed on an empty trace.
    monkeypatch.setattr(client, "export_trace", lambda dataset: iter(()), raising=False)
    done = invoke("--json", "trace", "export", "-o", str(tmp_path / "t.jsonl"))
    assert done.exit_code == 0, done.output
    assert json.loads(done.stdout) == {
        "output": str(tmp_path / "t.jsonl"),
        "events": 0,
        "read": 0,
        "plan": 0,
        "position": 0,
        "close": 0,
    }


@pytest.mark.parametrize("json_output", [False, True], ids=["text", "json"])
@pytest.mark.parametrize("to_stdout", [False, True], ids=["file", "stdout"])
def test_trace_export_of_no_events_warns_that_there_is_nothing_to_replay(
    client: FakeClient,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    json_output: bool,
    to_stdout: bool,
) -> None:
    # It said "wrote 0 events" and exited 0, and simulate then refused the file.
    monkeypatch.setattr(client, "export_trace", lambda dataset: iter(()), raising=False)
    output = "-" if to_stdout else str(tmp_path / "t.jsonl")
    done = invoke(*(["--json"] if json_output else []), "trace", "export", "-o", output)
    assert done.exit_code == 0, done.output
    warnings = [line for line in done.stderr.splitlines() if line.startswith("warning: ")]
    assert len(warnings) == 1
    assert "no events" in warnings[0] and "nothing to replay" in warnings[0]
    if to_stdout:  # the trace, its header alone
        assert done.stdout == '{"format": "tierstore-trace", "version": 1}\n'
    elif json_output:  # the report, alone
        assert json.loads(done.stdout)["events"] == 0


def test_trace_export_of_some_events_does_not_warn(
    client: FakeClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    read = TracedRead(1.0, "d", "s", 10, False)
    monkeypatch.setattr(client, "export_trace", lambda dataset: iter([read]), raising=False)
    done = invoke("trace", "export", "-o", str(tmp_path / "t.jsonl"))
    assert done.exit_code == 0, done.output
    assert "warning" not in done.stderr


def test_token_ls_json_builds_no_table(client: FakeClient, monkeypatch: pytest.MonkeyPatch) -> None:
    client.tokens = [
        {
            "token_id": "0123456789ab",
            "principal": "bob",
            "grants": [],
            "created_at": 0.0,
            "expires_at": 1.0,
            "revoked": False,
        }
    ]

    def no_table(*_: Any) -> None:
        raise AssertionError("a table was built for --json")

    monkeypatch.setattr(admin, "Table", no_table)
    listed = invoke("token", "ls", "--json")
    assert listed.exit_code == 0, listed.output
    assert json.loads(listed.stdout)[0]["expires_at"] == 1.0


# dataset --hot-quota, --backlog-quota


@pytest.mark.parametrize("option", ["--hot-quota", "--backlog-quota"])
@pytest.mark.parametrize("command", [["dataset", "create"], ["dataset", "update"]])
@pytest.mark.parametrize("quota", [-1, 2**64, 10**30])
def test_a_quota_the_wire_cannot_carry_is_refused_before_any_call(
    client: FakeClient, command: list[str], quota: int, option: str
) -> None:
    refused = invoke(*command, "ds", option, str(quota))
    assert refused.exit_code == 2
    line = one_error_line(refused)
    assert line.startswith(f"error: InvalidArgument: {option} must be from 0 to")
    assert line.endswith(f"not {quota}")
    assert client.calls == []


@pytest.mark.parametrize("durability", ["write-through", "write-back"])
def test_a_durability_change_says_what_still_waits_for_the_archive(
    client: FakeClient, durability: str
) -> None:
    # "updated dataset" alone: an operator who switched to write-through so that
    # everything is archived had no hint that the shards put before still waited.
    client.backlog_shards = 6
    done = invoke("dataset", "update", "idle", "--durability", durability)
    assert done.exit_code == 0, done.output
    assert "6 shards (42 bytes)" in done.stdout
    if durability == "write-through":
        assert "a later put's success says nothing of them" in done.stdout
    else:
        assert "write-through puts already under way still wait" in done.stdout
    as_json = json.loads(
        invoke("--json", "dataset", "update", "idle", "--durability", durability).stdout
    )
    assert (as_json["backlog_shards"], as_json["backlog_bytes"]) == (6, 42)  # the text's alone
    client.backlog_shards = 0
    quiet = invoke("dataset", "update", "idle", "--durability", durability)
    assert quiet.stdout.strip() == "updated dataset idle"
    assert (
        "backlog_shards"
        not in invoke("--json", "dataset", "update", "idle", "--durability", durability).stdout
    )


@pytest.mark.parametrize("command", ["create", "update"])
def test_the_largest_hot_quota_is_sent(client: FakeClient, command: str) -> None:
    done = invoke("--json", "dataset", command, "ds", "--hot-quota", str(2**64 - 1))
    assert done.exit_code == 0, done.output
    sent = (f"{command}_dataset", ("ds", 2**64 - 1))
    # An update asks, too, whether the dataset's hot bytes stay above the quota.
    asked = [("stats", ("ds",))] if command == "update" else []
    assert client.calls == [sent, *asked, ("close", ())]


# output files


def test_trace_export_refuses_an_output_it_cannot_write(client: FakeClient, tmp_path: Path) -> None:
    for output, says in [
        (tmp_path / "no" / "such" / "t.jsonl", f"no directory {tmp_path / 'no' / 'such'}"),
        (tmp_path, "is a directory"),
    ]:
        refused = invoke("trace", "export", "-o", str(output))
        assert refused.exit_code == 2, refused.output
        assert says in one_error_line(refused)
    assert client.calls == []  # refused before the trace was fetched
    assert list(tmp_path.iterdir()) == []


def test_get_refuses_an_output_it_cannot_write(client: FakeClient, tmp_path: Path) -> None:
    for output in (tmp_path / "no" / "shard.bin", tmp_path):
        refused = invoke("get", "ds", "s", "-o", str(output))
        assert refused.exit_code == 2, refused.output
        assert "InvalidArgument" in one_error_line(refused)
    assert client.calls == []


# rm


def test_rm_reports_what_it_deleted_before_an_error(client: FakeClient) -> None:
    client.shards = {"a", "b", "c", "d"}
    stopped = invoke("--json", "rm", "ds", "a", "b", "nosuch", "c")
    assert stopped.exit_code == 3
    assert "ShardNotFound" in one_error_line(stopped)
    assert json.loads(stopped.stdout) == {
        "deleted": ["a", "b"],
        "not_deleted": ["nosuch", "c"],
        "in_doubt": None,
    }
    assert client.shards == {"c", "d"}  # it stopped at the error

    told = invoke("rm", "ds", "c", "gone[/x]")  # a name rich would read as markup
    assert told.exit_code == 3
    assert "no shard 'gone[/x]'" in one_error_line(told)
    assert told.stdout.strip() == "deleted 1 of 2 shards before an error: c"

    nothing = invoke("--json", "rm", "ds", "nosuch", "d")
    assert nothing.exit_code == 3  # nothing deleted: the lists say so
    assert json.loads(nothing.stdout) == {
        "deleted": [],
        "not_deleted": ["nosuch", "d"],
        "in_doubt": None,
    }
    quiet = invoke("rm", "ds", "nosuch", "d")
    assert quiet.exit_code == 3 and quiet.stdout == ""  # nothing deleted, nothing to say
    assert client.shards == {"d"}

    done = invoke("--json", "rm", "ds", "d")
    assert done.exit_code == 0 and json.loads(done.stdout) == {
        "deleted": ["d"],
        "not_deleted": [],
        "in_doubt": None,
    }


@pytest.mark.parametrize(
    ("argv", "command"),
    [
        (["serve", "--data-dir", "d"], "serve"),
        (["--address", "h:1", "--json", "serve"], "serve"),
        (["--token", "serve", "ls", "ds"], "ls"),  # a token that reads "serve"
        (["--ca=ca.pem", "get", "serve", "s"], "get"),  # a dataset named "serve"
        (["--client-cert", "serve", "--client-key", "k", "ls", "ds"], "ls"),  # files so named
        (["--help"], None),
    ],
)
def test_the_command_is_found_past_the_top_level_options(
    argv: list[str], command: str | None
) -> None:
    # Only `serve` keeps gRPC's error log lines; every other command prints one line.
    assert argv_module.command_name(argv) == command


def put_report(result: Result) -> dict[str, Any]:
    """The --json report of a put, less its rate (checked to be a rate)."""
    report: dict[str, Any] = json.loads(result.stdout)
    assert report.pop("bytes_per_s") >= 0
    return report


@pytest.mark.parametrize(
    ("bad", "code", "error"), [("unreadable", 2, "cannot read"), ("refused", 4, "PermissionDenied")]
)
def test_put_reports_what_it_uploaded_before_an_error(
    client: FakeClient, tmp_path: Path, bad: str, code: int, error: str
) -> None:
    for name in ("a", bad, "b"):
        (tmp_path / name).write_bytes(b"x")
    files = [str(tmp_path / name) for name in ("a", bad, "b")]
    stopped = invoke("--json", "put", "ds", *files)
    assert stopped.exit_code == code  # before: a traceback for the unreadable file
    assert error in one_error_line(stopped)
    assert put_report(stopped) == {
        "uploaded": ["a"],
        "not_uploaded": [bad, "b"],
        "shards": ["a"],  # the keys of a put that stopped nowhere, for what went up
        "bytes": 1,
        "in_doubt": None,
    }
    assert ("put", ("ds", "b")) not in client.calls  # it stopped at the error


@pytest.mark.parametrize(
    ("rate", "text"),
    [(2.4e9, "2.4 GB/s"), (155.7e6, "155.7 MB/s"), (12_500, "12.5 kB/s"), (80, "80 B/s")],
)
def test_rates_are_shown_in_a_unit_that_fits(rate: float, text: str) -> None:
    # A small upload said "0.0 MB/s".
    assert rate_text(rate) == text


def test_a_put_prefix_without_a_slash_warns_of_the_names_it_makes(
    client: FakeClient, tmp_path: Path
) -> None:
    # --prefix train named the shards "traina.bin": the user meant a folder.
    (tmp_path / "a.bin").write_bytes(b"a")
    done = invoke("put", "ds", str(tmp_path), "--prefix", "train")
    assert done.exit_code == 0, done.output
    assert "warning: --prefix 'train' does not end in '/'" in done.stderr
    assert "'traina.bin'" in done.stderr and "'train/'" in done.stderr
    assert ("put", ("ds", "traina.bin")) in client.calls  # a warning: it goes on
    for prefix in ("train/", ""):
        assert "warning" not in invoke("put", "ds", str(tmp_path), "--prefix", prefix).stderr


def test_a_put_of_empty_directories_warns_that_nothing_was_uploaded(
    client: FakeClient, tmp_path: Path
) -> None:
    # It said "uploaded 0 shards" alone: a wrong path (an output directory not yet
    # written, say) passed for a done upload.
    (tmp_path / "empty" / "deeper").mkdir(parents=True)
    done = invoke("put", "ds", str(tmp_path / "empty"))
    assert done.exit_code == 0 and "uploaded 0 shards" in done.stdout
    assert "warning: nothing to upload" in done.stderr
    assert not [call for call in client.calls if call[0] == "put"]
    (tmp_path / "empty" / "deeper" / "f").write_bytes(b"x")
    assert "warning" not in invoke("put", "ds", str(tmp_path / "empty")).stderr


def test_a_put_cut_off_before_the_answer_is_reported_in_doubt(
    client: FakeClient, tmp_path: Path
) -> None:
    # The stream may have reached the server whole, and then it is stored: --json said
    # only "not_uploaded", and a script took the upload for failed.
    for name in ("a", "cut-off", "b"):
        (tmp_path / name).write_bytes(b"x")
    stopped = invoke("--json", "put", "ds", *(str(tmp_path / n) for n in ("a", "cut-off", "b")))
    assert stopped.exit_code == 5
    assert put_report(stopped) == {
        "uploaded": ["a"],
        "not_uploaded": ["cut-off", "b"],
        "shards": ["a"],
        "bytes": 1,
        "in_doubt": "cut-off",
    }


def test_a_write_through_put_stored_here_but_not_archived_counts_as_uploaded(
    client: FakeClient, tmp_path: Path
) -> None:
    # --json said "uploaded": [] and "not_uploaded": [its name] for a shard stored here
    # (only the archive had not taken it yet): a script took it for not stored.
    for name in ("a", "not-archived", "b"):
        (tmp_path / name).write_bytes(b"x")
    names = ("a", "not-archived", "b")
    stopped = invoke("--json", "put", "ds", *(str(tmp_path / n) for n in names))
    assert stopped.exit_code == 5  # still an error: not durable in the archive yet
    assert "NotArchivedYet" in one_error_line(stopped)
    assert put_report(stopped) == {
        "uploaded": ["a", "not-archived"],
        "not_uploaded": ["b"],
        "not_archived": ["not-archived"],
        "shards": ["a", "not-archived"],
        "bytes": 1,  # of the shards whose put returned
        "in_doubt": None,
    }
    # It said "uploaded 2 of 3 shards before an error", as if the second had failed.
    told = invoke("put", "ds", *(str(tmp_path / n) for n in names))
    assert told.stdout.strip() == (
        "uploaded 2 of 3 shards, the last uploaded on this node only: the archive has not "
        "taken it yet: a, not-archived"
    )


def test_a_failed_put_leaves_its_error_line_alone_on_a_piped_stderr(
    client: FakeClient, tmp_path: Path
) -> None:
    # The progress display, off a terminal, left an empty line before the error.
    (tmp_path / "refused").write_bytes(b"x")
    stopped = invoke("put", "ds", str(tmp_path / "refused"))
    assert stopped.exit_code == 4
    assert stopped.stderr.startswith("error: PermissionDenied"), repr(stopped.stderr)
    assert stopped.stderr.count("\n") == 1


def test_put_checks_every_name_before_uploading_and_takes_a_file_given_twice_once(
    client: FakeClient, tmp_path: Path
) -> None:
    (tmp_path / "good").write_bytes(b"x")
    (tmp_path / "bad\nname").write_bytes(b"y")
    refused = invoke("put", "ds", str(tmp_path / "good"), str(tmp_path / "bad\nname"))
    assert refused.exit_code == 2
    assert "InvalidName" in one_error_line(refused) and "nothing uploaded" in refused.stderr
    assert not [call for call in client.calls if call[0] == "put"]  # before: "good" went up
    twice = invoke("--json", "put", "ds", str(tmp_path / "good"), str(tmp_path / "good"))
    assert twice.exit_code == 0 and json.loads(twice.stdout)["shards"] == ["good"]
    assert [call for call in client.calls if call[0] == "put"] == [("put", ("ds", "good"))]


@pytest.mark.parametrize("as_json", [True, False])
def test_ctrl_c_during_a_put_reports_what_was_uploaded_and_what_is_in_doubt(
    client: FakeClient, tmp_path: Path, as_json: bool
) -> None:
    for name in ("a", "interrupted", "b"):
        (tmp_path / name).write_bytes(b"x")
    files = [str(tmp_path / name) for name in ("a", "interrupted", "b")]
    stopped = invoke(*(["--json"] if as_json else []), "put", "ds", *files)
    assert stopped.exit_code == 130  # before: 130 and nothing said at all
    # The progress bar (without --json) is gone when the put ends: it left its line on
    # stderr above the error.
    line = one_error_line(stopped)
    assert "Interrupted" in line and "'interrupted' was on its way and may have been" in line
    if as_json:
        assert put_report(stopped) == {
            "uploaded": ["a"],
            "not_uploaded": ["interrupted", "b"],
            "shards": ["a"],
            "bytes": 1,
            "in_doubt": "interrupted",
        }
    else:
        assert "uploaded 1 of 3 shards before Ctrl-C: a" in stopped.stdout
    assert ("put", ("ds", "b")) not in client.calls


def test_ctrl_c_after_the_last_put_leaves_nothing_in_doubt(
    client: FakeClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "a").write_bytes(b"x")
    advance = uploads.Progress.advance

    def interrupted(self: Any, *args: Any, **kwargs: Any) -> None:
        advance(self, *args, **kwargs)
        raise KeyboardInterrupt  # after the last put returned, before the summary

    monkeypatch.setattr(uploads.Progress, "advance", interrupted)
    stopped = invoke("--json", "put", "ds", str(tmp_path / "a"))
    assert stopped.exit_code == 130  # before: IndexError and a traceback
    assert put_report(stopped) == {
        "uploaded": ["a"],
        "not_uploaded": [],
        "shards": ["a"],
        "bytes": 1,
        "in_doubt": None,
    }
    assert "stopped by Ctrl-C; the rest" in one_error_line(stopped)


def test_put_of_a_directory_follows_file_links_and_refuses_what_it_would_skip(
    client: FakeClient, tmp_path: Path
) -> None:
    # A link to a directory, a link to nothing and a pipe were each skipped without a
    # word, while a link to a file was followed: a dataset went up with shards missing.
    data = tmp_path / "data"
    (data / "sub").mkdir(parents=True)
    (data / "sub" / "a").write_bytes(b"a")
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "b").write_bytes(b"b")
    (data / "b-link").symlink_to(tmp_path / "elsewhere" / "b")
    done = invoke("--json", "put", "ds", str(data))
    assert done.exit_code == 0, done.output
    assert json.loads(done.stdout)["shards"] == ["b-link", "sub/a"]
    for odd, why in [
        (lambda at: at.symlink_to(tmp_path / "elsewhere"), "is a link to a directory"),
        (lambda at: at.symlink_to(tmp_path / "nowhere"), "is a link to nothing"),
        (os.mkfifo, "is not a regular file"),
    ]:
        client.calls.clear()
        odd(data / "sub" / "odd")
        refused = invoke("put", "ds", str(data))
        assert refused.exit_code == 2, refused.output
        line = one_error_line(refused)
        assert f"{data / 'sub' / 'odd'} {why}" in line and "nothing uploaded" in line
        assert not [call for call in client.calls if call[0] == "put"]
        (data / "sub" / "odd").unlink()


def test_put_refuses_two_inputs_with_one_shard_name_before_uploading(
    client: FakeClient, tmp_path: Path
) -> None:
    for directory in ("d1", "d2"):
        (tmp_path / directory / "x").mkdir(parents=True)
        (tmp_path / directory / "x" / "s.bin").write_bytes(directory.encode())
    (tmp_path / "d1" / "only-here").write_bytes(b"y")
    refused = invoke("put", "ds", str(tmp_path / "d1"), str(tmp_path / "d2"))
    assert refused.exit_code == 2
    line = one_error_line(refused)
    assert "would both be shard 'x/s.bin'; nothing uploaded" in line
    assert str(tmp_path / "d1" / "x" / "s.bin") in line and str(tmp_path / "d2") in line
    assert not [call for call in client.calls if call[0] == "put"]
    # Two files of one name from different directories clash too; a prefix tells them apart.
    assert (
        invoke("put", "ds", str(tmp_path / "d1/x/s.bin"), str(tmp_path / "d2/x/s.bin")).exit_code
        == 2
    )
    assert invoke("put", "ds", str(tmp_path / "d1"), "--prefix", "one/").exit_code == 0


def test_pin_says_cold_shards_are_only_queued_for_promotion(client: FakeClient) -> None:
    # "pinned 5 shards" read as "5 shards are hot now", though a promotion that finds no
    # room is skipped (the fake client's pin queues 10 bytes a shard).
    client.shards = {"a", "b"}
    told = invoke("pin", "ds", "a", "b")
    assert told.exit_code == 0
    assert "pinned 2 shards; 20 bytes of them were cold and are queued" in told.stdout
    assert "ls shows which are hot" in told.stdout


@pytest.mark.parametrize(("command", "done"), [("pin", "pinned"), ("evict", "evicted")])
def test_pin_and_evict_report_what_they_did_before_an_error(
    client: FakeClient, command: str, done: str
) -> None:
    client.shards = {"a", "b", "c"}
    stopped = invoke("--json", command, "ds", "a", "nosuch", "b")
    assert stopped.exit_code == 3
    assert "ShardNotFound" in one_error_line(stopped)
    lists = {done: ["a"], f"not_{done}": ["nosuch", "b"]}
    assert json.loads(stopped.stdout).items() >= lists.items()
    assert (command, ("ds", "b")) not in client.calls  # it stopped at the error
    told = invoke(command, "ds", "c", "nosuch")
    assert told.stdout.strip() == f"{done} 1 of 2 shards before an error: c"
    # With --json the lists come even when the first shard failed: a script that reads
    # stdout finds the same keys.
    first = invoke("--json", command, "ds", "nosuch", "c")
    assert first.exit_code == 3
    lists = {done: [], f"not_{done}": ["nosuch", "c"]}
    assert json.loads(first.stdout).items() >= lists.items()


def test_unpin_before_an_error_counts_only_the_pins_it_ended(client: FakeClient) -> None:
    # The fake's shard "pinned" is pinned, "a" is not.
    client.shards = {"pinned", "a", "b"}
    stopped = invoke("--json", "unpin", "ds", "pinned", "a", "nosuch", "b")
    assert stopped.exit_code == 3
    assert "ShardNotFound" in one_error_line(stopped)
    assert json.loads(stopped.stdout) == {
        "unpinned": ["pinned"],
        "already_unpinned": ["a"],
        "not_unpinned": ["nosuch", "b"],
        "in_doubt": None,
    }
    assert ("unpin", ("ds", "b")) not in client.calls  # it stopped at the error
    told = invoke("unpin", "ds", "a", "nosuch")
    assert told.stdout.strip() == "unpinned 0 of 2 shards before an error; already unpinned: a"
    first = invoke("--json", "unpin", "ds", "nosuch", "a")
    assert first.exit_code == 3
    assert json.loads(first.stdout) == {
        "unpinned": [],
        "already_unpinned": [],
        "not_unpinned": ["nosuch", "a"],
        "in_doubt": None,
    }


def test_evict_stopped_by_a_lost_server_still_reports_what_it_did(
    client: FakeClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Asking why a shard stayed hot failed too, and that error ended the command before
    # its report: what it had evicted went unsaid.
    client.shards = {"a", "pinned", "c"}
    evict = client.evict

    def evict_until_gone(dataset: str, shard: str) -> int:
        if shard == "c":
            raise errors.Unavailable("connection refused")
        return evict(dataset, shard)

    def gone(dataset: str, shard: str) -> None:
        raise errors.Unavailable("connection refused")

    monkeypatch.setattr(client, "evict", evict_until_gone)
    monkeypatch.setattr(client, "stat", gone)
    stopped = invoke("--json", "evict", "ds", "a", "pinned", "c")
    assert stopped.exit_code == 5
    assert json.loads(stopped.stdout) == {
        "evicted": ["a"],
        "already_cold": [],
        "not_evicted": ["c"],
        "freed_bytes": 100,
        "kept": {"pinned": "not known (Unavailable asking)"},
        "in_doubt": None,
    }


def test_evict_cut_off_before_the_server_answered_names_the_shard_in_doubt(
    client: FakeClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The other commands' reports name it (in_doubt); evict's had no such key.
    client.shards = {"a", "b"}
    evict = client.evict

    def cut_off_at_b(dataset: str, shard: str) -> int:
        if shard == "b":
            lost = errors.Unavailable("the connection was lost")
            lost.outcome_unknown = True
            raise lost
        return evict(dataset, shard)

    monkeypatch.setattr(client, "evict", cut_off_at_b)
    stopped = invoke("--json", "evict", "ds", "a", "b")
    assert stopped.exit_code == 5
    report = json.loads(stopped.stdout)
    assert (report["evicted"], report["not_evicted"], report["in_doubt"]) == (["a"], ["b"], "b")


def test_evict_stopped_part_way_still_tells_kept_shards_from_evicted_ones(
    client: FakeClient,
) -> None:
    # A pinned shard before the error was listed as evicted, though it stayed hot.
    client.shards = {"a", "pinned", "c"}
    stopped = invoke("--json", "evict", "ds", "a", "pinned", "nosuch", "c")
    assert stopped.exit_code == 3
    assert json.loads(stopped.stdout) == {
        "evicted": ["a"],
        "already_cold": [],
        "not_evicted": ["nosuch", "c"],
        "freed_bytes": 100,
        "kept": {"pinned": "pinned (unpin it first)"},
        "in_doubt": None,
    }
    told = invoke("evict", "ds", "pinned", "nosuch")
    assert told.stdout.splitlines() == [
        "evicted 0 of 2 shards before an error",
        "kept pinned: pinned (unpin it first)",
    ]


def admin_token(token_id: str, **state: Any) -> dict[str, Any]:
    return {
        "token_id": token_id,
        "principal": "admin",
        "grants": [Grant("*", Role.ADMIN)],
        "created_at": 1.0,
        "expires_at": 0.0,
        "revoked": False,
    } | state


def test_revoking_the_last_live_admin_token_takes_force_and_warns_how_to_get_another(
    client: FakeClient,
) -> None:
    # The node refuses it too (tests/server/test_last_admin_token.py); the command
    # refuses it itself as well, for a node older than that guard.
    client.tokens = [
        admin_token("aaaaaaaaaaaa"),
        admin_token("bbbbbbbbbbbb", revoked=True),
        admin_token("cccccccccccc", expires_at=2.0),  # long expired
    ]
    refused = invoke("--json", "token", "revoke", "aaaaaaaaaaaa")
    assert refused.exit_code != 0 and not [c for c in client.calls if c[0] == "revoke_token"]
    line = one_error_line(refused)
    assert "FailedPrecondition: aaaaaaaaaaaa is the last live admin token" in line
    assert "give --force" in line
    last = invoke("--json", "token", "revoke", "aaaaaaaaaaaa", "--force")
    assert last.exit_code == 0 and ("revoke_token", ("aaaaaaaaaaaa", True)) in client.calls
    assert json.loads(last.stdout) == {
        "revoked": "aaaaaaaaaaaa",
        "already_revoked": False,
        "last_admin": True,
        "own_token": False,
    }
    assert "last live admin token" in last.stderr and "restarts" in last.stderr
    client.tokens.append(admin_token("dddddddddddd"))
    another = invoke("--json", "token", "revoke", "aaaaaaaaaaaa")
    assert json.loads(another.stdout)["last_admin"] is False and another.stderr == ""


def test_a_revoke_refused_names_the_revoke_not_the_listing_before_it(
    client: FakeClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    # With a token that may not list tokens, the error named ListTokens, a call the
    # caller never asked for (the listing only tells whether the last admin goes).
    def refused(method: str) -> Any:
        def call(*args: Any, **kwargs: Any) -> None:
            raise errors.PermissionDenied(f"principal 'bob' may not call {method}")

        return call

    monkeypatch.setattr(client, "list_tokens", refused("/AdminService/ListTokens"))
    monkeypatch.setattr(client, "revoke_token", refused("/AdminService/RevokeToken"))
    result = invoke("token", "revoke", "aaaaaaaaaaaa")
    assert result.exit_code == 4
    line = one_error_line(result)
    assert "RevokeToken" in line and "ListTokens" not in line


# tables at a terminal


@pytest.fixture
def narrow(monkeypatch: pytest.MonkeyPatch) -> Any:
    """Tables printed as at a terminal of ``width`` columns."""

    def at(width: int) -> None:
        monkeypatch.setattr(cli_output, "out", Console(width=width, markup=False, emoji=False))

    return at


LONG_NAME = "train/" + "x" * 174  # 180 characters


def test_a_table_at_a_narrow_terminal_never_cuts_a_name(client: FakeClient, narrow: Any) -> None:
    # At 80 columns ls printed "train/x…", and stat did not show which shard it was.
    narrow(80)
    client.shards = {LONG_NAME, "a b, c"}
    listed = invoke("ls", "ds")
    assert listed.exit_code == 0, listed.output
    lines = listed.stdout.splitlines()
    assert [line for line in lines if LONG_NAME in line] and "…" not in listed.stdout
    assert [line for line in lines if "a b, c" in line]  # on one line
    shown = invoke("stat", "ds", LONG_NAME)
    assert shown.exit_code == 0 and LONG_NAME in shown.stdout
    # A name with a space and a comma wrapped onto two rows of the table.
    client.shards = {"a b, c", "d"}
    table = invoke("ls", "ds").stdout
    assert "a b, c" in table and "─" in table  # it fits: still a table


def test_stats_at_a_narrow_terminal_never_cut_a_name_or_a_number(
    client: FakeClient, narrow: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # At 100 columns: "anal…", "96.…", "arch…".
    figures = client.stats("")
    usage = figures["datasets"].pop("idle") | {"hits": 9612, "misses": 388, "hit_ratio": 0.9612}
    figures["datasets"]["analytics-eu-west"] = usage
    monkeypatch.setattr(client, "stats", lambda dataset, sizing=False: figures)
    for width in (100, 160, 200):
        narrow(width)
        shown = invoke("stats")
        assert shown.exit_code == 0, shown.output
        assert "…" not in shown.stdout, shown.stdout
        assert "analytics-eu-west" in shown.stdout and "96.1%" in shown.stdout
        assert "archived" in shown.stdout and "miss ratio (LRU)" in shown.stdout


# Ctrl-C part way through the shards


@pytest.mark.parametrize("as_json", [True, False])
@pytest.mark.parametrize(
    ("command", "call", "done"),
    [
        ("rm", "delete", "deleted"),
        ("pin", "pin", "pinned"),
        ("unpin", "unpin", "unpinned"),
        ("evict", "evict", "evicted"),
    ],
)
def test_ctrl_c_part_way_reports_what_was_done_and_what_is_in_doubt(
    client: FakeClient,
    monkeypatch: pytest.MonkeyPatch,
    command: str,
    call: str,
    done: str,
    as_json: bool,
) -> None:
    # 214 of 300 shards were deleted, and nothing said so: stdout and stderr empty.
    first = "pinned" if command == "unpin" else "a"  # the fake's "a" is not pinned
    client.shards = {first, "b", "c"}
    made = getattr(client, call)

    def until_ctrl_c(dataset: str, shard: str, **options: Any) -> Any:
        if shard == "b":
            raise KeyboardInterrupt  # while its call was on its way
        return made(dataset, shard, **options)

    monkeypatch.setattr(client, call, until_ctrl_c)
    stopped = invoke(*(["--json"] if as_json else []), command, "ds", first, "b", "c")
    assert stopped.exit_code == 130
    line = one_error_line(stopped)
    assert "Interrupted: stopped by Ctrl-C; 'b' was on its way" in line
    assert f"the rest were not {done}" in line
    assert (call, ("ds", "c")) not in client.calls
    if as_json:
        report = json.loads(stopped.stdout)
        assert (report[done], report[f"not_{done}"], report["in_doubt"]) == (
            [first],
            ["b", "c"],
            "b",
        )
    else:
        assert stopped.stdout.splitlines()[0] == f"{done} 1 of 3 shards before Ctrl-C: {first}"


def test_ctrl_c_before_the_first_shard_is_done_still_says_so(
    client: FakeClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    client.shards = {"a", "b"}

    def interrupted(dataset: str, shard: str) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(client, "delete", interrupted)
    stopped = invoke("--json", "rm", "ds", "a", "b")
    assert stopped.exit_code == 130
    assert json.loads(stopped.stdout) == {"deleted": [], "not_deleted": ["a", "b"], "in_doubt": "a"}
    told = invoke("rm", "ds", "a", "b")
    assert told.exit_code == 130
    assert told.stdout.strip() == "deleted 0 of 2 shards before Ctrl-C"
    assert "'a' was on its way" in one_error_line(told)


def test_ctrl_c_while_evict_asks_why_a_shard_stayed_hot_still_reports(
    client: FakeClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    client.shards = {"a", "pinned", "b"}

    def interrupted(dataset: str, shard: str) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(client, "stat", interrupted)
    stopped = invoke("--json", "evict", "ds", "a", "pinned", "b")
    assert stopped.exit_code == 130
    assert json.loads(stopped.stdout) == {
        "evicted": ["a", "b"],
        "already_cold": [],
        "not_evicted": [],
        "freed_bytes": 200,
        "kept": {"pinned": "not known (stopped by Ctrl-C before asking)"},
        "in_doubt": None,
    }
    assert "stopped by Ctrl-C; the rest were not evicted" in one_error_line(stopped)


# a server that does not answer


@pytest.fixture
def silent_server() -> Iterator[str]:
    """The address of a listener that accepts connections and never answers: a
    stopped (SIGSTOP) or overloaded server."""
    listener = socket.create_server(("127.0.0.1", 0), backlog=16)
    accepted: list[socket.socket] = []

    def accept() -> None:
        with contextlib.suppress(OSError):  # closed at the end of the test
            while True:
                accepted.append(listener.accept()[0])

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{listener.getsockname()[1]}"
    finally:
        with contextlib.suppress(OSError):
            listener.shutdown(socket.SHUT_RDWR)  # wakes the accept, as close does not
        listener.close()
        thread.join(timeout=5)
        for connection in accepted:
            connection.close()


def test_a_server_that_never_answers_is_not_called_a_ca_problem(
    silent_server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # "Handshake read failed (Endpoint closing) (TLS failed: is --ca / TIERSTORE_CA the
    # server's tls/ca.pem...)": the server took the connection and never answered.
    secure_channel = grpc.secure_channel

    def quick_to_give_up(target: str, credentials: Any, options: Any = ()) -> Any:
        # gRPC gives a connection 20 s for its handshake; here half a second.
        options = [*options, ("grpc.min_reconnect_backoff_ms", 500)]
        return secure_channel(target, credentials, options=options)

    monkeypatch.setattr(grpc, "secure_channel", quick_to_give_up)
    monkeypatch.delenv("TIERSTORE_CA", raising=False)
    stopped = invoke("--address", silent_server, "--token", "t", "--timeout", "10", "dataset", "ls")
    assert stopped.exit_code == 5
    line = one_error_line(stopped)
    assert "Endpoint closing" in line, line
    assert "accepted the connection but did not answer" in line
    assert "--ca" not in line


def test_a_server_certificate_the_ca_rejects_exits_2_not_the_retry_code() -> None:
    # Exit 5 says "unavailable, try again": a script retrying on it retried a wrong CA
    # file for ever (the same CA rejects the same certificate every time).
    rejected = errors.ServerCertificateRejected("CERTIFICATE_VERIFY_FAILED")
    assert cli_output.fail(rejected).exit_code == 2
    assert cli_output.fail(errors.Unavailable("connection refused")).exit_code == 5
