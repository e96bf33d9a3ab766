"""
Our ``Return-Path:`` trace field, at the very top of every stored copy.

The Router writes it first into the spool (L{mailapp.delivery.Transaction.traceHeaders});
a relaying server must not send it on (RFC 5321 4.4: the final delivering
server adds its own). So everything that puts fields of its own above a
queued copy (DKIM signatures, an ARC set) puts them below this one, and the
relay client strips it from the top; this module is where all three agree on
where it ends.
"""

from __future__ import annotations

__all__ = ["return_path_length"]


def return_path_length(head: bytes) -> int:
    """
    The length of the ``Return-Path:`` field that starts C{head} (its line
    and any folded continuation lines, line end included), or 0 when
    C{head} does not start with one or it is not complete in C{head}.
    """
    if head[:12].lower() != b"return-path:":
        return 0
    end = head.find(b"\n")
    while end >= 0 and head[end + 1 : end + 2] in (b" ", b"\t"):
        end = head.find(b"\n", end + 1)
    return end + 1 if end >= 0 else 0
