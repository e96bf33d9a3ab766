"""
The mechanism of the config schema: each key declared once, on the field of
its section's frozen dataclass, and one reader for every section.

A key is a dataclass field whose metadata holds a L{Key}: the TOML type it
takes, the checks its value must pass, whether it is required. Its default is
the field's own default (or, for a field that must stay positional without
one, the key's C{default}). From that one declaration L{Section} derives the
section's whitelist (a key not declared is reported as unknown), the type
check, the range and cross-key checks, and the default that stands in for a
missing or bad value, in the way of maddy's C{cfg.Duration(name, ...,
default, &dst)}::

    @dataclass(frozen=True)
    class RelayConfig:
        #: Seconds after which an undelivered message is bounced.
        max_lifetime: int = field(default=5 * 24 * 3600, metadata=integer(positive))

Every problem is reported, never raised (L{Reader.problem}), and reading goes
on with the default, so that an operator sees every mistake of a file at
once. A check is a plain function C{(at, value) -> value}: it reports through
C{at} and returns the value to keep (possibly converted), or L{INVALID} when
the default is to stand in (or, for a required key, the section cannot be
built); it runs only on a value the file gives. A check of several keys
together (C{max_connections_per_domain} at most C{max_connections}) goes in
the C{then} of the later key: it runs once that key is read, whatever its
value, defaults included. Problems come out in reading order: a section's
keys in field order (or its C{order}), each key's own problems, then its
C{then}. The named checks that several sections share are here and in
L{mailapp.config.checks}.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Generic, TypeVar

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

__all__ = [
    "ANY",
    "ARRAY",
    "BOOLEAN",
    "INTEGER",
    "INVALID",
    "STRING",
    "TABLE",
    "At",
    "Check",
    "ConfigError",
    "Entries",
    "Items",
    "Key",
    "Kind",
    "Reader",
    "Section",
    "at_least",
    "at_most",
    "anything",
    "array",
    "boolean",
    "describe",
    "integer",
    "join",
    "key",
    "one_of",
    "positive",
    "quote_key",
    "string",
    "table",
    "zero_or_positive",
]

_T = TypeVar("_T", bound="DataclassInstance")


class ConfigError(Exception):
    """
    The configuration cannot be used. ``problems`` lists every mistake found,
    each a complete line naming the file and the dotted key.
    """

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        super().__init__(self.problems)

    def __str__(self) -> str:
        count = len(self.problems)
        header = f"{count} configuration problem{'s' if count != 1 else ''}:"
        return "\n".join([header, *(f"  {problem}" for problem in self.problems)])


class _Invalid:
    """The type of L{INVALID}."""

    def __repr__(self) -> str:
        return "INVALID"


#: What a check returns for a value that cannot be used (its problem already reported).
INVALID: Final = _Invalid()


class Reader:
    """Collects the problems of one file, each prefixed with the file's path."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.problems: list[str] = []

    def problem(self, key: str, message: str) -> None:
        self.problems.append(f"{self.path}: {key}: {message}" if key else f"{self.path}: {message}")

    def table(self, parent: Mapping[str, Any], name: str, key: str) -> dict[str, Any]:
        """C{parent[name]} if it is a table (an empty one when absent), else a problem and an empty table."""
        value = parent.get(name, {})
        if not isinstance(value, dict):
            self.problem(key, f"must be {TABLE.name}, not {describe(value)}")
            return {}
        return value

    def only(self, table: Mapping[str, Any], allowed: Iterable[str], prefix: str) -> None:
        """Every key of C{table} not in C{allowed} is a problem that lists the allowed ones."""
        allowed = frozenset(allowed)
        for name in table:
            if name not in allowed:
                choices = ", ".join(sorted(allowed))
                self.problem(join(prefix, name), f"unknown key (expected one of: {choices})")


@dataclass(frozen=True)
class Kind:
    """A TOML type a key takes, and how a problem names it (C{"an integer"})."""

    python: type | None
    name: str

    def accepts(self, value: object) -> bool:
        """Whether C{value} is of this kind; a boolean is never an integer."""
        if self.python is None:
            return True
        return isinstance(value, self.python) and not (self.python is int and isinstance(value, bool))

    def named(self, name: str) -> Kind:
        """This kind under another name in problems (C{"a string 'host:port'"})."""
        return Kind(self.python, name)


