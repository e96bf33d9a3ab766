"""
What an address or a domain may be, and how one is normalised.

Every part of mailapp that takes an address from a person (the ``mailapp``
command, the webmail's compose form) or looks one up (SMTP RCPT, a login)
goes through these pure functions, so that the command, the SQLite
database and the in-memory fake in L{mailapp.testing} accept and refuse the
same names with the same words.
"""

from __future__ import annotations

import unicodedata

import idna

from mailapp.errors import AccountError

__all__ = [
    "address_key",
    "ascii_domain",
    "check_address",
    "check_alias_source",
    "check_domain",
    "domain_key",
    "is_encodable",
    "split_address",
    "unicode_domain",
]

_MAX_LOCAL_PART = 64  # RFC 5321 4.5.3.1.1, in octets
_MAX_DOMAIN = 255  # RFC 5321 4.5.3.1.2, in octets
_MAX_ADDRESS = 254  # RFC 5321 path of 256 octets, minus the angle brackets
_MAX_LABEL = 63  # RFC 1035 2.3.4

# RFC 5322 "atext" specials allowed in a dot-atom local part; letters, digits
# and (RFC 6531) any non-ASCII character are allowed as well.
_ATEXT_SPECIALS = frozenset("!#$%&'*+-/=?^_`{|}~")
# Characters a mailbox owner's local part must not contain even though RFC
# 5322 allows them: they are path separators in the Maildir under state_dir.
_NOT_IN_ACCOUNT = frozenset("/\\")
_DOMAIN_LABEL_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-")


def address_key(address: str) -> str:
    """
    The case-insensitive identity of an address: local parts match without
    regard to case (and, when not ASCII, in Unicode's composed form, NFC:
    RFC 6532 3.1), and domains are case-insensitive by definition, with an
    internationalised one in its A-label form (L{domain_key}), so that
    C{jörg@müller.example} and C{jörg@xn--mller-kva.example} are one
    address (RFC 6531 3.2).
    """
    if address.isascii():
        return address.lower()
    local, at, domain = address.rpartition("@")
    if not at:
        return unicodedata.normalize("NFC", address).lower()
    return unicodedata.normalize("NFC", local).lower() + "@" + domain_key(domain)


def ascii_domain(domain: str) -> str:
    """
    C{domain} in its ASCII form, lower-cased: an internationalised domain's
    U-labels become A-labels (IDNA2008 with the UTS 46 mapping, which is
    what browsers and mail clients apply: the stdlib's "idna" codec is
    IDNA2003); an A-label must decode. Raises L{AccountError}.
    """
    name = domain.lower()
    try:
        if name.isascii():
            if "xn--" in name:
                idna.decode(name)
            return name
        return idna.encode(domain, uts46=True).decode("ascii")
    except (idna.IDNAError, UnicodeError) as error:
        raise AccountError(f"domain {domain!r} is not a valid internationalised domain name: {error}") from None


def domain_key(domain: str) -> str:
    """L{ascii_domain} leniently, for lookups: a name it refuses is only lower-cased (and then names nobody)."""
    if domain.isascii():
        return domain.lower()
    try:
        return ascii_domain(domain)
    except AccountError:
        return domain.lower()


def unicode_domain(domain: str) -> str:
    """C{domain} with its A-labels shown as U-labels (for people); as it is when that fails."""
    if "xn--" not in domain.lower():
        return domain
    try:
        decoded: str = idna.decode(domain)
        return decoded
    except (idna.IDNAError, UnicodeError):
        return domain


