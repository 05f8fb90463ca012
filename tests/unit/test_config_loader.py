"""mta.config.loader: the INI reader, load() checks, $name expansion, openTables()."""

import builtins
import ipaddress

import pytest
from twisted.internet.task import Clock

from mta.config import ConfigError, Scope, load, openTables, readIni
from mta.config.schema import BY_NAME, DEFAULT_LISTENERS, PARAMETERS
from mta.config.types import TableSpec
from mta.tables import Tables


@pytest.fixture
def ini(tmp_path):
    """Write text to a fresh .ini file and return its path (a str)."""
    counter = iter(range(1000))

    def write(text, name=None):
        path = tmp_path / (name or f"mta{next(counter)}.ini")
        path.write_text(text, encoding="utf-8")
        return str(path)

    return write


def error(path):
    with pytest.raises(ConfigError) as info:
        load(path)
    return str(info.value)


# -- the INI reader --------------------------------------------------------------


def test_readIni_sections_entries_and_locations(ini):
    path = ini("[main]\nmail_name = a\n\n[listener:smtp]\nendpoint = tcp:2525\n")
    main, listener = readIni(path)
    assert main.name == "main"
    assert [(e.key, e.value, e.location.line) for e in main.entries] == [("mail_name", "a", 2)]
    assert str(main.entries[0].location) == f"{path}:2: [main] mail_name"
    assert listener.name == "listener:smtp"
    assert str(listener.location) == f"{path}:4: [listener:smtp]"


def test_continuation_lines_join_with_a_space(ini):
    path = ini("[main]\nmydestination = example.com,\n    example.net,\n\texample.org\nmail_name = x\n")
    config = load(path)
    assert config.main.raw("mydestination") == "example.com, example.net, example.org"
    assert config["mydestination"] == ("example.com", "example.net", "example.org")
    assert config.main.entry("mydestination").location.line == 2


def test_comments_are_whole_lines_only(ini):
    path = ini(
        "# a comment\n; another\n[main]\n  # indented comment\nmail_name = mail # not a comment\n"
        "mydestination = example.com,\n# comment inside a continued value\n  example.net\n"
    )
    config = load(path)
    assert config["mail_name"] == "mail # not a comment"
    assert config["mydestination"] == ("example.com", "example.net")


def test_continuation_without_parameter(ini):
    path = ini("[main]\n  example.com\n")
    assert error(path) == f"{path}:2: continuation line with no parameter before it"


def test_duplicate_key(ini):
    path = ini("[main]\nmail_name = a\nmail_name = b\n")
    assert error(path) == f"{path}:3: [main] mail_name: set twice in this section (first at line 2)"


def test_same_key_in_two_sections_is_fine(ini):
    path = ini("[main]\nmail_name = a\n[listener:smtp]\nendpoint = tcp:2525\nmail_name = b\n")
    config = load(path)
    assert config["mail_name"] == "a"
    assert config.listeners[0].params["mail_name"] == "b"


def test_duplicate_section(ini):
    path = ini("[main]\nmail_name = a\n\n[main]\nsyslog_name = b\n")
    assert error(path) == f"{path}:4: [main]: section defined twice (first at line 1)"


def test_text_outside_sections(ini):
    path = ini("mail_name = a\n[main]\n")
    assert error(path) == f"{path}:1: 'mail_name' is outside any section; start with [main]"


@pytest.mark.parametrize("header", ["[main", "[main] extra", "[main]]x"])
def test_malformed_section_header(ini, header):
    path = ini(f"# first\n{header}\n")
    assert error(path) == f"{path}:2: malformed section header: {header}"


def test_line_without_equals(ini):
    path = ini("[main]\nmail_name\n")
    assert error(path) == f"{path}:2: expected 'name = value', found: mail_name"


def test_missing_file(tmp_path):
    path = str(tmp_path / "nosuch.ini")
    assert error(path) == f"{path}: configuration file not found"


def test_directory_is_unreadable(tmp_path):
    assert error(str(tmp_path)) == f"{tmp_path}: cannot read configuration file: Is a directory"


