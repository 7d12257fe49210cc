"""A loopback HTTP proxy that delays every request by a fixed time and counts requests by kind.

Each client connection gets its own upstream connection and two threads: one parses the client's
HTTP/1.1 requests (headers, then a Content-Length or chunked body), sleeps `delay` seconds before
forwarding each request's headers, and counts it; the other copies the server's bytes back
unchanged (so `100 Continue`, keep-alive and streaming responses need no special handling).  The
Host header is forwarded untouched, so signatures made for the proxy's address still verify.
Counters are guarded by one lock; `snapshot()` returns a copy for before/after differences.
"""

from __future__ import annotations

import socket
import threading
import time
from collections import Counter
from urllib.parse import parse_qs, urlsplit

BUF = 1024 * 1024


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
    """Listens on 127.0.0.1 (a free port), forwards to 127.0.0.1:`upstream_port`."""

    def __init__(self, upstream_port: int, delay_ms: float) -> None:
        self.upstream_port = upstream_port
        self.delay = delay_ms / 1000.0
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()
        self._bytes_up = 0
        self._expect_continue = 0
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._stopping = False
        self._thread = threading.Thread(target=self._accept_loop, name="proxy-accept",
                                        daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

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
            threading.Thread(target=self._serve, args=(client,), daemon=True,
                             name="proxy-conn").start()

    def _serve(self, client: socket.socket) -> None:
        try:
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
        except OSError:
            client.close()
            return
        for s in (client, upstream):
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        back = threading.Thread(target=self._pipe_back, args=(upstream, client), daemon=True,
                                name="proxy-back")
        back.start()
        try:
            self._forward_requests(client, upstream)
        except OSError:
            pass
        finally:
            for s in (upstream, client):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            back.join(timeout=5)
            client.close()
            upstream.close()

    @staticmethod
    def _pipe_back(upstream: socket.socket, client: socket.socket) -> None:
        try:
            while data := upstream.recv(BUF):
                client.sendall(data)
        except OSError:
            pass
        try:
            client.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def _forward_requests(self, client: socket.socket, upstream: socket.socket) -> None:
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
            if self.delay:
                time.sleep(self.delay)
            upstream.sendall(head)
            if chunked:
                self._forward_chunked(reader, upstream)
            else:
                reader.forward(length, upstream)

    @staticmethod
    def _forward_chunked(reader: _Reader, upstream: socket.socket) -> None:
        while True:
            line = reader.read_until(b"\r\n")
            if line is None:
                raise OSError("connection closed inside a chunked body")
            upstream.sendall(line)
            size = int(line.split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while True:  # trailers, up to the empty line
                    trailer = reader.read_until(b"\r\n")
                    if trailer is None:
                        return
                    upstream.sendall(trailer)
                    if trailer == b"\r\n":
                        return
            reader.forward(size + 2, upstream)


class _Reader:
    """Buffered reads from a socket: up to a delimiter, or N bytes streamed elsewhere."""

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

    def forward(self, count: int, dest: socket.socket) -> None:
        if self.buf:
            take = self.buf[:count]
            self.buf = self.buf[len(take):]
            dest.sendall(take)
            count -= len(take)
        while count > 0:
            data = self.sock.recv(min(BUF, count))
            if not data:
                raise OSError("connection closed inside a body")
            dest.sendall(data)
            count -= len(data)
