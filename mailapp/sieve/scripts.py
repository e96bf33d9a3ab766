"""
Where Sieve scripts live: C{state_dir/sieve/}, one directory per account
(its address, lower-cased and percent-encoded), as the Maildirs are one
per account under C{state_dir/mail/}:

    sieve/<account>/scripts/<name>.sieve   every uploaded script
    sieve/<account>/active                 the active script's name (absent: none)
    sieve/<account>/memory.json            vacation replies sent, duplicate ids seen
    sieve/active-accounts/<account>        present while <account> may have an active script
    sieve/global/<name>.sieve              the admin's scripts for include :global;
                                           before.sieve and after.sieve run around every user's

Every method blocks (small files): call it on a worker thread. A script is
checked (compiled) before it is stored, so a stored script always parses;
files are replaced by rename, so a reader never sees half of one.

C{active-accounts/} is what lets a delivery skip the script reads when
none of its recipients has a script (L{mailapp.sieve.presence}): one
directory to watch instead of one per account. Its entry is made before
an C{active} file is written and again after, and removed after the file
is (then made again if another process wrote one meanwhile), so that
whatever two processes do at once, it is never missing once a script is
active; a stale one only costs a read. A hand-made C{active} file gets
its entry within the hour (L{ScriptStore.mark_active_accounts}).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from mailapp.sieve import compile
from mailapp.sieve.parser import Command

__all__ = ["ScriptError", "ScriptInfo", "ScriptStore", "SieveMemory", "sieve_directory", "write_atomically"]

#: RFC 5804 1.6: a name is UTF-8 without controls; ours also avoid what a file name cannot hold.
_NAME = re.compile(r"^[^\x00-\x1f\x7f/\\]{1,128}$")
SUFFIX = ".sieve"
#: The directory of accounts that may have an active script (the module docstring).
MARKERS = "active-accounts"
#: The directory of the admin's global scripts.
GLOBAL = "global"


def sieve_directory(state_dir: Path) -> Path:
    """Where every account's scripts are (the module docstring)."""
    return Path(state_dir) / "sieve"


class ScriptError(Exception):
    """A refused script operation, with ManageSieve's response code (NONEXISTENT, ACTIVE, ALREADYEXISTS, QUOTA)."""

    def __init__(self, text: str, code: str = "") -> None:
        super().__init__(text)
        self.text = text
        self.code = code


@dataclass(frozen=True)
class ScriptInfo:
    name: str
    active: bool


