"""The command line: `s3mount [options] BUCKET[:PREFIX] MOUNTPOINT`, and `s3mount status`.

Options come as flags, as `-o key[=value],...` (so fstab and `mount.fuse3` can pass them), or as
`key = value` lines of a `--config` file (systemd units; it may also name the bucket, the mount
point and keys, which stay off the command line).  The command line wins over the file.  Run as
`mount.fuse.s3mount` (a symlink mount(8) finds), it takes mount(8)'s helper arguments.
Every start-up problem is one line on stderr and a non-zero exit, never a traceback.  Once the
options make a `MountConfig`, `launch.start` mounts: forked and returning only once the mount
answers, or with `-f` in the foreground (under systemd saying READY=1 once it answers).
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import re
import sys
from dataclasses import dataclass
from typing import Any, NoReturn

from s3mount import __version__
from s3mount.config import MountConfig
from s3mount.credentials import Keys, check_private, read_passwd_file, read_sse_c_key
from s3mount.errors import ConfigError
from s3mount.launch import start
from s3mount.logsetup import on_journal, setup_logging  # noqa: F401 - part of the CLI
from s3mount.mounthelper import become_user, is_mount_helper, mount_helper_args
from s3mount.mounttable import clear_dead_mount
from s3mount.requestargs import (
    CHECKSUMS,
    SSE_MODES,
    check_options,
    content_type,
    proxy_url,
    storage_class,
)

log = logging.getLogger("s3mount")

# fstab/mount(8) options that mean nothing to s3mount itself.
IGNORED_OPTIONS = {"rw", "defaults", "auto", "noauto", "user", "nouser", "users", "_netdev",
                   "nofail", "dev", "nodev", "suid", "nosuid", "exec", "noexec", "atime",
                   "noatime", "relatime", "nodiratime", "async", "sync"}
FLAG_OPTIONS = {"foreground", "read_only", "allow_other", "no_verify_ssl",
                "no_conditional_writes", "trust_listings", "requester_pays"}
OPTION_ALIASES = {"ro": "read_only", "f": "foreground"}
BUCKET_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{1,254}$")
# Keys a --config file may hold besides the options: what to mount, and keys kept off argv.
FILE_ONLY_KEYS = {"bucket", "prefix", "mountpoint", "access_key_id", "secret_access_key"}
NOT_OPTIONS = {"source", "mountpoint", "options", "help", "version"}
TRUE_WORDS = {"1", "true", "yes", "on"}
FALSE_WORDS = {"0", "false", "no", "off"}
# Options whose value may be left out (`--write-back`, `-o write_back`): then their `const`.
OPTIONAL_VALUE = {"write_back"}
WRITE_BACK_DELAY = 5.0  # seconds from close(2) to the upload with a bare --write-back

class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise ConfigError(f"{message} (see s3mount --help)", status=2)


def octal(text: str) -> int:
    try:
        value = int(text, 8)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an octal mode") from None
    if not 0 <= value <= 0o7777:
        raise argparse.ArgumentTypeError(f"{text!r} is not a mode between 0 and 7777")
    return value


def positive(kind: type, *, nonzero: bool = False, limit: float | None = None) -> Any:
    """A finite number >= 0 (> 0 with `nonzero`, <= `limit` when given)."""
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
        if value < 0 or (nonzero and value == 0):
            raise argparse.ArgumentTypeError(
                f"{text!r} must be {'more than' if nonzero else 'at least'} 0")
        if limit is not None and value > limit:
            raise argparse.ArgumentTypeError(f"{text!r} is over the limit of {limit:g}")
        return value
    return parse


MAX_ID = 4294967294  # (uid_t)-1 means "no change" to the kernel
MIN_CACHE = 64 * 1024 * 1024  # a file's last part (8 MiB and up) and read-ahead blocks


def size_arg(text: str) -> int:
    """A byte count with an optional K/M/G/T suffix (powers of 1024)."""
    match = re.fullmatch(r"(\d+)([KMGT]?)i?B?", text.strip(), re.IGNORECASE)
    if not match:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size such as 512M or 10G")
    power = "KMGT".find(match.group(2).upper()) + 1 if match.group(2) else 0
    return int(match.group(1)) * 1024**power


def port(text: str) -> int:
    value = positive(int)(text)
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number")
    return int(value)


def build_parser() -> Parser:
    p = Parser(prog="s3mount", description="Mount an S3 bucket, or a prefix of one, as a "
               "directory.  Credentials come from boto3's usual chain: environment variables, "
               "~/.aws/credentials and ~/.aws/config, or --profile; or from --passwd-file.  "
               "`s3mount status [MOUNTPOINT]` shows what a running mount is doing.")
    p.add_argument("source", metavar="BUCKET[:PREFIX]", nargs="?")
    p.add_argument("mountpoint", metavar="MOUNTPOINT", nargs="?")
    p.add_argument("--version", action="version", version=f"s3mount {__version__}")
    p.add_argument("--config", metavar="FILE", help="read options from FILE: `key = value` "
                   "lines with the long option names, plus `bucket` and `mountpoint`; "
                   "the command line wins")
    p.add_argument("--passwd-file", metavar="FILE", help="access keys as ACCESS_KEY:SECRET_KEY "
                   "(or s3fs's BUCKET:ACCESS_KEY:SECRET_KEY lines); must be mode 600 and yours")
    p.add_argument("--ca-bundle", metavar="FILE",
                   help="trust the CA certificates in FILE (PEM) for an https endpoint")
    p.add_argument("--no-verify-ssl", action="store_true",
                   help="do not verify the endpoint's TLS certificate (testing only)")
    p.add_argument("--endpoint-url", help="S3-compatible endpoint, e.g. https://s3.example.com")
    p.add_argument("--region", help="region (some providers call it a pool)")
    p.add_argument("--profile", help="profile in ~/.aws/credentials and ~/.aws/config")
    p.add_argument("--addressing-style", choices=["path", "virtual"], default="path")
    p.add_argument("--signature-version", choices=["v4", "v2"], default="v4")
    p.add_argument("-f", "--foreground", action="store_true", help="stay in the foreground")
    p.add_argument("--read-only", action="store_true")
    p.add_argument("--allow-other", action="store_true",
                   help="let other users see the mount (needs user_allow_other for non-root)")
    p.add_argument("--uid", type=positive(int, limit=MAX_ID),
                   help="owner of objects without uid metadata")
    p.add_argument("--gid", type=positive(int, limit=MAX_ID),
                   help="group of objects without gid metadata")
    p.add_argument("--file-mode", type=octal, default=0o644)
    p.add_argument("--dir-mode", type=octal, default=0o755)
    p.add_argument("--cache-dir", help="where staged writes live (default: per mount, under "
                   "~/.cache/s3mount, or /var/cache/s3mount for root)")
    p.add_argument("--metadata-ttl", type=positive(float), default=1.0,
                   help="seconds attributes and names are trusted before asking S3 again")
    p.add_argument("--max-concurrency", type=positive(int), default=10,
                   help="parallel requests to S3 for metadata and uploads")
    p.add_argument("--max-read-concurrency", type=positive(int), default=32,
                   help="parallel GETs of file contents (read-ahead and reads) and HEADs run "
                   "ahead of ls -l, apart from --max-concurrency")
    p.add_argument("--cache-size", type=size_arg, default=None,
                   help="bytes the cache may hold on disk, clean blocks and staged writes "
                   "together, e.g. 2G (default: the smaller of 10G and a quarter of the free "
                   "space)")
    p.add_argument("--max-readahead", type=size_arg, default=128 * 1024 * 1024,
                   help="largest read-ahead window of a sequential reader, e.g. 64M")
    p.add_argument("--kernel-readahead", type=size_arg, default=4 * 1024 * 1024,
                   help="the kernel's read-ahead for this mount (its read requests grow to 1M "
                   "each), set when running as root; 0 leaves the kernel's 128K")
    p.add_argument("--no-conditional-writes", action="store_true",
                   help="for endpoints without If-Match/If-None-Match on PUT: commit without "
                   "checking that nobody else changed the object (a concurrent change is lost)")
    p.add_argument("--trust-listings", action="store_true",
                   help="attributes of listed objects come from the listing alone (ls -l of "
                   "10,000 objects: 10 LISTs, no HEADs); modes, owners and symlinks written by "
                   "other clients then show as defaults until looked up after the TTL")
    p.add_argument("--request-path", choices=("lean", "boto3"), default="lean",
                   help="lean: HEAD, ranged GET and LIST skip boto3's per-call work (about a "
                   "third of its CPU), when the options allow; boto3: every request via boto3")
    p.add_argument("--write-back", type=positive(float), nargs="?", const=WRITE_BACK_DELAY,
                   default=None, metavar="DELAY",
                   help="close(2) returns once the data is staged and journaled on the cache "
                   "disk; the upload follows DELAY seconds later, in the background (default "
                   f"{WRITE_BACK_DELAY:g}; give it as --write-back=DELAY).  fsync(2) still uploads "
                   "at once; unmount and SIGTERM upload everything first")
    p.add_argument("--connect-timeout", type=positive(float, nonzero=True), default=10.0,
                   help="seconds to wait for a connection to the endpoint")
    p.add_argument("--read-timeout", type=positive(float, nonzero=True), default=60.0,
                   help="seconds to wait for a response before the request is retried")
    p.add_argument("--max-attempts", type=positive(int), default=5,
                   help="attempts per request (with backoff) before the call fails with EIO")
    g = p.add_argument_group("provider options", "sent on every request that needs them, "
                             "copies included")
    g.add_argument("--sse", choices=SSE_MODES, help="server-side encryption with S3's keys: "
                   "AES256 (SSE-S3) or aws:kms (SSE-KMS)")
    g.add_argument("--sse-kms-key-id", metavar="KEY", help="the KMS key of --sse aws:kms "
                   "(default: the account's S3 key)")
    g.add_argument("--sse-c-key-file", metavar="FILE", help="SSE-C: encrypt with your own key, "
                   "32 bytes or their base64 in FILE (mode 600, yours); every object the mount "
                   "reads must be encrypted with it")
    g.add_argument("--storage-class", type=storage_class, metavar="CLASS",
                   help="storage class of new objects, kept across copies, e.g. STANDARD_IA")
    g.add_argument("--requester-pays", action="store_true",
                   help="accept the charges of a Requester Pays bucket (x-amz-request-payer on "
                   "every request)")
    g.add_argument("--content-type", type=content_type, metavar="auto|TYPE",
                   help="Content-Type of files: auto guesses it from the name (mimetypes; "
                   "application/octet-stream when unknown, guessed again on rename); default: "
                   "none sent, so the service's default")
    g.add_argument("--proxy", type=proxy_url, metavar="URL",
                   help="send every request through this HTTP proxy")
    g.add_argument("--checksum", choices=CHECKSUMS, default="off",
                   help="x-amz-checksum-* of every upload, checked by the service: sha256, or "
                   "crc32c (needs the awscrt package)")
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"],
                   default="info")
    p.add_argument("--metrics-port", type=port, default=None,
                   help="serve Prometheus metrics on 127.0.0.1:PORT/metrics")
    p.add_argument("-o", dest="options", action="append", default=[], metavar="OPT[=VAL],...",
                   help="any long option as key=value, plus fstab options such as _netdev")
    return p


def option_name(raw: str) -> str:
    return OPTION_ALIASES.get(raw, raw.replace("-", "_"))


def ignored_option(raw: str) -> bool:
    """fstab options for mount(8) or systemd (x-systemd.*, x-gvfs-*...), not for s3mount."""
    return raw.startswith("x-") or option_name(raw) in IGNORED_OPTIONS


def apply_options(args: argparse.Namespace, parser: Parser) -> None:
    """Fold `-o a=b,c` into the parsed flags, exactly as the flags would have set them."""
    by_dest = {a.dest: a for a in parser._actions}
    for group in args.options:
        for item in filter(None, group.split(",")):
            raw, eq, value = item.partition("=")
            if ignored_option(raw):
                continue
            name = option_name(raw)
            action = by_dest.get(name)
            if action is None or name in NOT_OPTIONS:
                raise ConfigError(f"unknown option -o {item}", status=2)
            if name in FLAG_OPTIONS:
                if eq:
                    raise ConfigError(f"-o {name} takes no value", status=2)
                setattr(args, name, True)
                continue
            if not eq and name in OPTIONAL_VALUE:
                setattr(args, name, action.const)
                continue
            if not eq:
                raise ConfigError(f"-o {name} needs a value, as in -o {name}=...", status=2)
            if action.choices and value not in action.choices:
                raise ConfigError(f"-o {name}={value}: choose from {', '.join(action.choices)}",
                                  status=2)
            try:
                setattr(args, name, action.type(value) if action.type else value)
            except argparse.ArgumentTypeError as exc:
                raise ConfigError(f"-o {name}: {exc}", status=2) from None


@dataclass
class FileConfig:
    """What a --config file says: defaults for the options, and the file-only keys."""

    path: str
    defaults: dict[str, Any]
    source: str | None = None
    mountpoint: str | None = None
    keys: Keys | None = None


def read_config_lines(path: str) -> list[tuple[int, str, str | None]]:
    """(line number, key, value or None for a bare flag) of a `key = value` file."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read config file {path}: "
                          f"{getattr(exc, 'strerror', None) or exc}") from None
    entries = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        key, eq, value = line.partition("=")
        key = key.strip().lstrip("-").lower()
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1]
        if not key:
            raise ConfigError(f"{path} line {number}: expected key = value", status=2)
        entries.append((number, key, value if eq else None))
    return entries


