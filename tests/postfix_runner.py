"""
A real Postfix for the tests: a private instance (its own config, queue and
data directories, never the machine's ``/etc/postfix`` instance or its
service) whose smtpd listens on one loopback port and whose
``virtual_transport`` hands mail for ``example.test`` to mailapp over LMTP.
Started by L{PostfixProcess.start} (``postfix -c DIR start``), stopped by
L{PostfixProcess.stop}; every wait is bounded. An instance left running by a
killed test run (its master is a daemon) is aborted by the next one.

Postfix's master runs as root and its daemons as the ``postfix`` user
(Debian's package creates it), so its directory lives in a directory of
its own under C{/tmp} that the ``postfix`` user can reach (pytest's
C{tmp_path} is in a 0700 directory), and is removed by L{stop}. Nothing
runs chrooted, so the LMTP socket's path is the same for Postfix's ``lmtp``
and for mailapp. Its log (``maillog_file``, through ``postlogd``) is
L{log}, for a failing test's message.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from tests import needs

__all__ = ["PostfixProcess"]

_TIMEOUT = 10.0

#: The daemons a private instance needs, none chrooted; the smtpd line is added with its port.
#: (``virtual`` is for ``make bench``'s SMTP peer, which delivers to Maildirs: bench/postfix_peer.py.)
_MASTER = """\
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
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
lmtp      unix  -       -       n       -       -       lmtp
virtual   unix  -       n       n       -       -       virtual
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""


