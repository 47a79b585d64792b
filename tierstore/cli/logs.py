"""Structured logs for ``tierstore serve``: one JSON object per line on stderr.

Fields: ``ts`` (seconds since the epoch), ``level``, ``logger``, ``msg`` and, on
errors, ``exc``. The audit trail is the ``tierstore.audit`` logger (one line per
call: principal, token id, method, outcome — never a token); its lines also carry
their fields as top-level keys (``event``, ``method``, ``principal``, ``token``,
``service``, ``outcome``, ``ms``; ``reason`` and ``peer`` on refusals), so a log
pipeline need not parse ``msg``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sys
import time
from collections.abc import Iterator

__all__ = [
    "QUIET_LIBRARIES",
    "configure_logging",
    "errors_as_json",
    "json_error_line",
    "logging_as_json",
]

#: Libraries whose lines are kept at INFO and above whatever the level asked for:
#: botocore's debug lines carry every archive request's Authorization header (the
#: access key id and signature), canonical request and string to sign, which anyone
#: reading the log could replay while the signature holds (15 minutes).
QUIET_LIBRARIES = ("botocore", "boto3", "s3transfer", "urllib3")


#: Whether the command running is a node's (inside :func:`errors_as_json`).
_as_json = False


@contextlib.contextmanager
def errors_as_json() -> Iterator[None]:
    """While ``tierstore serve`` runs, once its options are read and its log is JSON
    lines: its error line goes out as one of them too (:func:`json_error_line`), not
    as text a log pipeline cannot parse. Only for that call: a CLI called in-process
    after it (a test, a library user) writes its own plain line."""
    global _as_json
    before, _as_json = _as_json, True
    try:
        yield
    finally:
        _as_json = before


def logging_as_json() -> bool:
    """Whether errors go out as JSON lines now (see :func:`errors_as_json`)."""
    return _as_json


def json_error_line(name: str, text: str) -> str:
    """The JSON log line of an error of class ``name`` saying ``text``: what the log's
    own error lines hold, and ``error``, the class."""
    document = {
        "ts": round(time.time(), 3),
        "level": "error",
        "logger": "tierstore.cli",
        "msg": f"{name}: {text}",
        "error": name,
    }
    return json.dumps(document, ensure_ascii=False)


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        document = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):  # never over the fields every line has
            document.update({k: v for k, v in fields.items() if k not in document})
        if record.exc_info:
            document["exc"] = self.formatException(record.exc_info)
        return json.dumps(document, ensure_ascii=False)


def configure_logging(level: str = "info") -> None:
    """Send every log record of the process to stderr as JSON lines, at ``level``; the
    S3 client's libraries (:data:`QUIET_LIBRARIES`) at INFO at the most detailed."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    floor = max(root.level, logging.INFO)
    for name in QUIET_LIBRARIES:
        logging.getLogger(name).setLevel(floor)
