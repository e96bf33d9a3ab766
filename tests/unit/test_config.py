"""
mailapp.config: each class of mistake is reported with the file and the
dotted key, every mistake at once, and the shipped example configs parse.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from mailapp.config import Config, ConfigError, HostPort, Limits, load, parse
from tests.paths import REPOSITORY

REPO = REPOSITORY
PATH = Path("etc/test.toml")

MINIMAL = """
[server]
hostname = "mail.example.test"
"""

LISTENER = """
[server]
hostname = "mail.example.test"

[listeners.smtp]
protocol = "smtp"
endpoint = "tcp:10025:interface=127.0.0.1"
tls = "none"
"""


def problems_of(text: str, base_dir: Path = Path("/srv/mailapp")) -> list[str]:
    with pytest.raises(ConfigError) as raised:
        parse(text, PATH, base_dir=base_dir)
    return raised.value.problems


def only_problem(text: str) -> str:
    problems = problems_of(text)
    assert len(problems) == 1, problems
    return problems[0]


def listener(**keys: object) -> str:
    lines = ["[server]", 'hostname = "mail.example.test"', "[listeners.test]"]
    values = {"protocol": "smtp", "endpoint": "tcp:10025:interface=127.0.0.1", "tls": "none", **keys}
    for key, value in values.items():
        if value is None:
            continue
        rendered = "true" if value is True else "false" if value is False else f"'{value}'"
        lines.append(f"{key} = {rendered}")
    return "\n".join(lines) + "\n"


# --- what a good file gives ---


def test_minimal_config_gets_documented_defaults() -> None:
    config = parse(MINIMAL, PATH, base_dir=Path("/srv/mailapp"))
    assert config.hostname == "mail.example.test"
    assert config.state_dir == Path("/srv/mailapp/var")
    assert config.local_domains == ()
    assert config.listeners == ()
    assert config.limits == Limits(
        max_message_size=26214400,
        max_recipients=100,
        max_connections=1000,
        max_connections_per_ip=20,
        smtp_timeout_seconds=300,
    )
    assert config.tls.cert == Path("/srv/mailapp/var/tls/cert.pem")
    assert config.tls.generate_self_signed is False
    assert config.relay.smarthost is None
    assert dict(config.relay.transports) == {}
    assert config.relay.trusted_networks == ()


def test_relative_paths_resolve_against_the_base_directory_and_absolute_ones_stay() -> None:
    config = parse(
        MINIMAL.replace('"\n', '"\nstate_dir = "data/state"\n', 1)
        + '[tls]\ncert = "/etc/ssl/mail.pem"\nkey = "keys/mail.key"\n',
        PATH,
        base_dir=Path("/srv/mailapp"),
    )
    assert config.state_dir == Path("/srv/mailapp/data/state")
    assert config.tls.cert == Path("/etc/ssl/mail.pem")
    assert config.tls.key == Path("/srv/mailapp/keys/mail.key")


def test_relative_paths_resolve_against_the_working_directory_by_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert parse(MINIMAL, PATH).state_dir == tmp_path / "var"


def test_domains_are_lower_cased_and_duplicates_collapsed() -> None:
    config = parse(MINIMAL + '[domains]\nlocal = ["Example.TEST", "example.test", "b.test"]\n', PATH)
    assert config.local_domains == ("example.test", "b.test")


def test_relay_section_is_parsed_into_typed_values() -> None:
    config = parse(
        MINIMAL
        + """
[relay]
transports = { "B.test" = "127.0.0.1:20025", "c.test" = "[::1]:25", "d.test" = "mx.d.test:2525" }
smarthost = "smtp.provider.test:587"
trusted_networks = ["127.0.0.0/8", "::1/128"]
""",
        PATH,
    )
    assert dict(config.relay.transports) == {
        "b.test": HostPort("127.0.0.1", 20025),
        "c.test": HostPort("::1", 25),
        "d.test": HostPort("mx.d.test", 2525),
    }
    assert config.relay.smarthost == HostPort("smtp.provider.test", 587)
    assert str(config.relay.transports["c.test"]) == "[::1]:25"
    assert config.relay.trusted_networks == (
        ipaddress.ip_network("127.0.0.0/8"),
        ipaddress.ip_network("::1/128"),
    )


def test_listeners_keep_file_order_and_default_to_no_plaintext_auth() -> None:
    config = parse(
        LISTENER
        + """
