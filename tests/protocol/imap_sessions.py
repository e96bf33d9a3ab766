"""IMAP sessions over C{StringTransport} for the protocol tests: connected, logged in as Alice, closed with the test."""

from __future__ import annotations

from typing import Any

from twisted.internet.testing import StringTransport
from twisted.trial.unittest import TestCase


def logged_in(test: TestCase, factory: Any) -> tuple[Any, StringTransport]:
    """A session of C{factory} logged in as Alice (L{tests.protocol.accounts}), its transport cleared; lost at C{test}'s cleanup."""
    protocol = factory.buildProtocol(None)
    transport = StringTransport()
    protocol.makeConnection(transport)
    test.addCleanup(protocol.connectionLost, None)
    protocol.dataReceived(b"a LOGIN alice@example.test alice-secret\r\n")
    transport.clear()
    return protocol, transport
