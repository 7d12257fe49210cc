"""Options, the run loop, and clean-up: the server, the proxy and every mount go away even on
errors or Ctrl-C (SIGTERM is turned into the same clean exit)."""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench_lib import report
from bench_lib.memory import memory_markdown, run_memory
from bench_lib.proxy import DelayProxy
from bench_lib.raw import run_raw_session
from bench_lib.servers import Server, start_server
from bench_lib.targets import RAW_DESCRIPTION, Mounts, make_client
from bench_lib.workloads import SESSIONS, Bench, Sample, Sizes, mib, prepare, run_mount_session

ROOT = Path(__file__).resolve().parents[2]
BUCKET = "bench"
T0 = time.monotonic()


def say(text: str) -> None:
    print(f"[{time.monotonic() - T0:7.1f}s] {text}", file=sys.stderr, flush=True)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="scripts/bench",
        description="Time the same workloads on s3mount, raw boto3, s3fs-fuse and rclone mount "
        "against a local S3 server; write a markdown table, JSON and a PNG to bench-results/.")
    p.add_argument("--scale", type=float, default=1.0,
                   help="multiply every size and count (0.1 for a quick run; default 1)")
    p.add_argument("--big", type=int, metavar="MIB",
                   help="size of the big object (sequential and random workloads) in MiB, "
                   "whatever --scale says (default 1024 x scale)")
    p.add_argument("--runs", type=int, default=3, help="runs per workload; the median is shown")
    p.add_argument("--server", choices=["seaweedfs", "moto", "s3rver"], default="seaweedfs",
                   help="the S3 server on loopback (default seaweedfs; moto's ranged GETs "
                   "cost a whole-object copy, so its timings decide nothing)")
    p.add_argument("--latency", type=float, default=0.0, metavar="MS",
                   help="add MS ms of round-trip time through a proxy on loopback: every "
                   "request and every new connection waits one round trip")
    p.add_argument("--conn-mbps", type=float, default=0.0, metavar="N",
                   help="cap each proxied TCP connection at N MB/s each way (S3 gives about "
                   "85-90 per connection; the reference set-up is --latency 20 --conn-mbps 25)")
    p.add_argument("--count-requests", action="store_true",
                   help="route every contender through the proxy (0 ms unless --latency) and "
                   "report requests per workload")
    p.add_argument("--targets", default="s3mount,boto3,s3fs,rclone",
                   help="comma-separated subset of s3mount,boto3,s3fs,rclone")
    p.add_argument("--workloads", default=",".join(SESSIONS),
                   help=f"comma-separated subset of {','.join(SESSIONS)} "
                   "(read = cold + warm read)")
    p.add_argument("--memory", action="store_true",
                   help="instead of the workloads: stream a 4 GiB file (times --scale) into "
                   "s3mount and back, sampling the daemon's RSS")
    p.add_argument("--memory-size", type=int, metavar="MIB",
                   help="size of the --memory stream in MiB (default 4096 x scale)")
    p.add_argument("--install-peers", action="store_true",
                   help="apt-get install s3fs and rclone (and npm install s3rver) if missing")
    p.add_argument("--s3mount-option", action="append", default=[], metavar="ARG",
                   help="pass ARG to s3mount (repeat for more), "
                   "e.g. --s3mount-option=--trust-listings")
    p.add_argument("--rclone-cache-mode", choices=["writes", "full"], default="full")
    p.add_argument("--rclone-write-back", default="0s", metavar="DURATION",
                   help="rclone's --vfs-write-back (its default is 5s; default here 0s)")
    p.add_argument("--verify", action="store_true",
                   help="also check the bytes read (crc32 of sequential reads, each pread)")
    p.add_argument("--out", default=str(ROOT / "bench-results"), help="where results go")
    p.add_argument("--no-chart", action="store_true", help="skip the PNG")
    p.add_argument("--keep-workdir", action="store_true")
    p.add_argument("--live-source", action="store_true",
                   help="run s3mount from the working tree at each mount instead of a copy of "
                   "s3mount/ taken at start (the copy keeps one run on one version of the code)")
    args = p.parse_args(argv)
    args.targets = [t for t in args.targets.split(",") if t]
    args.workloads = [w for w in args.workloads.split(",") if w]
    for t in args.targets:
        if t not in report.TARGETS:
            p.error(f"unknown target {t}")
    for w in args.workloads:
        if w not in SESSIONS:
            p.error(f"unknown workload {w} (choose from {', '.join(SESSIONS)})")
    if args.runs < 1 or args.scale <= 0:
        p.error("--runs must be >= 1 and --scale > 0")
    return args


