"""
Turning accounts and folder names into paths that stay inside the store.

Every name that reaches the filesystem passes through here. Components are
percent-encoded outside a small safe set, so ``..``, ``/``, NUL, a leading dot
or a Maildir++ separator can never be spelled by a user: the only way into a
directory is through a name this module produced.
"""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path

from mailapp.errors import BadFolderName

# The names the contract fixes (L{mailapp.records}); importable from here as before.
from mailapp.records import DELIMITER as DELIMITER
from mailapp.records import INBOX as INBOX
from mailapp.records import SPECIAL_FOLDERS as SPECIAL_FOLDERS

MAX_FOLDER_NAME = 512
MAX_COMPONENT = 200
_SAFE = re.compile(r"[A-Za-z0-9_\-+=@ ,]")


def _encode_component(text: str, allow_dot: bool = False) -> str:
    """
    Percent-encode every character outside the safe set (UTF-8 based).
    Dots are kept only where asked (domains, local parts) and never first,
    so no component can be ``.``, ``..`` or a hidden Maildir++ folder.
    """
    out = []
    for index, char in enumerate(text):
        if _SAFE.fullmatch(char) or (allow_dot and char == "." and index > 0):
            out.append(char)
        else:
            out.extend(f"%{byte:02X}" for byte in char.encode("utf-8"))
    return "".join(out)


def _decode_component(text: str) -> str:
    raw = bytearray()
    i = 0
    while i < len(text):
        if text[i] == "%" and re.fullmatch(r"[0-9A-F]{2}", text[i + 1 : i + 3]):
            raw.append(int(text[i + 1 : i + 3], 16))
            i += 3
        else:
            raw.extend(text[i].encode("utf-8"))
            i += 1
    return raw.decode("utf-8", "replace")


def normalize_folder(name: str) -> str:
    """
    Check a folder name and return its canonical spelling.

    ``INBOX`` is case-insensitive (RFC 3501 5.1). Raises L{BadFolderName} for
    empty components, control characters, over-long names, and ``.``/``..``
    components, whatever their encoding.
    """
    if not isinstance(name, str) or not name:
        raise BadFolderName("folder name is empty")
    name = unicodedata.normalize("NFC", name)
    if len(name) > MAX_FOLDER_NAME:
        raise BadFolderName("folder name is too long")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in name):
        raise BadFolderName("folder name contains a control character")
    parts = name.split(DELIMITER)
    for part in parts:
        if not part or part.strip() != part:
            raise BadFolderName("folder name has an empty component or surrounding spaces")
        if part in (".", ".."):
            raise BadFolderName("folder name has a '.' or '..' component")
        if len(part) > MAX_COMPONENT:
            raise BadFolderName("folder name component is too long")
    if parts[0].upper() == INBOX:
        parts[0] = INBOX
    return DELIMITER.join(parts)


def folder_directory(mailbox_dir: Path, folder: str) -> Path:
    """
    The Maildir++ directory of C{folder}: the mailbox root for INBOX,
    ``.a.b`` (each component encoded) for ``a/b``.
    """
    folder = normalize_folder(folder)
    if folder == INBOX:
        return mailbox_dir
    encoded = ".".join(_encode_component(part) for part in folder.split(DELIMITER))
    path = mailbox_dir / ("." + encoded)
    if path.parent != mailbox_dir:  # pragma: no cover - guaranteed by the encoding
        raise BadFolderName("folder name escapes the mailbox")
    return path


def folder_from_directory(dirname: str) -> str | None:
    """The folder name a Maildir++ directory name stands for, or None."""
    if dirname in (".", "..") or not dirname.startswith(".") or len(dirname) < 2:
        return None
    parts = [_decode_component(part) for part in dirname[1:].split(".")]
    try:
        return normalize_folder(DELIMITER.join(parts))
    except BadFolderName:
        return None


def split_account(account: str) -> tuple[str, str]:
    """Split ``local@domain``; raise ValueError for anything else."""
    local, sep, domain = account.rpartition("@")
    if not sep or not local or not domain:
        raise ValueError(f"not an account address: {account!r}")
    return local, domain


def mailbox_directory(root: Path, account: str) -> Path:
    """
    ``root/<domain>/<local>``, lower-cased (accounts are case-insensitive)
    and encoded, so that no account can name a path outside C{root}.
    """
    local, domain = split_account(account)
    if "\x00" in account or "/" in domain or "\\" in domain:
        raise ValueError(f"not an account address: {account!r}")
    path = root / _encode_component(domain.lower().rstrip("."), True) / _encode_component(local.lower(), True)
    if path.parent.parent != root:  # pragma: no cover - guaranteed by the encoding
        raise ValueError("account escapes the store")
    return path
