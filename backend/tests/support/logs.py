"""The process's log records, captured the way the app writes them in production."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager


def _app_formatter() -> logging.Formatter:
    # The JSON formatter `configure_logging` installs, so `extra=` fields are searched too.
    for handler in logging.getLogger().handlers:
        if handler.formatter is not None and not isinstance(handler, RecordingHandler):
            return handler.formatter
    return logging.Formatter()


class RecordingHandler(logging.Handler):
    """Keeps every record, formatted the way the app formats them for production."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)
        # The production formatter, so `extra=` fields and tracebacks are searched as well.
        self.lines.append(_app_formatter().format(record))

    def at_least(self, level: int) -> list[logging.LogRecord]:
        return [record for record in self.records if record.levelno >= level]


@contextmanager
def recorded_logs() -> Iterator[RecordingHandler]:
    """Every log record of the process while the block runs (attach after `create_app`)."""
    handler = RecordingHandler()
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield handler
    finally:
        root.removeHandler(handler)
