"""
Sieve (RFC 5228) and the extensions of L{mailapp.sieve.commands.EXTENSIONS}:
a parser (L{parser}), a checker (L{commands}), our interpreter with its
bounds (L{interpreter}), and L{compile}, which caches checked scripts by
the hash of their text so that a script is read once however many
messages it sorts.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict

from mailapp.sieve.commands import EXTENSIONS, check
from mailapp.sieve.interpreter import (
    Outcome,
    Placement,
    SieveLimits,
    SieveRuntimeError,
    Vacation,
    run,
)
from mailapp.sieve.message import Envelope, MessageView
from mailapp.sieve.parser import Command, SieveSyntaxError, parse

__all__ = [
    "EXTENSIONS",
    "Envelope",
    "MessageView",
    "Outcome",
    "Placement",
    "SieveLimits",
    "SieveRuntimeError",
    "SieveSyntaxError",
    "Vacation",
    "compile",
    "run",
]

_CACHE_SIZE = 512
_cache: OrderedDict[str, list[Command]] = OrderedDict()
_lock = threading.Lock()


def compile(text: str) -> list[Command]:
    """
    The checked commands of C{text}, from the cache when this text was
    compiled before (keyed by its SHA-256: the same script in two accounts
    is one entry). Raises L{SieveSyntaxError} with the line and column.
    Compiled trees are never changed by a run, so they are shared.
    """
    key = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()
    with _lock:
        cached = _cache.get(key)
        if cached is not None:
            _cache.move_to_end(key)
            return cached
    commands = parse(text)
    check(commands)
    with _lock:
        _cache[key] = commands
        while len(_cache) > _CACHE_SIZE:
            _cache.popitem(last=False)
    return commands
