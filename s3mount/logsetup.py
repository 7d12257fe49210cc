"""Logging set-up: lines with time stamps for log files, pipes and terminals, and sd-daemon
priority prefixes without time stamps (journald adds its own) when stderr is systemd's journal
stream; noisy libraries kept at WARNING."""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

JOURNAL_PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3,
                    logging.CRITICAL: 2}


class JournalFormatter(logging.Formatter):
    """Lines for journald: each starts with its sd-daemon priority (`<3>` error ... `<7>` debug),
    which journald turns into the entry's PRIORITY; no time stamps, no colour."""

    def format(self, record: logging.LogRecord) -> str:
        prefix = f"<{JOURNAL_PRIORITY.get(record.levelno, 6)}>"
        return "\n".join(prefix + line for line in super().format(record).splitlines())


def on_journal(stream: Any) -> bool:
    """True when `stream` is the journald stream systemd gave us ($JOURNAL_STREAM=dev:ino)."""
    dev, _, ino = os.environ.get("JOURNAL_STREAM", "").partition(":")
    try:
        st = os.fstat(stream.fileno())
        return (st.st_dev, st.st_ino) == (int(dev), int(ino))
    except (ValueError, OSError, AttributeError):
        return False


def setup_logging(level: str, stream: Any = None) -> None:
    stream = stream or sys.stderr
    handler = logging.StreamHandler(stream)
    if on_journal(stream):
        handler.setFormatter(JournalFormatter("%(levelname)s %(name)s: %(message)s"))
    else:  # the daemon's log file, a pipe, a terminal: when each line happened matters
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("botocore", "boto3", "urllib3", "s3transfer", "pyfuse3"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
