"""Pure pieces of capability handling: the log line, the creation and deletion orders of a
directory tree, and the SigV2 path fix on a botocore-shaped request."""

from __future__ import annotations

from types import SimpleNamespace

from s3mount.capabilities import Capabilities
from s3mount.keys import creation_rounds, deletion_order
from s3mount.s3client import send_the_signed_path


def test_summary_names_every_capability():
    line = Capabilities(conditional_put=False, marker_metadata=None).summary()
    assert line.startswith("conditional-put: no, marker-metadata: not probed, ")
    assert line.endswith("list-v2: yes, checksums: yes")


def test_deletion_order_puts_contents_before_their_directory():
    keys = ["src/", "src/one", "src/sub/deep/x", "src/sub/.s3mount-meta"]
    order = deletion_order("src/", keys)
    assert set(order) == set(keys) | {"src/sub/", "src/sub/deep/"}  # every folder, marker or not
    for key in order:
        if key.endswith("/"):
            assert all(order.index(k) < order.index(key) for k in order
                       if k.startswith(key) and k != key), (key, order)
    assert deletion_order("a/src/", ["a/src/x"]) == ["a/src/x", "a/src/"]  # never above the top


def test_creation_rounds_put_each_marker_before_what_is_under_it():
    keys = ["src/sub/two", "src/", "src/sub/deep/", "src/one", "src/sub/"]
    assert creation_rounds(keys) == [["src/"], ["src/sub/"], ["src/sub/deep/"],
                                     ["src/sub/two", "src/one"]]
    assert creation_rounds(["a", "b"]) == [["a", "b"]]  # no markers: one round
    assert creation_rounds(["d/"]) == [["d/"]]  # no empty round after the markers


def test_sigv2_bucket_requests_are_sent_to_the_path_signed():
    request = SimpleNamespace(url="http://h:1/bucket?list-type=2&prefix=a%2F",
                              auth_path="/bucket/")
    send_the_signed_path(request)
    assert request.url == "http://h:1/bucket/?list-type=2&prefix=a%2F"
    for url, auth in (("http://h:1/bucket/key", "/bucket/key"),
                      ("http://h:1/bucket/a/", "/bucket/a/"), ("http://h:1/bucket", None)):
        request = SimpleNamespace(url=url, auth_path=auth)
        send_the_signed_path(request)
        assert request.url == url
