"""Where the project's log lines go: progress and step messages (INFO) to standard output as ``[step] message``,
warnings to standard error as ``warning: message``.

The domain package and the steps log with ``logging`` (loggers under ``liverlesion`` and ``liverlesion_ops``)
and configure nothing; the command line calls ``configure`` once. Each line goes to the stream that is
current when it is written, so a command that prints JSON on standard output (``--json``) can send everything
else to standard error, and ZenML's capture of a step's output sees it. Where nothing configured them (a
step container on a cluster), the lines reach ZenML's own log handler.
"""

from __future__ import annotations

import logging
import sys

#: the loggers of the project's own code
PROJECT_LOGGERS = ("liverlesion", "liverlesion_ops")


class _CurrentStream(logging.StreamHandler):
    """A handler writing to ``sys.stdout`` or ``sys.stderr`` as they are when a record is written."""

    def __init__(self, name: str):
        super().__init__()
        self._name = name

    @property
    def stream(self):
        return getattr(sys, self._name)

    @stream.setter
    def stream(self, value) -> None:  # logging.StreamHandler sets it; the current stream is always used
        pass


class _Format(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        if record.levelno >= logging.WARNING:
            return f"warning: {message}"
        return f"[{record.name.rsplit('.', 1)[-1]}] {message}"


def configure(level: int = logging.INFO) -> None:
    """Send the project's log lines to the current standard output (below WARNING) and standard error; once."""
    for name in PROJECT_LOGGERS:
        logger = logging.getLogger(name)
        if any(isinstance(h, _CurrentStream) for h in logger.handlers):
            continue
        out, err = _CurrentStream("stdout"), _CurrentStream("stderr")
        out.addFilter(lambda record: record.levelno < logging.WARNING)
        err.setLevel(logging.WARNING)
        for handler in (out, err):
            handler.setFormatter(_Format())
            logger.addHandler(handler)
        logger.setLevel(level)
        logger.propagate = False  # ZenML's root handler would print each line a second time
