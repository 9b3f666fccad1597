"""IMAP throughput against a real `mailpod run` and, on the same machine with the same messages
and the same load, a private Dovecot (`dovecot-imapd`); then 1,000 idle IDLE connections.

    .venv/bin/python tests/bench/bench_imap.py [--messages 1000] [--clients 10 50]
        [--seconds 10] [--workers 2] [--idle 1000] [--no-dovecot] [--bulk] [--dir DIR]

Mixed load: each client loops over sessions of LOGIN, SELECT, FETCH headers, FETCH body,
STORE, SEARCH, APPEND, SELECT, STORE \\Deleted, EXPUNGE, LOGOUT, all over TLS; ops/s, p50 and
p99 per server and the mailpod/Dovecot ratio are printed. Dovecot runs from a temporary config
(`dovecot -c FILE`: passwd-file passdb, Maildir, one loopback IMAPS port), never the system one,
and is stopped at the end. Point --dir at the volume you care about (fsync on tmpfs is free).
Prints figures; asserts nothing. Clients are Python imaplib threads on the same machine, so the
client side takes CPU from the servers: compare the two servers, not absolute numbers.
"""

from __future__ import annotations

import argparse
import asyncio
import imaplib
import os
import pwd
import random
import re
import shutil
import socket
import ssl
import statistics
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from tests.harness.ports import free_port
from tests.integration.mailpod_harness import MailpodProcess, fast_hash

_T = TypeVar("_T")
USER = "alice@example.com"
PASSWORD = "bench-password"
IDLE_USERS = 50  # 1,000 IDLE connections spread over users, as real ones would be


@dataclass(frozen=True)
class Target:
    name: str
    port: int
    context: ssl.SSLContext

    def connect(self, user: str = USER, password: str = PASSWORD) -> imaplib.IMAP4_SSL:
        client = imaplib.IMAP4_SSL("127.0.0.1", self.port, ssl_context=self.context)
        client.login(user, password)
        return client


def message(n: int) -> bytes:
    body = ("Lorem ipsum dolor sit amet, consectetur adipiscing elit. " * 30).encode()
    return (
        (
            f"From: Sender {n} <sender{n}@remote.test>\r\nTo: {USER}\r\n"
            f"Subject: benchmark message {n}\r\nDate: Mon, 01 Jan 2024 10:00:00 +0000\r\n"
            f"Message-ID: <{n}@bench>\r\n\r\n"
        ).encode()
        + body
        + (b"needle\r\n" if n % 100 == 0 else b"\r\n")
    )


def fill(target: Target, messages: int) -> None:
    client = target.connect()
    started = time.perf_counter()
    for n in range(messages):
        client.append("INBOX", None, None, message(n))
    elapsed = time.perf_counter() - started
    print(
        f"  {target.name}: APPEND {messages} messages {elapsed:.2f} s ({messages / elapsed:.0f}/s)"
    )
    client.logout()


def timed(label: str, work: Callable[[], object], count: int) -> None:
    started = time.perf_counter()
    work()
    elapsed = time.perf_counter() - started
    print(f"  {label:<48} {elapsed * 1000:8.1f} ms  ({count / elapsed:9.0f} msgs/s)")


def bulk(target: Target, messages: int) -> None:
    client = target.connect()
    client.select("INBOX")
    print(f"{target.name}: bulk operations on {messages} messages")
    timed("UID FETCH 1:* (FLAGS)", lambda: client.uid("FETCH", "1:*", "(FLAGS)"), messages)
    timed(
        "FETCH 1:* (BODY.PEEK[HEADER.FIELDS (FROM SUBJECT)])",
        lambda: client.fetch("1:*", "(BODY.PEEK[HEADER.FIELDS (FROM SUBJECT DATE)])"),
        messages,
    )
    timed(
        "FETCH 1:* (ENVELOPE BODYSTRUCTURE)",
        lambda: client.fetch("1:*", "(ENVELOPE BODYSTRUCTURE)"),
        messages,
    )
    timed("FETCH 1:* (BODY.PEEK[])", lambda: client.fetch("1:*", "(BODY.PEEK[])"), messages)
    timed("SEARCH BODY needle", lambda: client.search(None, "BODY", "needle"), messages)
    timed(
        "STORE 1:* +FLAGS.SILENT (\\Seen)",
        lambda: client.store("1:*", "+FLAGS.SILENT", "(\\Seen)"),
        messages,
    )
    timed(
        "STORE 1:* -FLAGS.SILENT (\\Seen)",
        lambda: client.store("1:*", "-FLAGS.SILENT", "(\\Seen)"),
        messages,
    )
    client.logout()


_APPENDUID = re.compile(rb"APPENDUID \d+ (\d+)")


