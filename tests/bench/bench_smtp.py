"""End-to-end SMTP benchmark: mailpod against Postfix, idle memory, per-message latency.

    .venv/bin/python -m tests.bench.bench_smtp [--messages N] [--sessions 10,50] [--dir DIR]
        [--keep-connections] [--skip-postfix] [--latency-messages N] [--profile]

1. Throughput: Postfix's `smtp-source` sends N messages of 10 KiB to alice@example.com over S
   concurrent sessions (a new connection per message, as MTAs deliver to an MX, unless
   --keep-connections) to a real `mailpod run` with 2 workers and with 1 worker. mailpod replies
   250 only after the Maildir file and its new/ directory are fsynced, so msg/s is N / wall
   time, and the Maildir must hold exactly N more files afterwards (checked: "stored").
2. The same load into a private Postfix instance (tests/bench/postfix_instance.py; needs root)
   delivering to Maildir with virtual(8). Postfix answers 250 once its queue file is fsynced and
   delivers later, so it gets two figures: accepted (smtp-source done) and delivered (all N
   files in new/, timed from the start of smtp-source).
3. Idle memory of a 2-worker pod 2 s after start: VmRSS of the parent and of each worker, and
   PSS, which splits the pages the workers share with the parent since fork, so that the sum
   counts each page once (as the pod's memory cgroup does).
4. Latency of single messages from one Python smtplib client, one message at a time.
With --profile, a 1-worker pod also runs under a SIGPROF sampling profiler (CPU time, 1 kHz; far
less distortion than cProfile on aiosmtpd's many small calls) and the hottest frames are printed.

Each run's files stay on disk until the end: deleting 50 MB of mail between runs would make the
next run's fsyncs wait for the deletion (and discards) instead. Put --dir on the volume you care
about; on tmpfs fsync is free and the figures meaningless. Servers, load generator and this
script share the machine's CPUs: "bg CPU" is the machine's load in the 0.5 s before a run (other
users), "other" the CPU used during the run by neither the server nor smtp-source (kernel
threads, other users). Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import os
import resource
import shutil
import signal
import smtplib
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.bench.postfix_instance import PostfixInstance, unavailable_reason
from tests.conftest import REPO
from tests.integration.mailpod_harness import MailpodProcess

SENDER = "sender@remote.test"
RECIPIENT = "alice@example.com"
SIZE = 10 * 1024
WARMUP = 50
CPUS = os.cpu_count() or 1
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
SMTP_SOURCE = shutil.which("smtp-source", path="/usr/sbin:/usr/bin") or "/usr/sbin/smtp-source"


# --- mailpod -----------------------------------------------------------------------------------


@dataclass
class BenchPod(MailpodProcess):
    """The integration harness's pod (config, certificate, ports, stop), started here so that a
    multi-worker pod's metrics directory lands under `root` and a pod can run under the
    sampling profiler."""

    profile_to: Path | None = None
    overrides: dict[str, object] = field(
        # All load comes from 127.0.0.1: the per-address connection limit is not under test.
        default_factory=lambda: {
            "limits": {"max_message_bytes": 200_000, "max_connections_per_ip": 10_000}
        }
    )

    def start(self, *_: object, **__: object) -> BenchPod:
        env = {**os.environ, "PYTHONPATH": f"{REPO / 'operator'}:{REPO}"}
        env["PROMETHEUS_MULTIPROC_DIR"] = str(self.root / "metrics")
        (self.root / "metrics").mkdir(exist_ok=True)
        argv = ["run", "--config", str(self.config_file), "--workers", str(self.workers)]
        argv += ["--log-format", "json"]
        if self.profile_to is not None:
            if self.workers != 1:
                raise ValueError("profiling needs a 1-worker pod (serve() in the main process)")
            command = [sys.executable, "-m", "tests.bench.bench_smtp", "--serve-profiled"]
            command += [str(self.profile_to), *argv]
        else:
            command = [sys.executable, "-m", "mailpod", *argv]
        self.proc = subprocess.Popen(
            command,
            stdout=subprocess.DEVNULL,
            stderr=self.log_file.open("ab"),
            env=env,
            cwd=REPO,
            start_new_session=True,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mailpod exited {self.proc.returncode}:\n{self.log()}")
            if _banner(self.ports["smtp"]):
                return self
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"mailpod did not start:\n{self.log()}")

    def pids(self) -> list[int]:
        assert self.proc is not None
        return [self.proc.pid, *_children(self.proc.pid)]

    def stored(self) -> int:
        maildir = self.maildir(RECIPIENT)
        return sum(_count(maildir / sub) for sub in ("new", "cur"))


def _banner(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
            return sock.recv(100).startswith(b"220")
    except OSError:
        return False


def _children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def _count(directory: Path) -> int:
    try:
        return len(os.listdir(directory))
    except FileNotFoundError:
        return 0


def _cpu_seconds(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
            total += (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime + stime
    return total


def _machine_ticks() -> list[int]:
    return [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]


def _busy(start: list[int], end: list[int]) -> tuple[float, float, float]:
    """(busy CPU seconds, busy share of all CPUs %, iowait %) between two _machine_ticks()."""
    delta = [b - a for a, b in zip(start, end, strict=True)]
    total = sum(delta) or 1
    busy = total - delta[3] - delta[4]  # minus idle, iowait
    return busy / CLOCK_TICKS, 100 * busy / total, 100 * delta[4] / total


def background_cpu(seconds: float = 0.5) -> float:
    start = _machine_ticks()
    time.sleep(seconds)
    return _busy(start, _machine_ticks())[1]


# --- load --------------------------------------------------------------------------------------


def smtp_source(port: int, sessions: int, count: int, keep: bool) -> tuple[float, float]:
    """Run smtp-source to completion: (wall seconds, its CPU seconds). Raises on SMTP errors
    (smtp-source exits non-zero on any unexpected reply)."""
    command = [SMTP_SOURCE, "-s", str(sessions), "-m", str(count), "-l", str(SIZE)]
    command += ["-f", SENDER, "-t", RECIPIENT]
    if keep:
        command.append("-d")
    command.append(f"127.0.0.1:{port}")
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)
    elapsed = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed: {result.stderr.strip()}")
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    return elapsed, cpu


@dataclass
class Row:
    server: str
    workers: str
    sessions: int
    messages: int
    accepted_s: float
    stored_s: float | None  # None: not everything was stored
    stored: int
    server_cpu: float  # seconds, all server processes
    client_cpu: float
    busy_cpu: float  # seconds, whole machine
    busy_pct: float
    iowait_pct: float
    background_pct: float
    note: str = ""

    def accepted_rate(self) -> float:
        return self.messages / self.accepted_s

    def stored_rate(self) -> float | None:
        return self.messages / self.stored_s if self.stored_s else None

    def other_pct(self) -> float:
        window = self.stored_s or self.accepted_s
        other = self.busy_cpu - self.server_cpu - self.client_cpu
        return max(0.0, 100 * other / (window * CPUS))


def bench_mailpod(root: Path, workers: int, sessions: int, count: int, keep: bool) -> Row:
    pod = BenchPod(root, workers=workers).start()
    try:
        smtp_source(pod.ports["smtp"], min(sessions, 10), WARMUP, keep)
        before = pod.stored()
        pids = pod.pids()
        background = background_cpu()
        cpu_before = _cpu_seconds(pids)
        machine = _machine_ticks()
        elapsed, client_cpu = smtp_source(pod.ports["smtp"], sessions, count, keep)
        busy_cpu, busy_pct, iowait = _busy(machine, _machine_ticks())
        server_cpu = _cpu_seconds(pids) - cpu_before
        stored = pod.stored() - before
        leftovers = _count(pod.maildir(RECIPIENT) / "tmp")
        rss = sum(_status_kib(pid, "VmRSS") for pid in pids) / 1024
        pss = sum(_pss_kib(pid) for pid in pids) / 1024
    finally:
        pod.stop()
    ok = stored == count and leftovers == 0
    note = f"RSS {rss:.0f}/PSS {pss:.0f} MiB after"
    return Row(
        server="mailpod",
        workers=str(workers),
        sessions=sessions,
        messages=count,
        accepted_s=elapsed,
        stored_s=elapsed if ok else None,
        stored=stored,
        server_cpu=server_cpu,
        client_cpu=client_cpu,
        busy_cpu=busy_cpu,
        busy_pct=busy_pct,
        iowait_pct=iowait,
        background_pct=background,
        note=note if ok else f"STORED {stored}/{count}, {leftovers} left in tmp/; {note}",
    )


def bench_postfix(postfix: PostfixInstance, sessions: int, count: int, keep: bool) -> Row:
    before = postfix.delivered()
    target = before + count
    background = background_cpu()
    cpu_before = postfix.cpu_seconds()
    machine = _machine_ticks()
    started = time.perf_counter()
    accepted, client_cpu = smtp_source(postfix.port, sessions, count, keep)
    deadline = time.perf_counter() + 300
    while (delivered := postfix.delivered()) < target and time.perf_counter() < deadline:
        time.sleep(0.01)
    stored_s = time.perf_counter() - started
    busy_cpu, busy_pct, iowait = _busy(machine, _machine_ticks())
    server_cpu = postfix.cpu_seconds() - cpu_before
    ok = delivered == target
    return Row(
        server="postfix",
        workers="-",
        sessions=sessions,
        messages=count,
        accepted_s=accepted,
        stored_s=stored_s if ok else None,
        stored=delivered - before,
        server_cpu=server_cpu,
        client_cpu=client_cpu,
        busy_cpu=busy_cpu,
        busy_pct=busy_pct,
        iowait_pct=iowait,
        background_pct=background,
        note="" if ok else f"DELIVERED {delivered - before}/{count} ({postfix.queued()} queued)",
    )


def _warm_postfix(postfix: PostfixInstance, keep: bool) -> None:
    target = postfix.delivered() + WARMUP
    smtp_source(postfix.port, 10, WARMUP, keep)
    deadline = time.monotonic() + 60
    while postfix.delivered() < target and time.monotonic() < deadline:
        time.sleep(0.05)


# --- memory ------------------------------------------------------------------------------------


def _status_kib(pid: int, key: str) -> int:
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def _pss_kib(pid: int) -> int:
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    return 0


def bench_rss(root: Path, workers: int = 2, idle: float = 2.0) -> list[tuple[str, int, int, int]]:
    """(role, pid, VmRSS KiB, PSS KiB) for the parent and each worker of an idle pod."""
    pod = BenchPod(root, workers=workers).start()
    try:
        time.sleep(idle)
        assert pod.proc is not None
        return [
            (
                "parent" if pid == pod.proc.pid else "worker",
                pid,
                _status_kib(pid, "VmRSS"),
                _pss_kib(pid),
            )
            for pid in pod.pids()
        ]
    finally:
        pod.stop()


# --- latency -----------------------------------------------------------------------------------


def _message(index: int) -> bytes:
    header = (
        f"From: <{SENDER}>\r\nTo: <{RECIPIENT}>\r\nSubject: latency {index}\r\n"
        f"Message-ID: <{index}.{time.time_ns()}@remote.test>\r\n\r\n"
    ).encode()
    line = b"x" * 78 + b"\r\n"
    return header + line * ((SIZE - len(header)) // len(line))


def latencies(port: int, count: int, reuse: bool) -> list[float]:
    """Seconds per message for `count` sequential messages from one client: the transaction
    MAIL .. 250 on an open session (reuse), or connect + EHLO + transaction + QUIT."""
    times = []
    client: smtplib.SMTP | None = None

    def connect() -> smtplib.SMTP:
        client = smtplib.SMTP("127.0.0.1", port, local_hostname="client.remote.test")
        client.ehlo()
        return client

    try:
        if reuse:
            client = connect()  # not timed
        for index in range(count):
            message = _message(index)
            started = time.perf_counter()
            if client is None:
                client = connect()
            client.sendmail(SENDER, [RECIPIENT], message)
            if not reuse:
                client.quit()
                client = None
            times.append(time.perf_counter() - started)
    finally:
        if client is not None:
            with contextlib.suppress(smtplib.SMTPException, OSError):
                client.quit()
    return times


def _percentiles(times: list[float]) -> tuple[float, float, float, float]:
    cuts = statistics.quantiles(times, n=100, method="inclusive")
    return 1000 * cuts[49], 1000 * cuts[94], 1000 * cuts[98], 1000 * max(times)


# --- profiling ---------------------------------------------------------------------------------


def serve_profiled(out: Path, argv: list[str]) -> int:
    """`mailpod` with a SIGPROF sampler: every ms of CPU (any thread) records the main
    thread's Python stack. With 1 worker the whole server runs in this process."""
    from mailpod.cli import main

    samples: collections.Counter[tuple[str, ...]] = collections.Counter()

    def sample(_signum: int, frame: object) -> None:
        stack = []
        while frame is not None:
            code = frame.f_code  # type: ignore[attr-defined]
            stack.append(f"{Path(code.co_filename).name}:{code.co_name}")
            frame = frame.f_back  # type: ignore[attr-defined]
        samples[tuple(reversed(stack))] += 1

    signal.signal(signal.SIGPROF, sample)
    signal.setitimer(signal.ITIMER_PROF, 0.001, 0.001)
    try:
        return main(argv)
    finally:
        signal.setitimer(signal.ITIMER_PROF, 0, 0)
        out.write_text(json.dumps(list(samples.items())))


