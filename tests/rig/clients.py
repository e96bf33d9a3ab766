"""
Clients that run inside a rig host (with L{tests.rig.network.Host.python}):
so they use that host's addresses, routes and resolv.conf, as a real user's
or server's would.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from typing import Any

from tests.rig.network import Host

__all__ = ["imap_messages", "resolve_mx", "submit"]

_RESOLVE = r"""
import json, sys
from twisted.internet import defer, task

def main(reactor):
    from mailapp.relay.routing import MXResolver, RouteError
    from mailapp.service import _LazyResolver

    argument = json.loads(sys.argv[1])
    # What the relay builds with no [relay] nameservers: /etc/hosts, then resolv.conf.
    resolver = _LazyResolver(reactor, ())
    mx = MXResolver(resolver, shuffle=lambda items: None, timeout=tuple(argument["timeout"]))

    async def run():
        try:
            hops = await mx.resolve(argument["domain"])
            result = {"hops": [[h.name, h.address, h.port, h.preference] for h in hops]}
        except RouteError as error:
            result = {"error": error.reply, "permanent": error.permanent}
        resolver.close()
        sys.stdout.write(json.dumps(result))

    return defer.Deferred.fromCoroutine(run())

task.react(main)
"""


def resolve_mx(host: Host, domain: str, timeout: Sequence[int] = (1, 3)) -> dict[str, Any]:
    """
    C{domain}'s next hops as the relay sees them from C{host}:
    ``{"hops": [[name, address, port, preference], ...]}`` or
    ``{"error": reply, "permanent": bool}``.
    """
    return host.python(_RESOLVE, {"domain": domain, "timeout": list(timeout)})  # type: ignore[no-any-return]


_SUBMIT = r"""
import json, smtplib, ssl, sys
a = json.loads(sys.argv[1])
context = ssl.create_default_context()
context.check_hostname = False
context.verify_mode = ssl.CERT_NONE   # the rig's servers have self-signed certificates
with smtplib.SMTP(a["address"], a["port"], timeout=20) as client:
    client.starttls(context=context)
    client.login(a["user"], a["password"])
    refused = client.sendmail(a["sender"], a["recipients"], a["message"].encode())
print(json.dumps({"refused": {k: [v[0], v[1].decode()] for k, v in refused.items()}}))
"""


def submit(host: Host, address: str, user: str, password: str, recipients: Sequence[str], message: str, port: int = 587, sender: str | None = None) -> dict[str, Any]:
    """Send C{message} through submission at C{address}:C{port} (STARTTLS, AUTH), from C{host}; the refused recipients."""
    argument = {
        "address": address,
        "port": port,
        "user": user,
        "password": password,
        "sender": sender or user,
        "recipients": list(recipients),
        "message": message,
    }
    return host.python(_SUBMIT, argument)["refused"]  # type: ignore[no-any-return]


_IMAP = r"""
import base64, imaplib, json, ssl, sys
a = json.loads(sys.argv[1])
context = ssl.create_default_context()
context.check_hostname = False
context.verify_mode = ssl.CERT_NONE
client = imaplib.IMAP4_SSL(a["address"], a["port"], ssl_context=context, timeout=20)
client.login(a["user"], a["password"])
client.select(a["folder"], readonly=True)
status, data = client.uid("SEARCH", None, "ALL")
messages = []
for uid in data[0].split():
    status, fetched = client.uid("FETCH", uid, "(BODY.PEEK[])")
    messages.append(base64.b64encode(fetched[0][1]).decode())
client.logout()
print(json.dumps(messages))
"""


def imap_messages(host: Host, address: str, user: str, password: str, folder: str = "INBOX", port: int = 993) -> list[bytes]:
    """Every message in C{folder}, over IMAPS from C{host}, oldest first (read-only: nothing is marked seen)."""
    encoded = host.python(_IMAP, {"address": address, "port": port, "user": user, "password": password, "folder": folder})
    return [base64.b64decode(m) for m in encoded]
