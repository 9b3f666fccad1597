"""A private, throwaway Postfix instance for benchmarks: loopback only, its own config, queue and
data directories under one temp dir, delivering example.com mailboxes to Maildir with virtual(8).

Nothing under /etc/postfix is written: `postfix -c DIR` reads main.cf/master.cf from DIR and
meta_directory stays at the packaged /etc/postfix (read only, for postfix-files). virtual(8)
fsyncs every Maildir file before it reports the delivery (mail_copy() always does), and cleanup(8)
fsyncs the queue file before smtpd answers 250, so both sides of the comparison pay for
durability. Needs root (Postfix drops privileges to mail_owner and the virtual uid itself).
"""

from __future__ import annotations

import contextlib
import grp
import os
import pwd
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.harness.ports import free_port

QUEUE_SUBDIRS = ("maildrop", "incoming", "active", "deferred", "hold")

# Every service unchrooted: a chroot would need copies of /etc/resolv.conf, services, ... in it.
MASTER_CF = """\
{listen} inet n - n - - smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
virtual   unix  -       n       n       -       -       virtual
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""


def unavailable_reason() -> str | None:
    """Why a private Postfix cannot run here, or None if it can."""
    if shutil.which("postfix", path="/usr/sbin:/usr/bin:/sbin:/bin") is None:
        return "postfix is not installed"
    if os.geteuid() != 0:
        return "a private Postfix instance needs root"
    try:
        pwd.getpwnam("postfix")
    except KeyError:
        return "no 'postfix' user"
    return None


@dataclass
class PostfixInstance:
    """`root` must be empty (or not exist); everything the instance owns lives under it."""

    root: Path
    domain: str = "example.com"
    mailboxes: tuple[str, ...] = ("alice",)
    port: int = field(default_factory=free_port)
    user: str = "nobody"  # virtual(8) writes the Maildirs as this (existing, non-root) uid
    settings: dict[str, str] = field(default_factory=dict)  # extra main.cf lines

    def __post_init__(self) -> None:
        self.config_dir = self.root / "etc"
        self.queue_dir = self.root / "queue"
        self.data_dir = self.root / "data"
        self.vmail = self.root / "vmail"
        self.log_file = self.root / "maillog"
        self._master_pid: int | None = None

    # --- lifecycle -------------------------------------------------------------------------------

    def write_config(self) -> None:
        entry = pwd.getpwnam(self.user)
        group = grp.getgrgid(entry.pw_gid)
        for path in (self.config_dir, self.queue_dir, self.data_dir, self.vmail):
            path.mkdir(parents=True, exist_ok=True)
        # The postfix and virtual uids must be able to walk down to their directories
        # (a TemporaryDirectory is 0700); the parents are left alone and must allow it.
        self.root.chmod(0o755)
        for parent in self.root.parents:
            if parent.stat().st_mode & 0o001 == 0:
                raise RuntimeError(f"{parent} is not searchable by other users: pick another dir")
        shutil.chown(self.data_dir, user="postfix")
        shutil.chown(self.vmail, user=entry.pw_uid, group=group.gr_gid)
        maps = self.config_dir / "vmailbox"
        maps.write_text(
            "".join(f"{name}@{self.domain} {self.domain}/{name}/\n" for name in self.mailboxes)
        )
        main = {
            "compatibility_level": "3.6",
            "queue_directory": str(self.queue_dir),
            "data_directory": str(self.data_dir),
            "meta_directory": "/etc/postfix",
            "maillog_file": str(self.log_file),
            "maillog_file_prefixes": str(self.root),
            "myhostname": "postfix-bench.localdomain",
            "mydestination": "",
            "inet_interfaces": "127.0.0.1",
            "inet_protocols": "ipv4",
            "mynetworks": "127.0.0.0/8",
            "alias_maps": "",
            "alias_database": "",
            "local_recipient_maps": "",
            "relayhost": "",
            "biff": "no",
            # Maildir delivery: a map result ending in "/" means Maildir (fsynced per file).
            "virtual_mailbox_domains": self.domain,
            "virtual_mailbox_base": str(self.vmail),
            "virtual_mailbox_maps": f"texthash:{maps}",
            "virtual_uid_maps": f"static:{entry.pw_uid}",
            "virtual_gid_maps": f"static:{group.gr_gid}",
            **self.settings,
        }
        (self.config_dir / "main.cf").write_text(
            "".join(f"{key} = {value}\n" for key, value in main.items())
        )
        (self.config_dir / "master.cf").write_text(
            MASTER_CF.format(listen=f"127.0.0.1:{self.port}")
        )

    def start(self, timeout: float = 30.0) -> PostfixInstance:
        self.write_config()
        result = self._postfix("start")
        if result.returncode != 0:
            raise RuntimeError(f"postfix start failed:\n{result.stdout}{result.stderr}{self.log()}")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=2) as sock:
                    if sock.recv(100).startswith(b"220"):
                        self._master_pid = self.master_pid()
                        return self
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"postfix did not start:\n{self.log()}")

    def stop(self, timeout: float = 20.0) -> None:
        """Stop the instance and make sure none of its processes is left behind."""
        master = self._master_pid or self.master_pid()
        if master is None and not self._processes():
            return
        self._postfix("stop")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self._processes() and (master is None or not _running(master)):
                self._master_pid = None
                return
            time.sleep(0.1)
        for pid in self._processes():  # only processes started with our config directory
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self._master_pid = None

    def _postfix(self, command: str) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "MAIL_CONFIG": str(self.config_dir)}
        return subprocess.run(
            ["/usr/sbin/postfix", "-c", str(self.config_dir), command],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
            check=False,
        )

    def master_pid(self) -> int | None:
        try:
            pid = int((self.queue_dir / "pid" / "master.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None
        return pid if _running(pid) else None

    def _processes(self) -> list[int]:
        """Live processes of this instance: master passes MAIL_CONFIG to every daemon."""
        marker = f"MAIL_CONFIG={self.config_dir}".encode()
        found = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                if marker in (entry / "environ").read_bytes().split(b"\0") and _running(
                    int(entry.name)
                ):
                    found.append(int(entry.name))
            except OSError:
                continue
        return found

    # --- observation ---------------------------------------------------------------------------

    def cpu_seconds(self) -> float:
        """User+system CPU of the instance so far: its live processes plus the children master
        has reaped (daemons exit after max_use/max_idle). Take differences of two calls; a
        daemon alive at the first call and reaped before the second is counted in full."""
        ticks = os.sysconf("SC_CLK_TCK")
        master = self._master_pid or self.master_pid()
        total = 0
        for pid in self._processes():
            with contextlib.suppress(OSError, ValueError, IndexError):
                fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
                total += int(fields[11]) + int(fields[12])  # utime, stime
                if pid == master:
                    total += int(fields[13]) + int(fields[14])  # cutime, cstime
        return total / ticks

    def maildir_new(self, mailbox: str = "alice") -> Path:
        return self.vmail / self.domain / mailbox / "new"

    def delivered(self, mailbox: str = "alice") -> int:
        try:
            return len(os.listdir(self.maildir_new(mailbox)))
        except FileNotFoundError:
            return 0

    def queued(self) -> int:
        total = 0
        for sub in QUEUE_SUBDIRS:
            for _dirpath, _dirs, files in os.walk(self.queue_dir / sub):
                total += len(files)
        return total

    def log(self) -> str:
        return self.log_file.read_text(errors="replace") if self.log_file.exists() else ""


def _running(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[:1] != ["Z"]
