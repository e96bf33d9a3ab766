"""
What every command and test takes, once: the checker below and the
interpreter both read this table.

Checking happens when a script is compiled (uploaded, or first run): an
unknown command, a missing C{require}, a wrong argument, each is a
L{SieveSyntaxError} with its line and column, so that PUTSCRIPT refuses
what would only fail at delivery.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from mailapp.sieve.parser import (
    Argument,
    Command,
    SieveSyntaxError,
    StringList,
    Tag,
    Test,
)

__all__ = ["EXTENSIONS", "check"]

#: The extensions a script may require (RFC 5228 3.2), as ManageSieve's SIEVE capability lists them.
EXTENSIONS: tuple[str, ...] = (
    "fileinto",
    "reject",
    "ereject",
    "envelope",
    "body",
    "imap4flags",
    "variables",
    "relational",
    "subaddress",
    "copy",
    "mailbox",
    "vacation",
    "include",
    "date",
    "index",
    "duplicate",
    "comparator-i;ascii-numeric",
)
#: Required without saying (RFC 5228 2.7.3).
_IMPLICIT = {"comparator-i;octet", "comparator-i;ascii-casemap"}
COMPARATORS = ("i;octet", "i;ascii-casemap", "i;ascii-numeric")

STRING, STRINGS, NUMBER = "string", "string-list", "number"
MATCH_TAGS = {
    "is": None,
    "contains": None,
    "matches": None,
    "count": "relational",
    "value": "relational",
}
ADDRESS_PARTS = {
    "all": None,
    "localpart": None,
    "domain": None,
    "user": "subaddress",
    "detail": "subaddress",
}
RELATIONS = ("gt", "ge", "lt", "le", "eq", "ne")


@dataclass(frozen=True)
class Spec:
    #: The extension that must be required first, or None for the base language.
    extension: str | None = None
    #: tag -> (the kind of its value or None, the extension it needs or None)
    tags: dict[str, tuple[str | None, str | None]] = field(default_factory=dict)
    positional: tuple[str, ...] = ()
    #: How many leading positional arguments may be left out (setflag's variable name).
    optional_leading: int = 0
    #: "none", "one" or "list" for tests.
    tests: str = "none"
    block: bool = False
    match: bool = False
    address: bool = False


def _with(
    base: dict[str, tuple[str | None, str | None]],
    **more: tuple[str | None, str | None],
) -> dict[str, tuple[str | None, str | None]]:
    return {**base, **more}


_MATCH: dict[str, tuple[str | None, str | None]] = {
    "is": (None, None),
    "contains": (None, None),
    "matches": (None, None),
    "count": (STRING, "relational"),
    "value": (STRING, "relational"),
    "comparator": (STRING, None),
}
_ADDRESS = _with(
    _MATCH, **{name: (None, extension) for name, extension in ADDRESS_PARTS.items()}
)
_INDEX: dict[str, tuple[str | None, str | None]] = {
    "index": (NUMBER, "index"),
    "last": (None, "index"),
}
_FLAGS: dict[str, tuple[str | None, str | None]] = {"flags": (STRINGS, "imap4flags")}

COMMANDS: dict[str, Spec] = {
    "require": Spec(positional=(STRINGS,)),
    "if": Spec(tests="one", block=True),
    "elsif": Spec(tests="one", block=True),
    "else": Spec(block=True),
    "stop": Spec(),
    "keep": Spec(tags=_FLAGS),
    "discard": Spec(),
    "fileinto": Spec(
        "fileinto",
        tags=_with(_FLAGS, copy=(None, "copy"), create=(None, "mailbox")),
        positional=(STRING,),
    ),
    "redirect": Spec(tags={"copy": (None, "copy")}, positional=(STRING,)),
    "reject": Spec("reject", positional=(STRING,)),
    "ereject": Spec("ereject", positional=(STRING,)),
    "setflag": Spec("imap4flags", positional=(STRING, STRINGS), optional_leading=1),
    "addflag": Spec("imap4flags", positional=(STRING, STRINGS), optional_leading=1),
    "removeflag": Spec("imap4flags", positional=(STRING, STRINGS), optional_leading=1),
    "set": Spec(
        "variables",
        tags={
            name: (None, None)
            for name in (
                "lower",
                "upper",
                "lowerfirst",
                "upperfirst",
                "quotewildcard",
                "length",
            )
        },
        positional=(STRING, STRING),
    ),
    "vacation": Spec(
        "vacation",
        tags={
            "days": (NUMBER, None),
            "subject": (STRING, None),
            "from": (STRING, None),
            "addresses": (STRINGS, None),
            "mime": (None, None),
            "handle": (STRING, None),
        },
        positional=(STRING,),
    ),
    "include": Spec(
        "include",
        tags={
            "personal": (None, None),
            "global": (None, None),
            "once": (None, None),
            "optional": (None, None),
        },
        positional=(STRING,),
    ),
    "return": Spec("include"),
    "global": Spec("include", positional=(STRINGS,)),
}

TESTS: dict[str, Spec] = {
    "address": Spec(
        tags=_with(_ADDRESS, **_INDEX),
        positional=(STRINGS, STRINGS),
        match=True,
        address=True,
    ),
    "envelope": Spec(
        "envelope",
        tags=_ADDRESS,
        positional=(STRINGS, STRINGS),
        match=True,
        address=True,
    ),
    "header": Spec(
        tags=_with(_MATCH, **_INDEX), positional=(STRINGS, STRINGS), match=True
    ),
    "exists": Spec(positional=(STRINGS,)),
    "size": Spec(
        tags={"over": (None, None), "under": (None, None)}, positional=(NUMBER,)
    ),
    "allof": Spec(tests="list"),
    "anyof": Spec(tests="list"),
    "not": Spec(tests="one"),
    "true": Spec(),
    "false": Spec(),
    "body": Spec(
        "body",
        tags=_with(
            _MATCH, raw=(None, None), content=(STRINGS, None), text=(None, None)
        ),
        positional=(STRINGS,),
        match=True,
    ),
    "string": Spec("variables", tags=_MATCH, positional=(STRINGS, STRINGS), match=True),
    "hasflag": Spec(
        "imap4flags",
        tags=_MATCH,
        positional=(STRINGS, STRINGS),
        optional_leading=1,
        match=True,
    ),
    "date": Spec(
        "date",
        tags=_with(_MATCH, **_INDEX, zone=(STRING, None), originalzone=(None, None)),
        positional=(STRING, STRING, STRINGS),
        match=True,
    ),
    "currentdate": Spec(
        "date",
        tags=_with(_MATCH, zone=(STRING, None)),
        positional=(STRING, STRINGS),
        match=True,
    ),
    "duplicate": Spec(
        "duplicate",
        tags={
            "handle": (STRING, None),
            "header": (STRING, None),
            "uniqueid": (STRING, None),
            "seconds": (NUMBER, None),
            "last": (None, None),
        },
    ),
}

_VARIABLE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
DATE_PARTS = (
    "year",
    "month",
    "day",
    "date",
    "julian",
    "hour",
    "minute",
    "second",
    "time",
    "iso8601",
    "std11",
    "zone",
    "weekday",
)


def _where(node: Command | Test) -> tuple[int, int]:
    return node.line, node.column


def _kind(argument: Argument) -> str:
    if isinstance(argument, int) and not isinstance(argument, bool):
        return NUMBER
    if isinstance(argument, StringList):
        return STRING if argument.single else STRINGS
    return "tag"


def _fits(argument: Argument, kind: str) -> bool:
    actual = _kind(argument)
    return actual == kind or (kind == STRINGS and actual == STRING)


class _Checker:
    def __init__(self) -> None:
        self.required: set[str] = set(_IMPLICIT)
        self.seen_other = False

    def need(
        self, extension: str | None, node: Command | Test | Tag, what: str
    ) -> None:
        if extension is not None and extension not in self.required:
            raise SieveSyntaxError(
                f'{what} needs require "{extension}"', node.line, node.column
            )

    def arguments(
        self, node: Command | Test, spec: Spec
    ) -> tuple[dict[str, Argument | None], list[Argument]]:
        tagged: dict[str, Argument | None] = {}
        positional: list[Argument] = []
        arguments = list(node.arguments)
        index = 0
        while index < len(arguments):
            argument = arguments[index]
            index += 1
            if not isinstance(argument, Tag):
                positional.append(argument)
                continue
            if positional:
                raise SieveSyntaxError(
                    f"tag :{argument.name} after a positional argument of {node.name}",
                    argument.line,
                    argument.column,
                )
            if argument.name not in spec.tags:
                raise SieveSyntaxError(
                    f"{node.name} has no tag :{argument.name}",
                    argument.line,
                    argument.column,
                )
            value_kind, extension = spec.tags[argument.name]
            self.need(extension, argument, f":{argument.name}")
            group = _group(argument.name)
            if any(_group(name) == group for name in tagged):
                raise SieveSyntaxError(
                    f"{node.name} takes only one {group} tag",
                    argument.line,
                    argument.column,
                )
            value: Argument | None = None
            if value_kind is not None:
                if index >= len(arguments) or not _fits(arguments[index], value_kind):
                    raise SieveSyntaxError(
                        f":{argument.name} needs a {value_kind}",
                        argument.line,
                        argument.column,
                    )
                value = arguments[index]
                index += 1
            tagged[argument.name] = value
        expected = spec.positional
        if (
            spec.optional_leading
            and len(positional) == len(expected) - spec.optional_leading
        ):
            expected = expected[spec.optional_leading :]
        if len(positional) != len(expected):
            raise SieveSyntaxError(
                f"{node.name} takes {len(spec.positional)} argument{'s' if len(spec.positional) != 1 else ''}, not {len(positional)}",
                *_where(node),
            )
        for argument, want in zip(positional, expected):
            if not _fits(argument, want):
                raise SieveSyntaxError(
                    f"{node.name} needs a {want} here, not a {_kind(argument)}",
                    *_where(node),
                )
        if "comparator" in tagged:
            comparator = tagged["comparator"]
            assert isinstance(comparator, StringList)
            name = comparator.values[0].lower()
            if name not in COMPARATORS:
                raise SieveSyntaxError(f"unknown comparator {name!r}", *_where(node))
            self.need(
                None
                if name in ("i;octet", "i;ascii-casemap")
                else f"comparator-{name}",
                node,
                f"comparator {name}",
            )
        for relational in ("count", "value"):
            if relational in tagged:
                relation = tagged[relational]
                assert isinstance(relation, StringList)
                if relation.values[0].lower() not in RELATIONS:
                    raise SieveSyntaxError(
                        f":{relational} takes one of {', '.join(RELATIONS)}",
                        *_where(node),
                    )
        return tagged, positional

    def tests(self, node: Command | Test, spec: Spec) -> None:
        count = len(node.tests)
        if spec.tests == "none" and count:
            raise SieveSyntaxError(f"{node.name} takes no test", *_where(node))
        if spec.tests == "one" and count != 1:
            raise SieveSyntaxError(f"{node.name} needs exactly one test", *_where(node))
        if spec.tests == "list" and count == 0:
            raise SieveSyntaxError(f"{node.name} needs a list of tests", *_where(node))
        for test in node.tests:
            self.test(test)

    def test(self, test: Test) -> None:
        spec = TESTS.get(test.name)
        if spec is None:
            raise SieveSyntaxError(f"unknown test {test.name!r}", *_where(test))
        self.need(spec.extension, test, f"the {test.name} test")
        tagged, positional = self.arguments(test, spec)
        if test.name == "date" or test.name == "currentdate":
            part = positional[-2]
            assert isinstance(part, StringList)
            if part.values[0].lower() not in DATE_PARTS:
                raise SieveSyntaxError(
                    f"unknown date part {part.values[0]!r}", *_where(test)
                )
        if "index" in tagged:
            number = tagged["index"]
            if not isinstance(number, int) or number < 1:
                raise SieveSyntaxError(":index counts from 1", *_where(test))
        if "last" in tagged and "index" not in tagged:
            raise SieveSyntaxError(":last needs :index", *_where(test))
        test.tagged, test.positional = tagged, positional
        self.tests(test, spec)

    def block(self, commands: list[Command], top: bool) -> None:
        previous: str | None = None
        for command in commands:
            spec = COMMANDS.get(command.name)
            if spec is None:
                raise SieveSyntaxError(
                    f"unknown command {command.name!r}", *_where(command)
                )
            if command.name == "require":
                if not top or self.seen_other:
                    raise SieveSyntaxError(
                        "require must come before any other command", *_where(command)
                    )
            else:
                self.seen_other = True
            self.need(spec.extension, command, f"{command.name}")
            if command.name in ("elsif", "else") and previous not in ("if", "elsif"):
                raise SieveSyntaxError(f"{command.name} without if", *_where(command))
            command.tagged, command.positional = self.arguments(command, spec)
            if command.name == "require":
                names = command.positional[0]
                assert isinstance(names, StringList)
                for name in names.values:
                    if name not in EXTENSIONS and name not in _IMPLICIT:
                        raise SieveSyntaxError(
                            f"unsupported extension {name!r}", *_where(command)
                        )
                    self.required.add(name)
            if command.name == "set":
                variable = command.positional[0]
                assert isinstance(variable, StringList)
                if not _VARIABLE_NAME.match(variable.values[0]):
                    raise SieveSyntaxError(
                        f"bad variable name {variable.values[0]!r}", *_where(command)
                    )
            if command.name == "vacation" and "days" in command.tagged:
                days = command.tagged["days"]
                if not isinstance(days, int) or days < 1:
                    raise SieveSyntaxError(":days must be at least 1", *_where(command))
            if (
                command.name == "include"
                and "personal" in command.tagged
                and "global" in command.tagged
            ):
                raise SieveSyntaxError(
                    "include takes :personal or :global, not both", *_where(command)
                )
            if spec.block and command.block is None:
                raise SieveSyntaxError(
                    f"{command.name} needs a block", *_where(command)
                )
            if not spec.block and command.block is not None:
                raise SieveSyntaxError(
                    f"{command.name} takes no block", *_where(command)
                )
            self.tests(command, spec)
            if command.block is not None:
                self.block(command.block, False)
            previous = command.name


def _group(name: str) -> str:
    if name in MATCH_TAGS:
        return "match"
    if name in ADDRESS_PARTS:
        return "address-part"
    if name in ("over", "under"):
        return "size"
    if name in ("raw", "content", "text"):
        return "body-transform"
    if name in ("header", "uniqueid"):
        return "duplicate-id"
    return name


def check(commands: list[Command]) -> set[str]:
    """Check C{commands} against the table; the extensions they require. Raises L{SieveSyntaxError}."""
    checker = _Checker()
    checker.block(commands, True)
    return checker.required