def load_config_file(path: str, parser: Parser) -> FileConfig:
    by_dest = {a.dest: a for a in parser._actions}
    found = FileConfig(path, {})
    secrets: dict[str, str] = {}
    bucket = prefix = None
    for number, raw, value in read_config_lines(path):
        where = f"{path} line {number}"
        name = option_name(raw)
        if raw.startswith("x-") or name in IGNORED_OPTIONS:
            continue
        if name in FILE_ONLY_KEYS:
            if not value:
                raise ConfigError(f"{where}: {raw} needs a value", status=2)
            if name in ("access_key_id", "secret_access_key"):
                secrets[name] = value
            elif name == "bucket":
                bucket = value
            elif name == "prefix":
                prefix = value
            else:
                found.mountpoint = value
            continue
        action = by_dest.get(name)
        if action is None or name in NOT_OPTIONS or name == "config":
            raise ConfigError(f"{where}: unknown option {raw!r}", status=2)
        if name in FLAG_OPTIONS:
            word = (value or "true").lower()
            if word not in TRUE_WORDS | FALSE_WORDS:
                raise ConfigError(f"{where}: {raw} is true or false, not {value!r}", status=2)
            found.defaults[name] = word in TRUE_WORDS
            continue
        if name in OPTIONAL_VALUE and (value or "true").lower() in TRUE_WORDS | FALSE_WORDS \
                and not (value or "").isdigit():  # `write_back = 2` is a delay, not "true"
            found.defaults[name] = action.const if (value or "true").lower() in TRUE_WORDS \
                else None
            continue
        if value is None:
            raise ConfigError(f"{where}: {raw} needs a value, as in {raw} = ...", status=2)
        found.defaults[name] = convert(action, name, value, where)
    if bucket is not None:
        found.source = bucket if prefix is None else f"{bucket.partition(':')[0]}:{prefix}"
    elif prefix is not None:
        raise ConfigError(f"{path}: prefix without bucket", status=2)
    if secrets:
        if set(secrets) != {"access_key_id", "secret_access_key"}:
            raise ConfigError(f"{path}: give both access_key_id and secret_access_key", status=2)
        check_private(path, "config file with keys")
        found.keys = Keys(secrets["access_key_id"], secrets["secret_access_key"],
                          f"config file {path}")
    return found


