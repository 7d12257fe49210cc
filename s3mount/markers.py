"""Directory markers that never depend on CopyObject, and directory attributes that persist on
servers which drop metadata on markers.

`MarkerStore` wraps an `ObjectStore` and changes only what touches a `dir/` marker key:

- a marker is empty, so a copy of one (a directory renamed) is a PUT of a new marker carrying
  the source's metadata: some servers refuse CopyObject from a marker (SeaweedFS: NoSuchKey);
- where the server drops user metadata on markers (`Capabilities.marker_metadata` is False,
  found by the probe at mount), each marker written also writes its directory's attribute
  object `dir/.s3mount-meta` (`keys.RESERVED_NAME`): an empty, ordinary object with the same
  metadata, which such servers keep.  Reading a marker's metadata reads that object first;
  deleting a marker deletes it too, in the same request.  It is never listed (keys.py), moves
  with its directory (a tree rename copies every key under the directory), and makes a
  directory that exists only as a common prefix keep its attributes once it has any;
- where it is not known (a read-only mount does not probe), the marker is read first, and the
  attribute object only when the marker carries no mode.

Everything else passes through to the wrapped store unchanged.
"""

from __future__ import annotations

from typing import Any

from s3mount import errors
from s3mount.capabilities import Capabilities
from s3mount.keys import RESERVED_NAME
from s3mount.store import DIRECTORY_CONTENT_TYPE, ObjectInfo, ObjectStore


def is_marker(key: str) -> bool:
    return key.endswith("/")


def attribute_key(marker: str) -> str:
    """The attribute object of the directory whose marker is `marker` (`dir/`)."""
    return marker + RESERVED_NAME


class MarkerStore:
    def __init__(self, store: ObjectStore, capabilities: Capabilities) -> None:
        self.store = store
        self.keeps_metadata = capabilities.marker_metadata

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)  # every other call and attribute, as the store has it

    async def head(self, key: str, ahead: bool = False) -> ObjectInfo | None:
        if not is_marker(key) or self.keeps_metadata:
            return await self.store.head(key, ahead)
        if self.keeps_metadata is False:
            found = await self.store.head(attribute_key(key))
            return _as_marker(key, found) if found is not None else await self.store.head(key)
        marker = await self.store.head(key)
        if marker is not None and marker.metadata and "mode" in marker.metadata:
            return marker
        found = await self.store.head(attribute_key(key))
        return _as_marker(key, found) if found is not None else marker

    async def put(self, key: str, body: bytes, metadata: dict[str, str],
                  content_type: str | None = None) -> str:
        if not is_marker(key) or self.keeps_metadata is not False:
            return await self.store.put(key, body, metadata, content_type)
        # One after the other: SeaweedFS can lose a marker whose PUT races the creation of a
        # key under it (the folder stays, listed without its marker; 3 `mkdir -p a/b` in 60).
        etag = await self.store.put(key, body, metadata, content_type)
        await self.store.put(attribute_key(key), b"", metadata)
        return etag

    async def copy(self, src: str, dst: str, size: int, metadata: dict[str, str] | None,
                   expect: str | None = None) -> str:
        if not is_marker(src):
            return await self.store.copy(src, dst, size, metadata, expect)
        # A marker has no bytes to adopt by mistake, so `expect` needs no check here.
        if metadata is None:
            found = await self.head(src)
            if found is None:
                raise errors.NotFound(f"COPY {src}: the marker is gone")
            metadata = found.metadata or {}
        return await self.put(dst, b"", metadata, DIRECTORY_CONTENT_TYPE)

    async def delete(self, key: str) -> None:
        if not is_marker(key) or self.keeps_metadata:
            await self.store.delete(key)
        else:
            await self.store.delete_many([attribute_key(key), key])


def _as_marker(key: str, found: ObjectInfo) -> ObjectInfo:
    """The marker as the attribute object describes it."""
    return ObjectInfo(key, 0, found.etag, found.mtime, found.metadata)