def write_atomically(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    try:
        with os.fdopen(handle, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, path)
    except BaseException:
        try:
            os.unlink(temporary)
        except FileNotFoundError:
            pass
        raise


def check_name(name: str) -> str:
    if not _NAME.match(name) or name in (".", "..") or name.startswith("."):
        raise ScriptError(f"bad script name {name!r}")
    return name


class ScriptStore:
    """Every account's scripts; see the module docstring."""

    def __init__(
        self, root: Path, max_scripts: int = 20, max_script_size: int = 65536
    ) -> None:
        self.root = Path(root)
        self.max_scripts = max_scripts
        self.max_script_size = max_script_size

    def directory(self, account: str) -> Path:
        return self.root / self.directory_name(account)

    @staticmethod
    def directory_name(account: str) -> str:
        """C{account}'s directory name under the root, and its entry's in C{active-accounts/}."""
        return quote(account.lower(), safe="@.+-_")

    @property
    def markers(self) -> Path:
        """C{active-accounts/}: see the module docstring."""
        return self.root / MARKERS

    @property
    def global_directory(self) -> Path:
        """C{global/}: the admin's scripts."""
        return self.root / GLOBAL

    def _mark(self, account: str) -> None:
        self.markers.mkdir(parents=True, exist_ok=True, mode=0o700)
        (self.markers / self.directory_name(account)).touch()

    def _unmark(self, account: str) -> None:
        try:
            (self.markers / self.directory_name(account)).unlink()
        except FileNotFoundError:
            pass

    def mark_active_accounts(self) -> None:
        """
        Give every account directory with an C{active} file its entry (at
        start: one written by an older version or by hand). Entries are only
        added here, never removed: one made by an L{activate} still under way
        has no C{active} file yet.
        """
        self.markers.mkdir(parents=True, exist_ok=True, mode=0o700)
        with os.scandir(self.root) as entries:
            for entry in entries:
                if entry.name in (MARKERS, GLOBAL) or not entry.is_dir():
                    continue
                if os.path.exists(os.path.join(entry.path, "active")) and not (self.markers / entry.name).exists():
                    (self.markers / entry.name).touch()

    def _script(self, account: str, name: str) -> Path:
        return self.directory(account) / "scripts" / (check_name(name) + SUFFIX)

    def listing(self, account: str) -> list[ScriptInfo]:
        active = self.active_name(account)
        folder = self.directory(account) / "scripts"
        names = (
            sorted(p.name[: -len(SUFFIX)] for p in folder.glob("*" + SUFFIX))
            if folder.is_dir()
            else []
        )
        return [ScriptInfo(name, name == active) for name in names]

    def active_name(self, account: str) -> str | None:
        try:
            name = (self.directory(account) / "active").read_text("utf-8").strip()
        except FileNotFoundError:
            return None
        return name or None

    def get(self, account: str, name: str) -> str:
        try:
            # Bytes as stored: read_text would turn a script's CRLF into LF.
            return self._script(account, name).read_bytes().decode("utf-8")
        except FileNotFoundError:
            raise ScriptError(f"no script named {name!r}", "NONEXISTENT") from None

    def space(self, account: str, name: str, size: int) -> None:
        """Raise L{ScriptError} (QUOTA) if C{name} of C{size} bytes would not fit (HAVESPACE, PUTSCRIPT)."""
        if size > self.max_script_size:
            raise ScriptError(
                f"a script may be at most {self.max_script_size} bytes", "QUOTA/MAXSIZE"
            )
        existing = {info.name for info in self.listing(account)}
        if name not in existing and len(existing) >= self.max_scripts:
            raise ScriptError(f"at most {self.max_scripts} scripts", "QUOTA/MAXSCRIPTS")

    def put(self, account: str, name: str, text: str) -> None:
        """Check C{text} (L{mailapp.sieve.SieveSyntaxError} if it does not parse) and store it as C{name}."""
        self.space(account, name, len(text.encode("utf-8")))
        compile(text)
        write_atomically(self._script(account, name), text.encode("utf-8"))

    def activate(self, account: str, name: str | None) -> None:
        """Make C{name} the active script, or none with None (or "")."""
        path = self.directory(account) / "active"
        if not name:
            try:
                path.unlink()
            except FileNotFoundError:
                pass
            self._unmark(account)
            if path.exists():
                # Another process activated one meanwhile, its entry maybe removed by ours.
                self._mark(account)
            return
        if not self._script(account, name).exists():
            raise ScriptError(f"no script named {name!r}", "NONEXISTENT")
        self._mark(account)
        write_atomically(path, name.encode("utf-8"))
        # Again after: a deactivation racing with this one may have removed the first.
        self._mark(account)

    def retire(self, account: str, archive: Path | None) -> Path | None:
        """
        A deleted account's scripts go with it, so that a new account at its
        address never runs them (a redirect of its mail to the old owner):
        the active script is deactivated, then the directory is moved to
        C{archive} (kept beside the old mail) or deleted with None. Returns
        where they went when kept, or None.
        """
        directory = self.directory(account)
        try:
            (directory / "active").unlink()
        except FileNotFoundError:
            pass
        self._unmark(account)
        if not directory.is_dir():
            return None
        if archive is None:
            shutil.rmtree(directory)
            return None
        archive.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.rename(directory, archive)
        return archive

    def delete(self, account: str, name: str) -> None:
        if self.active_name(account) == name:
            raise ScriptError(
                "the active script cannot be deleted; deactivate it first", "ACTIVE"
            )
        try:
            self._script(account, name).unlink()
        except FileNotFoundError:
            raise ScriptError(f"no script named {name!r}", "NONEXISTENT") from None

    def rename(self, account: str, old: str, new: str) -> None:
        source, target = self._script(account, old), self._script(account, new)
        if not source.exists():
            raise ScriptError(f"no script named {old!r}", "NONEXISTENT")
        if target.exists():
            raise ScriptError(f"a script named {new!r} exists", "ALREADYEXISTS")
        os.rename(source, target)
        if self.active_name(account) == old:
            write_atomically(self.directory(account) / "active", new.encode("utf-8"))
            self._mark(account)

    # -- what delivery reads -------------------------------------------------

    def active(self, account: str) -> list[Command] | None:
        """The compiled active script of C{account}, or None (cached by content: one read, no parse)."""
        name = self.active_name(account)
        if name is None:
            return None
        try:
            return compile(self.get(account, name))
        except ScriptError:
            return None

    def personal(self, account: str, name: str) -> list[Command]:
        return compile(self.get(account, name))

    def _global_path(self, name: str) -> Path:
        return self.global_directory / (check_name(name) + SUFFIX)

    def put_global(self, name: str, text: str) -> None:
        """Check C{text} and store it as the global script C{name} (the admin's: no count limit)."""
        if len(text.encode("utf-8")) > self.max_script_size:
            raise ScriptError(f"a script may be at most {self.max_script_size} bytes", "QUOTA/MAXSIZE")
        compile(text)
        write_atomically(self._global_path(name), text.encode("utf-8"))

    def delete_global(self, name: str) -> None:
        try:
            self._global_path(name).unlink()
        except FileNotFoundError:
            raise ScriptError(f"no global script named {name!r}", "NONEXISTENT") from None

    def global_script(self, name: str) -> list[Command] | None:
        try:
            text = self._global_path(name).read_text(
                "utf-8"
            )
        except FileNotFoundError:
            return None
        return compile(text)


class SieveMemory:
    """
    What one account's scripts remember between messages (C{memory.json}):
    vacation replies sent (per handle and sender, RFC 5230 4.2), the replies
    of the last day (our bound), duplicate ids (RFC 7352). Small, and
    pruned of what has expired at every write.
    """

    _locks: dict[str, threading.Lock] = {}
    _guard = threading.Lock()

    def __init__(self, scripts: ScriptStore, account: str) -> None:
        self.path = scripts.directory(account) / "memory.json"
        with self._guard:
            self.lock = self._locks.setdefault(str(self.path), threading.Lock())

    def _load(self) -> dict[str, dict[str, float]]:
        try:
            data = json.loads(self.path.read_text("utf-8"))
        except (FileNotFoundError, ValueError):
            return {"vacation": {}, "duplicate": {}, "sent": {}}
        for key in ("vacation", "duplicate", "sent"):
            data.setdefault(key, {})
        return data  # type: ignore[no-any-return]

    def _save(self, data: dict[str, dict[str, float]], now: float) -> None:
        for key in ("vacation", "duplicate"):
            data[key] = {k: v for k, v in data[key].items() if v > now}
        data["sent"] = {k: v for k, v in data["sent"].items() if v > now - 86400}
        write_atomically(self.path, json.dumps(data).encode())

    def seen(self, kind: str, key: str, now: float) -> bool:
        """Whether C{key} of C{kind} ("vacation", "duplicate") was remembered and has not expired."""
        with self.lock:
            return self._load()[kind].get(key, 0) > now

    def remember(self, kind: str, key: str, until: float, now: float) -> None:
        with self.lock:
            data = self._load()
            data[kind][key] = until
            if kind == "vacation":
                data["sent"][f"{now}:{key}"] = now
            self._save(data, now)

    def replies_today(self, now: float) -> int:
        with self.lock:
            return sum(
                1 for sent in self._load()["sent"].values() if sent > now - 86400
            )
