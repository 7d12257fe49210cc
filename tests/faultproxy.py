"""A fault-injecting HTTP proxy on loopback, between s3mount and the S3 server.

Each request is forwarded unchanged unless a rule matches it: answer 500, answer 503 SlowDown,
reset the connection, stall before answering, cut the answer off (reset) after N bytes of its
body, or (when `down`) reset everything; `after` runs a callback once the server has done a
request, and drops the answer (a client that dies there).  Response bodies are streamed through
as they come.
An optional `check` (tests/sigv2check.py) refuses badly signed requests first.  Rules count
down and then stop matching.  Runs in threads of the test process, which controls it directly.
Every request is also recorded (`seen`: method, path, headers), and a request in absolute form
(`GET http://host/path`, as sent to a forward proxy) is served like its path, so it can stand
as the `--proxy` of a mount too.
"""

from __future__ import annotations

import http.client
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

HOP_HEADERS = {"connection", "keep-alive", "transfer-encoding", "proxy-connection", "upgrade"}


@dataclass
class Rule:
    action: str  # "500", "503", "reset", "stall", "cut"
    times: int
    method: str | None = None
    query: str | None = None  # substring of the path+query, e.g. "partNumber"
    stall: float = 30.0
    then: Callable[[], None] | None = None  # for "after": run once the server has answered
    after: int = 0  # "cut": body bytes sent before the connection is reset

    def matches(self, method: str, path: str) -> bool:
        return self.times > 0 and (self.method is None or self.method == method) and (
            self.query is None or self.query in path)


@dataclass
class Seen:
    method: str
    path: str  # path and query
    headers: dict[str, str]
    absolute: bool  # sent in absolute form, as to a forward proxy
    body: bytes

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers.items() if k.lower() == name.lower()), None)


class FaultProxy:
    def __init__(self, target: str) -> None:
        parts = urlsplit(target)
        self.target = (parts.hostname, parts.port)
        self.rules: list[Rule] = []
        self.is_down = False
        self.lock = threading.Lock()
        self.requests = 0
        self.injected = 0
        self.seen: list[Seen] = []
        # Refuses a request before anything else: (status, S3 error code), or None to go on.
        self.check: Callable[[str, str, Any], tuple[int, str] | None] | None = None
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # quiet
                pass

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                absolute = self.path.startswith(("http://", "https://"))
                if absolute:
                    parts = urlsplit(self.path)
                    self.path = parts.path + (f"?{parts.query}" if parts.query else "")
                with proxy.lock:
                    proxy.seen.append(Seen(self.command, self.path, dict(self.headers.items()),
                                           absolute, body[:65536]))
                refusal = proxy.check(self.command, self.path, self.headers) if proxy.check \
                    else None
                if refusal is not None:
                    self._error(*refusal)
                    return
                action = proxy._choose(self.command, self.path)
                if callable(action):
                    self._forward_then(body, action)
                    return
                if action == "reset":
                    self._reset()
                    return
                if action is not None and action.startswith("stall:"):
                    time.sleep(float(action.split(":")[1]))
                if action in ("500", "503"):
                    self._error(int(action), "InternalError" if action == "500" else "SlowDown")
                    return
                cut = int(action.split(":")[1]) if action and action.startswith("cut:") else None
                self._forward(body, cut)

            def _reset(self) -> None:
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                           b"\x01\x00\x00\x00\x00\x00\x00\x00")
                self.close_connection = True
                self.connection.close()

            def _error(self, status: int, code: str) -> None:
                payload = f"<Error><Code>{code}</Code><Message>injected</Message></Error>"
                self.send_response(status)
                self.send_header("Content-Type", "application/xml")
                self.send_header("Content-Length", str(len(payload) if
                                                       self.command != "HEAD" else 0))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(payload.encode())

            def _forward(self, body: bytes, cut: int | None = None) -> None:
                """Send the request on; stream the answer back (reset after `cut` body bytes)."""
                conn = http.client.HTTPConnection(*proxy.target, timeout=120)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_HEADERS}
                conn.request(self.command, self.path, body=body, headers=headers)
                resp = conn.getresponse()
                length = resp.getheader("Content-Length")
                data = b""
                if self.command != "HEAD" and length is None:  # no length: buffer to learn it
                    data = resp.read()
                    length = str(len(data))
                self.send_response(resp.status, resp.reason)
                for k, v in resp.getheaders():
                    if k.lower() not in HOP_HEADERS and k.lower() != "content-length":
                        self.send_header(k, v)
                self.send_header("Content-Length", length or "0")
                self.end_headers()
                sent = 0
                try:
                    if self.command == "HEAD":
                        return
                    while True:
                        piece = data or resp.read(64 * 1024)
                        data = b""
                        if not piece:
                            return
                        if cut is not None and sent + len(piece) >= cut:
                            self.wfile.write(piece[:cut - sent])
                            self.wfile.flush()
                            self._reset()
                            return
                        self.wfile.write(piece)
                        sent += len(piece)
                finally:
                    conn.close()

            def _forward_then(self, body: bytes, then: Callable[[], None]) -> None:
                """Let the server do the request, run `then`, and never answer the client."""
                conn = http.client.HTTPConnection(*proxy.target, timeout=120)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_HEADERS}
                conn.request(self.command, self.path, body=body, headers=headers)
                conn.getresponse().read()
                conn.close()
                then()
                self.close_connection = True
                self.connection.close()

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def _choose(self, method: str, path: str) -> str | Callable[[], None] | None:
        with self.lock:
            self.requests += 1
            if self.is_down:
                self.injected += 1
                return "reset"
            for rule in self.rules:
                if rule.matches(method, path):
                    rule.times -= 1
                    self.injected += 1
                    if rule.then is not None:
                        return rule.then
                    if rule.action == "stall":
                        return f"stall:{rule.stall}"
                    if rule.action == "cut":
                        return f"cut:{rule.after}"
                    return rule.action
        return None

    def fail(self, action: str, times: int = 1, method: str | None = None,
             query: str | None = None, stall: float = 30.0, after: int = 0) -> None:
        """Inject `action` into the next `times` matching requests ("cut": the answer's
        connection is reset after `after` bytes of its body)."""
        with self.lock:
            self.rules.append(Rule(action, times, method, query, stall, after=after))

    def after(self, then: Callable[[], None], method: str | None = None,
              query: str | None = None, times: int = 1) -> None:
        """Once the server has done a matching request, call `then` and drop the answer."""
        with self.lock:
            self.rules.append(Rule("after", times, method, query, then=then))

    def clear(self) -> None:
        with self.lock:
            self.rules.clear()
            self.is_down = False

    def down(self) -> None:
        with self.lock:
            self.is_down = True

    def up(self) -> None:
        with self.lock:
            self.is_down = False

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