def bench_profile(root: Path, sessions: int, count: int, keep: bool) -> tuple[Path, float]:
    out = root / "mailpod.samples"
    pod = BenchPod(root, workers=1, profile_to=out).start()
    try:
        smtp_source(pod.ports["smtp"], sessions, WARMUP, keep)
        elapsed, _ = smtp_source(pod.ports["smtp"], sessions, count, keep)
    finally:
        pod.stop()
    return out, count / elapsed


PHASES = (
    "server.py:make",  # a protocol object per connection (aiosmtpd SMTP.__init__)
    "selector_events.py:_accept_connection2",
    "smtp.py:smtp_HELO",
    "smtp.py:smtp_EHLO",
    "smtp.py:smtp_MAIL",
    "smtp.py:smtp_RCPT",
    "smtp.py:smtp_DATA",  # reading the body; handle_DATA below is ours
    "handler.py:handle_DATA",
    "handler.py:_log_transaction",
    "server.py:deliver",
    "smtp.py:smtp_QUIT",
    "selectors.py:select",
)


def print_profile(path: Path, limit: int = 22) -> None:
    samples = {tuple(stack): n for stack, n in json.loads(path.read_text())}
    total = sum(samples.values()) or 1
    serving = {s: n for s, n in samples.items() if "server.py:serve" in s or "server.py:run" in s}
    inclusive: collections.Counter[str] = collections.Counter()
    phases: collections.Counter[str] = collections.Counter()
    for stack, n in serving.items():
        for name in set(stack):
            inclusive[name] += n
        inside = [name for name in stack if name in PHASES]
        phases[inside[-1] if inside else f"(elsewhere) {stack[-1]}"] += n
    print(f"{total} samples (1 per ms of CPU)")
    print("  by innermost phase:")
    for name, n in phases.most_common(limit):
        print(f"    {100 * n / total:5.1f}%  {name}")
    print("  inclusive, hottest frames below the event loop:")
    shown = 0
    for name, n in inclusive.most_common():
        if name.startswith(("runners.py", "base_events.py", "<frozen", "bench_smtp.py", "cli.py")):
            continue
        if name in ("server.py:run", "events.py:_run"):
            continue
        print(f"    {100 * n / total:5.1f}%  {name}")
        shown += 1
        if shown == limit:
            break


