"""Being mount(8)'s helper (`/sbin/mount.fuse.s3mount`): its calling convention, turned into
s3mount's own arguments, and `setuid=USER`."""

from __future__ import annotations

import os
import pwd

from s3mount.errors import ConfigError


def mount_helper_args(argv: list[str]) -> tuple[list[str], bool, str | None]:
    """mount(8)'s helper call `SOURCE DIR [-sfnv] [-o OPTS] [-t TYPE]` as s3mount arguments.

    Returns (arguments, fake, setuid user).  mount's `-f` means "fake" (do nothing), never our
    foreground; `-s`, `-n`, `-v` and the type mean nothing here; `setuid=USER` runs the mount as
    USER, as mount.fuse3 does.
    """
    positional: list[str] = []
    options: list[str] = []
    fake = False
    user = None
    items = iter(argv)
    for arg in items:
        if arg == "-o":
            options.append(next(items, ""))
        elif arg.startswith("-o"):
            options.append(arg[2:])
        elif arg == "-t":
            next(items, None)
        elif arg.startswith("-") and len(arg) > 1 and set(arg[1:]) <= set("sfnvrw"):
            fake = fake or "f" in arg
        else:
            positional.append(arg)
    kept = []
    for group in options:
        for item in filter(None, group.split(",")):
            if item.startswith("setuid="):
                user = item.partition("=")[2]
            else:
                kept.append(item)
    out = [*positional]
    if kept:
        out += ["-o", ",".join(kept)]
    return out, fake, user


def become_user(name: str) -> None:
    """Drop root for `setuid=USER` (mount.fuse3's option): groups, gid, uid and HOME."""
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        raise ConfigError(f"setuid={name}: no such user", status=2) from None
    os.initgroups(entry.pw_name, entry.pw_gid)
    os.setgid(entry.pw_gid)
    os.setuid(entry.pw_uid)
    os.environ.update(HOME=entry.pw_dir, USER=entry.pw_name, LOGNAME=entry.pw_name)


def is_mount_helper(prog: str) -> bool:
    name = os.path.basename(prog)
    return name.startswith(("mount.fuse.", "mount.fuse3.", "mount.s3mount"))