[listeners.imap]
protocol = "imap"
endpoint = "unix:/run/mailapp/imap.sock"
tls = "starttls"
""",
        PATH,
    )
    assert [(each.name, each.protocol, each.tls, each.allow_plaintext_auth) for each in config.listeners] == [
        ("smtp", "smtp", "none", False),
        ("imap", "imap", "starttls", False),
    ]
    assert config.needs_tls


def test_plaintext_auth_is_allowed_on_loopback_addresses() -> None:
    for endpoint in ("tcp:10110:interface=127.0.0.1", "tcp:10110:interface=\\:\\:1", "unix:/run/m.sock"):
        config = parse(listener(endpoint=endpoint, allow_plaintext_auth=True), PATH)
        assert config.listeners[0].allow_plaintext_auth


def test_port_zero_listeners_never_clash() -> None:
    text = listener(endpoint="tcp:0:interface=127.0.0.1") + (
        "[listeners.other]\nprotocol = 'pop3'\nendpoint = 'tcp:0:interface=127.0.0.1'\ntls = 'none'\n"
    )
    assert len(parse(text, PATH).listeners) == 2


# --- one test per class of mistake ---


def test_toml_syntax_error_is_one_problem_naming_the_line() -> None:
    problem = only_problem('[server]\nhostname = "mail.example.test"\nstate_dir = \n')
    assert problem.startswith("etc/test.toml: line 3, column 13: TOML syntax error: ")


def test_unknown_top_level_section_is_a_problem() -> None:
    assert only_problem(MINIMAL + "[smtp]\nport = 25\n") == (
        "etc/test.toml: smtp: unknown key (expected one of: authentication, dkim, dnsbl, domains, greylisting, limits, listeners, postscreen, relay, security, server, spam, tls)"
    )


@pytest.mark.parametrize(
    ("section", "key"),
    [
        ("[server]\nhostname = 'mail.example.test'\n", "server.hostnme"),
        ("[domains]\n", "domains.locals"),
        ("[tls]\n", "tls.certificate"),
        ("[limits]\n", "limits.max_size"),
        ("[relay]\n", "relay.smart_host"),
    ],
)
def test_unknown_key_in_each_section_is_named_with_its_dotted_path(section: str, key: str) -> None:
    base = "" if section.startswith("[server]") else MINIMAL
    text = base + section + f"{key.split('.')[1]} = 1\n"
    problem = only_problem(text)
    assert problem.startswith(f"etc/test.toml: {key}: unknown key (expected one of: ")


def test_unknown_key_in_a_listener_is_named_with_the_listener() -> None:
    problem = only_problem(LISTENER + "port = 25\n")
    assert problem.startswith("etc/test.toml: listeners.smtp.port: unknown key (expected one of: ")


def test_wrong_types_are_problems() -> None:
    problems = problems_of(
        """
