"""
Our Sieve interpreter: a checked script (L{mailapp.sieve.compile}) run
against one message for one recipient, giving an L{Outcome} (where the
copies go, with which flags; what to redirect, reject, answer). It does no
I/O: delivery (L{mailapp.sieve.delivery}) carries the outcome out.

Bounded (L{SieveLimits}): steps, redirects, include depth. A run that
passes a bound or meets a runtime error falls back to the implicit keep
(RFC 5228 2.10.6), with the error in L{Outcome.errors}.
"""

from __future__ import annotations

import datetime
import functools
import hashlib
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TypeVar
from email.utils import parsedate_to_datetime

from mailapp.sieve.commands import DATE_PARTS
from mailapp.sieve.message import Envelope, MessageView
from mailapp.sieve.parser import Argument, Command, StringList, Test

__all__ = [
    "Outcome",
    "Placement",
    "SieveLimits",
    "SieveRuntimeError",
    "Vacation",
    "run",
]

INBOX = "INBOX"


@dataclass(frozen=True)
class SieveLimits:
    #: Commands and tests one delivery may run (a loop cannot be written, but a long script with includes can).
    max_steps: int = 10_000
    #: Redirects one message may cause per recipient (RFC 5228 4.2: an implementation SHOULD bound them).
    max_redirects: int = 4
    #: How deep includes may nest (RFC 6609 3.2 leaves it to us).
    max_include_depth: int = 5


class SieveRuntimeError(Exception):
    """An error while running: the implicit keep stands (RFC 5228 2.10.6)."""


@dataclass(frozen=True)
class Placement:
    folder: str
    flags: frozenset[str] = frozenset()
    #: fileinto :create (RFC 5490): create the folder when it is missing.
    create: bool = False


@dataclass(frozen=True)
class Vacation:
    reason: str
    days: int = 7
    subject: str | None = None
    from_address: str | None = None
    addresses: tuple[str, ...] = ()
    mime: bool = False
    handle: str = ""