STRING: Final = Kind(str, "a string")
INTEGER: Final = Kind(int, "an integer")
BOOLEAN: Final = Kind(bool, "a boolean")
ARRAY: Final = Kind(list, "an array")
TABLE: Final = Kind(dict, "a table")
#: No type check: the key's own check says what it takes (e.g. a number of seconds, int or float).
ANY: Final = Kind(None, "anything")

_TYPE_NAMES: Final = {str: "a string", bool: "a boolean", int: "an integer", list: "an array", dict: "a table"}


class At:
    """
    Where a check is: the dotted key it reports on, the section's values read
    so far (for cross-key checks), the raw TOML table and the environment
    (C{base}: what relative paths resolve against; C{state_dir}, once read).
    """

    def __init__(
        self,
        reader: Reader,
        prefix: str,
        name: str,
        key: str,
        values: Mapping[str, Any],
        table: Mapping[str, Any],
        env: Mapping[str, Any],
    ) -> None:
        self.reader = reader
        self.prefix = prefix
        #: The key's name in its section, and the dotted key problems are reported on.
        self.name = name
        self.key = key
        self.values = values
        self.table = table
        self.env = env

    def problem(self, message: str) -> None:
        """Report a problem on this key."""
        self.reader.problem(self.key, message)

    def sibling(self, name: str) -> str:
        """The dotted key of another key of this section."""
        return join(self.prefix, name)

    def problem_on(self, name: str, message: str) -> None:
        """Report a problem on another key of this section."""
        self.reader.problem(self.sibling(name), message)

    def inside(self, key: str) -> At:
        """The same place, reporting on C{key} (an array item, a table entry)."""
        return At(self.reader, self.prefix, self.name, key, self.values, self.table, self.env)


#: A check: report through C{at}, return the value to keep or L{INVALID}.
Check = Callable[[At, Any], Any]


@dataclass(frozen=True)
class Items:
    """An array key's items: each of C{kind}, through C{checks}; an item that fails is left out."""

    kind: Kind
    checks: tuple[Check, ...] = ()


@dataclass(frozen=True)
class Entries:
    """
    A table key's entries (C{name = value}): the name through C{names}, the
    value of C{kind} through C{checks}; an entry that fails either is left out.
    """

    kind: Kind
    checks: tuple[Check, ...] = ()
    names: tuple[Check, ...] = ()


_MISSING: Final = dataclasses.MISSING
#: A key's C{default} when it has none of its own (not dataclasses.MISSING, which would make it a required field of L{Key}).
_NO_DEFAULT: Final = _Invalid()


@dataclass(frozen=True)
class Key:
    """One config key: see the module docstring."""

    kind: Kind
    checks: tuple[Check, ...] = ()
    required: bool = False
    items: Items | None = None
    entries: Entries | None = None
    #: The default where the field cannot have one (it stays positional in the dataclass).
    default: Any = _NO_DEFAULT
    #: A default that depends on other values (C{at.values}, C{at.env}).
    default_from: Callable[[At], Any] | None = None
    #: Turns a valid value into the field's type (C{tuple}, C{frozenset}, ...).
    build: Callable[[Any], Any] | None = None
    #: Checks of several keys together, run once this key is read whatever its
    #: value (present, absent or bad): C{at.values} holds it and every key before it.
    then: tuple[Callable[[At], None], ...] = ()


_SCHEMA: Final = "mailapp.config.schema"


def key(kind: Kind, *checks: Check, **options: Any) -> Mapping[str, Key]:
    """The metadata of a dataclass field that is a config key (options: those of L{Key})."""
    return {_SCHEMA: Key(kind, tuple(checks), **options)}


def integer(*checks: Check, **options: Any) -> Mapping[str, Key]:
    """An integer key (never a boolean)."""
    return key(INTEGER, *checks, **options)


def string(*checks: Check, **options: Any) -> Mapping[str, Key]:
    """A string key."""
    return key(STRING, *checks, **options)


def boolean(*checks: Check, **options: Any) -> Mapping[str, Key]:
    """A boolean key."""
    return key(BOOLEAN, *checks, **options)


