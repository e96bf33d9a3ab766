"""
Postfix as the SMTP workloads' peer (issue 21): a private instance
(L{tests.postfix_runner.PostfixProcess}: its own config, queue and data
directories under C{/tmp}, never the machine's), its smtpd on a free
127.0.0.1 port, delivering every bench user to a Maildir of its own through
the ``virtual`` delivery agent, with Postfix's own durability (the queue
file is fsync'd before the 250, each Maildir file before its link into
``new/``). No content filter, no DNS lookups, no client name lookups, and
process and connection limits well above the bench's 20 sessions. The same
generator (L{bench.smtp_load}) times it until every message is a file in
a ``new/``, as it times mailapp.
"""

from __future__ import annotations

import os
import pwd
import shutil
from pathlib import Path

#: Where Debian's package puts it; L{unavailable} says why it cannot run here.
POSTFIX = Path("/usr/sbin/postfix")


def unavailable() -> str | None:
    """None if a private Postfix can run here, else the reason (printed when the bench skips it)."""
    if not (shutil.which("postfix") or POSTFIX.exists()):
        return "postfix is not installed (make test-packages installs it)"
    if os.geteuid() != 0:
        return "a private Postfix needs root (its master runs as root, its daemons as 'postfix')"
    try:
        pwd.getpwnam("postfix")
    except KeyError:
        return "the 'postfix' user is missing (install the Debian package postfix)"
    return None


class PostfixPeer:
    """A started Postfix whose smtpd (L{port}) delivers each of C{users} to L{maildir_new}."""

    def __init__(self, users: list[str], domain: str = "example.test") -> None:
        from tests.postfix_runner import PostfixProcess

        self.users = users
        self.process = PostfixProcess(domain)
        self.mail = self.process.directory / "mail"
        self.port = self.process.smtp_port

    def maildir_new(self, user: str) -> Path:
        local, domain = user.split("@")
        return self.mail / domain / local / "new"

    def start(self) -> None:
        nobody = pwd.getpwnam("nobody")
        for user in self.users:
            for sub in ("new", "cur", "tmp"):
                self.maildir_new(user).parent.joinpath(sub).mkdir(parents=True, exist_ok=True)
        for root, dirs, _ in os.walk(self.mail):
            for name in dirs:
                os.chown(os.path.join(root, name), nobody.pw_uid, nobody.pw_gid)
        os.chown(self.mail, nobody.pw_uid, nobody.pw_gid)
        # texthash: a plain file, read as is (no postmap). A trailing slash means a Maildir.
        mailboxes = self.process.directory / "mailboxes"
        mailboxes.write_text("".join(f"{user} {user.split('@')[1]}/{user.split('@')[0]}/\n" for user in self.users))
        self.process.start(
            "virtual",
            {
                "virtual_mailbox_base": str(self.mail),
                "virtual_mailbox_maps": f"texthash:{mailboxes}",
                "virtual_uid_maps": f"static:{nobody.pw_uid}",
                "virtual_gid_maps": f"static:{nobody.pw_gid}",
                "smtpd_reject_unlisted_recipient": "yes",
                "smtpd_peername_lookup": "no",
                "smtpd_client_connection_count_limit": "1000",
                "default_process_limit": "200",
                "content_filter": "",
                "receive_override_options": "",
                # The test runner's short retry delays, back to Postfix's defaults (no mail is deferred here anyway).
                "queue_run_delay": "300s",
                "minimal_backoff_time": "300s",
                "maximal_backoff_time": "4000s",
            },
        )

    def cpu_seconds(self) -> float:
        """CPU time of the master, its live daemons and the daemons it has reaped (they exit when idle or used up)."""
        master = self.process._master_pid()
        if master is None:
            return 0.0
        ticks = os.sysconf("SC_CLK_TCK")

        def fields(pid: int) -> list[str]:
            return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()

        own = fields(master)
        total = sum(int(value) for value in own[11:15])  # utime, stime, cutime, cstime
        for task in Path(f"/proc/{master}/task").iterdir():
            try:
                children = (task / "children").read_text().split()
            except OSError:
                continue
            for child in children:
                try:
                    total += sum(int(value) for value in fields(int(child))[11:15])
                except OSError:
                    pass
        return total / ticks

    def version(self) -> str:
        import subprocess

        result = subprocess.run(["postconf", "-c", str(self.process.config_directory), "-h", "mail_version"], capture_output=True, text=True, timeout=10)
        return result.stdout.strip()

    def stop(self) -> None:
        self.process.stop()
