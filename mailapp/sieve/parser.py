"""
RFC 5228's grammar, read into a tree of L{Command} and L{Test} nodes.

A small recursive-descent parser of our own rather than sievelib's: its
grammar is a dozen productions, sievelib's parser reports a line but no
column and checks arguments against its own extension registry, which
would then have to agree with what L{mailapp.sieve.interpreter} runs. Here
one table (L{mailapp.sieve.commands}) says what every command and test
takes, and the parser, the checker and the interpreter all read it.

Every problem is a L{SieveSyntaxError} with the line and column where it
starts (both from 1), which ManageSieve's PUTSCRIPT and CHECKSCRIPT and
the CLI report as they are.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Union

__all__ = ["Command", "SieveSyntaxError", "StringList", "Tag", "Test", "parse"]

#: Bounds on what a script may contain: a hostile upload costs at most this to read.
MAX_SCRIPT_BYTES = 512 * 1024
MAX_NESTING = 32


class SieveSyntaxError(Exception):
    """A script that cannot run, with where: C{line} and C{column} count from 1."""

    def __init__(self, message: str, line: int, column: int) -> None:
        super().__init__(f"line {line}, column {column}: {message}")
        self.message = message
        self.line = line
        self.column = column


@dataclass(frozen=True)
class Tag:
    """A tagged argument such as C{:contains} (C{name} without the colon, lower case)."""

    name: str
    line: int = 0
    column: int = 0


@dataclass(frozen=True)
class StringList:
    """A string or a string list; C{single} says it was written as one string."""

    values: tuple[str, ...]
    single: bool


Argument = Union[Tag, StringList, int]


@dataclass
class Test:
    name: str
    arguments: list[Argument]
    tests: list["Test"]
    line: int
    column: int
    #: Filled by the checker (L{mailapp.sieve.commands.check}): tags and their values, and the positional arguments.
    tagged: dict[str, Argument | None] = field(default_factory=dict)
    positional: list[Argument] = field(default_factory=list)


@dataclass
class Command:
    name: str
    arguments: list[Argument]
    tests: list[Test]
    block: list["Command"] | None
    line: int
    column: int
    #: Filled by the checker (L{mailapp.sieve.commands.check}): tags and their values, and the positional arguments.
    tagged: dict[str, Argument | None] = field(default_factory=dict)
    positional: list[Argument] = field(default_factory=list)


@dataclass(frozen=True)
class _Token:
    kind: str  # identifier, tag, number, string, multiline, punct, end
    value: str | int
    line: int
    column: int


_QUANTIFIERS = {"K": 1024, "M": 1024 * 1024, "G": 1024 * 1024 * 1024}


class _Lexer:
    def __init__(self, text: str) -> None:
        self.text = text
        self.at = 0
        self.line = 1
        self.line_start = 0

    def error(self, message: str, at: int | None = None) -> SieveSyntaxError:
        at = self.at if at is None else at
        line = self.text.count("\n", 0, at) + 1
        column = at - (self.text.rfind("\n", 0, at) + 1) + 1
        return SieveSyntaxError(message, line, column)

    def _where(self, at: int) -> tuple[int, int]:
        line = self.text.count("\n", 0, at) + 1
        return line, at - (self.text.rfind("\n", 0, at) + 1) + 1

    def tokens(self) -> list[_Token]:
        text = self.text
        out: list[_Token] = []
        n = len(text)
        while True:
            self._skip_space()
            if self.at >= n:
                line, column = self._where(self.at)
                out.append(_Token("end", "", line, column))
                return out
            start = self.at
            line, column = self._where(start)
            char = text[start]
            if char in ";,()[]{}":
                self.at += 1
                out.append(_Token("punct", char, line, column))
            elif char == '"':
                out.append(_Token("string", self._quoted(), line, column))
            elif char == ":":
                self.at += 1
                name = self._identifier()
                if not name:
                    raise self.error("a tag needs a name after ':'", start)
                out.append(_Token("tag", name.lower(), line, column))
            elif char.isdigit():
                end = start
                while end < n and text[end].isdigit():
                    end += 1
                number = int(text[start:end])
                if end < n and text[end].upper() in _QUANTIFIERS:
                    number *= _QUANTIFIERS[text[end].upper()]
                    end += 1
                self.at = end
                out.append(_Token("number", number, line, column))
            elif char.isalpha() or char == "_":
                name = self._identifier()
                if name.lower() == "text" and self.at < n and text[self.at] == ":":
                    self.at += 1
                    out.append(_Token("string", self._multiline(start), line, column))
                else:
                    out.append(_Token("identifier", name.lower(), line, column))
            else:
                raise self.error(f"unexpected character {char!r}", start)

    def _identifier(self) -> str:
        text, start = self.text, self.at
        if start < len(text) and (text[start].isalpha() or text[start] == "_"):
            end = start + 1
            while end < len(text) and (text[end].isalnum() or text[end] == "_"):
                end += 1
            self.at = end
            return text[start:end]
        return ""

    def _skip_space(self) -> None:
        text, n = self.text, len(self.text)
        while self.at < n:
            char = text[self.at]
            if char in " \t\r\n":
                self.at += 1
            elif char == "#":
                end = text.find("\n", self.at)
                self.at = n if end < 0 else end + 1
            elif text.startswith("/*", self.at):
                end = text.find("*/", self.at + 2)
                if end < 0:
                    raise self.error("unterminated comment", self.at)
                self.at = end + 2
            else:
                return

    def _quoted(self) -> str:
        text, start = self.text, self.at
        self.at += 1
        parts: list[str] = []
        while True:
            if self.at >= len(text):
                raise self.error("unterminated string", start)
            char = text[self.at]
            if char == '"':
                self.at += 1
                return "".join(parts)
            if char == "\\" and self.at + 1 < len(text):
                # RFC 5228 2.4.2: \" and \\ are escapes; any other backslash is dropped.
                parts.append(text[self.at + 1])
                self.at += 2
                continue
            parts.append(char)
            self.at += 1

    def _multiline(self, start: int) -> str:
        text = self.text
        # After "text:": blanks and an optional hash comment, then the line break.
        while self.at < len(text) and text[self.at] in " \t":
            self.at += 1
        if self.at < len(text) and text[self.at] == "#":
            end = text.find("\n", self.at)
            self.at = len(text) if end < 0 else end
        if text.startswith("\r\n", self.at):
            self.at += 2
        elif text.startswith("\n", self.at):
            self.at += 1
        else:
            raise self.error("'text:' must be followed by a line break", self.at)
        lines: list[str] = []
        while True:
            if self.at >= len(text):
                raise self.error(
                    "multi-line string without its closing '.' line", start
                )
            end = text.find("\n", self.at)
            end = len(text) if end < 0 else end + 1
            line = text[self.at : end]
            self.at = end
            if line.rstrip("\r\n") == ".":
                return "".join(lines)
            if line.startswith(".."):
                line = line[1:]
            lines.append(line.replace("\r\n", "\n").replace("\n", "\r\n"))


class _Parser:
    def __init__(self, tokens: list[_Token]) -> None:
        self.tokens = tokens
        self.at = 0

    def peek(self) -> _Token:
        return self.tokens[self.at]

    def take(self) -> _Token:
        token = self.tokens[self.at]
        self.at += 1
        return token

    def punct(self, char: str) -> bool:
        token = self.peek()
        if token.kind == "punct" and token.value == char:
            self.at += 1
            return True
        return False

    def error(self, message: str, token: _Token | None = None) -> SieveSyntaxError:
        token = token or self.peek()
        return SieveSyntaxError(message, token.line, token.column)

    def describe(self, token: _Token) -> str:
        if token.kind == "end":
            return "the end of the script"
        if token.kind == "string":
            return "a string"
        return repr(token.value if token.kind != "tag" else f":{token.value}")

    def commands(self, depth: int) -> list[Command]:
        commands: list[Command] = []
        while True:
            token = self.peek()
            if token.kind == "end" or (token.kind == "punct" and token.value == "}"):
                return commands
            commands.append(self.command(depth))

    def command(self, depth: int) -> Command:
        token = self.take()
        if token.kind != "identifier":
            raise self.error(f"expected a command, found {self.describe(token)}", token)
        arguments, tests = self.arguments(depth)
        block = None
        if self.punct("{"):
            if depth >= MAX_NESTING:
                raise self.error("blocks nested too deeply", token)
            block = self.commands(depth + 1)
            if not self.punct("}"):
                raise self.error(f"expected '}}', found {self.describe(self.peek())}")
        elif not self.punct(";"):
            raise self.error(
                f"expected ';' after {token.value!r}, found {self.describe(self.peek())}"
            )
        return Command(
            str(token.value), arguments, tests, block, token.line, token.column
        )

    def arguments(self, depth: int) -> tuple[list[Argument], list[Test]]:
        arguments: list[Argument] = []
        while True:
            token = self.peek()
            if token.kind == "tag":
                self.at += 1
                arguments.append(Tag(str(token.value), token.line, token.column))
            elif token.kind == "number":
                self.at += 1
                arguments.append(int(token.value))
            elif token.kind == "string":
                self.at += 1
                arguments.append(StringList((str(token.value),), True))
            elif token.kind == "punct" and token.value == "[":
                self.at += 1
                arguments.append(self.string_list())
            else:
                break
        tests: list[Test] = []
        token = self.peek()
        if token.kind == "identifier":
            tests.append(self.test(depth))
        elif token.kind == "punct" and token.value == "(":
            self.at += 1
            tests.append(self.test(depth))
            while self.punct(","):
                tests.append(self.test(depth))
            if not self.punct(")"):
                raise self.error(
                    f"expected ',' or ')' in a test list, found {self.describe(self.peek())}"
                )
        return arguments, tests

    def string_list(self) -> StringList:
        values = []
        while True:
            token = self.take()
            if token.kind != "string":
                raise self.error(
                    f"expected a string in a string list, found {self.describe(token)}",
                    token,
                )
            values.append(str(token.value))
            if self.punct("]"):
                return StringList(tuple(values), False)
            if not self.punct(","):
                raise self.error(
                    f"expected ',' or ']' in a string list, found {self.describe(self.peek())}"
                )

    def test(self, depth: int) -> Test:
        token = self.take()
        if token.kind != "identifier":
            raise self.error(f"expected a test, found {self.describe(token)}", token)
        if depth >= MAX_NESTING:
            raise self.error("tests nested too deeply", token)
        arguments, tests = self.arguments(depth + 1)
        return Test(str(token.value), arguments, tests, token.line, token.column)


def parse(text: str) -> list[Command]:
    """The commands of C{text}, or L{SieveSyntaxError} at the first problem (grammar only: L{commands.check} does the rest)."""
    if len(text.encode("utf-8", "surrogatepass")) > MAX_SCRIPT_BYTES:
        raise SieveSyntaxError(f"script larger than {MAX_SCRIPT_BYTES} bytes", 1, 1)
    parser = _Parser(_Lexer(text).tokens())
    commands = parser.commands(0)
    token = parser.peek()
    if token.kind != "end":
        raise parser.error("unexpected '}'", token)
    return commands
