"""The server every protocol test talks to: mail.example.test over fakes, with its config written as the file would say it."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

from twisted.internet.task import Clock

from mailapp.service import ServiceContext
from mailapp.testing import MINIMAL_CONFIG, service_context
from tests.protocol.accounts import make_accounts


def server_context(
    store: Any,
    clock: Clock | None = None,
    tls: Any = None,
    accounts: Any = None,
    limits: Mapping[str, int] | None = None,
    security: Mapping[str, float] | None = None,
    trusted_networks: Iterable[str] = (),
) -> ServiceContext:
    """
    A context over C{store} for L{MINIMAL_CONFIG} plus C{[limits]},
    C{[security]} and C{[relay] trusted_networks}, with L{make_accounts}' users
    unless C{accounts} is given, on C{clock} (a new one unless given).
    """
    lines = [MINIMAL_CONFIG, "[relay]", f"trusted_networks = {json.dumps(list(trusted_networks))}"]
    for section, values in (("security", security or {}), ("limits", limits or {})):
        lines.append(f"[{section}]")
        lines.extend(f"{key} = {json.dumps(value)}" for key, value in values.items())
    return service_context(
        config="\n".join(lines) + "\n",
        reactor=clock or Clock(),
        store=store,
        accounts=accounts or make_accounts(),
        tls=tls,
    )
