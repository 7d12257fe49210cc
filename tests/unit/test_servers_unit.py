"""Running on servers, the parts that need no mount: config files, passwd files, the mount(8)
helper's arguments, sd_notify, journald log lines, status rendering, and the systemd files."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import metric

from s3mount import cli, mounttable, notify, status
from s3mount.credentials import Keys, parse_passwd, read_passwd_file
from s3mount.errors import ConfigError
from s3mount.s3 import RequestStats

ROOT = Path(__file__).resolve().parents[2]
SYSTEMD = ROOT / "systemd"
S3MOUNT_PROGRAM = Path(sys.executable).parent / "s3mount"


def write(path: Path, text: str, mode: int = 0o600) -> Path:
    path.write_text(text)
    os.chmod(path, mode)
    return path


# -- --config files ----------------------------------------------------------------------------


def test_config_file_gives_bucket_mountpoint_and_options(tmp_path):
    conf = write(tmp_path / "m.conf", f"""
# a comment
; another
bucket = my-bucket:team/a
mountpoint = {tmp_path}
endpoint-url = http://h:9000
region=eu-1
read_only = yes
allow-other
file-mode = 600
cache-size = 2G
signature_version = "v2"
x-systemd.automount
_netdev
""", 0o644)
    config = cli.make_config(["--config", str(conf)])
    assert (config.bucket, config.prefix, config.mountpoint) == ("my-bucket", "team/a/",
                                                                 str(tmp_path))
    assert config.endpoint_url == "http://h:9000" and config.region == "eu-1"
    assert config.read_only and config.allow_other and config.file_mode == 0o600
    assert config.cache_size == 2 * 1024**3 and config.signature_version == "v2"
    assert config.keys is None


def test_command_line_wins_over_config_file(tmp_path):
    (tmp_path / "other").mkdir()
    conf = write(tmp_path / "m.conf", f"bucket = file-bucket\nmountpoint = {tmp_path}\n"
                 "region = from-file\nread-only = true\nmetadata-ttl = 5\n")
    config = cli.make_config(["--config", str(conf), "--region", "from-flag", "-o",
                              "metadata_ttl=2", "cli-bucket", str(tmp_path / "other")])
    assert config.bucket == "cli-bucket" and config.mountpoint == str(tmp_path / "other")
    assert config.region == "from-flag" and config.metadata_ttl == 2
    assert config.read_only  # from the file, not contradicted


def test_config_file_through_o_option(tmp_path):
    """fstab: `bkt /mnt fuse.s3mount _netdev,config=/etc/s3mount/x.conf`."""
    conf = write(tmp_path / "m.conf", "endpoint_url = http://from-file\n")
    config = cli.make_config(["bkt", str(tmp_path), "-o", f"_netdev,config={conf},rw"])
    assert config.endpoint_url == "http://from-file"


def test_config_prefix_key(tmp_path):
    conf = write(tmp_path / "m.conf", f"bucket = b-1\nprefix = /x/y/\nmountpoint = {tmp_path}\n")
    assert cli.make_config(["--config", str(conf)]).prefix == "x/y/"


@pytest.mark.parametrize(("text", "message"), [
    ("nosuch = 1", "line 1: unknown option 'nosuch'"),
    ("\n\nfile-mode = 999", "line 3: file_mode"),
    ("read-only = maybe", "true or false"),
    ("region", "region needs a value"),
    ("signature-version = v3", "choose from"),
    ("source = x", "unknown option"),
    ("config = /x", "unknown option"),
    ("= x", "expected key = value"),
    ("prefix = a", "prefix without bucket"),
    ("access_key_id = AKIA", "give both"),
])
def test_bad_config_file_is_a_usage_error(tmp_path, text, message):
    conf = write(tmp_path / "m.conf", text + "\n")
    with pytest.raises(ConfigError) as exc:
        cli.make_config(["--config", str(conf), "bkt", str(tmp_path)])
    assert message in str(exc.value) and exc.value.status == 2
    assert str(conf) in str(exc.value)


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="cannot read config file .*No such file"):
        cli.make_config(["--config", str(tmp_path / "none.conf")])


def test_config_without_bucket_or_mountpoint(tmp_path):
    conf = write(tmp_path / "m.conf", "region = x\n")
    with pytest.raises(ConfigError, match="give BUCKET") as exc:
        cli.make_config(["--config", str(conf)])
    assert exc.value.status == 2


def test_example_conf_parses(tmp_path):
    text = (SYSTEMD / "example.conf").read_text()
    text = text.replace("/mnt/my-bucket", str(tmp_path))
    passwd = write(tmp_path / "p", "AK:SK\n")
    text = text.replace("/etc/s3mount/my-bucket.passwd", str(passwd))
    conf = write(tmp_path / "example.conf", text)
    config = cli.make_config(["--config", str(conf)])
    assert config.bucket == "my-bucket" and config.allow_other
    assert config.keys == Keys("AK", "SK", str(passwd))


# -- keys: config file and passwd file ----------------------------------------------------------


def test_config_file_keys_need_a_private_file(tmp_path):
    text = (f"bucket = b-1\nmountpoint = {tmp_path}\n"
            "access_key_id = AKID\nsecret_access_key = S3CR3T\n")
    conf = write(tmp_path / "m.conf", text, 0o640)
    with pytest.raises(ConfigError, match="readable by group or others") as exc:
        cli.make_config(["--config", str(conf)])
    assert "S3CR3T" not in str(exc.value) and "AKID" not in str(exc.value)
    os.chmod(conf, 0o600)
    config = cli.make_config(["--config", str(conf)])
    assert config.keys is not None
    assert (config.keys.access_key, config.keys.secret_key) == ("AKID", "S3CR3T")
    for shown in (repr(config), str(config), repr(config.keys), str(config.keys)):
        assert "S3CR3T" not in shown and "AKID" not in shown


def test_passwd_file_formats(tmp_path):
    assert parse_passwd("AK:SK\n", "b", "f") == Keys("AK", "SK", "f")
    text = "# comment\nother:A1:S1\nAK:SK\nmine:A2:S2\n"
    assert parse_passwd(text, "mine", "f") == Keys("A2", "S2", "f")
    assert parse_passwd(text, "third", "f") == Keys("AK", "SK", "f")
    with pytest.raises(ConfigError, match="no ACCESS_KEY:SECRET_KEY line"):
        parse_passwd("other:A1:S1\n", "mine", "f")
    with pytest.raises(ConfigError, match="line 2") as exc:
        parse_passwd("AK:SK\nsecretgarbage\n", "mine", "f")
    assert "secretgarbage" not in str(exc.value)


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644, 0o666])
def test_passwd_file_readable_by_others_is_refused(tmp_path, mode):
    passwd = write(tmp_path / "passwd", "AK:TOPSECRET\n", mode)
    with pytest.raises(ConfigError, match="readable by group or others.*chmod 600") as exc:
        cli.make_config(["--passwd-file", str(passwd), "bkt", str(tmp_path)])
    assert "TOPSECRET" not in str(exc.value)


def test_passwd_file_of_another_owner_is_refused(tmp_path):
    passwd = write(tmp_path / "passwd", "AK:SK\n")
    if os.geteuid() != 0:
        pytest.skip("needs root to give the file away")
    os.chown(passwd, 4321, 4321)
    with pytest.raises(ConfigError, match="owned by uid 4321"):
        read_passwd_file(str(passwd), "bkt")


def test_passwd_file_accepted(tmp_path):
    passwd = write(tmp_path / "passwd", "AK:SK\n")
    config = cli.make_config(["-o", f"passwd_file={passwd}", "bkt", str(tmp_path)])
    assert config.keys == Keys("AK", "SK", str(passwd))
    assert "SK" not in repr(config).replace("SKIP", "")


def test_passwd_file_and_config_keys_conflict(tmp_path):
    passwd = write(tmp_path / "passwd", "AK:SK\n")
    conf = write(tmp_path / "m.conf", "access_key_id = A\nsecret_access_key = S\n")
    with pytest.raises(ConfigError, match="give one of them"):
        cli.make_config(["--config", str(conf), "--passwd-file", str(passwd), "b-1",
                         str(tmp_path)])


def test_tls_options(tmp_path):
    bundle = write(tmp_path / "ca.pem", "x", 0o644)
    config = cli.make_config(["--ca-bundle", str(bundle), "bkt", str(tmp_path)])
    assert config.ca_bundle == str(bundle) and config.verify_ssl
    assert not cli.make_config(["-o", "no_verify_ssl", "bkt", str(tmp_path)]).verify_ssl
    assert cli.make_config(["bkt", str(tmp_path)]).verify_ssl  # verified by default
    with pytest.raises(ConfigError, match="contradict"):
        cli.make_config(["--ca-bundle", str(bundle), "--no-verify-ssl", "bkt", str(tmp_path)])
    with pytest.raises(ConfigError, match="not a file"):
        cli.make_config(["--ca-bundle", str(tmp_path / "none"), "bkt", str(tmp_path)])


def test_metrics_port_option(tmp_path):
    assert cli.make_config(["--metrics-port", "9464", "b-1", str(tmp_path)]).metrics_port == 9464
    with pytest.raises(ConfigError):
        cli.make_config(["--metrics-port", "70000", "b-1", str(tmp_path)])


# -- mount(8) helper ---------------------------------------------------------------------------


@pytest.mark.parametrize(("argv", "expected", "fake", "user"), [
    (["bkt", "/mnt/x", "-o", "rw,_netdev,endpoint_url=http://h"],
     ["bkt", "/mnt/x", "-o", "rw,_netdev,endpoint_url=http://h"], False, None),
    (["bkt:p", "/mnt/x", "-n", "-s", "-v", "-o", "ro", "-t", "fuse.s3mount"],
     ["bkt:p", "/mnt/x", "-o", "ro"], False, None),
    (["bkt", "/mnt/x", "-f", "-o", "ro"], ["bkt", "/mnt/x", "-o", "ro"], True, None),
    (["bkt", "/mnt/x", "-sfn"], ["bkt", "/mnt/x"], True, None),
    (["bkt", "/mnt/x", "-o", "setuid=alice,allow_other"],
     ["bkt", "/mnt/x", "-o", "allow_other"], False, "alice"),
    (["bkt", "/mnt/x", "-oro,dev"], ["bkt", "/mnt/x", "-o", "ro,dev"], False, None),
])
def test_mount_helper_args(argv, expected, fake, user):
    assert cli.mount_helper_args(argv) == (expected, fake, user)


def test_mount_helper_names():
    assert cli.is_mount_helper("/sbin/mount.fuse.s3mount")
    assert cli.is_mount_helper("mount.s3mount")
    assert not cli.is_mount_helper("/usr/bin/s3mount")


def test_mount_helper_fake_mount_does_nothing(tmp_path):
    assert cli.main(["bkt", str(tmp_path), "-f", "-o", "rw"], prog="/sbin/mount.fuse.s3mount") == 0


def test_mount_helper_passes_options_on(tmp_path, capsys):
    status = cli.main(["bkt", str(tmp_path / "nowhere"), "-o", "rw,dev,suid,_netdev", "-t",
                       "fuse.s3mount"], prog="/sbin/mount.fuse.s3mount")
    assert status == 1 and "nowhere does not exist" in capsys.readouterr().err


# -- sd_notify ---------------------------------------------------------------------------------


@pytest.mark.parametrize("abstract", [True, False])
def test_notifier_sends_datagrams(tmp_path, abstract):
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        if abstract:
            name = f"s3mount-test-{os.getpid()}"
            sock.bind(b"\0" + name.encode())
            address = "@" + name
        else:
            address = str(tmp_path / "notify")
            sock.bind(address)
        sock.settimeout(5)
        notifier = notify.Notifier(address)
        notifier.ready("Mounted x")
        assert sock.recv(4096).decode().split("\n")[:2] == ["READY=1", "STATUS=Mounted x"]
        notifier.status("one")
        notifier.status("one")  # unchanged: not sent again
        notifier.status("two")
        assert sock.recv(4096) == b"STATUS=one"
        assert sock.recv(4096) == b"STATUS=two"
        notifier.stopping("bye")
        assert sock.recv(4096) == b"STOPPING=1\nSTATUS=bye"
        notifier.extend_stop(30)
        assert sock.recv(4096) == b"EXTEND_TIMEOUT_USEC=30000000"


def test_notifier_without_socket_is_silent(tmp_path):
    assert not notify.Notifier("").send("READY=1")
    assert not notify.Notifier(str(tmp_path / "nobody")).send("READY=1")  # never raises


def test_forget_drops_notify_socket(monkeypatch):
    monkeypatch.setenv("NOTIFY_SOCKET", "@x")
    notify.forget()
    assert "NOTIFY_SOCKET" not in os.environ and not notify.Notifier().enabled


# -- logs --------------------------------------------------------------------------------------


def test_journal_lines_carry_priorities(tmp_path, monkeypatch):
    path = tmp_path / "journal"
    with open(path, "w") as stream:
        st = os.fstat(stream.fileno())
        monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino}")
        assert cli.on_journal(stream)
        root = logging.getLogger()
        saved = root.handlers[:], root.level
        try:
            cli.setup_logging("debug", stream)
            log = logging.getLogger("s3mount.test")
            log.debug("dbg")
            log.info("inf")
            log.warning("wrn")
            log.error("two\nlines")
        finally:
            root.handlers[:], level = saved
            root.setLevel(level)
    assert path.read_text().splitlines() == [
        "<7>DEBUG s3mount.test: dbg", "<6>INFO s3mount.test: inf",
        "<4>WARNING s3mount.test: wrn", "<3>ERROR s3mount.test: two", "<3>lines"]


def test_not_journal_when_stream_differs(tmp_path, monkeypatch):
    monkeypatch.setenv("JOURNAL_STREAM", "1:2")
    with open(tmp_path / "f", "w") as stream:
        assert not cli.on_journal(stream)
    monkeypatch.setenv("JOURNAL_STREAM", "garbage")
    with open(tmp_path / "f", "w") as stream:
        assert not cli.on_journal(stream)


def test_log_file_lines_carry_time_stamps(tmp_path, monkeypatch):
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    with open(tmp_path / "log", "w") as stream:
        try:
            cli.setup_logging("info", stream)
            logging.getLogger("s3mount.x").warning("careful")
        finally:
            root.handlers[:], level = saved
            root.setLevel(level)
    line = (tmp_path / "log").read_text()
    stamp = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}"
    assert re.fullmatch(stamp + r" WARNING s3mount.x: careful\n", line), line


# -- status ------------------------------------------------------------------------------------

SNAPSHOT = {
    "version": "0.1.0", "pid": 42, "state": "stopping", "mountpoint": "/mnt/x",
    "bucket": "b", "prefix": "team/", "endpoint": "http://h", "read_only": False,
    "uptime": 3725.0,
    "s3": {"requests": 12, "by_kind": {"GET": 7, "PUT": 5}, "errors": 1,
           "errors_by_kind": {"PUT": 1}, "bytes_in": 3 * 1024**2, "bytes_out": 1024,
           "in_flight": 2, "uploads_in_flight": 1, "last_error": "PUT a: 500"},
    "cache": {"used_bytes": 1024**3, "capacity_bytes": 10 * 1024**3, "hits": 9, "misses": 1,
              "hit_rate": 0.9},
    "files": {"inodes": 5, "open": 1, "dirty": 2, "dirty_bytes": 5 * 1024**2},
    "stop": {"files_left": 2, "bytes_left": 4 * 1024**2},
}


def test_render_status():
    text = status.render(SNAPSHOT)
    assert "/mnt/x: s3://b/team at http://h" in text
    assert "up 1h 2m" in text and "requests:   12 (GET 7, PUT 5), 2 in flight" in text
    assert "3.0 MiB in, 1.0 KiB out" in text
    assert "1.0 GiB of 10.0 GiB, hit rate 90.0% (9 hits, 1 misses)" in text
    assert "2 dirty (5.0 MiB), 1 open, 1 upload requests in flight" in text
    assert "errors:     1 (last: PUT a: 500)" in text
    assert "stopping:   2 files, 4.0 MiB left to upload" in text


def test_prometheus_text():
    text = status.prometheus(SNAPSHOT)
    where = {"bucket": "b", "mountpoint": "/mnt/x"}
    assert metric(text, "s3mount_requests_total", kind="GET", **where) == 7
    assert metric(text, "s3mount_requests_total", kind="PUT", **where) == 5
    assert metric(text, "s3mount_cache_hits_total", **where) == 9
    assert metric(text, "s3mount_info", version=SNAPSHOT["version"], **where) == 1
    assert "# TYPE s3mount_requests_total counter" in text
    assert "# TYPE s3mount_dirty_files gauge" in text


def test_s3mount_mounts_parses_proc_mounts(tmp_path):
    table = tmp_path / "mounts"
    table.write_text(
        "proc /proc proc rw 0 0\n"
        "s3mount:b /mnt/with\\040space fuse.s3mount rw,nosuid,user_id=1000,group_id=1000 0 0\n"
        "s3mount:c /mnt/c fuse.s3mount rw,user_id=0,group_id=0 0 0\n"
        "sshfs /mnt/s fuse.sshfs rw,user_id=0 0 0\n")
    assert status.s3mount_mounts(str(table)) == {"/mnt/with space": 1000, "/mnt/c": 0}


def test_mount_table_unescapes_every_octal_escape(tmp_path):
    assert mounttable.unescape("/a\\040b\\011c\\012d\\134e") == "/a b\tc\nd\\e"
    assert mounttable.unescape("/x\\134040") == "/x\\040"  # an escaped backslash, then text
    # the kernel escapes bytes: a non-UTF-8 name comes back as os.fsdecode would give it
    assert mounttable.unescape("/\\377") == os.fsdecode(b"/\xff")
    table = tmp_path / "mounts"
    table.write_text("a /m fuse.x rw 0 0\n"
                     "s3mount:b /m fuse.s3mount rw,user_id=7 0 0\n"
                     "short line\n")
    entry = mounttable.find_mount("/m", str(table))
    assert entry is not None and entry.source == "s3mount:b" and entry.option("user_id") == "7"
    assert entry.option("group_id") is None and mounttable.find_mount("/n", str(table)) is None


def test_status_of_something_not_mounted(tmp_path, capsys):
    assert cli.main(["status", str(tmp_path)]) == 1
    assert "is not an s3mount mount point" in capsys.readouterr().err


def test_human_units():
    assert status.human_bytes(0) == "0 B" and status.human_bytes(1536) == "1.5 KiB"
    assert status.human_duration(59) == "59s" and status.human_duration(90061) == "1d 1h"


def test_request_stats_go_out_as_the_json_status_renders():
    """What a mount's stats give `s3mount status --json` survives JSON and reads as counted."""
    stats = RequestStats()
    stats.requests.update({"GET": 7, "PUT": 5})
    stats.errors["PUT"] += 1
    stats.bytes_in, stats.last_error = 3 * 1024**2, "PUT a: 500"
    sent = json.loads(json.dumps(stats.as_dict()))
    assert sent["requests"] == 12 and sent["by_kind"] == {"GET": 7, "PUT": 5}
    assert sent["errors"] == 1 and sent["errors_by_kind"] == {"PUT": 1}
    text = status.render({**SNAPSHOT, "s3": sent})
    assert "requests:   12 (GET 7, PUT 5)" in text and "errors:     1 (last: PUT a: 500)" in text


