"""The daemon's log formats: lines of text, or one JSON object per line (``log_format``, docs/operations.md).

A JSON line holds ``time`` (UTC, ISO 8601, milliseconds), ``level``, ``logger``, ``event`` (``log`` for a line
that names none), ``message``, and every field the log call passed with ``extra=`` (``domain``, ``answer``,
``result_type``, ``duration``, ``policy_id``, ...); an exception's traceback is ``exception``, one string.
Text lines are never coloured (so ``NO_COLOR`` has nothing to turn off).
"""

from __future__ import annotations

import datetime
import json
import logging
import sys
from typing import Final

__all__ = ["TEXT_FORMAT", "JsonFormatter", "configure_logging"]

#: The text lines' format.
TEXT_FORMAT: Final = "%(asctime)s %(levelname)s %(name)s: %(message)s"

# What every LogRecord has: anything else on a record came from extra=.
_STANDARD: Final = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line (newlines inside values are escaped)."""

    def format(self, record: logging.LogRecord) -> str:
        when = datetime.datetime.fromtimestamp(record.created, datetime.UTC)
        line: dict[str, object] = {
            "time": when.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": "log",
            "message": record.getMessage(),
        }
        for name, value in vars(record).items():
            if name not in _STANDARD and not name.startswith("_"):
                line[name] = value
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            line["exception"] = record.exc_text
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        return json.dumps(line, ensure_ascii=False, default=str)


def configure_logging(level: str, log_format: str) -> None:
    """Log to stderr at ``level`` (a name: ``info``) in ``log_format`` (``text`` or ``json``), as
    :func:`logging.basicConfig` does: nothing changes if the root logger has handlers already."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT))
    logging.basicConfig(level=level.upper(), handlers=[handler])