def convert(action: argparse.Action, name: str, value: str, where: str) -> Any:
    if action.choices and value not in action.choices:
        raise ConfigError(f"{where}: {name}={value}: choose from {', '.join(action.choices)}",
                          status=2)
    try:
        return action.type(value) if action.type else value
    except argparse.ArgumentTypeError as exc:
        raise ConfigError(f"{where}: {name}: {exc}", status=2) from None


def config_path(argv: list[str]) -> str | None:
    """The --config file named by the command line, as a flag or as `-o config=FILE`."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config")
    pre.add_argument("-o", dest="options", action="append", default=[])
    known, _ = pre.parse_known_args(argv)
    path = known.config
    for group in known.options:
        for item in group.split(","):
            name, eq, value = item.partition("=")
            if name == "config" and eq:
                path = value
    return path


def resolve_keys(args: argparse.Namespace, file: FileConfig | None, bucket: str) -> Keys | None:
    file_keys = file.keys if file else None
    if args.passwd_file and file_keys:
        raise ConfigError(f"keys in {file.path} and --passwd-file: give one of them",  # type: ignore[union-attr]
                          status=2)
    if args.passwd_file:
        return read_passwd_file(os.path.abspath(args.passwd_file), bucket)
    return file_keys


def make_config(argv: list[str]) -> MountConfig:
    parser = build_parser()
    path = config_path(argv)
    file = load_config_file(path, parser) if path else None
    if file:
        parser.set_defaults(**file.defaults)
    # A bare --write-back never takes the next word (the bucket) as its delay.
    argv = [f"--write-back={WRITE_BACK_DELAY}" if a == "--write-back" else a for a in argv]
    args = parser.parse_args(argv)
    apply_options(args, parser)
    args.source = args.source or (file.source if file else None)
    args.mountpoint = args.mountpoint or (file.mountpoint if file else None)
    if not args.source or not args.mountpoint:
        raise ConfigError("give BUCKET[:PREFIX] and MOUNTPOINT, on the command line or as "
                          "`bucket` and `mountpoint` in --config (see s3mount --help)", status=2)
    bucket, _, prefix = args.source.partition(":")
    if not BUCKET_RE.match(bucket):
        raise ConfigError(f"{bucket!r} is not a valid bucket name", status=2)
    prefix = prefix.strip("/")
    if "//" in prefix:
        raise ConfigError(f"prefix {prefix!r} has an empty segment", status=2)
    mountpoint = os.path.abspath(args.mountpoint)
    clear_dead_mount(mountpoint, args.mountpoint)
    if not os.path.exists(mountpoint):
        raise ConfigError(f"mount point {args.mountpoint} does not exist")
    if not os.path.isdir(mountpoint):
        raise ConfigError(f"mount point {args.mountpoint} is not a directory")
    if os.path.ismount(mountpoint):
        raise ConfigError(f"{args.mountpoint} is already a mount point")
    if args.max_concurrency < 1:
        raise ConfigError("--max-concurrency must be at least 1", status=2)
    if args.cache_size is not None and args.cache_size < MIN_CACHE:
        raise ConfigError(f"--cache-size must be at least {MIN_CACHE >> 20}M: it holds the last "
                          "part of each file being written, and the blocks being read", status=2)
    if args.ca_bundle and args.no_verify_ssl:
        raise ConfigError("--ca-bundle and --no-verify-ssl contradict each other", status=2)
    ca_bundle = os.path.abspath(args.ca_bundle) if args.ca_bundle else None
    if ca_bundle and not os.path.isfile(ca_bundle):
        raise ConfigError(f"CA bundle {args.ca_bundle} is not a file")
    keys = resolve_keys(args, file, bucket)
    sse_key = read_sse_c_key(os.path.abspath(args.sse_c_key_file)) if args.sse_c_key_file \
        else None
    extra = {k: getattr(args, k) for k in ("uid", "gid") if getattr(args, k) is not None}
    config = MountConfig(
        bucket=bucket, prefix=f"{prefix}/" if prefix else "", mountpoint=mountpoint,
        endpoint_url=args.endpoint_url, region=args.region, profile=args.profile,
        addressing_style=args.addressing_style, signature_version=args.signature_version,
        foreground=args.foreground, read_only=args.read_only, allow_other=args.allow_other,
        file_mode=args.file_mode, dir_mode=args.dir_mode, cache_dir=args.cache_dir,
        log_level=args.log_level, metadata_ttl=args.metadata_ttl,
        max_concurrency=args.max_concurrency,
        max_read_concurrency=args.max_read_concurrency, cache_size=args.cache_size,
        max_readahead=args.max_readahead, kernel_readahead=args.kernel_readahead, keys=keys,
        ca_bundle=ca_bundle,
        verify_ssl=not args.no_verify_ssl, metrics_port=args.metrics_port,
        conditional_writes=not args.no_conditional_writes, trust_listings=args.trust_listings,
        connect_timeout=args.connect_timeout, read_timeout=args.read_timeout,
        request_path=args.request_path, write_back=args.write_back,
        max_attempts=max(1, args.max_attempts),
        sse=args.sse,
        sse_kms_key_id=args.sse_kms_key_id, sse_customer_key=sse_key,
        storage_class=args.storage_class, requester_pays=args.requester_pays,
        content_type=args.content_type, proxy=args.proxy, checksum=args.checksum, **extra)
    check_options(config)
    return config


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    prog = sys.argv[0] if prog is None else prog
    if argv[:1] == ["status"] and not is_mount_helper(prog):
        from s3mount import status  # deferred: a mount never needs it

        return status.main(argv[1:])
    try:
        if is_mount_helper(prog):
            argv, fake, user = mount_helper_args(argv)
            if fake:
                return 0
            if user:
                become_user(user)
        config = make_config(argv)
        setup_logging(config.log_level)
        try:
            config.cache_path().mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"cannot use the cache directory {config.cache_path()}: "
                              f"{exc.strerror}") from None
        return start(config)
    except ConfigError as exc:
        print(f"s3mount: {exc}", file=sys.stderr)
        return exc.status
    except KeyboardInterrupt:
        return 130
