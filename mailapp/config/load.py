"""
Reading the file: L{parse} (a pure function of the text) and L{load} (which
also checks what only the file system can tell: do the TLS files exist?).
Each section is read by its L{schema.Section}, in the file's order of
concerns (server, domains, tls, listeners, limits, relay, security, dkim,
authentication, dnsbl, greylisting, postscreen), then
the checks that span sections (listener budgets; TLS files, in L{load}).
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any, Final

from mailapp.config.authentication import AUTHENTICATION, AuthenticationConfig
from mailapp.config.postscreen import DNSBL, GREYLISTING, POSTSCREEN, DNSBLConfig, GreylistingConfig, PostscreenConfig
from mailapp.config.spam import SPAM, SpamConfig
from mailapp.config.listeners import check_budgets, read_listeners
from mailapp.config.relay import RELAY, RelayConfig
from mailapp.config.schema import ConfigError, Reader, quote_key
from mailapp.config.sections import (
    DKIM,
    DOMAINS,
    LIMITS,
    SECURITY,
    SERVER,
    TLS,
    Config,
    DkimConfig,
    Limits,
    SecurityConfig,
    TLSConfig,
)

__all__ = ["load", "parse"]

_SECTIONS: Final = (
    "server", "domains", "tls", "listeners", "limits", "relay", "security", "dkim", "authentication",
    "dnsbl", "greylisting", "postscreen", "spam",
)


def parse(text: str, path: Path, *, base_dir: Path | None = None) -> Config:
    """
    Turn the text of a config file into a :class:`Config`, touching no file.

    @param path: the file the text came from, used in problem messages and
        kept as ``Config.path``.
    @param base_dir: what relative paths (``state_dir``, TLS files) resolve
        against; the current working directory when ``None``.
    @raise ConfigError: listing every problem found.
    """
    return _interpret(text, Path(path), base_dir, check_files=False)


def load(path: Path | str, *, base_dir: Path | None = None) -> Config:
    """
    Read and parse the config file at ``path``, and check the files it names
    (the TLS certificate and key, unless they are to be generated).

    @raise ConfigError: if the file cannot be read, or listing every problem
        in it.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        reason = error.strerror or str(error)
        raise ConfigError([f"{path}: cannot read config file: {reason}"]) from None
    except UnicodeDecodeError as error:
        raise ConfigError([f"{path}: config file is not UTF-8: {error.reason}"]) from None
    return _interpret(text, path, base_dir, check_files=True)


def _interpret(text: str, path: Path, base_dir: Path | None, *, check_files: bool) -> Config:
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise ConfigError([f"{path}: {_describe_syntax_error(error)}"]) from None
    env: dict[str, Any] = {"base": base_dir if base_dir is not None else Path.cwd()}
    reader = Reader(path)
    reader.only(document, _SECTIONS, "")

    def section(name: str) -> dict[str, Any]:
        return reader.table(document, name, name)

    server, _ = SERVER.read(reader, section("server"), "server", env)
    env["state_dir"] = server["state_dir"]
    domains, _ = DOMAINS.read(reader, section("domains"), "domains", env)
    tls = TLS.build(reader, section("tls"), "tls", env)
    listeners = read_listeners(reader, section("listeners"), env)
    limits = LIMITS.build(reader, section("limits"), "limits", env)
    relay = RELAY.build(reader, section("relay"), "relay", env)
    security = SECURITY.build(reader, section("security"), "security", env)
    dkim = DKIM.build(reader, section("dkim"), "dkim", env)
    authentication = AUTHENTICATION.build(reader, section("authentication"), "authentication", env)
    dnsbl = DNSBL.build(reader, section("dnsbl"), "dnsbl", env)
    greylisting = GREYLISTING.build(reader, section("greylisting"), "greylisting", env)
    postscreen = POSTSCREEN.build(reader, section("postscreen"), "postscreen", env)
    spam = SPAM.build(reader, section("spam"), "spam", env)
    # These sections have no required key, so each is built.
    assert isinstance(tls, TLSConfig) and isinstance(limits, Limits)
    assert isinstance(relay, RelayConfig) and isinstance(security, SecurityConfig)
    assert isinstance(dkim, DkimConfig) and isinstance(authentication, AuthenticationConfig)
    assert isinstance(dnsbl, DNSBLConfig) and isinstance(postscreen, PostscreenConfig)
    assert isinstance(greylisting, GreylistingConfig)
    assert isinstance(spam, SpamConfig)

    config = Config(
        path=path,
        hostname=server["hostname"] or "",
        state_dir=server["state_dir"],
        local_domains=domains["local"],
        tls=tls,
        listeners=listeners,
        limits=limits,
        sync=server["sync"],
        log_format=server["log_format"],
        log_file_max_bytes=server["log_file_max_bytes"],
        log_file_keep=server["log_file_keep"],
        workers=server["workers"],
        relay=relay,
        security=security,
        dkim=dkim,
        authentication=authentication,
        dnsbl=dnsbl,
        greylisting=greylisting,
        postscreen=postscreen,
        spam=spam,
    )
    check_budgets(reader, config)
    if check_files:
        _check_tls_files(reader, config)
    if reader.problems:
        raise ConfigError(reader.problems)
    return config


def _check_tls_files(reader: Reader, config: Config) -> None:
    """The certificate and key must exist when a listener needs them and nothing will generate them."""
    if not config.needs_tls:
        return
    for name, pair in config.tls.sni.items():
        for key, file in ((f"tls.sni.{quote_key(name)}.cert", pair.cert), (f"tls.sni.{quote_key(name)}.key", pair.key)):
            if not file.is_file():
                reader.problem(key, f"file {str(file)!r} does not exist")
    if config.tls.generate_self_signed:
        return
    for key, file in (("tls.cert", config.tls.cert), ("tls.key", config.tls.key)):
        if not file.is_file():
            reader.problem(
                key,
                f"file {str(file)!r} does not exist (a listener uses TLS and "
                "tls.generate_self_signed is false)",
            )


_AT_LINE: Final = re.compile(r"\s*\(at line (\d+), column (\d+)\)$")


def _describe_syntax_error(error: tomllib.TOMLDecodeError) -> str:
    message = str(error)
    match = _AT_LINE.search(message)
    if match is None:
        return f"TOML syntax error: {message}"
    return f"line {match.group(1)}, column {match.group(2)}: TOML syntax error: {message[: match.start()]}"
