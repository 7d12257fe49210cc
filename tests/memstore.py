"""An in-memory `ObjectStore` with S3's rules, and faults a test injects.

What it keeps as S3 does: ETags (the MD5 of a single PUT, `md5(md5s)-N` of a multipart upload),
conditional writes (`expect`: "*" = the key must be absent, an ETag = it must still be that
version), conditional copies and part copies (the source's ETag), multipart uploads that
exist until completed or aborted, listings sorted by key with a delimiter, `max_keys` paging and
`start_after`, and the 2 KiB limit on user metadata (whose names S3 lowercases).  The shared
contract test (tests/core/test_store_contract.py) runs the same checks on this store, moto and
SeaweedFS, so the model cannot drift from real servers.

Faults (`MemoryStore.faults`) are rules matched against each call by operation name and key:
- `fail(op, key, error)`: the call raises before it changes anything;
- `lose_reply(op, key)`: the call takes effect, then raises `RemoteIO` as a timeout would (the
  client cannot tell whether it landed);
- `cut(key)`: a GET's body breaks off in the middle (after `S3Store`'s resumes, `RemoteIO`);
- `hold(op, key)`: the call waits until the test releases it (`Hold.release`); `Hold.reached`
  is set when a call is waiting there.
Each rule fires `times` times (None: until removed with `faults.clear()`).
Other clients write with the synchronous `put_now`, `delete_now` and `copy_now`.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field

import trio

from s3mount import errors
from s3mount.store import EXPECT_ABSENT, USER_METADATA_LIMIT, ListPage, ObjectInfo, metadata_size

MIN_PART_SIZE = 5 * 1024 * 1024  # S3: every part but the last
MAX_PARTS = 10_000


def md5(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


@dataclass(frozen=True)
class StoredObject:
    body: bytes
    etag: str
    mtime: float
    metadata: dict[str, str]
    content_type: str | None = None


@dataclass
class Upload:
    key: str
    metadata: dict[str, str]
    parts: dict[int, tuple[bytes, str]] = field(default_factory=dict)


@dataclass
class Hold:
    """A call held until the test releases it."""

    reached: trio.Event = field(default_factory=trio.Event)
    released: trio.Event = field(default_factory=trio.Event)

    def release(self) -> None:
        self.released.set()


@dataclass
class Rule:
    op: str | None  # None: any operation
    key: str | None  # None: any key
    kind: str  # "fail", "lose", "cut", "hold"
    error: type[errors.FsError] = errors.RemoteIO
    times: int | None = 1
    hold: Hold | None = None

    def matches(self, op: str, key: str) -> bool:
        return (self.op is None or self.op == op) and (self.key is None or self.key == key)


class Faults:
    def __init__(self) -> None:
        self.rules: list[Rule] = []
        self.fired: list[tuple[str, str, str]] = []  # (kind, op, key) of every fault injected
        self.holds: list[Hold] = []

    def _add(self, rule: Rule) -> Rule:
        self.rules.append(rule)
        return rule

    def fail(self, op: str | None = None, key: str | None = None,
             error: type[errors.FsError] = errors.RemoteIO, times: int | None = 1) -> Rule:
        return self._add(Rule(op, key, "fail", error, times))

    def lose_reply(self, op: str | None = None, key: str | None = None,
                   times: int | None = 1) -> Rule:
        return self._add(Rule(op, key, "lose", times=times))

    def cut(self, key: str | None = None, times: int | None = 1) -> Rule:
        return self._add(Rule("get", key, "cut", times=times))

    def hold(self, op: str | None = None, key: str | None = None, times: int | None = 1) -> Hold:
        gate = Hold()
        self._add(Rule(op, key, "hold", times=times, hold=gate))
        self.holds.append(gate)
        return gate

    def clear(self) -> None:
        """Remove every rule, and release every call held (those waiting included)."""
        for gate in self.holds:
            gate.release()
        self.holds.clear()
        self.rules.clear()

    def take(self, op: str, key: str) -> Rule | None:
        for rule in self.rules:
            if rule.matches(op, key):
                if rule.times is not None:
                    rule.times -= 1
                    if rule.times <= 0:
                        self.rules.remove(rule)
                self.fired.append((rule.kind, op, key))
                return rule
        return None


class MemoryStore:
    """A bucket (or a prefix of one) in memory, as an `ObjectStore`."""

    def __init__(self, min_part_size: int = MIN_PART_SIZE) -> None:
        self.objects: dict[str, StoredObject] = {}
        self.uploads: dict[str, Upload] = {}
        self.min_part_size = min_part_size
        self.faults = Faults()
        self.calls: list[tuple[str, str]] = []  # (op, key) of every call, in order
        self._ids = 0

    # -- faults ---------------------------------------------------------------------------------

    async def _enter(self, op: str, key: str) -> Rule | None:
        """Count the call, yield to trio as a request would, and apply a fault rule if one
        matches: `fail` raises here, `lose` and `cut` are returned for the call to apply."""
        self.calls.append((op, key))
        await trio.lowlevel.checkpoint()
        rule = self.faults.take(op, key)
        if rule is None:
            return None
        if rule.kind == "hold":
            assert rule.hold is not None
            rule.hold.reached.set()
            await rule.hold.released.wait()
            return None
        if rule.kind == "fail":
            raise rule.error(f"{op} {key}: injected fault")
        return rule

    @staticmethod
    def _lost(rule: Rule | None, op: str, key: str) -> None:
        if rule is not None and rule.kind == "lose":
            raise errors.RemoteIO(f"{op} {key}: read timeout (injected; the request landed)")

    # -- the state, for other clients and checks ---------------------------------------------

    def _store(self, key: str, body: bytes, metadata: dict[str, str], etag: str | None = None,
               content_type: str | None = None) -> str:
        meta = {k.lower(): v for k, v in metadata.items()}
        if metadata_size(meta) > USER_METADATA_LIMIT:
            raise errors.RemoteIO(f"PUT {key}: MetadataTooLarge")
        etag = etag or md5(body)
        self.objects[key] = StoredObject(body, etag, float(int(time.time())), meta, content_type)
        return etag

    def _check(self, key: str, expect: str | None) -> None:
        current = self.objects.get(key)
        if expect == EXPECT_ABSENT:
            if current is not None:
                raise errors.Stale(f"{key}: PreconditionFailed (exists)")
        elif expect is not None:
            if current is None:
                raise errors.NotFound(f"{key}: NoSuchKey (If-Match)")
            if current.etag != expect:
                raise errors.Stale(f"{key}: PreconditionFailed (ETag)")

    def put_now(self, key: str, body: bytes, metadata: dict[str, str] | None = None) -> str:
        """Another client's PUT."""
        return self._store(key, body, metadata or {})

    def delete_now(self, key: str) -> None:
        """Another client's DELETE."""
        self.objects.pop(key, None)

    def copy_now(self, src: str, dst: str) -> str:
        """Another client's CopyObject (metadata copied)."""
        obj = self.objects[src]
        return self._store(dst, obj.body, obj.metadata, content_type=obj.content_type)

    def body(self, key: str) -> bytes | None:
        obj = self.objects.get(key)
        return None if obj is None else obj.body

    # -- ObjectStore ---------------------------------------------------------------------------

    async def check(self) -> None:
        await self._enter("check", "")

    async def head(self, key: str, ahead: bool = False) -> ObjectInfo | None:
        await self._enter("head", key)
        obj = self.objects.get(key)
        if obj is None:
            return None
        return ObjectInfo(key, len(obj.body), obj.etag, obj.mtime, dict(obj.metadata))

    async def list_page(self, prefix: str, delimiter: str | None, token: str | None = None,
                        max_keys: int = 1000, start_after: str | None = None) -> ListPage:
        await self._enter("list", prefix)
        after = token if token is not None else start_after
        objects: list[ObjectInfo] = []
        prefixes: list[str] = []
        last = None
        for key in sorted(self.objects):
            if not key.startswith(prefix):
                continue
            entry, common = key, False
            if delimiter:
                cut = key.find(delimiter, len(prefix))
                if cut >= 0:
                    entry, common = key[:cut + len(delimiter)], True
            if after is not None and entry <= after:
                continue
            if entry == last:
                continue  # a common prefix already given
            if len(objects) + len(prefixes) == max_keys:
                return ListPage(objects, prefixes, last)
            last = entry
            if common:
                prefixes.append(entry)
            else:
                obj = self.objects[key]
                objects.append(ObjectInfo(key, len(obj.body), obj.etag, obj.mtime, None))
        return ListPage(objects, prefixes, None)

    def _source(self, what: str, key: str, etag: str | None) -> StoredObject:
        """The object a GET or a copy reads, pinned to `etag` when given (If-Match)."""
        obj = self.objects.get(key)
        if obj is None:
            raise errors.NotFound(f"{what} {key}: NoSuchKey")
        if etag and obj.etag != etag:
            raise errors.Stale(f"{what} {key}: PreconditionFailed")
        return obj

    async def get_range(self, key: str, start: int, end: int, etag: str | None) -> bytes:
        rule = await self._enter("get", key)
        obj = self._source("GET", key, etag)
        if start >= len(obj.body) and obj.body:
            raise errors.InvalidArgument(f"GET {key}: InvalidRange")
        data = obj.body[start:end]
        if rule is not None and rule.kind == "cut":
            raise errors.RemoteIO(f"GET {key}: the answer broke off at byte "
                                  f"{start + len(data) // 2} (injected)")
        self._lost(rule, "GET", key)
        return data

    async def put(self, key: str, body: bytes, metadata: dict[str, str],
                  content_type: str | None = None) -> str:
        rule = await self._enter("put", key)
        etag = self._store(key, body, metadata, content_type=content_type)
        self._lost(rule, "PUT", key)
        return etag

    async def put_file(self, key: str, path: str, size: int, metadata: dict[str, str],
                       expect: str | None = None) -> str:
        rule = await self._enter("put", key)
        with open(path, "rb") as f:
            body = f.read(size)
        if len(body) != size:
            raise errors.RemoteIO(f"PUT {key}: IncompleteBody ({len(body)} of {size} bytes)")
        self._check(key, expect)
        etag = self._store(key, body, metadata)
        self._lost(rule, "PUT", key)
        return etag

    async def copy(self, src: str, dst: str, size: int, metadata: dict[str, str] | None,
                   expect: str | None = None) -> str:
        rule = await self._enter("copy", dst)
        obj = self._source("COPY", src, expect)
        if src == dst and metadata is None:
            raise errors.RemoteIO(f"COPY {src}: InvalidRequest (a copy onto itself must "
                                  "replace its metadata)")
        meta = obj.metadata if metadata is None else metadata
        etag = self._store(dst, obj.body, meta, md5(obj.body), obj.content_type)
        self._lost(rule, "COPY", dst)
        return etag

    async def delete(self, key: str) -> None:
        rule = await self._enter("delete", key)
        self.objects.pop(key, None)
        self._lost(rule, "DELETE", key)

    async def delete_many(self, keys: list[str]) -> None:
        for key in keys:
            await self.delete(key)

    async def create_multipart(self, key: str, metadata: dict[str, str]) -> str:
        await self._enter("create_multipart", key)
        meta = {k.lower(): v for k, v in metadata.items()}
        if metadata_size(meta) > USER_METADATA_LIMIT:
            raise errors.RemoteIO(f"CREATE-MPU {key}: MetadataTooLarge")
        self._ids += 1
        upload_id = f"upload-{self._ids}"
        self.uploads[upload_id] = Upload(key, meta)
        return upload_id

    def _upload(self, key: str, upload_id: str) -> Upload:
        upload = self.uploads.get(upload_id)
        if upload is None or upload.key != key:
            raise errors.NotFound(f"{key}: NoSuchUpload {upload_id}")
        return upload

    def _add_part(self, key: str, upload_id: str, number: int, data: bytes) -> str:
        upload = self._upload(key, upload_id)
        if not 1 <= number <= MAX_PARTS:
            raise errors.InvalidArgument(f"PART {number} of {key}: InvalidArgument")
        etag = md5(data)
        upload.parts[number] = (data, etag)
        return etag

    async def upload_part(self, key: str, upload_id: str, number: int, path: str, offset: int,
                          length: int) -> str:
        rule = await self._enter("upload_part", key)
        with open(path, "rb") as f:
            f.seek(offset)
            data = f.read(length)
        if len(data) != length:
            raise errors.RemoteIO(f"PART {number} of {key}: IncompleteBody")
        etag = self._add_part(key, upload_id, number, data)
        self._lost(rule, "PART", key)
        return etag

    async def upload_part_copy(self, key: str, upload_id: str, number: int, source: str,
                               start: int, end: int, source_etag: str | None) -> str:
        rule = await self._enter("upload_part_copy", key)
        obj = self._source(f"PART-COPY {number} of {key} from", source, source_etag)
        if not 0 <= start < end <= len(obj.body):
            raise errors.InvalidArgument(f"PART-COPY {number} of {key}: InvalidRange")
        etag = self._add_part(key, upload_id, number, obj.body[start:end])
        self._lost(rule, "PART-COPY", key)
        return etag

    async def complete_multipart(self, key: str, upload_id: str,
                                 parts: list[tuple[int, str]], expect: str | None = None,
                                 ) -> str:
        rule = await self._enter("complete_multipart", key)
        upload = self._upload(key, upload_id)
        parts = sorted(parts)  # S3Store sends them in order, whatever order it is given
        numbers = [n for n, _ in parts]
        if not parts or len(numbers) != len(set(numbers)):
            raise errors.RemoteIO(f"COMPLETE-MPU {key}: InvalidPartOrder")
        pieces = []
        for i, (number, etag) in enumerate(parts):
            stored = upload.parts.get(number)
            if stored is None or stored[1] != etag.strip('"'):
                raise errors.RemoteIO(f"COMPLETE-MPU {key}: InvalidPart {number}")
            if i < len(parts) - 1 and len(stored[0]) < self.min_part_size:
                raise errors.RemoteIO(f"COMPLETE-MPU {key}: EntityTooSmall (part {number})")
            pieces.append(stored[0])
        self._check(key, expect)
        digests = b"".join(bytes.fromhex(upload.parts[n][1]) for n in numbers)
        etag = self._store(key, b"".join(pieces), upload.metadata,
                           f"{md5(digests)}-{len(parts)}")
        del self.uploads[upload_id]
        self._lost(rule, "COMPLETE-MPU", key)
        return etag

    async def abort_multipart(self, key: str, upload_id: str) -> None:
        rule = await self._enter("abort_multipart", key)
        self._upload(key, upload_id)
        del self.uploads[upload_id]
        self._lost(rule, "ABORT-MPU", key)
