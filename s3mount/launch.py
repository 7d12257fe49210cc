"""Starting a mount once its options are settled: in the foreground, or as a daemon.

`start` builds the boto3 client and checks the bucket while errors can still reach the terminal.
Without `-f` it forks (`daemonize`): the parent waits on a pipe and returns 0 only once the
child's mount answers, or 1 with the child's one-line error; the child starts a new session, logs
to `s3mount.log` in the cache directory, and drops its terminal once mounted.  The mount itself
(`mount.py`) is imported only here, so `--help` and usage errors stay fast.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

from s3mount import notify
from s3mount.config import MountConfig
from s3mount.errors import ConfigError
from s3mount.logsetup import setup_logging


def start(config: MountConfig) -> int:
    from s3mount import mount, s3client  # deferred: `--help` and usage errors stay fast

    client = s3client.build_client(config)
    s3client.check_bucket(client, config)
    if config.foreground:
        return mount.run(config, client)
    return daemonize(config, mount, s3client)


def daemonize(config: MountConfig, mount: Any, s3client: Any) -> int:
    """Fork; the parent returns 0 once the child's mount answers, or 1 with its error."""
    notify.forget()  # the daemon is no service's main process: it must not speak for one
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid:
        os.close(write_fd)
        with os.fdopen(read_fd) as pipe:
            message = pipe.read()
        if message.startswith("ok"):
            # Straight out: the interpreter's own shutdown (boto3, trio, pyfuse3 torn down)
            # took a third of a second of every mount's start, and this process owns nothing.
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(0)
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

    logfile = open(config.cache_path() / "s3mount.log", "a", buffering=1,  # noqa: SIM115
                   opener=lambda path, flags: os.open(path, flags, 0o600))
    setup_logging(config.log_level, logfile)
    try:
        status = mount.run(config, s3client.build_client(config), on_ready=ready)
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