# -- systemd files -----------------------------------------------------------------------------


def unit_settings(path: Path) -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        if line and not line.startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            settings.setdefault(key.strip(), []).append(value.strip())
    return settings


def test_unit_keeps_the_mount_visible_and_fuse_usable():
    unit = unit_settings(SYSTEMD / "s3mount@.service")
    assert unit["Type"] == ["notify"]
    assert unit["ExecStart"] == ["@S3MOUNT@ --config /etc/s3mount/%i.conf --foreground"]
    assert "network-online.target" in unit["After"] and "network-online.target" in unit["Wants"]
    assert unit["Restart"] == ["on-failure"]
    assert "/dev/fuse rw" in unit["DeviceAllow"]
    assert "CAP_SYS_ADMIN" in unit["CapabilityBoundingSet"][0]
    namespacing = {"ProtectSystem", "ProtectHome", "PrivateTmp", "PrivateDevices",
                   "PrivateMounts", "ReadWritePaths", "ReadOnlyPaths", "InaccessiblePaths",
                   "TemporaryFileSystem", "BindPaths", "BindReadOnlyPaths",
                   "ProtectKernelTunables", "ProtectKernelModules", "ProtectKernelLogs",
                   "ProtectControlGroups", "ProtectProc", "ProcSubset", "RootDirectory",
                   "DynamicUser", "PrivateUsers", "MountFlags"}
    assert not namespacing & set(unit), namespacing & set(unit)


