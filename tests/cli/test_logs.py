"""The serve process's JSON log lines (tierstore/cli/logs.py) and the audit lines in them."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from tierstore.cli import logs
from tierstore.server import auth


@pytest.fixture
def json_lines() -> Iterator[io.StringIO]:
    """The audit logger's records, formatted as ``tierstore serve`` writes them."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logs._JsonFormatter())
    logger = logging.getLogger("tierstore.audit")
    old_level, old_propagate = logger.level, logger.propagate
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    try:
        yield stream
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
        logger.propagate = old_propagate


def _documents(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_an_audit_line_carries_its_fields_as_keys(json_lines: io.StringIO) -> None:
    auth._audit("call", method="/tierstore.v1.Shards/Get", principal="loader", ms=12.25)
    (document,) = _documents(json_lines)
    assert document["logger"] == "tierstore.audit"
    assert document["event"] == "call"
    assert document["method"] == "/tierstore.v1.Shards/Get"
    assert document["principal"] == "loader"
    assert document["ms"] == 12.25
    # The message still reads as it did, for people and for grep.
    assert document["msg"] == "call method=/tierstore.v1.Shards/Get principal=loader ms=12.2"


def test_a_field_never_overwrites_the_keys_every_line_has(json_lines: io.StringIO) -> None:
    auth._audit("denied", level="forged", logger="forged", reason="unknown token")
    (document,) = _documents(json_lines)
    assert document["level"] == "info"
    assert document["logger"] == "tierstore.audit"
    assert document["reason"] == "unknown token"


def test_a_plain_line_has_only_the_common_keys(json_lines: io.StringIO) -> None:
    logging.getLogger("tierstore.audit").info("plain %s", "words")
    (document,) = _documents(json_lines)
    assert set(document) == {"ts", "level", "logger", "msg"}
    assert document["msg"] == "plain words"


@pytest.fixture
def root_restored() -> Iterator[None]:
    """The root logger's handlers and level, the S3 client's loggers' levels and whether
    errors go out as JSON lines, put back after the test."""
    root = logging.getLogger()
    handlers, level, as_json = root.handlers[:], root.level, logs._as_json
    quiet = {name: logging.getLogger(name).level for name in logs.QUIET_LIBRARIES}
    try:
        yield
    finally:
        logs._as_json = as_json  # else every later command's error is a JSON line
        root.handlers[:] = handlers
        root.setLevel(level)
        for name, old in quiet.items():
            logging.getLogger(name).setLevel(old)


@pytest.mark.usefixtures("root_restored")
def test_debug_logs_are_tierstores_not_the_s3_clients() -> None:
    # --log-level debug turned on botocore's debug lines: every archive request's
    # Authorization header (access key id and signature), its canonical request and
    # string to sign, which anyone reading the log could replay for 15 minutes.
    logs.configure_logging("debug")
    assert logging.getLogger("tierstore.engine").isEnabledFor(logging.DEBUG)
    for name in ("botocore", "botocore.auth", "boto3", "s3transfer", "urllib3"):
        logger = logging.getLogger(name)
        assert not logger.isEnabledFor(logging.DEBUG), name
        assert logger.isEnabledFor(logging.WARNING), name


def test_an_error_is_a_json_line_only_while_serve_runs(capsys: pytest.CaptureFixture[str]) -> None:
    # Once serve had run in a process, every later command's error went through the
    # logging set up for it: a CLI called in-process after it (a test, a library
    # user) lost its error line to a "--- Logging error ---" of a closed stream.
    from tierstore import errors
    from tierstore.cli.output import fail

    with logs.errors_as_json():
        fail(errors.Unavailable("cannot listen on 127.0.0.1:1 (--listen)"))
    line = json.loads(capsys.readouterr().err)
    assert line["level"] == "error" and line["error"] == "Unavailable"
    assert line["msg"] == "Unavailable: cannot listen on 127.0.0.1:1 (--listen)"
    fail(errors.Unavailable("no node at 127.0.0.1:1"))
    assert capsys.readouterr().err.startswith("error: Unavailable: no node at 127.0.0.1:1")
