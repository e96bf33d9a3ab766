"""Messages built to hurt a MIME parser, for the tests of the structure bounds (mailapp.imap.mime)."""

from __future__ import annotations


def nested_multiparts(depth: int, needle: bytes = b"deepest words") -> bytes:
    """C{depth} multiparts each inside the one before, a text part with C{needle} at the bottom."""
    out = [b"From: Mallory <mallory@remote.test>\r\nTo: victim@example.test\r\nSubject: nested\r\nMIME-Version: 1.0\r\n"]
    for level in range(depth):
        out.append(b'Content-Type: multipart/mixed; boundary="b%d"\r\n\r\n--b%d\r\n' % (level, level))
    out.append(b"Content-Type: text/plain\r\n\r\n" + needle + b"\r\n")
    for level in reversed(range(depth)):
        out.append(b"--b%d--\r\n" % level)
    return b"".join(out)


def nested_messages(depth: int, needle: bytes = b"deepest words") -> bytes:
    """C{depth} message/rfc822 parts each inside the one before."""
    out = [b"From: Mallory <mallory@remote.test>\r\nSubject: nested messages\r\n"]
    for level in range(depth):
        out.append(b"Content-Type: message/rfc822\r\n\r\nSubject: level %d\r\n" % level)
    out.append(b"\r\n" + needle + b"\r\n")
    return b"".join(out)


def sibling_parts(count: int, needle: bytes = b"last words") -> bytes:
    """One multipart of C{count} small text parts, the last one saying C{needle}."""
    out = [b'From: Mallory <mallory@remote.test>\r\nTo: victim@example.test\r\nSubject: siblings\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="s"\r\n\r\n']
    for number in range(count - 1):
        out.append(b"--s\r\nContent-Type: text/plain\r\n\r\npart %d\r\n" % number)
    out.append(b"--s\r\nContent-Type: text/plain\r\n\r\n" + needle + b"\r\n--s--\r\n")
    return b"".join(out)
