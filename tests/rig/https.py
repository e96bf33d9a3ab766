"""
A small HTTPS server in a rig host, for what mailapp fetches or posts over
verified TLS (MTA-STS policies, TLS-RPT reports): the test writes the
request handler (a C{Handler} class of C{http.server}), this module the
rest: the TLS wrap with the given certificate, port 443 on the host's
address, and "ready" once it listens.
"""

from __future__ import annotations

from pathlib import Path

from tests.rig.network import PYTHON, Host, RigProcess

__all__ = ["start_https"]

_SERVE = r"""
server = http.server.HTTPServer((sys.argv[3], 443), Handler)
context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
context.load_cert_chain(sys.argv[1], sys.argv[2])
server.socket = context.wrap_socket(server.socket, server_side=True)
print("ready", flush=True)
server.serve_forever()
"""


def start_https(host: Host, cert: Path, key: Path, handler: str, *arguments: str) -> RigProcess:
    """
    Serve HTTPS at C{host}'s IPv4 address with C{handler} (Python source
    defining C{Handler}; C{http.server}, C{json}, C{ssl} and C{sys} are
    imported, and C{sys.argv[4:]} are C{arguments}); return once it listens.
    """
    script = "import http.server, json, ssl, sys\n" + handler + _SERVE
    process = host.popen([PYTHON, "-c", script, str(cert), str(key), host.ipv4, *arguments], "https.log", stdout_pipe=True)
    process.wait_line("ready")
    return process
