"""The command line: `s3mount [options] BUCKET[:PREFIX] MOUNTPOINT`.

Options come as flags or as `-o key[=value],...` (so fstab and `mount.fuse3` can pass them).
Every start-up problem is one line on stderr and a non-zero exit, never a traceback.  Without
`-f` the command forks and returns only once the mount answers, or with the child's error.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys
from typing import Any, NoReturn

from s3mount import __version__
from s3mount.config import MountConfig
from s3mount.errors import ConfigError

log = logging.getLogger("s3mount")

# fstab/mount(8) options that mean nothing to s3mount itself.
IGNORED_OPTIONS = {"rw", "defaults", "auto", "noauto", "user", "nouser", "users", "_netdev",
                   "nofail", "dev", "nodev", "suid", "nosuid", "exec", "noexec", "atime",
                   "noatime", "relatime", "nodiratime", "async", "sync"}
FLAG_OPTIONS = {"foreground", "read_only", "allow_other"}
OPTION_ALIASES = {"ro": "read_only", "f": "foreground"}
BUCKET_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{1,254}$")


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


def positive(kind: type) -> Any:
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if value < 0:
            raise argparse.ArgumentTypeError(f"{text!r} must not be negative")
        return value
    return parse


def size_arg(text: str) -> int:
    """A byte count with an optional K/M/G/T suffix (powers of 1024)."""
    match = re.fullmatch(r"(\d+)([KMGT]?)i?B?", text.strip(), re.IGNORECASE)
    if not match:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size such as 512M or 10G")
    power = "KMGT".find(match.group(2).upper()) + 1 if match.group(2) else 0
    return int(match.group(1)) * 1024**power


def build_parser() -> Parser:
    p = Parser(prog="s3mount", description="Mount an S3 bucket, or a prefix of one, as a "
               "directory.  Credentials come from boto3's usual chain: environment variables, "
               "~/.aws/credentials and ~/.aws/config, or --profile.")
    p.add_argument("source", metavar="BUCKET[:PREFIX]")
    p.add_argument("mountpoint", metavar="MOUNTPOINT")
    p.add_argument("--version", action="version", version=f"s3mount {__version__}")
    p.add_argument("--endpoint-url", help="S3-compatible endpoint, e.g. https://s3.example.com")
    p.add_argument("--region", help="region (some providers call it a pool)")
    p.add_argument("--profile", help="profile in ~/.aws/credentials and ~/.aws/config")
    p.add_argument("--addressing-style", choices=["path", "virtual"], default="path")
    p.add_argument("--signature-version", choices=["v4", "v2"], default="v4")
    p.add_argument("-f", "--foreground", action="store_true", help="stay in the foreground")
    p.add_argument("--read-only", action="store_true")
    p.add_argument("--allow-other", action="store_true",
                   help="let other users see the mount (needs user_allow_other for non-root)")
    p.add_argument("--uid", type=positive(int), help="owner of objects without uid metadata")
    p.add_argument("--gid", type=positive(int), help="group of objects without gid metadata")
    p.add_argument("--file-mode", type=octal, default=0o644)
    p.add_argument("--dir-mode", type=octal, default=0o755)
    p.add_argument("--cache-dir", help="where staged writes live (default: per mount, under "
                   "~/.cache/s3mount, or /var/cache/s3mount for root)")
    p.add_argument("--metadata-ttl", type=positive(float), default=1.0,
                   help="seconds attributes and names are trusted before asking S3 again")
    p.add_argument("--max-concurrency", type=positive(int), default=10,
                   help="parallel requests to S3")
    p.add_argument("--cache-size", type=size_arg, default=None,
                   help="bytes of clean blocks kept on disk, e.g. 2G (default: the smaller of "
                   "10G and a quarter of the free space)")
    p.add_argument("--max-readahead", type=size_arg, default=64 * 1024 * 1024,
                   help="largest read-ahead window of a sequential reader, e.g. 64M")
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"],
                   default="info")
    p.add_argument("-o", dest="options", action="append", default=[], metavar="OPT[=VAL],...",
                   help="any option above as key=value, plus fstab options such as _netdev")
    return p


def apply_options(args: argparse.Namespace, parser: Parser) -> None:
    """Fold `-o a=b,c` into the parsed flags, exactly as the flags would have set them."""
    by_dest = {a.dest: a for a in parser._actions}
    for group in args.options:
        for item in filter(None, group.split(",")):
            name, eq, value = item.partition("=")
            name = OPTION_ALIASES.get(name, name.replace("-", "_"))
            if name in IGNORED_OPTIONS or name.startswith("x-"):
                continue
            action = by_dest.get(name)
            if action is None or name in ("source", "mountpoint", "options", "help", "version"):
                raise ConfigError(f"unknown option -o {item}", status=2)
            if name in FLAG_OPTIONS:
                if eq:
                    raise ConfigError(f"-o {name} takes no value", status=2)
                setattr(args, name, True)
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


def make_config(argv: list[str]) -> MountConfig:
    parser = build_parser()
    args = parser.parse_args(argv)
    apply_options(args, parser)
    bucket, _, prefix = args.source.partition(":")
    if not BUCKET_RE.match(bucket):
        raise ConfigError(f"{bucket!r} is not a valid bucket name", status=2)
    prefix = prefix.strip("/")
    if "//" in prefix:
        raise ConfigError(f"prefix {prefix!r} has an empty segment", status=2)
    mountpoint = os.path.abspath(args.mountpoint)
    if not os.path.exists(mountpoint):
        raise ConfigError(f"mount point {args.mountpoint} does not exist")
    if not os.path.isdir(mountpoint):
        raise ConfigError(f"mount point {args.mountpoint} is not a directory")
    if os.path.ismount(mountpoint):
        raise ConfigError(f"{args.mountpoint} is already a mount point")
    if args.max_concurrency < 1:
        raise ConfigError("--max-concurrency must be at least 1", status=2)
    extra = {k: getattr(args, k) for k in ("uid", "gid") if getattr(args, k) is not None}
    return MountConfig(
        bucket=bucket, prefix=f"{prefix}/" if prefix else "", mountpoint=mountpoint,
        endpoint_url=args.endpoint_url, region=args.region, profile=args.profile,
        addressing_style=args.addressing_style, signature_version=args.signature_version,
        foreground=args.foreground, read_only=args.read_only, allow_other=args.allow_other,
        file_mode=args.file_mode, dir_mode=args.dir_mode, cache_dir=args.cache_dir,
        log_level=args.log_level, metadata_ttl=args.metadata_ttl,
        max_concurrency=args.max_concurrency, cache_size=args.cache_size,
        max_readahead=args.max_readahead, **extra)


def setup_logging(level: str, stream: Any = None) -> None:
    handler = logging.StreamHandler(stream or sys.stderr)
    if (stream or sys.stderr).isatty():
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    else:  # journald and log files add their own time stamps
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("botocore", "boto3", "urllib3", "s3transfer", "pyfuse3"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))


def start(config: MountConfig) -> int:
    from s3mount import mount, s3  # deferred: `--help` and usage errors stay fast

    client = s3.build_client(config)
    s3.check_bucket(client, config)
    if config.foreground:
        return mount.run(config, client)
    return daemonize(config, mount, s3)


def daemonize(config: MountConfig, mount: Any, s3: Any) -> int:
    """Fork; the parent returns 0 once the child's mount answers, or 1 with its error."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid:
        os.close(write_fd)
        with os.fdopen(read_fd) as pipe:
            message = pipe.read()
        if message.startswith("ok"):
            return 0
        print(f"s3mount: {message.strip() or 'the mount process died while starting'}",
              file=sys.stderr)
        return 1
    os.close(read_fd)
    os.setsid()
    pipe = os.fdopen(write_fd, "w")

    def ready() -> None:
        pipe.write("ok\n")
        pipe.close()
        devnull = os.open(os.devnull, os.O_RDWR)
        os.dup2(devnull, 0)
        os.dup2(devnull, 1)
        os.dup2(devnull, 2)

    logfile = open(config.cache_path() / "s3mount.log", "a", buffering=1)  # noqa: SIM115
    setup_logging(config.log_level, logfile)
    try:
        status = mount.run(config, s3.build_client(config), on_ready=ready)
    except ConfigError as exc:
        pipe.write(f"{exc}\n")
        pipe.close()
        os._exit(exc.status)
    except BaseException as exc:  # noqa: BLE001 - report, never a traceback on the terminal
        logging.getLogger("s3mount").exception("mount failed")
        if not pipe.closed:
            pipe.write(f"mount failed: {exc}\n")
            pipe.close()
        os._exit(1)
    os._exit(status)


def main(argv: list[str] | None = None) -> int:
    try:
        config = make_config(sys.argv[1:] if argv is None else argv)
        setup_logging(config.log_level)
        if not config.foreground:
            config.cache_path().mkdir(mode=0o700, parents=True, exist_ok=True)
        return start(config)
    except ConfigError as exc:
        print(f"s3mount: {exc}", file=sys.stderr)
        return exc.status
    except KeyboardInterrupt:
        return 130
