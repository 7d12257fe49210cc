"""The FUSE tier's daemon-log check (`helpers.log_failures`) and its prerequisite rule
(`helpers.prerequisite`): both must be able to fail a test."""

from __future__ import annotations

import pytest
from helpers import Expected, log_failures, prerequisite

LINES = ["WARNING s3mount.files: a.txt was changed in the bucket",
         "ERROR s3mount.fuse_ops: flush: PUT a.txt: PreconditionFailed",
         "WARNING s3mount.files: b.txt was changed in the bucket"]


def test_an_undeclared_problem_line_fails():
    assert log_failures(LINES[:1], []) == [f"unexpected: {LINES[0]}"]


def test_declared_lines_must_appear_as_often_as_declared():
    assert log_failures(LINES, [Expected("changed in the bucket", 2, 2),
                                Expected("PreconditionFailed", 1, 1)]) == []
    assert log_failures(LINES, [Expected("changed in the bucket", 1, 1),
                                Expected("PreconditionFailed", 1, None)]) == [
        "expected 1 lines with 'changed in the bucket', saw 2"]
    assert log_failures([], [Expected("PreconditionFailed", 1, None)]) == [
        "expected 1.. lines with 'PreconditionFailed', saw 0"]
    assert log_failures([], [Expected("maybe", 0, None)]) == []


def test_a_missing_prerequisite_fails_unless_opted_out(monkeypatch):
    monkeypatch.delenv("S3MOUNT_SKIP", raising=False)
    with pytest.raises(pytest.fail.Exception, match="S3MOUNT_SKIP=root"):
        prerequisite("root", "needs root")
    monkeypatch.setenv("S3MOUNT_SKIP", "npm,root")
    with pytest.raises(pytest.skip.Exception):
        prerequisite("root", "needs root")
    with pytest.raises(pytest.fail.Exception):
        prerequisite("fuse", "no /dev/fuse")