# --- output ------------------------------------------------------------------------------------


def _filesystem(path: Path) -> str:
    best, kind = "", "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/mounts").read_text().splitlines():
            _dev, mount, fstype, *_ = line.split()
            if str(path.resolve()).startswith(mount) and len(mount) > len(best):
                best, kind = mount, fstype
    return kind


HEADER = (
    f"{'server':<8} {'wrk':>3} {'sess':>4} {'msgs':>5} {'accept s':>8} {'accept/s':>8} "
    f"{'stored/s':>8} {'stored':>6} {'srv ms/msg':>10} {'cli ms/msg':>10} {'machine':>7} "
    f"{'iowait':>6} {'bg':>4} {'other':>5}  note"
)


def format_row(row: Row) -> str:
    stored_rate = row.stored_rate()
    return (
        f"{row.server:<8} {row.workers:>3} {row.sessions:>4} {row.messages:>5} "
        f"{row.accepted_s:8.2f} {row.accepted_rate():8.0f} "
        f"{f'{stored_rate:8.0f}' if stored_rate else '       -'} {row.stored:>6} "
        f"{1000 * row.server_cpu / row.messages:10.2f} "
        f"{1000 * row.client_cpu / row.messages:10.2f} "
        f"{row.busy_pct:6.0f}% {row.iowait_pct:5.0f}% {row.background_pct:3.0f}% "
        f"{row.other_pct():4.0f}%  {row.note}"
    )


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--serve-profiled":
        sys.exit(serve_profiled(Path(sys.argv[2]), sys.argv[3:]))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=5000, help="per throughput run")
    parser.add_argument("--sessions", default="10,50", help="comma-separated session counts")
    parser.add_argument("--dir", type=Path, default=None, help="where to make the temp dir")
    parser.add_argument("--keep-connections", action="store_true", help="smtp-source -d")
    parser.add_argument("--skip-postfix", action="store_true")
    parser.add_argument("--latency-messages", type=int, default=300)
    parser.add_argument("--profile", action="store_true", help="also profile a 1-worker pod")
    args = parser.parse_args()
    sessions = [int(s) for s in args.sessions.split(",") if s]
    if not Path(SMTP_SOURCE).exists():
        sys.exit("smtp-source not found (Debian package postfix)")
    skip_postfix = "--skip-postfix" if args.skip_postfix else unavailable_reason()
    base = Path(tempfile.mkdtemp(prefix="bench-smtp-", dir=args.dir))
    base.chmod(0o755)  # Postfix's own users must reach their directories inside
    try:
        run(args, sessions, base, skip_postfix)
    finally:
        shutil.rmtree(base, ignore_errors=True)


