"""
The ``twistd mailapp`` command: options, then the service.

Option parsing only builds data (a :class:`~mailapp.config.Config`); live
objects are made in :func:`makeService`.

A bad config file is not a usage mistake. twistd turns a ``UsageError``
from a plugin's options into its whole ``--help`` text followed by the
message, which buries the problem list; so a config problem is written to
stderr on its own and the process exits with status 1 through
``SystemExit``, which twistd (``twisted.application.app.run``) lets through
without a traceback.
"""

from __future__ import annotations

import atexit
import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from twisted.application.service import IService
from twisted.python import usage

from mailapp.config import Config, ConfigError, load

if TYPE_CHECKING:
    from mailapp import service

__all__ = ["DEFAULT_CONFIG", "Options", "makeService"]

#: Used when neither ``--config`` nor ``$MAILAPP_CONFIG`` says otherwise.
DEFAULT_CONFIG = "etc/mailapp.toml"


class Options(usage.Options):
    """Options of ``twistd mailapp``; after parsing, ``loadedConfig`` holds the config."""

    synopsis = "[--config FILE] [--check]"
    longdesc = "Run mailapp: SMTP, POP3, IMAP4 and webmail over one mailbox store."
    optParameters = [
        ["config", "c", None, f"The config file (default: $MAILAPP_CONFIG, else {DEFAULT_CONFIG})."],
    ]
    optFlags = [
        ["check", None, "Check the config file, report every problem, and exit."],
    ]

    loadedConfig: Config

    def postOptions(self) -> None:
        # The environment is read here, not at import, so that it is the
        # environment of this run.
        path = Path(self["config"] or os.environ.get("MAILAPP_CONFIG") or DEFAULT_CONFIG)
        self["config"] = str(path)
        try:
            self.loadedConfig = load(path)
        except ConfigError as error:
            _exit_with(str(error))
        if self["check"]:
            print(f"{path}: OK ({len(self.loadedConfig.listeners)} listeners)")
            raise SystemExit(0)
        from mailapp.logformat import apply_log_format

        config = self.loadedConfig
        apply_log_format(self, config.log_format, config.log_file_max_bytes, config.log_file_keep)


def makeService(options: Options) -> IService:
    """Build the server from the parsed options (see :func:`mailapp.service.makeService`)."""
    from mailapp import service, tls
    from mailapp.stateformat import StateFormatError

    try:
        root = service.makeService(options.loadedConfig)
    except (tls.CertificateError, StateFormatError) as error:
        _exit_with(f"cannot start: {error}")
    except OSError as error:
        # state_dir or the generated certificate could not be written.
        _exit_with(f"cannot start: {error}")
    atexit.register(_exit_with_status_of, root)
    return root


def _exit_with_status_of(root: service.MailService) -> None:
    """
    End the process with the server's exit status when it is not 0 (a
    listener could not bind): twistd and twist return 0 whenever the reactor
    stopped, so systemd's ``Restart=on-failure`` and scripts would take a
    server that never listened for a clean stop. Runs at interpreter exit,
    after twistd has stopped the service, removed its pidfile and flushed its
    log, so only the exit status changes.
    """
    if root.exit_status:
        logging.shutdown()
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        os._exit(root.exit_status)


def _exit_with(message: str) -> NoReturn:
    sys.stderr.write(message + "\n")
    sys.stderr.flush()
    raise SystemExit(1)