def array(items: Items, *checks: Check, **options: Any) -> Mapping[str, Key]:
    """An array key whose C{items} are each checked (C{checks} then see the list of those kept)."""
    return key(ARRAY, *checks, items=items, **options)


def table(entries: Entries, *checks: Check, **options: Any) -> Mapping[str, Key]:
    """A table key whose C{entries} are each checked (C{checks} then see the dict of those kept)."""
    return key(TABLE, *checks, entries=entries, **options)


def anything(*checks: Check, **options: Any) -> Mapping[str, Key]:
    """A key of no fixed TOML type: its first check says what it takes."""
    return key(ANY, *checks, **options)


class Section(Generic[_T]):
    """
    A section of the file, read into the frozen dataclass C{cls} whose fields
    with L{Key} metadata are its keys. Keys are read, and their problems
    reported, in field order unless C{order} names another.
    """

    def __init__(self, cls: type[_T], order: Sequence[str] | None = None) -> None:
        self.cls = cls
        fields = {each.name: each for each in dataclasses.fields(cls) if _SCHEMA in each.metadata}
        names = list(fields) if order is None else list(order)
        if sorted(names) != sorted(fields):
            raise ValueError(f"{cls.__name__}: the order must name every key once: {sorted(fields)}")
        self._fields = [fields[name] for name in names]

    @property
    def keys(self) -> frozenset[str]:
        """The section's whitelist."""
        return frozenset(each.name for each in self._fields)

    def spec(self, name: str) -> Key:
        """The schema of key C{name}."""
        return self._field(name).metadata[_SCHEMA]  # type: ignore[no-any-return]

    def _field(self, name: str) -> dataclasses.Field[Any]:
        for each in self._fields:
            if each.name == name:
                return each
        raise KeyError(name)

    def read(
        self, reader: Reader, table: Mapping[str, Any], prefix: str, env: Mapping[str, Any]
    ) -> tuple[dict[str, Any], bool]:
        """
        Every key's value (its default where it is absent or bad), and whether
        every required key has a usable one.
        """
        reader.only(table, self.keys, prefix)
        values: dict[str, Any] = {}
        complete = True
        for each in self._fields:
            spec: Key = each.metadata[_SCHEMA]
            at = At(reader, prefix, each.name, join(prefix, each.name), values, table, env)
            value = _read_key(at, table, each.name, spec)
            if value is INVALID:
                if spec.required:
                    complete = False
                    value = None
                elif spec.default_from is not None:
                    value = spec.default_from(at)
                else:
                    value = _default_of(each, spec)
            values[each.name] = value
            for validator in spec.then:
                validator(at)
        return values, complete

    def build(
        self, reader: Reader, table: Mapping[str, Any], prefix: str, env: Mapping[str, Any], **given: Any
    ) -> _T | None:
        """The section as C{cls} (with C{given} for its fields that are not keys), or None after a problem in a required key."""
        values, complete = self.read(reader, table, prefix, env)
        return self.cls(**given, **values) if complete else None

    def check(self, at: At, value: Any) -> Any:
        """This section as the check of a table entry (C{[tls.sni."name"]}), read at C{at.key}."""
        built = self.build(at.reader, value, at.key, at.env)
        return INVALID if built is None else built


def _default_of(field: dataclasses.Field[Any], spec: Key) -> Any:
    if field.default is not _MISSING:
        return field.default
    if field.default_factory is not _MISSING:
        return field.default_factory()
    return None if spec.default is _NO_DEFAULT else spec.default


def _read_key(at: At, table: Mapping[str, Any], name: str, spec: Key) -> Any:
    """The value of one key after its type and checks, or L{INVALID} (absent counts as invalid: the default stands in)."""
    if name not in table:
        if spec.required:
            at.problem("is required")
        return INVALID
    raw = table[name]
    if not spec.kind.accepts(raw):
        at.problem(f"must be {spec.kind.name}, not {describe(raw)}")
        return INVALID
    value: Any = raw
    if spec.items is not None:
        value = _read_items(at, raw, spec.items)
        if raw and not value:
            return INVALID  # every item was bad, and said so
    elif spec.entries is not None:
        value = _read_entries(at, raw, spec.entries)
    for check in spec.checks:
        value = check(at, value)
        if value is INVALID:
            return INVALID
    return spec.build(value) if spec.build is not None else value


