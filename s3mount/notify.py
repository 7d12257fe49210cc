"""sd_notify without a dependency: tell systemd (or whatever set `$NOTIFY_SOCKET`) how we are.

The protocol is one AF_UNIX datagram of `KEY=value` lines to the socket named in `$NOTIFY_SOCKET`;
a name starting with `@` is in the abstract namespace.  systemd accepts messages only from the
service's main process (NotifyAccess=main), so only a foreground s3mount notifies; a daemonized
one drops the variable (`forget`) so it never speaks for a service it merely runs under.
Sending never raises: a mount must not fail because nobody listens.
"""

from __future__ import annotations

import logging
import os
import socket

log = logging.getLogger(__name__)

# How much longer to give a stop that still makes progress (EXTEND_TIMEOUT_USEC, systemd >= 236).
EXTEND_STOP_SECONDS = 120


def socket_address(value: str) -> str | bytes:
    """The address `$NOTIFY_SOCKET` names: a path, or an abstract name given as `@name`."""
    if value.startswith("@"):
        return b"\0" + value[1:].encode()
    return value


class Notifier:
    """Sends state lines to the socket in `$NOTIFY_SOCKET` (no-op when there is none)."""

    def __init__(self, address: str | None = None) -> None:
        self.address = address if address is not None else os.environ.get("NOTIFY_SOCKET")
        self.last_status = ""

    @property
    def enabled(self) -> bool:
        return bool(self.address)

    def send(self, *lines: str) -> bool:
        if not self.address or not lines:
            return False
        message = "\n".join(lines).encode("utf-8", "replace")
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.connect(socket_address(self.address))
                sock.sendall(message)
            return True
        except OSError as exc:
            log.debug("sd_notify to %s failed: %s", self.address, exc)
            return False

    def ready(self, status: str) -> None:
        self.last_status = status
        self.send("READY=1", f"STATUS={status}", f"MAINPID={os.getpid()}")

    def status(self, status: str) -> None:
        """STATUS=..., sent only when it changed (the stop progress ticks every second)."""
        if status != self.last_status:
            self.last_status = status
            self.send(f"STATUS={status}")

    def stopping(self, status: str) -> None:
        self.last_status = status
        self.send("STOPPING=1", f"STATUS={status}")

    def extend_stop(self, seconds: float = EXTEND_STOP_SECONDS) -> None:
        """Ask for more time to stop; sent while the final uploads still make progress."""
        self.send(f"EXTEND_TIMEOUT_USEC={int(seconds * 1_000_000)}")


def forget() -> None:
    """Drop `$NOTIFY_SOCKET` so neither we nor our children speak for the service."""
    os.environ.pop("NOTIFY_SOCKET", None)
