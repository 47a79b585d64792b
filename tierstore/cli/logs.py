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

__all__ = ["configure_logging"]


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
    """Send every log record of the process to stderr as JSON lines."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