def _read_items(at: At, raw: list[Any], items: Items) -> list[Any]:
    kept: list[Any] = []
    for index, item in enumerate(raw):
        here = at.inside(f"{at.key}[{index}]")
        if not items.kind.accepts(item):
            here.problem(f"must be {items.kind.name}, not {describe(item)}")
            continue
        value = _run(here, item, items.checks)
        if value is not INVALID:
            kept.append(value)
    return kept


def _read_entries(at: At, raw: Mapping[str, Any], entries: Entries) -> dict[Any, Any]:
    kept: dict[Any, Any] = {}
    for name, item in raw.items():
        here = at.inside(f"{at.key}.{quote_key(name)}")
        checked_name = _run(here, name, entries.names)
        if not entries.kind.accepts(item):
            here.problem(f"must be {entries.kind.name}, not {describe(item)}")
            continue
        value = _run(here, item, entries.checks)
        if checked_name is not INVALID and value is not INVALID:
            kept[checked_name] = value
    return kept


def _run(at: At, value: Any, checks: Iterable[Check]) -> Any:
    for check in checks:
        value = check(at, value)
        if value is INVALID:
            break
    return value


# --- checks every section uses ----------------------------------------------------------------


def positive(at: At, value: int) -> int | _Invalid:
    """A positive integer."""
    if value <= 0:
        at.problem(f"must be a positive integer, not {value}")
        return INVALID
    return value


class zero_or_positive:
    """0 (which means C{meaning}: "unlimited", "off") or a positive integer."""

    def __init__(self, meaning: str) -> None:
        self.meaning = meaning

    def __call__(self, at: At, value: int) -> int | _Invalid:
        if value < 0:
            at.problem(f"must be 0 ({self.meaning}) or a positive integer, not {value}")
            return INVALID
        return value


class at_most:
    """
    No more than the section's key C{other} (read before this one); reported,
    the value kept. As a check it applies to a value the file gives; in a
    key's C{then}, to the key's value whatever it is (its default too).
    """

    def __init__(self, other: str) -> None:
        self.other = other

    def __call__(self, at: At, value: Any = None) -> Any:
        own = at.values[at.name] if value is None else value
        limit = at.values[self.other]
        if own > limit:
            at.problem(f"{own} is more than {at.sibling(self.other)} ({limit})")
        return value


class at_least:
    """In a key's C{then}: its value (whatever it is) no less than the section's key C{other}."""

    def __init__(self, other: str) -> None:
        self.other = other

    def __call__(self, at: At) -> None:
        own, floor = at.values[at.name], at.values[self.other]
        if own < floor:
            at.problem(f"{own:g} is less than {at.sibling(self.other)} ({floor:g})")


class one_of:
    """
    One of C{choices}, listed in the problem in their order. An empty string
    counts as absent (the default), as it always has.
    """

    def __init__(self, *choices: str) -> None:
        self.choices = choices

    def __call__(self, at: At, value: str) -> str | _Invalid:
        if value == "":
            return INVALID
        if value not in self.choices:
            at.problem(f"must be one of {', '.join(self.choices)}, not {value!r}")
            return INVALID
        return value


# --- how keys and values are written in problems ------------------------------------------------


def join(prefix: str, name: str) -> str:
    """The dotted key C{name} of the table at C{prefix} (C{""}: the top level)."""
    quoted = quote_key(name)
    return f"{prefix}.{quoted}" if prefix else quoted


def quote_key(name: str) -> str:
    """C{name} as TOML writes it in a dotted key: bare when it can be, else quoted."""
    return name if re.fullmatch(r"[A-Za-z0-9_-]+", name) else f'"{name}"'


def describe(value: object) -> str:
    """What a wrong value is, for a problem: C{"an integer (42)"}, C{"an array"}."""
    for kind, name in _TYPE_NAMES.items():
        if isinstance(value, kind):
            return f"{name} ({value!r})" if kind in (str, bool, int) else name
    return type(value).__name__
