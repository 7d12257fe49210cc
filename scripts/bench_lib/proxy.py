"""A loopback HTTP proxy that models a network link and counts requests by kind.

The link: every byte takes `delay`/2 to cross each way (a delay line per direction, so a request
costs one round trip before its first response byte, and `Expect: 100-continue` costs its own),
a new connection costs one round trip before its first request goes on (the TCP handshake), and
with `conn_mbps` each TCP connection carries at most that many MB/s each way (a token bucket per
connection and direction, as S3 serves about 85-90 MB/s per connection).  Every contender (the
mount, raw boto3, s3fs, rclone) goes through the same proxy, so ratios compare like with like.

Each client connection gets its own upstream connection and four threads: one parses the
client's HTTP/1.1 requests (headers, then a Content-Length or chunked body) to count them and
feeds them to the upstream delay line; one reads the server's bytes into the downstream delay
line unchanged (so `100 Continue`, keep-alive and streaming responses need no special handling);
each line has a sender that holds bytes until they are due and paces them.  The Host header is
forwarded untouched, so signatures made for the proxy's address still verify.  Counters are
guarded by one lock; `snapshot()` returns a copy for before/after differences.
"""

from __future__ import annotations

import queue
import socket
import threading
import time
from collections import Counter
from urllib.parse import parse_qs, urlsplit

BUF = 1024 * 1024
SLICE = 64 * 1024  # bytes sent at once by a paced line: smooth enough at 25 MB/s (2.6 ms)
LINE_DEPTH = 64  # pieces a delay line holds: the reader blocks beyond (TCP's back-pressure)


class _Line:
    """One direction of one connection: bytes arrive `delay` after they were put in, at most
    `rate` bytes per second (0: no cap)."""

    def __init__(self, dest: socket.socket, delay: float, rate: float) -> None:
        self.dest = dest
        self.delay = delay
        self.rate = rate
        self.pieces: queue.Queue[tuple[float, bytes | None]] = queue.Queue(LINE_DEPTH)
        self.broken = False
        self.thread = threading.Thread(target=self._send, daemon=True, name="proxy-line")
        self.thread.start()

    def put(self, data: bytes) -> None:
        if self.broken:
            raise OSError("the other side is gone")
        self.pieces.put((time.monotonic() + self.delay, data))

    def close(self) -> None:
        """Deliver what is queued, then shut the destination's write side."""
        self.pieces.put((time.monotonic() + self.delay, None))

    def _send(self) -> None:
        free_at = 0.0  # when the token bucket lets the next byte go
        try:
            while True:
                due, data = self.pieces.get()
                wait = due - time.monotonic()
                if wait > 0:
                    time.sleep(wait)
                if data is None:
                    self.dest.shutdown(socket.SHUT_WR)
                    return
                view = memoryview(data)
                while view:
                    piece, view = view[:SLICE], view[SLICE:]
                    if self.rate:
                        now = time.monotonic()
                        free_at = max(free_at, now) + len(piece) / self.rate
                        if free_at - now > 0.002:
                            time.sleep(free_at - now)
                    self.dest.sendall(piece)
        except OSError:
            self.broken = True
            while True:  # drain, so a reader blocked on a full line is let go
                try:
                    if self.pieces.get(timeout=1)[1] is None:
                        return
                except queue.Empty:
                    return


def classify(method: str, target: str, headers: dict[str, str]) -> str:
    """The S3 operation a request is, from its method, path-style URL and headers."""
    parts = urlsplit(target)
    query = parse_qs(parts.query, keep_blank_values=True)
    path = parts.path.strip("/")
    on_bucket = "/" not in path
    copy = "x-amz-copy-source" in headers
    if method == "GET":
        if on_bucket:
            return "ListObjects" if "uploads" not in query else "ListMultipartUploads"
        if "range" in headers:
            return "GetObject(range)"
        return "GetObject"
    if method == "HEAD":
        return "HeadBucket" if on_bucket else "HeadObject"
    if method == "PUT":
        if "partNumber" in query:
            return "UploadPartCopy" if copy else "UploadPart"
        if on_bucket:
            return "CreateBucket"
        return "CopyObject" if copy else "PutObject"
    if method == "POST":
        if "uploads" in query:
            return "CreateMultipartUpload"
        if "uploadId" in query:
            return "CompleteMultipartUpload"
        if "delete" in query:
            return "DeleteObjects"
        return "POST"
    if method == "DELETE":
        return "AbortMultipartUpload" if "uploadId" in query else "DeleteObject"
    return method