[server]
hostname = 42
state_dir = ["var"]
[domains]
local = "example.test"
[limits]
max_recipients = "100"
max_message_size = true
"""
    )
    assert problems == [
        "etc/test.toml: server.hostname: must be a string, not an integer (42)",
        "etc/test.toml: server.state_dir: must be a string, not an array",
        "etc/test.toml: domains.local: must be an array, not a string ('example.test')",
        "etc/test.toml: limits.max_message_size: must be an integer, not a boolean (True)",
        "etc/test.toml: limits.max_recipients: must be an integer, not a string ('100')",
    ]


def test_a_section_that_is_not_a_table_is_a_problem() -> None:
    problem = only_problem('limits = 5\n[server]\nhostname = "mail.example.test"\n')
    assert problem == "etc/test.toml: limits: must be a table, not an integer (5)"


def test_sieve_limits_default_and_are_read() -> None:
    limits = parse(MINIMAL, PATH, base_dir=Path("/srv/mailapp")).limits
    assert (limits.sieve_max_steps, limits.sieve_max_redirects, limits.sieve_max_vacation_replies_per_day) == (10_000, 4, 100)
    assert (limits.sieve_max_scripts, limits.sieve_max_script_size) == (20, 65_536)
    changed = parse(MINIMAL + "[limits]\nsieve_max_redirects = 2\n", PATH, base_dir=Path("/srv/mailapp")).limits
    assert changed.sieve_max_redirects == 2


def test_sieve_limit_of_zero_is_a_problem() -> None:
    assert only_problem(MINIMAL + "[limits]\nsieve_max_steps = 0\n") == (
        "etc/test.toml: limits.sieve_max_steps: must be a positive integer, not 0"
    )


def test_non_positive_limit_is_a_problem() -> None:
    assert only_problem(MINIMAL + "[limits]\nsmtp_timeout_seconds = 0\n") == (
        "etc/test.toml: limits.smtp_timeout_seconds: must be a positive integer, not 0"
    )


def test_per_ip_connection_limit_above_the_total_is_a_problem() -> None:
    assert only_problem(MINIMAL + "[limits]\nmax_connections = 10\nmax_connections_per_ip = 20\n") == (
        "etc/test.toml: limits.max_connections_per_ip: 20 is more than limits.max_connections (10)"
    )


def test_empty_paths_are_problems() -> None:
    assert problems_of(MINIMAL + 'state_dir = ""\n[tls]\ncert = ""\n') == [
        "etc/test.toml: server.state_dir: must not be empty",
        "etc/test.toml: tls.cert: must not be empty",
    ]


def test_missing_hostname_is_a_problem() -> None:
    assert only_problem("[server]\nstate_dir = 'var'\n") == "etc/test.toml: server.hostname: is required"


@pytest.mark.parametrize(
    ("endpoint", "reason"),
    [
        ("tcp:x", "port 'x' is not a number"),
        ("tcp:70000", "port 70000 is out of range 0-65535"),
        ("tcp:25:interface=mail.example.test", "interface 'mail.example.test' is not an IP address"),
        ("tcp:25:colour=blue", "unknown option 'colour'"),
        ("ssl:465", "use a 'tcp:' endpoint and set tls = \"implicit\" instead of an 'ssl:' endpoint"),
        ("udp:25", "unsupported kind 'udp' (expected 'tcp:PORT[:interface=ADDRESS]' or 'unix:PATH')"),
    ],
)
def test_bad_endpoint_string_is_a_problem_with_the_reason(endpoint: str, reason: str) -> None:
    assert only_problem(listener(endpoint=endpoint)) == (
        f"etc/test.toml: listeners.test.endpoint: bad endpoint string {endpoint!r}: {reason}"
    )


def test_unknown_listener_protocol_is_a_problem() -> None:
    assert only_problem(listener(protocol="pop")) == (
        "etc/test.toml: listeners.test.protocol: unknown protocol 'pop' "
        "(expected one of: imap, lmtp, managesieve, metrics, pop3, smtp, submission, webmail)"
    )


def test_bad_tls_mode_is_a_problem() -> None:
    assert only_problem(listener(tls="ssl")) == (
        "etc/test.toml: listeners.test.tls: unknown TLS mode 'ssl' (expected one of: implicit, none, starttls)"
    )


def test_starttls_on_an_http_listener_is_a_problem() -> None:
    assert only_problem(listener(protocol="webmail", tls="starttls")) == (
        "etc/test.toml: listeners.test.tls: webmail has no STARTTLS: use 'implicit' or 'none'"
    )


def test_missing_listener_keys_are_problems() -> None:
    assert problems_of(listener(protocol=None, tls=None, endpoint=None)) == [
        "etc/test.toml: listeners.test.protocol: is required",
        "etc/test.toml: listeners.test.tls: is required",
        "etc/test.toml: listeners.test.endpoint: is required",
    ]


@pytest.mark.parametrize(
    "endpoint", ["tcp:10587", "tcp:10587:interface=0.0.0.0", "tcp:10587:interface=192.0.2.7"]
)
def test_plaintext_auth_on_a_non_loopback_interface_is_a_problem(endpoint: str) -> None:
    problem = only_problem(listener(endpoint=endpoint, allow_plaintext_auth=True))
    assert problem.startswith(
        "etc/test.toml: listeners.test.allow_plaintext_auth: plaintext passwords are only allowed on a "
        f"loopback interface, and {endpoint!r} listens on "
    )


@pytest.mark.parametrize("domain", ["bad_domain.test", "-x.test", "a..test", "exämple.test", "10.0.0.1"])
def test_bad_local_domain_is_a_problem(domain: str) -> None:
    problem = only_problem(MINIMAL + f"[domains]\nlocal = ['ok.test', '{domain}']\n")
    assert problem.startswith(f"etc/test.toml: domains.local[1]: {domain!r} is not a valid domain name")


def test_bad_hostname_is_a_problem() -> None:
    assert only_problem('[server]\nhostname = "mail server"\n').startswith(
        "etc/test.toml: server.hostname: 'mail server' is not a valid domain name"
    )


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ("tcp:10025:interface=127.0.0.1", "tcp:10025:interface=127.0.0.1"),
        ("tcp:25", "tcp:25:interface=127.0.0.1"),
        ("unix:/run/mailapp.sock", "unix:/run/mailapp.sock"),
    ],
)
def test_duplicate_endpoint_is_a_problem(first: str, second: str) -> None:
    text = listener(endpoint=first) + f"[listeners.again]\nprotocol = 'pop3'\nendpoint = '{second}'\ntls = 'none'\n"
    assert only_problem(text) == (
        f"etc/test.toml: listeners.again.endpoint: {second!r} clashes with listeners.test.endpoint "
        "(both would bind the same address)"
    )


def test_bad_relay_values_are_problems() -> None:
    problems = problems_of(
        MINIMAL
        + """
