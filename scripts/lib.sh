# shellcheck shell=bash
# Set-up shared by scripts/test, scripts/lint and scripts/demo; sourced, never run.
#
# After `s3mount_setup`, the current directory is the repository root, the Debian packages s3mount
# needs are installed, and .venv holds s3mount (editable) with its test tools.

# What s3mount and its tests need from Debian (pyfuse3 is built against libfuse3).
S3MOUNT_APT_PACKAGES=(fuse3 libfuse3-dev pkg-config rsync sqlite3 git tar procps s3fs)

S3MOUNT_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$S3MOUNT_ROOT/.venv"

say() { printf '==> %s\n' "$*" >&2; }
die() { printf '%s: %s\n' "${0##*/}" "$*" >&2; exit 1; }

as_root() {
    if [[ $EUID -eq 0 ]]; then
        "$@"
    elif command -v sudo >/dev/null; then
        sudo "$@"
    else
        die "need root to run: $*"
    fi
}

deb_installed() {
    [[ "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null)" == "install ok installed" ]]
}

python_ok() {
    command -v python3 >/dev/null &&
        python3 -c 'import sys, venv, ensurepip; sys.exit(sys.version_info < (3, 11))' 2>/dev/null
}

python_headers_ok() {
    python3 -c 'import os, sys, sysconfig
sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))' \
        2>/dev/null
}

# Install the Debian packages that are missing; `apt-get update` only when something is.
ensure_packages() {
    local missing=() pkg
    for pkg in "${S3MOUNT_APT_PACKAGES[@]}"; do
        deb_installed "$pkg" || missing+=("$pkg")
    done
    # A bare machine may lack Python's venv module, its headers, or a C compiler (for pyfuse3).
    python_ok || missing+=(python3 python3-venv python3-dev)
    python_ok && ! python_headers_ok && missing+=(python3-dev)
    command -v cc >/dev/null || missing+=(gcc libc6-dev)
    # The signature-checking S3 server of the credential tests (s3rver) comes from npm; a
    # machine may have Node.js from elsewhere, so Debian's npm only when there is none.
    command -v npm >/dev/null || missing+=(npm)
    command -v openssl >/dev/null || missing+=(openssl)
    if ((${#missing[@]})); then
        say "installing Debian packages: ${missing[*]}"
        as_root env DEBIAN_FRONTEND=noninteractive DEBCONF_NOWARNINGS=yes apt-get update -qq
        as_root env DEBIAN_FRONTEND=noninteractive DEBCONF_NOWARNINGS=yes apt-get install -y -qq \
            --no-install-recommends "${missing[@]}" >/dev/null
    fi
    python_ok || die "python3 >= 3.11 with venv is needed ($(python3 --version 2>&1))"
}

ensure_fuse_device() {
    if [[ ! -e /dev/fuse ]]; then
        { [[ $EUID -eq 0 ]] && command -v modprobe && modprobe fuse; } >/dev/null 2>&1 || true
    fi
    [[ -e /dev/fuse ]] || say "warning: /dev/fuse is missing: mounting (and the FUSE tests) cannot work"
}

# Create .venv (or reuse it if its Python still runs) and install s3mount with its test tools.
ensure_venv() {
    if [[ -e "$VENV" ]] && ! "$VENV/bin/python" -c '' 2>/dev/null; then
        say "recreating $VENV (its Python no longer runs)"
        rm -rf "$VENV"
    fi
    if [[ ! -e "$VENV/bin/python" ]]; then
        say "creating $VENV"
        python3 -m venv "$VENV"
    fi
    say "installing s3mount and its test tools into .venv"
    # Some machines' pip configuration names local indexes that may be absent: pip warns about
    # each and carries on, so those lines are dropped (pip's own exit status still counts).
    "$VENV/bin/python" -m pip install -q -e "${S3MOUNT_ROOT}[test]" 2>&1 |
        { grep -v "is ignored: it is neither a file nor a directory" || true; }
}

# Profiles, CA bundles and the like from the caller's environment have no place in a local run.
clear_aws_env() {
    local name
    for name in $(compgen -e); do
        [[ $name == AWS_* ]] && unset "$name"
    done
    return 0
}

s3mount_setup() {
    cd "$S3MOUNT_ROOT" || exit 1
    if [[ ${S3MOUNT_SETUP_DONE:-} != 1 ]]; then
        ensure_packages
        ensure_fuse_device
        ensure_venv
        export S3MOUNT_SETUP_DONE=1  # for scripts this one runs
    fi
}
