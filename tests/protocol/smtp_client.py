"""An SMTP server session on a StringTransport, and what its client has been told."""

from __future__ import annotations

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.testing import StringTransport


class Session:
    """One server protocol on a StringTransport, with helpers to talk to it."""

    def __init__(self, factory, peer: str = "192.0.2.7") -> None:
        self.factory = factory
        self.proto = factory.buildProtocol(None)
        address = IPv6Address if ":" in peer else IPv4Address
        self.transport = StringTransport(peerAddress=address("TCP", peer, 40000))
        self.tls_started = []
        self.transport.startTLS = lambda ctx: self.tls_started.append(self.transport.value())
        self.proto.makeConnection(self.transport)

    def send(self, data: bytes) -> None:
        self.proto.dataReceived(data)

    def replies(self) -> list[bytes]:
        lines = self.transport.value().split(b"\r\n")
        return [line for line in lines if line]

    def codes(self) -> list[bytes]:
        return [line[:3] for line in self.replies() if line[3:4] == b" "]

    def clear(self) -> None:
        self.transport.clear()