@dataclass
class Outcome:
    placements: list[Placement] = field(default_factory=list)
    redirects: list[str] = field(default_factory=list)
    reject: str | None = None
    #: ereject (RFC 5429 2.1): refuse in protocol only, never with an MDN.
    ereject: bool = False
    vacation: Vacation | None = None
    #: Duplicate ids (RFC 7352) to remember once the delivery is durable: (handle, id, seconds).
    duplicates: list[tuple[str, str, int]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    steps: int = 0

    @property
    def discarded(self) -> bool:
        return not self.placements and not self.redirects and self.reject is None


#: (kind "personal"/"global", name) -> checked commands, or raises SieveRuntimeError.
IncludeLoader = Callable[[str, str], list[Command]]
#: Whether an id was seen in the last seconds (duplicate, RFC 7352): (handle, id, seconds) -> bool.
SeenCheck = Callable[[str, str, int], bool]


class _Stop(Exception):
    pass


class _Return(Exception):
    pass


_VARIABLE = re.compile(r"\$\{([A-Za-z0-9_.]+)\}")


@dataclass
class _State:
    message: MessageView
    envelope: Envelope
    default_folder: str
    limits: SieveLimits
    loader: IncludeLoader | None
    seen: SeenCheck | None
    now: datetime.datetime
    outcome: Outcome = field(default_factory=Outcome)
    implicit_keep: bool = True
    flags: dict[str, set[str]] = field(default_factory=lambda: {"": set()})
    variables: dict[str, str] = field(default_factory=dict)
    globals: dict[str, str] = field(default_factory=dict)
    global_names: set[str] = field(default_factory=set)
    matches: list[str] = field(default_factory=list)
    extensions: set[str] = field(default_factory=set)
    included: set[tuple[str, str]] = field(default_factory=set)
    depth: int = 0

    def step(self) -> None:
        self.outcome.steps += 1
        if self.outcome.steps > self.limits.max_steps:
            raise SieveRuntimeError(f"more than {self.limits.max_steps} steps")

    # -- strings and variables (RFC 5229) --------------------------------

    def expand(self, text: str) -> str:
        if "variables" not in self.extensions or "${" not in text:
            return text

        def value(match: re.Match[str]) -> str:
            name = match.group(1)
            if name.isdigit():
                index = int(name)
                return self.matches[index] if index < len(self.matches) else ""
            name = name.lower()
            if name in self.global_names or name.startswith("global."):
                return self.globals.get(name.removeprefix("global."), "")
            return self.variables.get(name, "")

        return _VARIABLE.sub(value, text)

    def strings(self, argument: Argument | None) -> list[str]:
        if not isinstance(argument, StringList):
            return []
        return [self.expand(value) for value in argument.values]

    def string(self, argument: Argument | None) -> str:
        values = self.strings(argument)
        return values[0] if values else ""

    def set_variable(self, name: str, value: str) -> None:
        name = name.lower()
        if name.startswith("global.") or name in self.global_names:
            self.globals[name.removeprefix("global.")] = value
        else:
            self.variables[name] = value


def _comparator(tagged: dict[str, Argument | None]) -> str:
    value = tagged.get("comparator")
    return (
        value.values[0].lower() if isinstance(value, StringList) else "i;ascii-casemap"
    )


_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def _fold(text: str, comparator: str) -> str:
    # i;ascii-casemap folds ASCII letters only (RFC 4790 9.2), never other scripts' cases.
    return text.translate(_ASCII_LOWER) if comparator == "i;ascii-casemap" else text


@functools.lru_cache(maxsize=1024)
def _glob(pattern: str, comparator: str) -> re.Pattern[str]:
    parts, index = [], 0
    while index < len(pattern):
        char = pattern[index]
        if char == "\\" and index + 1 < len(pattern):
            parts.append(re.escape(pattern[index + 1]))
            index += 2
            continue
        parts.append("(.*?)" if char == "*" else "(.)" if char == "?" else re.escape(char))
        index += 1
    flags = re.DOTALL | (re.IGNORECASE | re.ASCII if comparator == "i;ascii-casemap" else 0)
    return re.compile("".join(parts) + r"\Z", flags)


def _numeric(text: str) -> float:
    digits = re.match(r"\d+", text)
    # RFC 4790 9.1: a string not starting with a digit is positive infinity.
    return float(digits.group(0)) if digits else float("inf")


def _relate(left: str | float, right: str | float, relation: str) -> bool:
    return {
        "gt": left > right,  # type: ignore[operator]
        "ge": left >= right,  # type: ignore[operator]
        "lt": left < right,  # type: ignore[operator]
        "le": left <= right,  # type: ignore[operator]
        "eq": left == right,
        "ne": left != right,
    }[relation]


def _match(
    state: _State,
    tagged: dict[str, Argument | None],
    values: list[str],
    keys: list[str],
) -> bool:
    """The match types (RFC 5228 2.7.1, RFC 5231 relational) over C{values} against C{keys}; sets ${n} on :matches."""
    comparator = _comparator(tagged)
    if "count" in tagged:
        relation = state.string(tagged["count"]).lower()
        return any(_relate(float(len(values)), _numeric(key), relation) for key in keys)
    if "value" in tagged:
        relation = state.string(tagged["value"]).lower()
        for value in values:
            for key in keys:
                state.step()
                if comparator == "i;ascii-numeric":
                    if _relate(_numeric(value), _numeric(key), relation):
                        return True
                elif _relate(
                    _fold(value, comparator), _fold(key, comparator), relation
                ):
                    return True
        return False
    for value in values:
        for key in keys:
            state.step()
            if "matches" in tagged:
                found = _glob(key, comparator).match(value)
                if found:
                    state.matches = [value, *found.groups()]
                    return True
            elif "contains" in tagged:
                if _fold(key, comparator) in _fold(value, comparator):
                    return True
            elif comparator == "i;ascii-numeric":
                if _numeric(value) == _numeric(key):
                    return True
            elif _fold(value, comparator) == _fold(key, comparator):
                return True
    return False


def _address_part(address: str, tagged: dict[str, Argument | None]) -> str | None:
    local, at, domain = address.rpartition("@")
    if not at:
        local, domain = address, ""
    if "localpart" in tagged:
        return local
    if "domain" in tagged:
        return domain
    if "user" in tagged:
        return local.partition("+")[0]
    if "detail" in tagged:
        # RFC 5233 4: no separator means no detail, and the test fails for it.
        return local.partition("+")[2] if "+" in local else None
    return address


_T = TypeVar("_T")


def _indexed(values: list[_T], tagged: dict[str, Argument | None]) -> list[_T]:
    """RFC 5260 index: only the C{:index}th occurrence (from the end with C{:last}), or all of them."""
    index = tagged.get("index")
    if not isinstance(index, int):
        return values
    ordered = list(reversed(values)) if "last" in tagged else values
    return [ordered[index - 1]] if index <= len(ordered) else []


_ADDRESS_HEADERS = {
    "from",
    "to",
    "cc",
    "bcc",
    "sender",
    "resent-from",
    "resent-to",
    "resent-cc",
    "resent-bcc",
    "reply-to",
    "return-path",
    "delivered-to",
}


def _date_part(moment: datetime.datetime, part: str) -> str:
    if part == "year":
        return f"{moment.year:04d}"
    if part == "month":
        return f"{moment.month:02d}"
    if part == "day":
        return f"{moment.day:02d}"
    if part == "date":
        return moment.strftime("%Y-%m-%d")
    if part == "julian":
        return str((moment.date() - datetime.date(1858, 11, 17)).days)
    if part == "hour":
        return f"{moment.hour:02d}"
    if part == "minute":
        return f"{moment.minute:02d}"
    if part == "second":
        return f"{moment.second:02d}"
    if part == "time":
        return moment.strftime("%H:%M:%S")
    if part == "iso8601":
        return moment.isoformat()
    if part == "std11":
        return moment.strftime("%a, %d %b %Y %H:%M:%S %z")
    if part == "zone":
        return moment.strftime("%z")
    if part == "weekday":
        return str((moment.weekday() + 1) % 7)
    raise SieveRuntimeError(f"unknown date part {part}")


def _zone(text: str) -> datetime.timezone | None:
    found = re.fullmatch(r"([+-])(\d\d)(\d\d)", text.strip())
    if not found:
        return None
    offset = datetime.timedelta(hours=int(found.group(2)), minutes=int(found.group(3)))
    return datetime.timezone(offset if found.group(1) == "+" else -offset)


def _test(state: _State, test: Test) -> bool:
    state.step()
    name, tagged, positional = test.name, test.tagged, test.positional
    if name == "true":
        return True
    if name == "false":
        return False
    if name == "not":
        return not _test(state, test.tests[0])
    if name == "allof":
        return all(_test(state, inner) for inner in test.tests)
    if name == "anyof":
        return any(_test(state, inner) for inner in test.tests)
    if name == "size":
        limit = positional[0]
        assert isinstance(limit, int)
        return (
            state.message.size > limit
            if "over" in tagged
            else state.message.size < limit
        )
    if name == "exists":
        return all(
            state.message.header(header) for header in state.strings(positional[0])
        )
    if name == "header":
        values = [
            value
            for header in state.strings(positional[0])
            for value in _indexed(state.message.header(header), tagged)
        ]
        return _match(state, tagged, values, state.strings(positional[1]))
    if name == "address":
        values = []
        for header in state.strings(positional[0]):
            if header.lower() not in _ADDRESS_HEADERS:
                continue
            for addresses in _indexed(state.message.addresses(header), tagged):
                for address in addresses:
                    part = _address_part(address, tagged)
                    if part is not None:
                        values.append(part)
        return _match(state, tagged, values, state.strings(positional[1]))
    if name == "envelope":
        values = []
        for part_name in state.strings(positional[0]):
            part_name = part_name.lower()
            parts: dict[str, str | None] = {
                "from": state.envelope.sender,
                "to": state.envelope.recipient,
                "auth": state.envelope.auth,
            }
            found = parts.get(part_name)
            if found is None:
                continue
            part = _address_part(found, tagged) if found else ""
            if part is not None:
                values.append(part)
        return _match(state, tagged, values, state.strings(positional[1]))
    if name == "string":
        return _match(
            state, tagged, state.strings(positional[0]), state.strings(positional[1])
        )
    if name == "hasflag":
        variable = state.string(positional[0]).lower() if len(positional) == 2 else ""
        flags = sorted(
            state.flags.get(variable, set()) if variable else state.flags[""]
        )
        return _match(state, tagged, flags, state.strings(positional[-1]))
    if name == "body":
        if "raw" in tagged:
            texts = [state.message.raw_body.decode("utf-8", "replace")]
        else:
            types = (
                tuple(t.lower() for t in state.strings(tagged["content"]))
                if "content" in tagged
                else ("text",)
            )
            texts = state.message.parts(types)
        keys = state.strings(positional[0])
        if (
            "matches" not in tagged
            and "is" not in tagged
            and "count" not in tagged
            and "value" not in tagged
        ):
            tagged = {**tagged, "contains": None}
        return _match(state, tagged, texts, keys)
    if name in ("date", "currentdate"):
        part = state.string(positional[-2]).lower()
        if part not in DATE_PARTS:
            raise SieveRuntimeError(f"unknown date part {part}")
        zone = _zone(state.string(tagged["zone"])) if "zone" in tagged else None
        moments = []
        if name == "currentdate":
            moments.append(state.now.astimezone(zone or datetime.timezone.utc))
        else:
            for value in _indexed(
                state.message.header(state.string(positional[0])), tagged
            ):
                try:
                    moment = parsedate_to_datetime(value)
                except (TypeError, ValueError, IndexError):
                    continue
                if moment.tzinfo is None:
                    moment = moment.replace(tzinfo=datetime.timezone.utc)
                moments.append(
                    moment
                    if "originalzone" in tagged
                    else moment.astimezone(zone or datetime.timezone.utc)
                )
        return _match(
            state,
            tagged,
            [_date_part(moment, part) for moment in moments],
            state.strings(positional[-1]),
        )
    if name == "duplicate":
        handle = state.string(tagged.get("handle"))
        if "uniqueid" in tagged:
            unique = state.string(tagged["uniqueid"])
        else:
            header = (
                state.string(tagged["header"]) if "header" in tagged else "message-id"
            )
            unique = (state.message.first(header) or "").strip()
        if not unique:
            return False
        seconds = tagged.get("seconds")
        period = seconds if isinstance(seconds, int) else 7 * 86400
        seen = state.seen(handle, unique, period) if state.seen is not None else False
        state.outcome.duplicates.append((handle, unique, period))
        return seen
    raise SieveRuntimeError(f"unknown test {name}")


def _flag_list(values: Iterable[str]) -> set[str]:
    # RFC 5232 3: each string is a space-separated list of flags.
    return {flag for value in values for flag in value.split() if flag}


def _normal_flag(flag: str) -> str:
    # System flags are case-insensitive (RFC 3501 2.3.2); the store knows them capitalised.
    return "\\" + flag[1:].capitalize() if flag.startswith("\\") else flag


def _current_flags(state: _State, tagged: dict[str, Argument | None]) -> frozenset[str]:
    if "flags" in tagged:
        flags = _flag_list(state.strings(tagged["flags"]))
    elif "imap4flags" in state.extensions:
        flags = state.flags[""]
    else:
        flags = set()
    return frozenset(_normal_flag(flag) for flag in flags)


def _same_folder(one: str, other: str) -> bool:
    # Folder names are case-sensitive, except INBOX (RFC 3501 5.1).
    return one == other or (one.upper() == INBOX and other.upper() == INBOX)


def _place(state: _State, placement: Placement) -> None:
    for index, existing in enumerate(state.outcome.placements):
        if _same_folder(existing.folder, placement.folder):
            # RFC 5228 4.1: filing into one folder twice stores one copy; flags add up.
            state.outcome.placements[index] = Placement(existing.folder, existing.flags | placement.flags, existing.create or placement.create)
            return
    state.outcome.placements.append(placement)


def _set_modifiers(value: str, tagged: dict[str, Argument | None]) -> str:
    # RFC 5229 4: applied in precedence order, lower/upper (40) before lowerfirst/upperfirst (30) ...
    if "lower" in tagged:
        value = value.lower()
    if "upper" in tagged:
        value = value.upper()
    if "lowerfirst" in tagged:
        value = value[:1].lower() + value[1:]
    if "upperfirst" in tagged:
        value = value[:1].upper() + value[1:]
    if "quotewildcard" in tagged:
        value = re.sub(r"([*?\\])", r"\\\1", value)
    if "length" in tagged:
        value = str(len(value))
    return value


def _commands(state: _State, commands: list[Command]) -> None:
    skip_rest_of_chain = False
    for command in commands:
        name = command.name
        if name in ("elsif", "else"):
            if skip_rest_of_chain:
                continue
        else:
            skip_rest_of_chain = False
        state.step()
        tagged, positional = command.tagged, command.positional
        if name in ("if", "elsif", "else"):
            if name == "else" or _test(state, command.tests[0]):
                skip_rest_of_chain = True
                assert command.block is not None
                _commands(state, command.block)
            continue
        if name == "require":
            names = positional[0]
            assert isinstance(names, StringList)
            state.extensions.update(names.values)
        elif name == "stop":
            raise _Stop()
        elif name == "return":
            raise _Return()
        elif name == "keep":
            _refuse_with_reject(state, "keep")
            state.implicit_keep = False
            _place(
                state, Placement(state.default_folder, _current_flags(state, tagged))
            )
        elif name == "discard":
            state.implicit_keep = False
        elif name == "fileinto":
            _refuse_with_reject(state, "fileinto")
            folder = state.string(positional[0])
            if not folder or "\x00" in folder:
                raise SieveRuntimeError("fileinto needs a folder name")
            if "copy" not in tagged:
                state.implicit_keep = False
            _place(
                state,
                Placement(folder, _current_flags(state, tagged), "create" in tagged),
            )
        elif name == "redirect":
            address = state.string(positional[0]).strip()
            if "@" not in address or any(c in address for c in "<>\r\n ,"):
                raise SieveRuntimeError(f"redirect to a bad address {address!r}")
            if address.lower() not in (r.lower() for r in state.outcome.redirects):
                if len(state.outcome.redirects) >= state.limits.max_redirects:
                    raise SieveRuntimeError(
                        f"more than {state.limits.max_redirects} redirects"
                    )
                state.outcome.redirects.append(address)
            if "copy" not in tagged:
                state.implicit_keep = False
        elif name in ("reject", "ereject"):
            if state.outcome.reject is not None:
                raise SieveRuntimeError("more than one reject (RFC 5429 2.1)")
            if state.outcome.vacation is not None or state.outcome.placements:
                raise SieveRuntimeError(
                    f"{name} with keep, fileinto or vacation (RFC 5429 2.1)"
                )
            state.outcome.reject = state.string(positional[0]) or "Message rejected"
            state.outcome.ereject = name == "ereject"
            state.implicit_keep = False
        elif name in ("setflag", "addflag", "removeflag"):
            variable = (
                state.string(positional[0]).lower() if len(positional) == 2 else ""
            )
            flags = _flag_list(state.strings(positional[-1]))
            current = state.flags.setdefault(variable, set())
            if name == "setflag":
                current.clear()
                current.update(flags)
            elif name == "addflag":
                current.update(flags)
            else:
                current.difference_update(flags)
        elif name == "set":
            state.set_variable(
                state.string(positional[0]),
                _set_modifiers(state.string(positional[1]), tagged),
            )
        elif name == "global":
            state.global_names.update(
                name.lower() for name in state.strings(positional[0])
            )
        elif name == "vacation":
            if state.outcome.reject is not None:
                raise SieveRuntimeError("vacation with reject (RFC 5429 2.1)")
            if state.outcome.vacation is not None:
                raise SieveRuntimeError("more than one vacation (RFC 5230 4.7)")
            reason = state.string(positional[0])
            days = tagged.get("days")
            subject = state.string(tagged["subject"]) if "subject" in tagged else None
            from_address = state.string(tagged["from"]) if "from" in tagged else None
            handle = state.string(tagged["handle"]) if "handle" in tagged else ""
            if not handle:
                # RFC 5230 4.2: without :handle, the reply's content identifies it.
                handle = hashlib.sha256(
                    "\0".join(
                        (
                            reason,
                            subject or "",
                            from_address or "",
                            str("mime" in tagged),
                        )
                    ).encode()
                ).hexdigest()[:32]
            state.outcome.vacation = Vacation(
                reason,
                min(max(days if isinstance(days, int) else 7, 1), 365),
                subject,
                from_address,
                tuple(state.strings(tagged.get("addresses"))),
                "mime" in tagged,
                handle,
            )
        elif name == "include":
            _include(state, command)
        else:
            raise SieveRuntimeError(f"unknown command {name}")


def _refuse_with_reject(state: _State, name: str) -> None:
    if state.outcome.reject is not None:
        raise SieveRuntimeError(f"{name} after reject (RFC 5429 2.1)")


def _include(state: _State, command: Command) -> None:
    kind = "global" if "global" in command.tagged else "personal"
    script = state.string(command.positional[0])
    if state.loader is None:
        raise SieveRuntimeError("include is not available here")
    if "once" in command.tagged and (kind, script) in state.included:
        return
    if state.depth >= state.limits.max_include_depth:
        raise SieveRuntimeError(
            f"includes nested deeper than {state.limits.max_include_depth}"
        )
    try:
        commands = state.loader(kind, script)
    except SieveRuntimeError:
        if "optional" in command.tagged:
            return
        raise
    state.included.add((kind, script))
    # RFC 6609 3.3: an included script has its own variables, except those declared global.
    saved_variables, saved_extensions = state.variables, state.extensions
    state.variables, state.extensions = {}, set()
    state.depth += 1
    try:
        _commands(state, commands)
    except _Return:
        pass
    finally:
        state.depth -= 1
        state.variables, state.extensions = saved_variables, saved_extensions


def run(
    scripts: list[list[Command]],
    message: MessageView,
    envelope: Envelope,
    default_folder: str = INBOX,
    limits: SieveLimits = SieveLimits(),
    loader: IncludeLoader | None = None,
    seen: SeenCheck | None = None,
    now: datetime.datetime | None = None,
) -> Outcome:
    """
    Run C{scripts} in turn (a global "before" script, the user's, a global
    "after" one: one run, sharing its actions; C{stop} ends them all) for one recipient.
    Blocking only through C{loader} and C{seen}; call it on a worker thread.
    """
    state = _State(
        message,
        envelope,
        default_folder,
        limits,
        loader,
        seen,
        now or datetime.datetime.now(datetime.timezone.utc),
    )
    try:
        for commands in scripts:
            state.variables, state.extensions = {}, set()
            try:
                _commands(state, commands)
            except _Return:
                pass
    except _Stop:
        pass
    except (SieveRuntimeError, RecursionError) as e:
        return Outcome(
            placements=[Placement(default_folder)],
            errors=[str(e)],
            steps=state.outcome.steps,
        )
    outcome = state.outcome
    if state.implicit_keep:
        _place(state, Placement(default_folder, _current_flags(state, {})))
    return outcome