[relay]
transports = { "b.test" = "nowhere", "c.test" = "host:0" }
smarthost = 587
trusted_networks = ["10.0.0.1/8", "not a network"]
"""
    )
    assert problems[0] == (
        "etc/test.toml: relay.transports.\"b.test\": bad next hop 'nowhere': expected 'host:port' "
        "(an IPv6 address goes in brackets)"
    )
    assert problems[1] == "etc/test.toml: relay.transports.\"c.test\": bad next hop 'host:0': port 0 is out of range 1-65535"
    assert problems[2] == "etc/test.toml: relay.smarthost: must be a string, not an integer (587)"
    assert problems[3].startswith("etc/test.toml: relay.trusted_networks[0]: bad network '10.0.0.1/8': ")
    assert problems[3].endswith("did you mean 10.0.0.0/8?")
    assert problems[4].startswith("etc/test.toml: relay.trusted_networks[1]: bad network 'not a network': ")
    assert len(problems) == 5


def test_missing_cert_file_is_a_problem_when_not_generating(tmp_path: Path) -> None:
    config_file = tmp_path / "mailapp.toml"
    config_file.write_text(
        listener(tls="starttls") + "[tls]\ncert = 'tls/cert.pem'\nkey = 'tls/key.pem'\ngenerate_self_signed = false\n"
    )
    with pytest.raises(ConfigError) as raised:
        load(config_file, base_dir=tmp_path)
    assert raised.value.problems == [
        f"{config_file}: tls.cert: file {str(tmp_path / 'tls/cert.pem')!r} does not exist "
        "(a listener uses TLS and tls.generate_self_signed is false)",
        f"{config_file}: tls.key: file {str(tmp_path / 'tls/key.pem')!r} does not exist "
        "(a listener uses TLS and tls.generate_self_signed is false)",
    ]


def test_missing_cert_file_is_fine_when_it_will_be_generated(tmp_path: Path) -> None:
    config_file = tmp_path / "mailapp.toml"
    config_file.write_text(listener(tls="implicit") + "[tls]\ngenerate_self_signed = true\n")
    assert load(config_file, base_dir=tmp_path).tls.generate_self_signed


def test_missing_cert_file_is_fine_when_no_listener_uses_tls(tmp_path: Path) -> None:
    config_file = tmp_path / "mailapp.toml"
    config_file.write_text(listener(tls="none"))
    assert load(config_file, base_dir=tmp_path).listeners[0].tls == "none"


def test_parse_never_checks_files() -> None:
    text = listener(tls="starttls") + "[tls]\ncert = '/nonexistent/cert.pem'\nkey = '/nonexistent/key.pem'\n"
    assert parse(text, PATH).tls.cert == Path("/nonexistent/cert.pem")


def test_missing_config_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as raised:
        load(tmp_path / "absent.toml")
    assert raised.value.problems == [f"{tmp_path / 'absent.toml'}: cannot read config file: No such file or directory"]


def test_several_mistakes_are_all_reported_at_once() -> None:
    problems = problems_of(
        """