#: The instances' directories under /tmp; each holds the pid of the test process that made it ("owner").
_PREFIX = "mailapp-postfix-"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _stop_leftovers(postfix: str) -> None:
    """
    An instance whose test process is gone (killed before its teardown) keeps
    its master running, daemonised: abort it and remove its directory, as the
    rig does with a killed run's namespaces.
    """
    for directory in Path("/tmp").glob(_PREFIX + "*"):
        try:
            owner = int((directory / "owner").read_text())
        except (OSError, ValueError):
            continue
        if _alive(owner):
            continue
        subprocess.run([postfix, "-c", str(directory / "etc"), "abort"], capture_output=True, timeout=_TIMEOUT)
        try:
            master = int((directory / "queue" / "pid" / "master.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            master = None
        if master is not None and _alive(master):
            os.kill(master, 9)
        shutil.rmtree(directory, ignore_errors=True)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class PostfixProcess:
    """
    A private Postfix whose smtpd (on 127.0.0.1:L{smtp_port}) accepts mail
    for C{domain} and delivers it with C{transport} (``lmtp:unix:/path`` or
    ``lmtp:inet:127.0.0.1:PORT``). L{directory} is where a unix socket for
    mailapp may go (the ``postfix`` user can reach it).
    """

    def __init__(self, domain: str = "example.test") -> None:
        self.postfix = shutil.which("postfix") or self._sbin("postfix")
        if os.geteuid() != 0:
            needs.unavailable("a private Postfix instance needs root (its master runs as root, its daemons as 'postfix')")
        try:
            import pwd

            pwd.getpwnam("postfix")
        except KeyError:
            needs.unavailable("Postfix's 'postfix' user is missing: install the Debian package postfix")
        self.domain = domain
        _stop_leftovers(self.postfix)
        self.directory = Path(tempfile.mkdtemp(prefix=_PREFIX, dir="/tmp"))
        os.chmod(self.directory, 0o755)
        (self.directory / "owner").write_text(str(os.getpid()))
        self.config_directory = self.directory / "etc"
        self.queue_directory = self.directory / "queue"
        self.data_directory = self.directory / "data"
        self.log_path = self.directory / "postfix.log"
        self.smtp_port = _free_port()
        self._started = False

    @staticmethod
    def _sbin(name: str) -> str:
        path = Path("/usr/sbin") / name
        if not path.exists():
            needs.unavailable(f"{name} is not installed: run 'make install' as root (it installs the Debian package postfix)")
        return str(path)

    def start(self, transport: str, settings: dict[str, str] | None = None) -> None:
        """
        Write the instance's config (C{settings} added to main.cf, over the
        defaults below) and start its master; returns once smtpd answers (bounded).
        """
        self.config_directory.mkdir()
        self.queue_directory.mkdir()
        self.data_directory.mkdir()
        shutil.chown(self.data_directory, "postfix", "postfix")
        main = {
            "compatibility_level": "3.6",
            "queue_directory": str(self.queue_directory),
            "data_directory": str(self.data_directory),
            "maillog_file": str(self.log_path),
            "maillog_file_prefixes": str(self.directory),
            "mail_owner": "postfix",
            "setgid_group": "postdrop",
            "myhostname": "relay.example.net",
            "mydestination": "",
            "inet_interfaces": "loopback-only",
            "inet_protocols": "ipv4",
            "mynetworks": "127.0.0.0/8",
            "smtpd_relay_restrictions": "permit_mynetworks, reject_unauth_destination",
            "smtpd_reject_unlisted_recipient": "no",
            "virtual_mailbox_domains": self.domain,
            "virtual_transport": transport,
            "alias_maps": "",
            "alias_database": "",
            "local_recipient_maps": "",
            "disable_dns_lookups": "yes",
            "smtp_dns_support_level": "disabled",
            "smtputf8_enable": "no",
            "biff": "no",
            "master_service_disable": "",
            # A deferred message is tried again at once, not after the default minutes: the test waits 10 s at most.
            "queue_run_delay": "1s",
            "minimal_backoff_time": "1s",
            "maximal_backoff_time": "2s",
        }
        main.update(settings or {})
        (self.config_directory / "main.cf").write_text("".join(f"{key} = {value}\n" for key, value in main.items()))
        (self.config_directory / "master.cf").write_text(
            f"127.0.0.1:{self.smtp_port} inet n - n - - smtpd\n" + _MASTER
        )
        self._postfix("start")
        self._started = True
        deadline = time.monotonic() + _TIMEOUT
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.smtp_port), timeout=1) as probe:
                    if probe.recv(512).startswith(b"220"):
                        return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"Postfix's smtpd did not answer on port {self.smtp_port}\n{self.log()}")
            time.sleep(0.05)

    def _postfix(self, command: str) -> None:
        result = subprocess.run(
            [self.postfix, "-c", str(self.config_directory), command],
            capture_output=True,
            timeout=_TIMEOUT,
            text=True,
        )
        if result.returncode != 0:
            raise AssertionError(f"postfix {command} failed ({result.returncode}): {result.stderr}\n{self.log()}")

    def _master_pid(self) -> int | None:
        try:
            return int((self.queue_directory / "pid" / "master.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def stop(self) -> None:
        """Stop the master and its daemons (bounded: abort, then SIGKILL), and remove the instance's directory."""
        try:
            if self._started:
                pid = self._master_pid()
                try:
                    self._postfix("abort")  # the queue is thrown away with the directory: no need to wait for a clean stop
                except (AssertionError, subprocess.TimeoutExpired):
                    pass
                if pid is not None and not self._gone(pid, _TIMEOUT):
                    os.kill(pid, 9)
                    self._gone(pid, _TIMEOUT)
        finally:
            self._started = False
            shutil.rmtree(self.directory, ignore_errors=True)

    @staticmethod
    def _gone(pid: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return True
            time.sleep(0.05)
        return False

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return "(no Postfix log)"

    def queue(self) -> str:
        """``postqueue -p`` of this instance: what it still holds, and why."""
        result = subprocess.run(
            [shutil.which("postqueue") or "/usr/sbin/postqueue", "-c", str(self.config_directory), "-p"],
            capture_output=True,
            timeout=_TIMEOUT,
            text=True,
        )
        return result.stdout + result.stderr