class DelayProxy:
    """Listens on 127.0.0.1 (a free port), forwards to 127.0.0.1:`upstream_port`, with
    `delay_ms` of round-trip time and at most `conn_mbps` MB/s per connection each way."""

    def __init__(self, upstream_port: int, delay_ms: float, conn_mbps: float = 0.0) -> None:
        self.upstream_port = upstream_port
        self.delay = delay_ms / 1000.0
        self.rate = conn_mbps * 1e6
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()
        self._bytes_up = 0
        self._expect_continue = 0
        self.connections = 0
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._stopping = False
        self._thread = threading.Thread(target=self._accept_loop, name="proxy-accept",
                                        daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def describe(self) -> str:
        link = [f"{self.delay * 1000:g} ms round trip per request (and per new connection)"]
        if self.rate:
            link.append(f"{self.rate / 1e6:g} MB/s per connection each way")
        return ", ".join(link)

    def start(self) -> DelayProxy:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping = True
        try:
            self._listener.close()
        except OSError:
            pass

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            out = dict(self._counts)
            out["_requests"] = sum(self._counts.values())
            out["_expect_100_continue"] = self._expect_continue
            out["_bytes_up"] = self._bytes_up
            out["_connections"] = self.connections
            return out

    @staticmethod
    def difference(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
        return {k: v - before.get(k, 0) for k, v in after.items() if v - before.get(k, 0)}

    # -- plumbing ------------------------------------------------------------------------------

    def _accept_loop(self) -> None:
        while not self._stopping:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                self.connections += 1
            threading.Thread(target=self._serve, args=(client,), daemon=True,
                             name="proxy-conn").start()

    def _serve(self, client: socket.socket) -> None:
        if self.delay:
            time.sleep(self.delay)  # the handshake's round trip
        try:
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
        except OSError:
            client.close()
            return
        for s in (client, upstream):
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        up = _Line(upstream, self.delay / 2, self.rate)
        down = _Line(client, self.delay / 2, self.rate)
        back = threading.Thread(target=self._pipe_back, args=(upstream, down), daemon=True,
                                name="proxy-back")
        back.start()
        try:
            self._forward_requests(client, up)
        except OSError:
            pass
        finally:
            up.close()
            up.thread.join(timeout=600)
            back.join(timeout=600)
            down.thread.join(timeout=600)
            for s in (upstream, client):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            client.close()
            upstream.close()

    @staticmethod
    def _pipe_back(upstream: socket.socket, down: _Line) -> None:
        try:
            while data := upstream.recv(BUF):
                down.put(data)
        except OSError:
            pass
        down.close()

    def _forward_requests(self, client: socket.socket, up: _Line) -> None:
        reader = _Reader(client)
        while True:
            head = reader.read_until(b"\r\n\r\n")
            if head is None:
                return
            lines = head.decode("latin-1").split("\r\n")
            method, target, _ = (lines[0].split(" ", 2) + ["", ""])[:3]
            headers = {}
            for line in lines[1:]:
                name, _, value = line.partition(":")
                if name:
                    headers[name.strip().lower()] = value.strip()
            length = int(headers.get("content-length", "0") or 0)
            chunked = "chunked" in headers.get("transfer-encoding", "").lower()
            with self._lock:
                self._counts[classify(method, target, headers)] += 1
                self._bytes_up += length
                if headers.get("expect", "").lower() == "100-continue":
                    self._expect_continue += 1
            up.put(head)
            if chunked:
                self._forward_chunked(reader, up)
            else:
                reader.forward(length, up.put)

    @staticmethod
    def _forward_chunked(reader: _Reader, up: _Line) -> None:
        while True:
            line = reader.read_until(b"\r\n")
            if line is None:
                raise OSError("connection closed inside a chunked body")
            up.put(line)
            size = int(line.split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while True:  # trailers, up to the empty line
                    trailer = reader.read_until(b"\r\n")
                    if trailer is None:
                        return
                    up.put(trailer)
                    if trailer == b"\r\n":
                        return
            reader.forward(size + 2, up.put)


class _Reader:
    """Buffered reads from a socket: up to a delimiter, or N bytes handed to `send`."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = b""

    def read_until(self, delim: bytes) -> bytes | None:
        while True:
            at = self.buf.find(delim)
            if at >= 0:
                out, self.buf = self.buf[: at + len(delim)], self.buf[at + len(delim):]
                return out
            data = self.sock.recv(BUF)
            if not data:
                return None
            self.buf += data

    def forward(self, count: int, send) -> None:  # type: ignore[no-untyped-def]
        if self.buf:
            take = self.buf[:count]
            self.buf = self.buf[len(take):]
            send(take)
            count -= len(take)
        while count > 0:
            data = self.sock.recv(min(BUF, count))
            if not data:
                raise OSError("connection closed inside a body")
            send(data)
            count -= len(data)
