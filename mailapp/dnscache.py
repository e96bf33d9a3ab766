"""
A small cache of DNS answers for the lookups of blocking libraries
(L{mailapp.dnsthread}), shared by the worker threads.

The same few names are asked for again and again at an MX: a mailing list
or a large provider sends many messages, each needing its domain's SPF and
DMARC records and its signing keys. An answer found here costs no trip to
the reactor and no packet. twisted.names' own L{CacheResolver} is filled
only by its DNS server, never by a client's chain, so it does not help.

Answers are kept for their TTL (the smallest of the answer's records), at
most L{MAX_TTL}; "no such name" and "no such record" for L{NEGATIVE_TTL}
(RFC 2308 would take the zone's SOA minimum, which a stub resolver is not
given); failures never. The oldest entries go first past L{MAX_ENTRIES}.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

__all__ = ["MAX_ENTRIES", "MAX_TTL", "NEGATIVE_TTL", "AnswerCache"]

MAX_TTL = 300.0
NEGATIVE_TTL = 30.0
MAX_ENTRIES = 10_000


class AnswerCache:
    """Answers by (name, type), thread-safe; see the module docstring."""

    def __init__(self, clock: Callable[[], float] = time.monotonic, max_entries: int = MAX_ENTRIES) -> None:
        self._clock = clock
        self._max_entries = max_entries
        self._entries: OrderedDict[tuple[str, str], tuple[float, list[Any]]] = OrderedDict()
        self._lock = threading.Lock()
        #: Answers given from the cache (what the tests and the bench count).
        self.hits = 0

    def get(self, name: str, qtype: str) -> list[Any] | None:
        """The cached answer (C{[]} for a cached "none"), or None when there is none still fresh."""
        key = (name.lower().rstrip("."), qtype)
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            expires, answers = entry
            if self._clock() >= expires:
                del self._entries[key]
                return None
            self._entries.move_to_end(key)
            self.hits += 1
            return answers

    def put(self, name: str, qtype: str, answers: list[Any]) -> None:
        """Keep C{answers} (the records of a good response, or [] for none) for their TTL."""
        ttl = min((float(record.ttl) for record in answers), default=NEGATIVE_TTL)
        ttl = min(max(ttl, 0.0), MAX_TTL)
        if ttl <= 0:
            return
        key = (name.lower().rstrip("."), qtype)
        with self._lock:
            self._entries[key] = (self._clock() + ttl, answers)
            self._entries.move_to_end(key)
            while len(self._entries) > self._max_entries:
                self._entries.popitem(last=False)