def session(
    client_factory: Callable[[], imaplib.IMAP4_SSL],
    rng: random.Random,
    messages: int,
    record: Callable[[float], None],
) -> None:
    """One mixed session; each command's latency goes to `record`."""

    def op(work: Callable[[], _T]) -> _T:
        started = time.perf_counter()
        result = work()
        record(time.perf_counter() - started)
        return result

    client = op(client_factory)
    k = rng.randint(1, messages - 20)
    op(lambda: client.select("INBOX"))
    op(
        lambda: client.fetch(
            f"{k}:{k + 19}", "(FLAGS BODY.PEEK[HEADER.FIELDS (FROM SUBJECT DATE)])"
        )
    )
    op(lambda: client.fetch(str(rng.randint(1, messages)), "(BODY.PEEK[])"))
    op(lambda: client.store(str(rng.randint(1, messages)), "+FLAGS", "(\\Flagged)"))
    op(lambda: client.search(None, "UNSEEN", "FROM", f"sender{rng.randint(1, 999)}"))
    status, data = op(lambda: client.append("Drafts", None, None, message(rng.randint(1, 999))))
    match = _APPENDUID.search(data[0] or b"") if status == "OK" else None
    op(lambda: client.select("Drafts"))
    if match:
        op(lambda: client.uid("STORE", match[1].decode(), "+FLAGS.SILENT", "(\\Deleted)"))
    op(lambda: client.expunge())
    op(lambda: client.logout())


def mixed(target: Target, clients: int, seconds: float, messages: int) -> tuple[float, float]:
    latencies: list[float] = []
    errors = 0
    lock = threading.Lock()
    stop = time.monotonic() + seconds

    def worker(seed: int) -> None:
        nonlocal errors
        rng = random.Random(seed)
        mine: list[float] = []
        failures = 0
        while time.monotonic() < stop:
            try:
                session(target.connect, rng, messages, mine.append)
            except (imaplib.IMAP4.error, OSError):
                failures += 1
        with lock:
            latencies.extend(mine)
            errors += failures

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    latencies.sort()
    p99 = latencies[int(len(latencies) * 0.99)] if latencies else 0.0
    median = statistics.median(latencies) if latencies else 0.0
    rate = len(latencies) / elapsed
    print(
        f"  {target.name:<8} {clients:3d} clients: {rate:7.0f} ops/s, p50 {median * 1000:6.1f} ms,"
        f" p99 {p99 * 1000:7.1f} ms, {errors} errors"
    )
    return rate, p99


# --- a private Dovecot --------------------------------------------------------------------------

DOVECOT_CONF = """\
base_dir = {root}/run
state_dir = {root}/state
log_path = {root}/dovecot.log
instance_name = bench-{port}
protocols = imap
listen = 127.0.0.1
ssl = required
ssl_cert = <{cert}
ssl_key = <{key}
disable_plaintext_auth = yes
auth_mechanisms = plain
first_valid_uid = 1
mail_location = maildir:~/Maildir
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {root}/passwd
}}
userdb {{
  driver = static
  args = uid={uid} gid={gid} home={root}/home/%u
}}
namespace inbox {{
  inbox = yes
  separator = .
  mailbox Drafts {{
    special_use = \\Drafts
    auto = create
  }}
}}
service imap-login {{
  inet_listener imap {{
    port = 0
  }}
  inet_listener imaps {{
    port = {port}
    ssl = yes
  }}
}}
service anvil {{
  unix_listener anvil-auth-penalty {{
    mode = 0
  }}
}}
# The defaults (10 per user and IP, 100 processes) would refuse 50 clients of one user.
mail_max_userip_connections = 1000
default_process_limit = 1100
default_client_limit = 5000
"""


@contextmanager
def dovecot(root: Path, cert: Path, key: Path, context: ssl.SSLContext) -> Iterator[Target]:
    binary = shutil.which("dovecot") or "/usr/sbin/dovecot"
    root.mkdir(parents=True)
    root.parent.chmod(0o755)  # mkdtemp's 0700 would keep Dovecot's unprivileged auth out
    for sub in ("run", "state", "home"):
        (root / sub).mkdir()
    account = pwd.getpwnam("dovecot") if os.geteuid() == 0 else pwd.getpwuid(os.getuid())
    os.chown(root / "home", account.pw_uid, account.pw_gid)
    (root / "passwd").write_text(f"{USER}:{{PLAIN}}{PASSWORD}\n")
    port = free_port()
    conf = root / "dovecot.conf"
    conf.write_text(
        DOVECOT_CONF.format(
            root=root, port=port, cert=cert, key=key, uid=account.pw_uid, gid=account.pw_gid
        )
    )
    subprocess.run([binary, "-c", str(conf)], check=True)
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.1)
        yield Target("dovecot", port, context)
    finally:
        subprocess.run([binary, "-c", str(conf), "stop"], check=False)
        pid_file = root / "run" / "master.pid"
        deadline = time.monotonic() + 10
        while pid_file.exists() and time.monotonic() < deadline:
            time.sleep(0.1)


# --- 1,000 IDLE connections ---------------------------------------------------------------------


def _tree(pid: int) -> list[int]:
    pids = [pid]
    for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
        pids += _tree(int(child))
    return pids