def test_unreadable_file(ini, monkeypatch):
    # chmod 000 does not stop root, so the refusal is simulated at open()
    path = ini("[main]\n")
    realOpen = builtins.open

    def deny(file, *args, **kwargs):
        if file == path:
            raise PermissionError(13, "Permission denied", path)
        return realOpen(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", deny)
    assert error(path) == f"{path}: cannot read configuration file: Permission denied"


def test_non_utf8_file(tmp_path):
    path = tmp_path / "latin1.ini"
    path.write_bytes(b"[main]\nmail_name = caf\xe9\n")
    message = error(str(path))
    assert message.startswith(f"{path}: cannot read configuration file: ")
    assert "utf-8" in message and "0xe9" in message


# -- load(): sections, names, values --------------------------------------------------


def test_embedded_defaults():
    config = load(None)
    assert config.path is None
    assert config.main.setHere() == ()
    assert config["message_size_limit"] == 10240000
    assert config["smtpd_timeout"] == 300.0
    assert config["mynetworks"] == (
        ipaddress.ip_network("127.0.0.0/8"),
        ipaddress.ip_network("::ffff:127.0.0.0/104"),
        ipaddress.ip_network("::1/128"),
    )
    assert [(l.name, l.endpoint, l.location) for l in config.listeners] == [
        (name, endpoint, None) for name, endpoint in DEFAULT_LISTENERS
    ]
    for parameter in PARAMETERS:  # every default parses
        config[parameter.name]


def test_path_is_absolute(ini, tmp_path, monkeypatch):
    ini("[main]\n", name="rel.ini")
    monkeypatch.chdir(tmp_path)
    assert load("rel.ini").path == str(tmp_path / "rel.ini")


def test_misspelled_parameter_is_refused_with_a_hint(ini):
    # The acceptance case.
    path = ini("[main]\nmesage_size_limit = 5\n")
    assert error(path) == f"{path}:2: [main] mesage_size_limit: unknown parameter (did you mean message_size_limit?)"


def test_unknown_parameter_without_hint(ini):
    path = ini("[main]\nzzzzzz = 5\n")
    assert error(path) == f"{path}:2: [main] zzzzzz: unknown parameter"


def test_unknown_section(ini):
    path = ini("[main]\n[mian]\nmail_name = x\n")
    assert error(path) == f"{path}:2: [mian]: unknown section (expected [main] or [listener:NAME])"


def test_listener_name_must_be_simple(ini):
    path = ini("[listener:a b]\nendpoint = tcp:2525\n")
    assert "unknown section" in error(path)


def test_bad_value_names_key_and_line(ini):
    path = ini("[main]\nmail_name = x\nmessage_size_limit = lots\n")
    assert error(path) == (
        f"{path}:3: [main] message_size_limit: 'lots' is not a size in bytes (e.g. 10240000 or 10m)"
    )


def test_endpoint_in_main(ini):
    path = ini("[main]\nendpoint = tcp:25\n")
    message = error(path)
    assert message.startswith(f"{path}:2: [main] endpoint: unknown parameter")
    assert message.endswith("; it belongs in a [listener:NAME] section")


def test_listener_without_endpoint(ini):
    path = ini("[main]\n\n[listener:smtp]\nsmtpd_recipient_limit = 10\n")
    assert error(path) == (
        f"{path}:3: [listener:smtp]: no endpoint (e.g. endpoint = tcp:port=25:interface=127.0.0.1)"
    )


def test_bad_endpoint_string(ini):
    path = ini("[listener:smtp]\nendpoint = nosuchtype:port=25\n")
    message = error(path)
    assert message.startswith(f"{path}:2: [listener:smtp] endpoint: invalid endpoint 'nosuchtype:port=25': ")


def test_bad_endpoint_port(ini):
    path = ini("[listener:smtp]\nendpoint = tcp:port=notanumber\n")
    assert error(path).startswith(f"{path}:2: [listener:smtp] endpoint: invalid endpoint 'tcp:port=notanumber'")


def test_unknown_key_in_listener(ini):
    path = ini("[listener:smtp]\nendpoint = tcp:2525\nsmtpd_recipient_limt = 5\n")
    assert error(path) == (
        f"{path}:3: [listener:smtp] smtpd_recipient_limt: unknown parameter (did you mean smtpd_recipient_limit?)"
    )


def test_bad_override_names_the_listener(ini):
    path = ini("[main]\n[listener:smtp]\nendpoint = tcp:2525\nsmtpd_recipient_limit = 0\n")
    assert error(path) == f"{path}:4: [listener:smtp] smtpd_recipient_limit: 0 is below the minimum 1"


def test_listeners_in_file_order_replace_the_default(ini):
    path = ini(
        "[listener:smtp]\nendpoint = tcp:port=2525:interface=127.0.0.1\n"
        "[listener:submission]\nendpoint = tcp:port=5870:interface=127.0.0.1\nsmtpd_recipient_limit = 100\n"
    )
    config = load(path)
    assert [(l.name, l.endpoint) for l in config.listeners] == [
        ("smtp", "tcp:port=2525:interface=127.0.0.1"),
        ("submission", "tcp:port=5870:interface=127.0.0.1"),
    ]
    smtp, submission = config.listeners
    assert smtp.params["smtpd_recipient_limit"] == 1000
    assert submission.params["smtpd_recipient_limit"] == 100
    assert config["smtpd_recipient_limit"] == 1000
    assert [e.key for e in submission.params.setHere()] == ["smtpd_recipient_limit"]
    assert submission.location.line == 3


# -- expansion ---------------------------------------------------------------------


def expand(ini, text, **others):
    lines = "".join(f"{k} = {v}\n" for k, v in others.items())
    return load(ini(f"[main]\n{lines}mail_name = {text}\n")).main


@pytest.mark.parametrize(
    "text, expected",
    [
        ("$syslog_name", "mta"),
        ("${syslog_name}", "mta"),
        ("$(syslog_name)", "mta"),
        ("x${syslog_name}y", "xmtay"),
        ("$syslog_name.example", "mta.example"),
        ("${relayhost?set}", ""),
        ("${relayhost:empty}", "empty"),
        ("${syslog_name?set}", "set"),
        ("${syslog_name:empty}", ""),
        ("${relayhost:{a, b}}", "a, b"),
        ("${syslog_name?{[$syslog_name]}}", "[mta]"),
        ("$(relayhost:x)", "x"),
        ("cost $$5", "cost $5"),
        ("$$syslog_name", "$syslog_name"),
        ("no dollars", "no dollars"),
    ],
)
def test_expansion(ini, text, expected):
    scope = expand(ini, text)
    assert scope.raw("mail_name") == text
    assert scope.expanded("mail_name") == expected
    assert scope["mail_name"] == expected


def test_expansion_of_set_values(ini):
    scope = expand(ini, "${relayhost?via $relayhost}", relayhost="[smtp.example.net]")
    assert scope["mail_name"] == "via [smtp.example.net]"


def test_expansion_is_recursive(ini):
    # myorigin -> smtpd_banner (default) -> myhostname and mail_name
    path = ini("[main]\nmyhostname = mx.example.org\nmyorigin = $smtpd_banner\n")
    assert load(path)["myorigin"] == "mx.example.org ESMTP mta"


def test_circular_through_a_default(ini):
    # smtpd_banner's default refers to $mail_name, which refers back to it
    path = ini("[main]\nmail_name = $smtpd_banner\n")
    assert error(path) == (
        f"{path}:2: [main] mail_name: circular reference: $mail_name -> $smtpd_banner -> $mail_name"
    )


def test_undefined_name(ini):
    path = ini("[main]\nmail_name = x\nmyorigin = $nosuch_parameter\n")
    assert error(path) == f"{path}:3: [main] myorigin: $nosuch_parameter is not a known parameter"


def test_circular_reference(ini):
    path = ini("[main]\nmyorigin = $mydomain\nmydomain = $myorigin\n")
    assert error(path) == f"{path}:2: [main] myorigin: circular reference: $myorigin -> $mydomain -> $myorigin"


def test_self_reference(ini):
    path = ini("[main]\nmail_name = $mail_name\n")
    assert error(path) == f"{path}:2: [main] mail_name: circular reference: $mail_name -> $mail_name"


@pytest.mark.parametrize(
    "text, reason",
    [
        ("cost $", "'$' is not followed by a parameter name (write $$ for a dollar sign)"),
        ("$ x", "'$' is not followed by a parameter name"),
        ("${relayhost", "unbalanced '{' after '$'"),
        ("$(relayhost", "unbalanced '(' after '$'"),
        ("${relay host}", "malformed expression ${relay host}"),
    ],
)
def test_bad_expressions(ini, text, reason):
    path = ini(f"[main]\nmail_name = {text}\n")
    message = error(path)
    assert message.startswith(f"{path}:2: [main] mail_name: ")
    assert reason in message


def test_error_in_a_default_caused_by_a_setting(ini):
    # mydestination's default expands $mydomain: the message names the default
    # (today it names neither the file nor the line that set mydomain)
    path = ini("[main]\nmydomain = ex!ample.org\n")
    message = error(path)
    assert "mydestination" in message
    assert message.endswith("'localhost.ex!ample.org' is not a domain name")


def test_listener_override_wins_in_expansion(ini):
    path = ini(
        "[main]\nmyhostname = main.example.org\n\n"
        "[listener:smtp]\nendpoint = tcp:2525\n\n"
        "[listener:other]\nendpoint = tcp:2526\nmyhostname = other.example.org\n"
    )
    config = load(path)
    smtp, other = config.listeners
    assert config["smtpd_banner"] == "main.example.org ESMTP mta"
    assert smtp.params["smtpd_banner"] == "main.example.org ESMTP mta"
    assert other.params["smtpd_banner"] == "other.example.org ESMTP mta"
    assert other.params["myorigin"] == "other.example.org"
    # [main]'s own values are untouched by the listener
    assert config.main["myhostname"] == "main.example.org"
    assert config.main["smtpd_banner"] == "main.example.org ESMTP mta"
    # raw text is inherited unexpanded; entries resolve to where they are set
    assert other.params.raw("smtpd_banner") == "$myhostname ESMTP $mail_name"
    assert other.params.entry("myhostname").location.section == "listener:other"
    assert other.params.entry("mail_name") is None


def test_main_setting_refers_to_listener_override(ini):
    path = ini(
        "[main]\nsmtpd_banner = $myhostname ready\nmyhostname = main.example.org\n"
        "[listener:smtp]\nendpoint = tcp:2525\nmyhostname = l.example.org\n"
    )
    config = load(path)
    assert config["smtpd_banner"] == "main.example.org ready"
    assert config.listeners[0].params["smtpd_banner"] == "l.example.org ready"


def test_scope_without_entries_gives_defaults():
    scope = Scope()
    assert scope.raw("smtpd_banner") == BY_NAME["smtpd_banner"].default
    assert scope["message_size_limit"] == 10240000
    assert scope.entry("myhostname") is None


# -- openTables ----------------------------------------------------------------


def test_openTables_opens_every_table(ini, tmp_path):
    relay = tmp_path / "relay"
    relay.write_text("example.com OK\n")
    path = ini(
        f"[main]\nrelay_domains = texthash:{relay}, example.net\n"
        "mynetworks = 127.0.0.0/8, inline:{ 192.0.2.1=OK }\n"
        f"[listener:smtp]\nendpoint = tcp:2525\nmydestination = localhost, texthash:{relay}\n"
    )
    config = load(path)
    assert config["relay_domains"] == (TableSpec("texthash", str(relay)), "example.net")
    tables = Tables(Clock())
    openTables(config, tables)
    # each spec is opened once and shared
    assert tables.open(f"texthash:{relay}") is tables.open(TableSpec("texthash", str(relay)))
    assert tables.open("inline:{ 192.0.2.1=OK }").spec == "inline:{ 192.0.2.1=OK }"


def test_openTables_error_names_the_parameter(ini, tmp_path):
    missing = tmp_path / "missing"
    path = ini(f"[main]\nmail_name = x\nrelay_domains = texthash:{missing}\n")
    with pytest.raises(ConfigError) as info:
        openTables(load(path), Tables(Clock()))
    assert str(info.value) == (
        f"{path}:3: [main] relay_domains: {missing}: cannot open table: No such file or directory"
    )


def test_openTables_error_in_a_listener(ini):
    path = ini("[listener:smtp]\nendpoint = tcp:2525\nmynetworks = nosuch:thing\n")
    with pytest.raises(ConfigError) as info:
        openTables(load(path), Tables(Clock()))
    assert str(info.value) == (
        f"{path}:3: [listener:smtp] mynetworks: nosuch:thing: unsupported table type 'nosuch' "
        "(known: cidr, fail, inline, ldap, lmdb, mysql, pcre, pgsql, pipemap, regexp, socketmap, sqlite, static, tcp, texthash, unionmap, unix)"
    )


def test_regression_byteOrderMarkIsIgnored(tmp_path):
    path = tmp_path / "bom.ini"
    path.write_bytes(b"\xef\xbb\xbf[main]\nmail_name = x\n")
    assert load(str(path))["mail_name"] == "x"


def test_regression_formFeedDoesNotShiftLineNumbers(tmp_path):
    path = tmp_path / "ff.ini"
    path.write_text("[main]\nmail_name = a\x0cb\nbogus = 1\n")
    with pytest.raises(ConfigError, match=r"ff\.ini:3: \[main\] bogus: unknown parameter"):
        load(str(path))


def test_regression_listenerKeyInMainHasNoSelfHint(tmp_path):
    path = tmp_path / "e.ini"
    path.write_text("[main]\nendpoint = tcp:25\n")
    with pytest.raises(ConfigError) as e:
        load(str(path))
    assert "did you mean" not in str(e.value)
    assert "it belongs in a [listener:NAME] section" in str(e.value)


def test_regression_brokenDefaultNamesFileAndSection(tmp_path):
    path = tmp_path / "d.ini"
    path.write_text("[main]\nmydomain = ex!ample.org\n")
    with pytest.raises(ConfigError) as e:
        load(str(path))
    message = str(e.value)
    assert message.startswith(f"{path}:2: [main] mydomain: ") or message.startswith(
        f"{path}: [main]: mydestination (default '$myhostname, localhost.$mydomain, localhost')"
    ), message
    assert "is not a domain name" in message


def test_regression_domainLabelEndingInHyphen():
    from mta.config.types import DomainList

    with pytest.raises(ValueError, match="is not a domain name"):
        DomainList().parse("bad-.example")
    assert DomainList().parse("good-1.example, .sub.example") == ("good-1.example", ".sub.example")


@pytest.mark.parametrize(
    "line, reason",
    [
        ("inet_protocols = ipv5", "'ipv5' is not one of all, ipv4, ipv6"),
        ("smtp_host_lookup = dns, nis", "'nis' is not one of dns, native"),
        ("notify_classes = bounces", "'bounces' is not one of bounce, 2bounce, data, delay"),
        ("virtual_mailbox_lock = lockf", "'lockf' is not one of fcntl, flock, dotlock"),
    ],
)
def test_enumerated_values_are_checked_at_load(ini, line, reason):
    path = ini(f"[main]\n{line}\n")
    message = error(path)
    assert message.startswith(f"{path}:2: [main] {line.split(' =')[0]}: "), message
    assert reason in message, message


# -- finding the file: -c, $MTA_CONFIG, /etc/mta/mta.ini, the embedded defaults ------------------


from mta.config import ConfigNotFound, ConfigSource, findConfig, loadConfig  # noqa: E402


@pytest.fixture
def places(tmp_path):
    """Three configuration files, and a default location that exists (C{default}) or not (C{nodefault})."""
    for name in ("option", "environment", "default"):
        (tmp_path / f"{name}.ini").write_text(f"[main]\nmyhostname = {name}.example\n")
    return tmp_path


def test_findConfig_order(places):
    default = str(places / "default.ini")
    env = {"MTA_CONFIG": str(places / "environment.ini")}
    assert findConfig(str(places / "option.ini"), env, default) == ConfigSource(str(places / "option.ini"), "option")
    assert findConfig(None, env, default) == ConfigSource(str(places / "environment.ini"), "environment")
    assert findConfig(None, {}, default) == ConfigSource(default, "default")
    assert findConfig(None, {}, str(places / "absent.ini")) == ConfigSource(None, None)


def test_findConfig_an_empty_variable_is_unset(places):
    assert findConfig(None, {"MTA_CONFIG": ""}, str(places / "absent.ini")) == ConfigSource(None, None)


def test_findConfig_a_directory_means_mta_ini(places):
    (places / "etc").mkdir()
    assert findConfig(str(places / "etc"), {}, "/nonexistent").path == str(places / "etc" / "mta.ini")
    assert findConfig(None, {"MTA_CONFIG": str(places / "etc")}, "/nonexistent").path == str(places / "etc" / "mta.ini")


def test_findConfig_relative_names_become_absolute(places, monkeypatch):
    monkeypatch.chdir(places)
    assert findConfig("option.ini", {}, "/nonexistent").path == str(places / "option.ini")
    assert findConfig(None, {"MTA_CONFIG": "environment.ini"}, "/nonexistent").path == str(places / "environment.ini")


def test_findConfig_reads_os_environ_and_the_module_default(places, monkeypatch):
    monkeypatch.setenv("MTA_CONFIG", str(places / "environment.ini"))
    assert findConfig().source == "environment"
    monkeypatch.delenv("MTA_CONFIG")
    monkeypatch.setattr("mta.config.loader.DEFAULT_CONFIG", str(places / "default.ini"))
    assert findConfig() == ConfigSource(str(places / "default.ini"), "default")
    monkeypatch.setattr("mta.config.loader.DEFAULT_CONFIG", str(places / "absent.ini"))
    assert findConfig() == ConfigSource(None, None)


def test_loadConfig_loads_what_findConfig_finds(places):
    default = str(places / "default.ini")
    env = {"MTA_CONFIG": str(places / "environment.ini")}
    config = loadConfig(None, env, default)
    assert (config["myhostname"], config.path, config.source) == ("environment.example", env["MTA_CONFIG"], "environment")
    assert config.describe() == f"{env['MTA_CONFIG']} (from $MTA_CONFIG)"
    config = loadConfig(None, {}, default)
    assert (config["myhostname"], config.describe()) == ("default.example", f"{default} (the default location)")
    config = loadConfig(str(places / "option.ini"), env, default)
    assert config.describe() == f"{places / 'option.ini'} (from the command line)"
    config = loadConfig(None, {}, str(places / "absent.ini"))
    assert config.path is None and config.source is None
    assert config.describe() == "the embedded defaults (no -c, $MTA_CONFIG or /etc/mta/mta.ini)"
    assert config["queue_directory"].endswith("/var/spool/mta")


@pytest.mark.parametrize("explicit, env, how", [
    ("missing.ini", {}, "on the command line"),
    (None, {"MTA_CONFIG": "missing.ini"}, "by $MTA_CONFIG"),
])
def test_loadConfig_a_named_file_must_exist(places, monkeypatch, explicit, env, how):
    """Never a silent fall-back to the defaults when the file asked for is missing."""
    monkeypatch.chdir(places)
    with pytest.raises(ConfigNotFound) as e:
        loadConfig(explicit, env, str(places / "default.ini"))
    assert str(e.value) == f"{places / 'missing.ini'}: configuration file not found (named {how})"
    assert isinstance(e.value, ConfigError)


def test_loadConfig_passes_load_options(places):
    (places / "bad-endpoint.ini").write_text("[main]\n[listener:x]\nendpoint = nonsense:foo\n")
    with pytest.raises(ConfigError):
        loadConfig(str(places / "bad-endpoint.ini"), {}, "/nonexistent")
    assert loadConfig(str(places / "bad-endpoint.ini"), {}, "/nonexistent", checkEndpoints=False).listeners[0].name == "x"


def test_load_itself_reads_only_what_it_is_given(places, monkeypatch):
    """load() is not affected by $MTA_CONFIG or the default location; loadConfig() is."""
    monkeypatch.setenv("MTA_CONFIG", str(places / "environment.ini"))
    monkeypatch.setattr("mta.config.loader.DEFAULT_CONFIG", str(places / "default.ini"))
    config = load(None)
    assert (config.path, config.source, config["myhostname"]) == (None, None, BY_NAME["myhostname"].defaultText())
    assert loadConfig()["myhostname"] == "environment.example"
