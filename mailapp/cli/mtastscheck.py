"""
``mailapp dns --check``'s look at the MTA-STS policy file itself: the TXT
record only says a policy exists; senders then fetch
``https://mta-sts.DOMAIN/.well-known/mta-sts.txt`` (RFC 8461 3.3) over
verified TLS, with no redirects, and refuse the MX hosts it does not list.
So a policy that is missing, does not verify, does not parse or leaves out
an MX host is found here, with the same verdicts as the DNS records.

Blocking, as the rest of the command is (it runs off any reactor): the
policy host's address comes from the same lookup as the other records (so
``--nameserver`` applies), the TLS is Python's verified client context (the
system's CAs, or ``[relay] tls_ca_file``, as the relay's own fetch trusts),
and each step is bounded by the command's ``--timeout``.
"""

from __future__ import annotations

import http.client
import socket
import ssl
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Final

from mailapp.dnscheck import MISSING, OK, UNKNOWN, WRONG, Finding, Lookup, LookupFailed
from mailapp.dnsrecords import Record, mta_sts_url
from mailapp.relay.mtasts import MAX_POLICY_BYTES, PolicyError, parse_policy

__all__ = ["POLICY_KIND", "FetchFailed", "check_policy", "https_fetch", "policy_record"]

#: The L{Record} kind of the policy file (type ``URL``: it is no DNS record).
POLICY_KIND: Final = "mta-sts-policy"

#: C{fetch(host, path)}: the HTTP status and body; raises L{FetchFailed}.
Fetch = Callable[[str, str], tuple[int, bytes]]


class FetchFailed(Exception):
    """The policy could not be fetched; C{status} is the verdict that says so."""

    def __init__(self, status: str, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


def policy_record(domain: str, policy: str) -> Record:
    """The policy file as a record to check: its URL, and the text we would serve (one line per field)."""
    return Record(POLICY_KIND, mta_sts_url(domain), "URL", "; ".join(policy.splitlines()))


def check_policy(record: Record, domain: str, mx_hosts: Sequence[str], fetch: Fetch) -> Finding:
    """
    Fetch and judge the policy: C{ok} if it parses (RFC 8461 3.2) and allows
    every one of C{mx_hosts}; C{missing} for a 404 or no policy host;
    C{wrong} for TLS that does not verify, another HTTP status, a policy
    that does not parse or leaves an MX host out; C{unknown} for a timeout.
    """
    host = f"mta-sts.{domain}"
    try:
        status, body = fetch(host, "/.well-known/mta-sts.txt")
    except FetchFailed as error:
        return Finding(record, error.status, (), error.detail)
    if status == 404:
        return Finding(record, MISSING, (), f"{host} answered HTTP 404")
    if status != 200:
        return Finding(record, WRONG, (), f"{host} answered HTTP {status}, not 200")
    if len(body) > MAX_POLICY_BYTES:
        return Finding(record, WRONG, (), f"the policy is larger than {MAX_POLICY_BYTES} bytes")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        return Finding(record, WRONG, (), "the policy is not UTF-8")
    found = tuple(line for line in text.splitlines() if line.strip())
    try:
        policy = parse_policy(domain, "", text, 0.0)
    except PolicyError as error:
        return Finding(record, WRONG, found, f"the policy does not parse: {error.reason}")
    unlisted = [mx for mx in mx_hosts if not policy.allows(mx)]
    if unlisted:
        return Finding(record, WRONG, found, f"it does not list the MX host {', '.join(unlisted)}: senders would refuse it")
    return Finding(record, OK, found)


class _PinnedHTTPS(http.client.HTTPSConnection):
    """HTTPS to C{address}, its certificate verified for C{host} (the name the lookup resolved)."""

    def __init__(self, host: str, address: str, timeout: float, context: ssl.SSLContext) -> None:
        super().__init__(host, 443, timeout=timeout, context=context)
        self._address = address
        self._verified_context = context

    def connect(self) -> None:
        raw = socket.create_connection((self._address, 443), self.timeout)
        self.sock = self._verified_context.wrap_socket(raw, server_hostname=self.host)


def https_fetch(lookup: Lookup, timeout: float, cafile: Path | None = None) -> Fetch:
    """A L{Fetch} over verified HTTPS (no redirects: RFC 8461 3.3), the host's address from C{lookup}."""
    context = ssl.create_default_context(cafile=str(cafile) if cafile is not None else None)

    def fetch(host: str, path: str) -> tuple[int, bytes]:
        try:
            addresses = lookup(host, "A") + lookup(host, "AAAA")
        except LookupFailed as error:
            raise FetchFailed(UNKNOWN, f"address lookup of {host} failed: {error}") from None
        if not addresses:
            raise FetchFailed(MISSING, f"{host} has no address")
        connection = _PinnedHTTPS(host, addresses[0], timeout, context)
        try:
            connection.request("GET", path, headers={"User-Agent": "mailapp dns --check"})
            response = connection.getresponse()
            return response.status, response.read(MAX_POLICY_BYTES + 1)
        except ssl.SSLCertVerificationError as error:
            raise FetchFailed(WRONG, f"the certificate of {host} does not verify: {error.verify_message}") from None
        except TimeoutError:
            raise FetchFailed(UNKNOWN, f"{host} did not answer within {timeout:g} s") from None
        except ConnectionRefusedError:
            raise FetchFailed(MISSING, f"nothing listens on {host} port 443") from None
        except (OSError, http.client.HTTPException) as error:
            raise FetchFailed(WRONG, f"fetching from {host}: {type(error).__name__}: {error}") from None
        finally:
            connection.close()

    return fetch