def check_domain(domain: str) -> str:
    """
    Return C{domain} lower-cased in its ASCII form, or raise L{AccountError}
    saying what is wrong. An internationalised domain may be given with
    U-labels (C{müller.example}) or A-labels (C{xn--mller-kva.example}):
    both are kept as the A-labels (L{ascii_domain}), so they are one domain.
    """
    if not isinstance(domain, str) or not domain:
        raise AccountError("domain name is empty")
    _reject_unsafe_characters(domain, "domain name")
    name = ascii_domain(domain)
    if len(name) > _MAX_DOMAIN:
        raise AccountError(f"domain {domain!r} is longer than {_MAX_DOMAIN} characters")
    for label in name.split("."):
        if not label:
            raise AccountError(f"domain {domain!r} has an empty label (leading, trailing or double dot)")
        if len(label) > _MAX_LABEL:
            raise AccountError(f"domain {domain!r} has a label longer than {_MAX_LABEL} characters")
        if not set(label) <= _DOMAIN_LABEL_CHARS:
            raise AccountError(
                f"domain {domain!r} may contain only letters, digits, hyphens and dots"
            )
        if label.startswith("-") or label.endswith("-"):
            raise AccountError(f"domain {domain!r} has a label that starts or ends with a hyphen")
    return name


def check_address(address: str, *, mailbox: bool = False) -> str:
    """
    Return C{address} with its domain lower-cased and its local part as
    given, or raise L{AccountError} saying what is wrong.

    @param mailbox: C{True} for an address that names a user here, whose
        local part must also be usable as a directory name.
    """
    if not isinstance(address, str) or not address:
        raise AccountError("address is empty")
    _reject_unsafe_characters(address, "address")
    local, at, domain = address.rpartition("@")
    if not at:
        raise AccountError(f"address {address!r} has no @domain part")
    if not local:
        raise AccountError(f"address {address!r} has an empty local part")
    if not domain:
        raise AccountError(f"address {address!r} has an empty domain")
    try:
        domain = check_domain(domain)
    except AccountError as error:
        raise AccountError(f"address {address!r}: {error}") from None
    local = unicodedata.normalize("NFC", local)
    _check_local_part(local, address)
    if mailbox and (set(local) & _NOT_IN_ACCOUNT or local.startswith(".")):
        raise AccountError(
            f"address {address!r} cannot name a mailbox: '/' and '\\' are not allowed in a user's name"
        )
    canonical = f"{local}@{domain}"
    if len(canonical.encode("utf-8")) > _MAX_ADDRESS:
        raise AccountError(f"address {address!r} is longer than {_MAX_ADDRESS} octets")
    return canonical


def check_alias_source(source: str) -> str:
    """
    Return an alias source in canonical form: an address, or C{@domain} for
    a domain's catch-all.
    """
    if isinstance(source, str) and source.startswith("@"):
        return "@" + check_domain(source[1:])
    return check_address(source)


def _reject_unsafe_characters(text: str, what: str) -> None:
    for character in text:
        if character.isspace() or ord(character) < 0x20 or ord(character) == 0x7F:
            raise AccountError(f"{what} {text!r} contains whitespace or a control character")
        if character in "<>":
            raise AccountError(f"{what} {text!r} contains '<' or '>': give the bare address")


def _check_local_part(local: str, address: str) -> None:
    if len(local.encode("utf-8")) > _MAX_LOCAL_PART:
        raise AccountError(f"address {address!r} has a local part longer than {_MAX_LOCAL_PART} octets")
    if local.startswith(".") or local.endswith(".") or ".." in local:
        raise AccountError(f"address {address!r} has a leading, trailing or double dot in its local part")
    for character in local:
        if character == ".":
            continue
        if character.isascii() and not (character.isalnum() or character in _ATEXT_SPECIALS):
            raise AccountError(
                f"address {address!r} contains {character!r}, which is not allowed in a local part"
            )


def is_encodable(text: str) -> bool:
    """Lone surrogates (from undecodable bytes) cannot reach SQLite; they name nobody."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def split_address(address: str) -> tuple[str, str] | None:
    """Split leniently for lookups: anything without both parts is nobody's."""
    local, at, domain = address.rpartition("@")
    if not (at and local and domain):
        return None
    return local, domain_key(domain)