def installed(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    result = subprocess.run(["bash", str(ROOT / "scripts/install-systemd"), "--root", str(root),
                             "--s3mount", str(S3MOUNT_PROGRAM)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return root


@pytest.mark.skipif(not S3MOUNT_PROGRAM.exists(), reason="s3mount is not installed in the venv")
def test_install_systemd(tmp_path):
    root = installed(tmp_path)
    program = str(S3MOUNT_PROGRAM.resolve())
    unit = unit_settings(root / "etc/systemd/system/s3mount@.service")
    assert unit["ExecStart"] == [f"{program} --config /etc/s3mount/%i.conf --foreground"]
    assert os.readlink(root / "sbin/mount.fuse.s3mount") == program
    assert os.stat(root / "etc/s3mount/example.conf").st_mode & 0o777 == 0o600
    assert (root / "usr/local/share/doc/s3mount/README.md").exists()
    subprocess.run(["bash", str(ROOT / "scripts/install-systemd"), "--root", str(root),
                    "--uninstall"], check=True, capture_output=True)
    assert not (root / "sbin/mount.fuse.s3mount").exists()
    assert not (root / "etc/systemd/system/s3mount@.service").exists()


@pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                    reason="systemd-analyze is not installed here")
@pytest.mark.skipif(not S3MOUNT_PROGRAM.exists(), reason="s3mount is not installed in the venv")
def test_systemd_analyze_verify(tmp_path):
    root = installed(tmp_path)
    units = tmp_path / "units"
    units.mkdir()
    shutil.copy(root / "etc/systemd/system/s3mount@.service", units)
    shutil.copy(SYSTEMD / "mnt-s3data.mount", units)
    for names in (["./s3mount@.service", "s3mount@example.service"], ["./mnt-s3data.mount"]):
        result = subprocess.run(["systemd-analyze", "verify", *names], cwd=units,
                                capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        problems = [line for line in result.stderr.splitlines()
                    if "Cannot stat" not in line and "generator" not in line]
        assert not problems, problems


def test_mount_helper_mounts_a_bucket_named_status(tmp_path, capsys):
    status_code = cli.main(["status", str(tmp_path / "nowhere"), "-o", "rw"],
                           prog="/sbin/mount.fuse.s3mount")
    assert status_code == 1 and "nowhere does not exist" in capsys.readouterr().err