def machine() -> dict[str, Any]:
    mem = 0
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                mem = int(line.split()[1]) * 1024
    cpu = "?"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {"nproc": os.cpu_count(), "ram_gib": round(mem / 1024**3, 1),
            "kernel": platform.release(), "cpu": cpu, "python": platform.python_version(),
            "loadavg_at_start": os.getloadavg()}


def code_state(package: Path = ROOT / "s3mount") -> str:
    """The s3mount source measured: commit, and a digest of s3mount/*.py (other people may be
    editing it; an editable install runs whatever is on disk at each mount)."""
    import hashlib
    digest = hashlib.sha256()
    for path in sorted(package.glob("*.py")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    try:
        head = subprocess.run(["git", "-C", str(ROOT), "log", "-1", "--format=%h %s"],
                              capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "s3mount"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        head, dirty = "?", ""
    return (f"commit {head or '?'}{' + uncommitted changes' if dirty else ''}; "
            f"s3mount/*.py sha256 {digest.hexdigest()[:12]}")


def can_drop_caches() -> bool:
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("1\n")
        return True
    except OSError:
        return False


def install_peers(missing: list[str]) -> None:
    if not missing:
        return
    sudo: list[str] = []
    if os.geteuid() != 0:
        if not shutil.which("sudo"):
            say(f"cannot install {' '.join(missing)}: not root and no sudo")
            return
        sudo = ["sudo"]
    say(f"installing {' '.join(missing)} with apt-get")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    install = [*sudo, "apt-get", "install", "-y", "-qq", *missing]
    if subprocess.run(install, env=env).returncode != 0:  # stale package lists: update, retry
        subprocess.run([*sudo, "apt-get", "update", "-qq"], env=env)
        subprocess.run(install, env=env)


def choose_targets(args: argparse.Namespace) -> tuple[list[str], dict[str, str | None], list[str]]:
    notes = []
    versions = Mounts.available()
    wanted_peers = [t for t in ("s3fs", "rclone") if t in args.targets]
    if args.install_peers:
        install_peers([t for t in wanted_peers if versions[t] is None])
        versions = Mounts.available()
    targets = []
    for t in args.targets:
        if t in versions and versions[t] is None:
            notes.append(f"{t} is not installed: skipped (apt-get install {t}, or "
                         "scripts/bench --install-peers)")
            continue
        targets.append(t)
    if not Path("/dev/fuse").exists() and any(t != "boto3" for t in targets):
        notes.append("/dev/fuse is missing: mounts cannot work; only raw boto3 runs")
        targets = [t for t in targets if t == "boto3"]
    return targets, versions, notes


def conditions_markdown(info: dict[str, Any]) -> str:
    m = info["machine"]
    lines = [
        f"- s3mount measured: {info['s3mount_code']}",
        f"- Machine: {m['nproc']} CPUs ({m['cpu']}), {m['ram_gib']} GiB RAM, Linux "
        f"{m['kernel']}, Python {m['python']}; load average at start "
        f"{', '.join(f'{x:.2f}' for x in m['loadavg_at_start'])} (a shared machine: "
        "figures are noisy)",
        f"- Server: {info['server']} (loopback); link: "
        + (f"every contender through one proxy: {info['link']}"
           if info.get("latency_ms") or info.get("conn_mbps") else
           ("none (through a 0 ms counting proxy)" if info["proxy"] else "none, no proxy")),
        f"- Runs: {info['runs']} per workload, median shown; scale {info['scale']:g}; big "
        f"object {mib(info['sizes']['big'])}",
        f"- Warm re-read: {info['warm_note']}",
        f"- Raw boto3: {RAW_DESCRIPTION}",
    ]
    for target, command in info["commands"].items():
        version = info["versions"].get(target) or ""
        lines.append(f"- {target}{' (' + version + ')' if version else ''}: `{command}`")
    for target, t in info.get("mount_seconds", {}).items():
        lines.append(f"- {target}: median mount {t.get('mount', 0):.1f} s, unmount "
                     f"{t.get('unmount', 0):.1f} s (not in the timings)")
    lines += [f"- Note: {n}" for n in info["notes"]]
    return "\n".join(lines)


def snapshot_source(workdir: Path) -> Path | None:
    """A copy of s3mount/ from the working tree, so every mount of the run runs the same code."""
    if not (ROOT / "s3mount" / "__init__.py").exists():
        return None
    dest = workdir / "s3mount-src"
    shutil.copytree(ROOT / "s3mount", dest / "s3mount",
                    ignore=shutil.ignore_patterns("__pycache__"))
    return dest


def check_code(info: dict[str, Any], pinned: Path | None) -> None:
    if pinned is not None:
        return
    now = code_state()
    if now != info["s3mount_code"]:
        info["notes"].append(f"s3mount's source changed during the run (at the end: {now}): "
                             "later mounts ran newer code")


def run_workloads(b: Bench, args: argparse.Namespace,
                  targets: list[str]) -> dict[str, dict[str, list[Sample]]]:
    results: dict[str, dict[str, list[Sample]]] = {}
    for run in range(args.runs):
        for session in args.workloads:
            for target in targets:
                tag = f"{target}-{run}"
                started = time.monotonic()
                b.mounts.timings.clear()
                try:
                    if target == "boto3":
                        samples = run_raw_session(b, session, tag)
                    else:
                        samples = run_mount_session(b, target, session, tag)
                except Exception as exc:  # noqa: BLE001 - one failure is a result, not the end
                    text = f"{type(exc).__name__}: {exc}"
                    samples = {w: Sample(None, error=text) for w in SESSIONS[session]
                               if not (target == "boto3" and w == "warmread")}
                for name, sample in samples.items():
                    results.setdefault(name, {}).setdefault(target, []).append(sample)
                shown = ", ".join(
                    f"{n} " + (f"{s.seconds:.2f}s" if s.error is None else f"ERROR {s.error}")
                    for n, s in samples.items())
                steps = "".join(f", {what} {sec:.1f}s" for _, what, sec in b.mounts.timings)
                say(f"run {run + 1}/{args.runs} {session:7} {target:8} {shown} "
                    f"[{time.monotonic() - started:.0f}s with set-up{steps}]")
    return results


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    sizes = Sizes.scaled(args.scale, args.big)
    targets, versions, notes = (["s3mount"], Mounts.available(), []) if args.memory \
        else choose_targets(args)
    info: dict[str, Any] = {"machine": machine(), "scale": args.scale, "runs": args.runs,
                            "latency_ms": args.latency, "conn_mbps": args.conn_mbps,
                            "targets": targets, "notes": notes,
                            "versions": {k: v for k, v in versions.items() if k in targets},
                            "sizes": vars(sizes), "raw_boto3": RAW_DESCRIPTION}
    m = info["machine"]
    say(f"machine: nproc {m['nproc']}, RAM {m['ram_gib']} GiB, kernel {m['kernel']}, "
        f"load {m['loadavg_at_start']}")
    for n in notes:
        say(f"note: {n}")
    workdir = Path(tempfile.mkdtemp(prefix="s3mount-bench-", dir="/var/tmp"))
    server: Server | None = None
    proxy: DelayProxy | None = None
    mounts: Mounts | None = None
    pinned = None if args.live_source else snapshot_source(workdir)
    info["s3mount_code"] = (code_state(pinned / "s3mount") + " (a copy taken at start: every "
                            "mount runs it)") if pinned else code_state()
    say(f"s3mount code: {info['s3mount_code']}")
    try:
        server = start_server(args.server, workdir, args.install_peers)
        info["server"] = server.describe()
        say(f"server: {info['server']}")
        if args.latency or args.conn_mbps or args.count_requests:
            proxy = DelayProxy(server.port, args.latency, args.conn_mbps).start()
            info["link"] = proxy.describe()
            say(f"proxy: {proxy.url} -> {server.url}, {info['link']}")
        info["proxy"] = proxy is not None
        endpoint = proxy.url if proxy else server.url
        admin = make_client(server.url, server.access_key, server.secret_key, pool=32)
        admin.create_bucket(Bucket=BUCKET)
        mounts = Mounts(workdir, endpoint, BUCKET, server.access_key, server.secret_key,
                        args.rclone_cache_mode, args.rclone_write_back,
                        args.s3mount_option)
        mounts.s3mount_pythonpath = str(pinned) if pinned else None
        drop = can_drop_caches()
        info["warm_note"] = ("kernel page cache dropped before it (echo 3 > "
                             "/proc/sys/vm/drop_caches)" if drop else
                             "could not drop the kernel page cache: the figure includes it")
        b = Bench(admin, make_client(endpoint, server.access_key, server.secret_key), BUCKET,
                  sizes, workdir, mounts, proxy, drop, args.verify, say)
        b.server_pid = server.proc.pid
        if args.memory:
            size = (args.memory_size * 1024 * 1024) if args.memory_size else sizes.memory
            result = run_memory(b, size)
            info["commands"] = dict(mounts.commands)
            check_code(info, pinned)
            return finish_memory(args, info, result)
        prepare(b, args.workloads)
        if b.disk_read_mbps:
            notes.append(f"local disk (cache dir, staging): {b.disk_read_mbps} MB/s "
                         f"sequential read with the page cache dropped")
        results = run_workloads(b, args, targets)
        info["commands"] = dict(mounts.commands)
        info["mount_seconds"] = mounts.median_timings()
        check_code(info, pinned)
        return finish(args, info, results, sizes, targets)
    finally:
        if mounts is not None:
            mounts.close()
        if proxy is not None:
            proxy.stop()
        if server is not None:
            server.stop()
        if args.keep_workdir:
            say(f"work directory kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


def stamp() -> str:
    return time.strftime("%Y%m%d-%H%M%S")


def finish(args: argparse.Namespace, info: dict[str, Any],
           results: dict[str, dict[str, list[Sample]]], sizes: Sizes, targets: list[str]) -> int:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    base = out / f"bench-{stamp()}"
    title = (f"s3mount bench, {info['server'].split(' on ')[0]}, "
             f"latency {args.latency:g} ms, "
             + (f"{args.conn_mbps:g} MB/s per connection, " if args.conn_mbps else "")
             + f"scale {args.scale:g}, median of {args.runs}")
    parts = [f"## {title}", "", conditions_markdown(info), "",
             report.markdown_table(results, sizes, targets), ""]
    pools = report.pool_lines(results)
    if pools:
        parts += ["Raw boto3 small operations through a 10-thread pool (not in the ratios):",
                  *pools, ""]
    parts += ["Issue 3 targets (speed ratios; one run's medians on a shared machine):",
              *report.target_checks(results, sizes, args.latency), ""]
    cpu = report.cpu_lines(results)
    if cpu:
        parts += ["Where the time went (median CPU seconds during the timed part; 2 CPUs, so at "
                  "most 2 CPU s per wall second, shared with whatever else the machine ran; "
                  "raw boto3's client CPU is the bench process):", "", *cpu, ""]
    requests = report.request_lines(results)
    if requests:
        parts += ["Requests per workload (median run, counted by the proxy):", "", *requests, ""]
    text = "\n".join(parts)
    base.with_suffix(".md").write_text(text + "\n")
    report.write_json(base.with_suffix(".json"), {"conditions": info,
                                                  "results": report.to_json(results)})
    chart = None if args.no_chart else report.write_chart(base.with_suffix(".png"), results,
                                                          sizes, targets, title)
    print(text)
    say(f"wrote {base}.md and .json" + ("" if args.no_chart or chart else " and .png"))
    if chart:
        say(chart)
    return 0


def finish_memory(args: argparse.Namespace, info: dict[str, Any], result: dict[str, Any]) -> int:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    base = out / f"memory-{stamp()}"
    text = "\n".join([memory_markdown(result), "", conditions_markdown(
        dict(info, warm_note="n/a", runs=1))])
    base.with_suffix(".md").write_text(text + "\n")
    report.write_json(base.with_suffix(".json"), {"conditions": info, "memory": result})
    print(text)
    say(f"wrote {base}.md and .json")
    return 0