def run(
    args: argparse.Namespace, sessions: list[int], base: Path, skip_postfix: str | None
) -> None:
    load = os.getloadavg()
    print(
        f"{CPUS} CPUs, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; files in {base} "
        f"({_filesystem(base)}); {SIZE} B messages to one mailbox, fsync on; smtp-source opens "
        f"{'one connection per session' if args.keep_connections else 'a connection per message'}",
        flush=True,
    )
    started = time.perf_counter()
    rows: list[Row] = []
    names = iter(range(1000))

    def fresh(prefix: str) -> Path:
        path = base / f"{prefix}-{next(names)}"
        path.mkdir()
        return path

    def measure(row: Row) -> None:
        rows.append(row)
        print(f"  ... {format_row(rows[-1])}", file=sys.stderr, flush=True)

    # 1. mailpod
    for workers in (2, 1):
        for count in sessions:
            measure(
                bench_mailpod(fresh("pod"), workers, count, args.messages, args.keep_connections)
            )

    # 2. Postfix, and its latency while it is up
    postfix_latency: dict[str, list[float]] = {}
    if skip_postfix:
        print(f"postfix skipped: {skip_postfix}")
    else:
        postfix = PostfixInstance(fresh("postfix"))
        try:
            postfix.start()
            _warm_postfix(postfix, args.keep_connections)
            for count in sessions:
                measure(bench_postfix(postfix, count, args.messages, args.keep_connections))
            if args.latency_messages > 1:
                for reuse in (True, False):
                    postfix_latency[f"postfix, {'reuse' if reuse else 'new'} conn"] = latencies(
                        postfix.port, args.latency_messages, reuse
                    )
        finally:
            postfix.stop()

    # 3. memory
    rss = bench_rss(fresh("rss"))

    # 4. latency
    pod_latency: dict[str, list[float]] = {}
    if args.latency_messages > 1:
        pod = BenchPod(fresh("latency"), workers=2).start()
        try:
            latencies(pod.ports["smtp"], 20, reuse=True)  # warm-up
            for reuse in (True, False):
                pod_latency[f"mailpod 2w, {'reuse' if reuse else 'new'} conn"] = latencies(
                    pod.ports["smtp"], args.latency_messages, reuse
                )
        finally:
            pod.stop()

    print()
    print(f"== Throughput: {args.messages} messages of {SIZE} B to {RECIPIENT} by smtp-source ==")
    print(HEADER)
    for row in rows:
        print(format_row(row))
    print(
        "  accept/s: messages / smtp-source wall time. stored/s: messages / time until all are "
        "in the Maildir (mailpod\n  replies 250 after its fsyncs: same figure). srv/cli ms/msg: "
        "CPU (user+sys) of the server's processes\n  and of smtp-source per message. machine: "
        "all CPUs busy during the run; bg: busy just before it;\n  other: CPU used by neither "
        "server nor client during the run."
    )
    for count in sessions:
        same = [r for r in rows if r.sessions == count]
        pod_row = next((r for r in same if r.server == "mailpod" and r.workers == "2"), None)
        pf_row = next((r for r in same if r.server == "postfix"), None)
        if pod_row and pf_row:
            pod_rate, pf_rate = pod_row.stored_rate() or 0, pf_row.stored_rate() or 0
            print(
                f"  {count} sessions: mailpod 2 workers / Postfix delivered = {pod_rate:.0f} / "
                f"{pf_rate:.0f} = {pod_rate / pf_rate if pf_rate else 0:.2f}; "
                f"/ Postfix accepted = {pod_rate / pf_row.accepted_rate():.2f}"
            )

    print()
    print("== Idle memory: 2-worker pod, 2 s after start ==")
    print(f"{'process':<8} {'pid':>8} {'VmRSS MiB':>10} {'PSS MiB':>8}")
    for role, pid, rss_kib, pss_kib in rss:
        print(f"{role:<8} {pid:>8} {rss_kib / 1024:10.1f} {pss_kib / 1024:8.1f}")
    rss_sum = sum(r[2] for r in rss) / 1024
    pss_sum = sum(r[3] for r in rss) / 1024
    print(f"{'sum':<8} {'':>8} {rss_sum:10.1f} {pss_sum:8.1f}")
    print(
        f"  target <= 60 MiB per pod, compared with the PSS sum (each page once, like the pod's "
        f"memory cgroup):\n  {pss_sum:.1f} MiB -> {'within' if pss_sum <= 60 else 'OVER'} target. "
        f"The VmRSS sum ({rss_sum:.1f} MiB) counts the pages the workers share with\n  the parent "
        f"since fork once per process: {'within' if rss_sum <= 60 else 'over'} 60 MiB."
    )

    if pod_latency:
        print()
        print(f"== Latency: 1 client, {args.latency_messages} sequential messages of {SIZE} B ==")
        print(f"{'server':<22} {'p50 ms':>7} {'p95 ms':>7} {'p99 ms':>7} {'max ms':>7}")
        for name, times in {**pod_latency, **postfix_latency}.items():
            p50, p95, p99, worst = _percentiles(times)
            print(f"{name:<22} {p50:7.2f} {p95:7.2f} {p99:7.2f} {worst:7.2f}")
        print(
            "  reuse conn: MAIL FROM .. 250 after DATA on one open session (smtplib: no "
            "pipelining); new conn: connect,\n  EHLO, the transaction and QUIT. Postfix's 250 "
            "means queued (fsynced), not yet in the Maildir."
        )

    if args.profile:
        count = min(args.messages, 3000)
        out, rate = bench_profile(fresh("profile"), sessions[0], count, args.keep_connections)
        print()
        print(f"== Sampling profile: 1-worker pod, {count} messages, {sessions[0]} sessions ==")
        print(f"  {rate:.0f} msg/s under the profiler")
        print_profile(out)

    print()
    print(f"total {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