colour = "blue"
[server]
hostname = "mail.example.test"
[domains]
local = ["bad_domain"]
[listeners.smtp]
protocol = "smtp"
endpoint = "tcp:x"
tls = "starttls"
[listeners.imap]
protocol = "imap"
endpoint = "tcp:143"
tls = "tls"
allow_plaintext_auth = true
[limits]
max_recipients = -1
"""
    )
    assert [problem.split(": ")[1] for problem in problems] == [
        "colour",
        "domains.local[0]",
        "listeners.smtp.endpoint",
        "listeners.imap.tls",
        "listeners.imap.allow_plaintext_auth",
        "limits.max_recipients",
    ]


def test_config_error_text_lists_every_problem() -> None:
    error = ConfigError(["a.toml: x: one", "a.toml: y: two"])
    assert str(error) == "2 configuration problems:\n  a.toml: x: one\n  a.toml: y: two"


# --- the shipped examples ---


def test_development_config_parses_and_matches_the_documented_ports(tmp_path: Path) -> None:
    config = load(REPO / "etc" / "mailapp.toml", base_dir=tmp_path)
    assert isinstance(config, Config)
    assert config.hostname == "mail.example.test"
    assert config.local_domains == ("example.test",)
    assert config.state_dir == tmp_path / "var"
    assert config.tls.generate_self_signed
    assert config.tls.cert == tmp_path / "var" / "tls" / "cert.pem"
    assert {(each.name, each.protocol, each.endpoint, each.tls) for each in config.listeners} == {
        ("smtp", "smtp", "tcp:10025:interface=127.0.0.1", "starttls"),
        ("submission", "submission", "tcp:10587:interface=127.0.0.1", "starttls"),
        ("submissions", "submission", "tcp:10465:interface=127.0.0.1", "implicit"),
        ("pop3", "pop3", "tcp:10110:interface=127.0.0.1", "starttls"),
        ("pop3s", "pop3", "tcp:10995:interface=127.0.0.1", "implicit"),
        ("imap", "imap", "tcp:10143:interface=127.0.0.1", "starttls"),
        ("imaps", "imap", "tcp:10993:interface=127.0.0.1", "implicit"),
        ("managesieve", "managesieve", "tcp:14190:interface=127.0.0.1", "starttls"),
        ("webmail", "webmail", "tcp:18080:interface=127.0.0.1", "none"),
    }


def test_production_config_parses_with_standard_ports_and_no_plaintext_auth() -> None:
    config = parse((REPO / "etc" / "mailapp.production.toml").read_text(), Path("etc/mailapp.production.toml"))
    assert not config.tls.generate_self_signed
    # The metrics listener is the one without TLS, and it listens on loopback only.
    served = [each for each in config.listeners if each.protocol != "metrics"]
    assert [each.endpoint for each in config.listeners if each.protocol == "metrics"] == ["tcp:9125:interface=127.0.0.1"]
    assert all(each.tls != "none" for each in served)
    assert not any(each.allow_plaintext_auth for each in config.listeners)
    ports = sorted(int(each.endpoint.split(":")[1]) for each in served)
    assert ports == [25, 110, 143, 443, 465, 587, 993, 995, 4190]


def test_production_config_loads_only_once_its_certificate_exists(tmp_path: Path) -> None:
    text = (REPO / "etc" / "mailapp.production.toml").read_text()
    with pytest.raises(ConfigError) as raised:
        load_text(tmp_path, text)
    assert [problem.split(": ")[1] for problem in raised.value.problems] == ["tls.cert", "tls.key"]

    config = parse(text, PATH)
    moved = text.replace(str(config.tls.cert), str(tmp_path / "fullchain.pem")).replace(
        str(config.tls.key), str(tmp_path / "privkey.pem")
    )
    (tmp_path / "fullchain.pem").write_text("certificate")
    (tmp_path / "privkey.pem").write_text("key")
    assert load_text(tmp_path, moved).tls.cert == tmp_path / "fullchain.pem"


def load_text(directory: Path, text: str) -> Config:
    config_file = directory / "mailapp.toml"
    config_file.write_text(text)
    return load(config_file, base_dir=directory)


def test_server_sync_defaults_to_filesystem_and_rejects_unknown_modes(tmp_path):
    from mailapp.config import ConfigError, parse

    base = '[server]\nhostname = "mail.example.test"\n'
    assert parse(base, tmp_path / "m.toml", base_dir=tmp_path).sync == "filesystem"
    assert parse(base + 'sync = "file"\n', tmp_path / "m.toml", base_dir=tmp_path).sync == "file"
    try:
        parse(base + 'sync = "never"\n', tmp_path / "m.toml", base_dir=tmp_path)
    except ConfigError as error:
        assert any("server.sync" in problem for problem in error.problems)
    else:
        raise AssertionError("an unknown sync mode was accepted")


def test_the_session_policies_default_to_the_configs_values() -> None:
    from mailapp.imap.server import IMAPPolicy
    from mailapp.pop3 import POP3Policy
    from mailapp.sessions import SessionLimits
    from mailapp.smtp import SMTPPolicy

    config = parse(MINIMAL, PATH)
    limits, security = config.limits, config.security
    session = SessionLimits()
    assert (session.max_connections, session.max_connections_per_ip, session.login_timeout, session.line_seconds) == (
        limits.max_connections,
        limits.max_connections_per_ip,
        limits.login_timeout_seconds,
        limits.command_line_seconds,
    )
    assert (session.min_data_rate, session.data_grace) == (limits.min_data_rate, limits.data_grace_seconds)
    smtp = SMTPPolicy(hostname="mail.example.test", submission=True, max_message_size=1, timeout=1)
    assert (smtp.auth_failure_delay, smtp.max_commands_before_auth) == (security.auth_failure_delay, limits.max_commands_before_auth)
    assert (smtp.refuse_local_senders, smtp.min_free_disk) == (security.mx_refuse_local_senders, limits.min_free_disk)
    pop3 = POP3Policy(hostname="mail.example.test")
    assert (pop3.timeout, pop3.auth_failure_delay, pop3.max_commands_before_auth) == (
        limits.pop3_timeout_seconds,
        security.auth_failure_delay,
        limits.max_commands_before_auth,
    )
    imap = IMAPPolicy(hostname="mail.example.test")
    assert (imap.timeout, imap.max_message_size, imap.max_literal, imap.max_line) == (
        limits.imap_timeout_seconds,
        limits.max_message_size,
        limits.imap_max_literal,
        limits.imap_max_line,
    )
    assert (imap.auth_failure_delay, imap.max_commands_before_auth) == (security.auth_failure_delay, limits.max_commands_before_auth)


# --- [dkim] ---


def test_dkim_signing_is_on_by_default() -> None:
    assert parse(MINIMAL, PATH, base_dir=Path("/srv/mailapp")).dkim.sign is True


def test_dkim_signing_can_be_turned_off() -> None:
    assert parse(MINIMAL + "[dkim]\nsign = false\n", PATH, base_dir=Path("/srv/mailapp")).dkim.sign is False


def test_dkim_sign_must_be_a_boolean_and_unknown_keys_are_refused() -> None:
    problems = problems_of(MINIMAL + '[dkim]\nsign = "yes"\nselector = "x"\n')
    assert any(problem.startswith("etc/test.toml: dkim.sign: must be") for problem in problems), problems
    assert any("dkim" in problem and "selector" in problem for problem in problems), problems


# --- lmtp listeners ---


@pytest.mark.parametrize("endpoint", ["unix:/run/mailapp/lmtp.sock", "tcp:24:interface=127.0.0.1", "tcp:24:interface=\\:\\:1"])
def test_an_lmtp_listener_on_a_unix_socket_or_loopback_needs_no_allowed_clients(endpoint: str) -> None:
    [lmtp] = parse(listener(protocol="lmtp", endpoint=endpoint), PATH).listeners
    assert (lmtp.protocol, lmtp.allowed_clients) == ("lmtp", ())


@pytest.mark.parametrize("endpoint, where", [("tcp:24", "every interface"), ("tcp:24:interface=192.0.2.1", "192.0.2.1")])
def test_an_lmtp_listener_others_can_reach_without_allowed_clients_is_a_problem(endpoint: str, where: str) -> None:
    assert only_problem(listener(protocol="lmtp", endpoint=endpoint)) == (
        f"etc/test.toml: listeners.test.endpoint: LMTP delivers without a login, and {endpoint!r} listens on {where}: "
        "listen on a unix socket or 127.0.0.1, or name the MTAs that may use it in "
        'allowed_clients = ["192.0.2.25/32"]'
    )


def test_an_lmtp_listener_on_every_interface_with_allowed_clients_is_read() -> None:
    text = listener(protocol="lmtp", endpoint="tcp:24") + 'allowed_clients = ["192.0.2.25/32"]\n'
    [lmtp] = parse(text, PATH).listeners
    assert lmtp.allowed_clients == (ipaddress.ip_network("192.0.2.25/32"),)


def test_allowed_clients_on_another_protocol_and_a_bad_network_are_problems() -> None:
    assert only_problem(listener() + 'allowed_clients = ["192.0.2.0/24"]\n') == (
        "etc/test.toml: listeners.test.allowed_clients: only an lmtp listener takes allowed_clients "
        "(the MX and submission decide by [relay] trusted_networks and AUTH)"
    )
    assert only_problem(listener(protocol="lmtp") + 'allowed_clients = ["192.0.2.1/24"]\n') == (
        "etc/test.toml: listeners.test.allowed_clients[0]: bad network '192.0.2.1/24': "
        "192.0.2.1/24 has host bits set; did you mean 192.0.2.0/24?"
    )


def test_the_log_file_is_rotated_at_10_mib_keeping_10_files_by_default_and_bad_values_are_named() -> None:
    config = parse(MINIMAL, PATH)
    assert (config.log_file_max_bytes, config.log_file_keep) == (10 * 1024 * 1024, 10)
    text = MINIMAL.replace('hostname = "mail.example.test"', 'hostname = "mail.example.test"\nlog_file_max_bytes = 0\nlog_file_keep = -1')
    problems = problems_of(text)
    assert any("server.log_file_max_bytes" in p and "positive" in p for p in problems), problems
    assert any("server.log_file_keep" in p and "keep no rotated file" in p for p in problems), problems
