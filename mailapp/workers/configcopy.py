"""
The parent's copy of the config it runs, which its workers read.

A worker reads its config when it starts and again at every reload. Were it
to read the operator's file, a worker restarted (after a crash, or its
back-off) while that file holds a half-made edit would fail to start, and a
SIGHUP the parent refused would still reach the workers; so the parent
writes what it runs, once it runs it, to a file of its own in the state
directory, and the workers read that. The copy is made from the file's text
only when that text still says exactly what the parent loaded (the file may
have changed since): otherwise the previous copy stays.
"""

from __future__ import annotations

import os
from pathlib import Path

from twisted.logger import Logger

from mailapp.config import Config, ConfigError
from mailapp.config.load import parse

__all__ = ["ConfigCopy"]

_log = Logger()


class ConfigCopy:
    """The copy at C{path}; L{update} after the parent starts with, or reloads, a config."""

    def __init__(self, path: Path) -> None:
        self.path = path
        #: Whether the copy holds a config the parent ran (else workers read the operator's file).
        self.made = False

    def update(self, config: Config) -> bool:
        """
        Write C{config}'s file as the copy if its text still parses to
        C{config}; whether it did. A small file, at start and at a reload,
        written on the reactor as the reload reads the config there.
        """
        try:
            text = config.path.read_text(encoding="utf-8")
            if parse(text, config.path) != config:
                raise ConfigError([f"{config.path} changed since it was loaded"])
            temporary = self.path.with_name(self.path.name + ".tmp")
            descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(descriptor, "w", encoding="utf-8") as out:
                out.write(text)
            os.replace(temporary, self.path)
        except (OSError, UnicodeDecodeError, ConfigError) as error:
            _log.warn(
                "workers keep their previous config copy ({path}): {error}",
                path=str(self.path),
                error=getattr(error, "problems", None) or str(error),
            )
            return False
        self.made = True
        return True
