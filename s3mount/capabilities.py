"""What the S3 endpoint of a mount supports: one immutable `Capabilities`, found once at mount.

`probing.py` fills it in (mount.py asks, then hands it to whoever needs it by constructor
injection); everything else only reads it.  A field is True when the feature was seen to work,
False when it was seen missing or ignored, and None when it was not probed (a read-only mount
writes no probe objects).  The defaults describe AWS S3, for objects built without a probe.
"""

from __future__ import annotations

from dataclasses import dataclass, fields


@dataclass(frozen=True)
class Capabilities:
    conditional_put: bool | None = True  # PutObject honours If-None-Match: * and If-Match
    marker_metadata: bool | None = True  # a `dir/` marker keeps its user metadata
    copy_source_if_match: bool | None = True  # CopyObject honours x-amz-copy-source-if-match
    upload_part_copy: bool | None = True  # UploadPartCopy works
    list_v2: bool = True  # ListObjectsV2 (else ListObjects, V1)
    checksums: bool | None = True  # x-amz-checksum-* stored and returned

    def summary(self) -> str:
        """One line for the log: `name=yes|no|unknown ...`."""
        words = {True: "yes", False: "no", None: "not probed"}
        return ", ".join(f"{f.name.replace('_', '-')}: {words[getattr(self, f.name)]}"
                         for f in fields(self))