def memory(pid: int) -> tuple[float, float, int]:
    """(RSS MiB, PSS MiB, processes) of `pid` and its descendants."""
    rss = pss = 0
    pids = _tree(pid)
    for one in pids:
        for line in Path(f"/proc/{one}/smaps_rollup").read_text().splitlines():
            if line.startswith("Rss:"):
                rss += int(line.split()[1])
            elif line.startswith("Pss:"):
                pss += int(line.split()[1])
    return rss / 1024, pss / 1024, len(pids)


async def hold_idle(port: int, context: ssl.SSLContext, count: int) -> list[asyncio.StreamWriter]:
    semaphore = asyncio.Semaphore(50)  # a handshake burst the test client itself can handle

    async def one(n: int) -> asyncio.StreamWriter:
        async with semaphore:
            reader, writer = await asyncio.open_connection(
                "127.0.0.1", port, ssl=context, server_hostname="mail.example.com"
            )
            await reader.readline()
            user = f"idle{n % IDLE_USERS}@example.com"

            async def command(text: str) -> None:
                writer.write(text.encode() + b"\r\n")
                while not (line := await reader.readline()).startswith(text[:2].encode() + b" "):
                    if not line:
                        raise ConnectionError(f"closed during {text.split()[1]}")
                if b" OK " not in line:
                    raise RuntimeError(line.decode())

            await command(f"a1 LOGIN {user} {PASSWORD}")
            await command("a2 SELECT INBOX")
            writer.write(b"a3 IDLE\r\n")
            assert (await reader.readline()).startswith(b"+ ")
            return writer

    return await asyncio.gather(*(one(n) for n in range(count)))


def idle_memory(pod: MailpodProcess, count: int) -> None:
    assert pod.proc is not None
    before = memory(pod.proc.pid)

    async def run() -> None:
        started = time.perf_counter()
        writers = await hold_idle(pod.ports["imaps"], pod.client_context(), count)
        elapsed = time.perf_counter() - started
        await asyncio.sleep(3)  # a few IDLE polls, so every session has touched its index
        rss, pss, processes = memory(pod.proc.pid)  # type: ignore[union-attr]
        print(
            f"{count} IDLE connections (set up in {elapsed:.1f} s): pod RSS {rss:.1f} MiB,"
            f" PSS {pss:.1f} MiB over {processes} processes"
            f" (idle pod before: RSS {before[0]:.1f} MiB, PSS {before[1]:.1f} MiB;"
            f" {(pss - before[1]) * 1024 / count:.0f} KiB PSS per connection)"
        )
        for writer in writers:
            writer.close()

    asyncio.run(run())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--messages", type=int, default=1000)
    parser.add_argument(
        "--clients", type=int, nargs="*", default=[10, 50], help="none: IDLE memory only"
    )
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--idle", type=int, default=1000)
    parser.add_argument("--no-dovecot", action="store_true")
    parser.add_argument("--bulk", action="store_true", help="also time bulk FETCH/SEARCH/STORE")
    parser.add_argument("--dir", type=Path, default=None)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench-imap-", dir=args.dir))
    (root / "mailpod").mkdir()
    pod = MailpodProcess(root / "mailpod", workers=args.workers)
    config = pod.config()
    users = {USER: PASSWORD} | {f"idle{n}@example.com": PASSWORD for n in range(IDLE_USERS)}
    config["mailboxes"] = [{"address": u, "password_hash": fast_hash(p)} for u, p in users.items()]
    config["aliases"] = []
    config["limits"]["max_connections_per_ip"] = args.idle + 500
    config["limits"]["max_connections"] = args.idle + 500
    pod.write_config(config)
    pod.start()
    targets = [Target("mailpod", pod.ports["imaps"], pod.client_context())]
    results: dict[tuple[str, int], tuple[float, float]] = {}
    try:
        with ExitStack() as stack:
            if not args.no_dovecot and (
                shutil.which("dovecot") or Path("/usr/sbin/dovecot").exists()
            ):
                targets.append(
                    stack.enter_context(
                        dovecot(root / "dovecot", pod.cert_file, pod.key_file, pod.client_context())
                    )
                )
            print(f"filling INBOX with {args.messages} messages:")
            for target in targets:
                fill(target, args.messages)
            if args.bulk:
                for target in targets:
                    bulk(target, args.messages)
            print(
                "mixed load (LOGIN SELECT FETCH-headers FETCH-body STORE SEARCH APPEND SELECT"
                " STORE EXPUNGE LOGOUT), over TLS:"
            )
            for clients in args.clients:
                for target in targets:
                    results[(target.name, clients)] = mixed(
                        target, clients, args.seconds, args.messages
                    )
                if ("dovecot", clients) in results:
                    ours, theirs = results[("mailpod", clients)], results[("dovecot", clients)]
                    print(
                        f"  ratio mailpod/dovecot at {clients} clients: {ours[0] / theirs[0]:.2f}x"
                        f" throughput, p99 {ours[1] * 1000:.1f} ms vs {theirs[1] * 1000:.1f} ms"
                    )
        if args.idle:
            idle_memory(pod, args.idle)
    finally:
        pod.stop()


if __name__ == "__main__":
    main()
