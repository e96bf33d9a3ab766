"""SMTP refuses a transaction at MAIL FROM while the store's disk is nearly full (452 4.3.1), and accepts again once it is not."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase

from mailapp.config import parse
from mailapp.store.freespace import FreeSpace
from tests.smtp_helpers import make_factory
from tests.protocol.smtp_client import Session

MIB = 1024 * 1024


class _Disk:
    """A statvfs(2) whose free space the test sets, counting its calls."""

    def __init__(self, free: int) -> None:
        self.free = free
        self.calls = 0

    def statvfs(self, path: Path) -> Any:
        self.calls += 1
        return os.statvfs_result((4096, 4096, 1000, 0, self.free // 4096, 0, 0, 0, 0, 255))


class FreeSpaceRefusalTests(TestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.disk = _Disk(free=100 * MIB)
        self.factory = make_factory(Path(self.mktemp()), min_free_disk=10 * MIB)
        self.factory.freeSpace = FreeSpace(Path("/"), self.clock, statvfs=self.disk.statvfs)
        self.session = Session(self.factory)
        self.session.send(b"EHLO c\r\n")

    def tearDown(self) -> None:
        self.session.proto.connectionLost(None)

    def mail_from(self, argument: bytes = b"<a@b.test>") -> bytes:
        """The reply to one MAIL FROM; the transaction, if any, is reset after."""
        self.session.clear()
        self.session.send(b"MAIL FROM:" + argument + b"\r\n")
        reply = self.session.replies()[-1]
        self.session.send(b"RSET\r\n")
        return reply

    def test_mail_from_gets_452_4_3_1_while_free_space_is_under_min_free_disk(self):
        self.disk.free = 9 * MIB
        self.assertEqual(self.mail_from(), b"452 4.3.1 Insufficient system storage")

    def test_mail_from_is_accepted_with_enough_free_space(self):
        self.assertEqual(self.mail_from(), b"250 2.1.0 Ok")

    def test_a_declared_size_that_would_leave_too_little_free_space_gets_452(self):
        self.disk.free = 10 * MIB + MIB // 4
        self.assertEqual(self.mail_from(b"<a@b.test> SIZE=%d" % (MIB // 2)), b"452 4.3.1 Insufficient system storage")
        self.assertEqual(self.mail_from(b"<a@b.test> SIZE=1000"), b"250 2.1.0 Ok")

    def test_freed_space_is_seen_within_a_second_without_a_restart(self):
        self.disk.free = 1 * MIB
        self.assertEqual(self.mail_from(), b"452 4.3.1 Insufficient system storage")
        self.disk.free = 100 * MIB
        self.assertEqual(self.mail_from(), b"452 4.3.1 Insufficient system storage")  # cached
        self.clock.advance(1.0)
        self.assertEqual(self.mail_from(), b"250 2.1.0 Ok")

    def test_free_space_is_read_at_most_once_a_second(self):
        for _ in range(20):
            self.mail_from()
        self.assertEqual(self.disk.calls, 1)
        self.clock.advance(1.0)
        self.mail_from()
        self.assertEqual(self.disk.calls, 2)

    def test_a_filesystem_that_cannot_say_refuses_nothing(self):
        def broken(path: Path) -> Any:
            raise OSError("not supported")

        self.factory.freeSpace = FreeSpace(Path("/"), self.clock, statvfs=broken)
        self.assertEqual(self.mail_from(), b"250 2.1.0 Ok")


class MinFreeDiskConfigTests(TestCase):
    BASE = '[server]\nhostname = "mail.example.test"\nstate_dir = "/var/lib/mailapp"\n'

    def test_min_free_disk_defaults_to_50_mib(self):
        self.assertEqual(parse(self.BASE, Path("x.toml")).limits.min_free_disk, 50 * MIB)

    def test_min_free_disk_is_read_from_limits(self):
        config = parse(self.BASE + "[limits]\nmin_free_disk = 1048576\n", Path("x.toml"))
        self.assertEqual(config.limits.min_free_disk, MIB)
