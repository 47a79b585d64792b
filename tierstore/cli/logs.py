"""Structured logs for ``tierstore serve``: one JSON object per line on stderr.

Fields: ``ts`` (seconds since the epoch), ``level``, ``logger``, ``msg`` and, on
errors, ``exc``. The audit trail is the ``tierstore.audit`` logger (one line per
call: principal, token id, method, outcome — never a token); its lines also carry
their fields as top-level keys (``event``, ``method``, ``principal``, ``token``,
``service``, ``outcome``, ``ms``; ``reason`` and ``peer`` on refusals), so a log
pipeline need not parse ``msg``.
"""

from __future__ import annotations

import json
import logging
import sys

__all__ = ["QUIET_LIBRARIES", "configure_logging", "logging_as_json"]

#: Libraries whose lines are kept at INFO and above whatever the level asked for:
#: botocore's debug lines carry every archive request's Authorization header (the
#: access key id and signature), canonical request and string to sign, which anyone
#: reading the log could replay while the signature holds (15 minutes).
QUIET_LIBRARIES = ("botocore", "boto3", "s3transfer", "urllib3")


#: Whether :func:`configure_logging` ran in this process (``tierstore serve``).
_as_json = False


def logging_as_json() -> bool:
    """Whether this process logs JSON lines (``tierstore serve``, once its options are
    read): its error line then goes out as one of them too (:func:`tierstore.cli.output.fail`),
    not as text a log pipeline cannot parse."""
    return _as_json


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
    global _as_json
    _as_json = True
    floor = max(root.level, logging.INFO)
    for name in QUIET_LIBRARIES:
        logging.getLogger(name).setLevel(floor)
