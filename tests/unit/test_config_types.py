"""mta.config.types: every value type's parser, good values and bad."""

import ipaddress
import os

import pytest

from mta.config import types as T
from mta.config.types import TableSpec, parseTableSpec, splitList


# -- splitList -----------------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        ("a, b,c", ("a", "b", "c")),
        ("a b\tc\n d", ("a", "b", "c", "d")),
        ("  a ,, b ,  ", ("a", "b")),
        ("", ()),
        ("inline:{ a=1, b=2 }, static:x", ("inline:{ a=1, b=2 }", "static:x")),
        ("inline:{ a=1, { b = two, words } }", ("inline:{ a=1, { b = two, words } }",)),
    ],
)
def test_splitList(text, expected):
    assert splitList(text) == expected


@pytest.mark.parametrize("text, reason", [("inline:{ a=1", "unbalanced '{'"), ("a }", "unbalanced '}'")])
def test_splitList_unbalanced(text, reason):
    with pytest.raises(ValueError, match=reason):
        splitList(text)


# -- scalars -----------------------------------------------------------------------


def test_string_strips():
    assert T.String().parse("  mail.example.com \t") == "mail.example.com"
    assert T.String().parse("") == ""


def test_path_relative_is_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert T.Path().parse(" var/spool/mta ") == os.path.join(str(tmp_path), "var", "spool", "mta")
    assert T.Path().parse("/var/spool/mta") == "/var/spool/mta"


def test_path_empty():
    with pytest.raises(ValueError, match="an empty path"):
        T.Path().parse("   ")


@pytest.mark.parametrize("text, value", [("0", 0), (" 42 ", 42), ("1000", 1000)])
def test_integer_good(text, value):
    assert T.Integer().parse(text) == value


@pytest.mark.parametrize("text", ["", "4.2", "12k", "+5", "ten", "1 000"])
def test_integer_bad(text):
    with pytest.raises(ValueError, match="is not an integer"):
        T.Integer().parse(text)


def test_integer_minimum():
    assert T.Integer(minimum=80).parse("80") == 80
    with pytest.raises(ValueError, match="79 is below the minimum 80"):
        T.Integer(minimum=80).parse("79")
    with pytest.raises(ValueError, match="below the minimum 0"):
        T.Integer().parse("-1")


@pytest.mark.parametrize(
    "text, value",
    [
        ("10240000", 10240000),
        ("0", 0),
        ("10k", 10 * 1024),
        ("10K", 10 * 1024),
        ("10m", 10 * 1024**2),
        ("2g", 2 * 1024**3),
        ("10kb", 10 * 1024),
        (" 512 ", 512),
    ],
)
def test_size_good(text, value):
    assert T.Size().parse(text) == value


@pytest.mark.parametrize("text", ["", "ten", "-1", "1.5m", "1t", "10 m", "m"])
def test_size_bad(text):
    with pytest.raises(ValueError, match="is not a size in bytes"):
        T.Size().parse(text)


@pytest.mark.parametrize(
    "text, seconds",
    [
        ("300s", 300),
        ("5m", 300),
        ("2h", 7200),
        ("1d", 86400),
        ("1w", 604800),
        ("1.5h", 5400),
        ("10 s", 10),
        ("30S", 30),
        ("45", 45),  # no unit: the parameter's default unit, s here
    ],
)
def test_time_good(text, seconds):
    value = T.Time("s").parse(text)
    assert value == seconds
    assert isinstance(value, float)


@pytest.mark.parametrize("unit, seconds", [("s", 2), ("m", 120), ("h", 7200), ("d", 172800), ("w", 1209600)])
def test_time_default_unit_per_parameter(unit, seconds):
    assert T.Time(unit).parse("2") == seconds
    # an explicit unit wins over the default unit
    assert T.Time(unit).parse("2s") == 2


@pytest.mark.parametrize("text", ["", "s", "-5s", "5x", "5 minutes", "1e3", "5ms"])
def test_time_bad(text):
    with pytest.raises(ValueError, match="is not a time"):
        T.Time().parse(text)


@pytest.mark.parametrize(
    "text, value", [("yes", True), ("YES", True), (" true ", True), ("no", False), ("No", False), ("false", False)]
)
def test_boolean_good(text, value):
    assert T.Boolean().parse(text) is value


@pytest.mark.parametrize("text", ["", "1", "0", "maybe", "on", "y"])
def test_boolean_bad(text):
    with pytest.raises(ValueError, match="is not yes or no"):
        T.Boolean().parse(text)


def test_choice():
    choice = T.Choice(("may", "encrypt", "none"))
    assert choice.parse(" Encrypt ") == "encrypt"
    with pytest.raises(ValueError, match="'dane' is not one of may, encrypt, none"):
        choice.parse("dane")


def test_list():
    assert T.List().parse("a, b c,{ d, e }") == ("a", "b", "c", "{ d, e }")
    assert T.List().parse("") == ()


# -- tables ----------------------------------------------------------------------


def test_parseTableSpec():
    assert parseTableSpec(" texthash:/etc/mta/access ") == TableSpec("texthash", "/etc/mta/access")
    assert parseTableSpec("inline:{ a=1, b=2 }") == TableSpec("inline", "{ a=1, b=2 }")
    assert str(TableSpec("static", "OK")) == "static:OK"


@pytest.mark.parametrize("text", ["/etc/mta/access", "texthash:", ":x", "Texthash:/x", "9x:/y", ""])
def test_parseTableSpec_bad(text):
    with pytest.raises(ValueError, match=r"is not a lookup table \(type:name\)"):
        parseTableSpec(text)


def test_tables():
    assert T.Tables().parse("texthash:/a, inline:{ x=1, y=2 } static:OK") == (
        TableSpec("texthash", "/a"),
        TableSpec("inline", "{ x=1, y=2 }"),
        TableSpec("static", "OK"),
    )
    assert T.Tables().parse("") == ()
    with pytest.raises(ValueError, match="not a lookup table"):
        T.Tables().parse("texthash:/a, /b")


# -- domains --------------------------------------------------------------------


def test_domains_folded_and_stripped():
    assert T.DomainList().parse("Example.COM., localhost, .sub.example.org mail-1.example.net") == (
        "example.com",
        "localhost",
        ".sub.example.org",
        "mail-1.example.net",
    )


def test_domains_with_tables():
    assert T.DomainList().parse("example.com, texthash:/etc/mta/relay") == (
        "example.com",
        TableSpec("texthash", "/etc/mta/relay"),
    )


def test_domains_file_name_needs_type():
    with pytest.raises(ValueError, match="a file name needs a table type, e.g. texthash:/etc/mta/relay"):
        T.DomainList().parse("/etc/mta/relay")


@pytest.mark.parametrize("text", ["bad..name", "-bad.example", "bad.example-", "exa mple@x", "ex!ample.com", "."])
def test_domains_bad(text):
    with pytest.raises(ValueError, match="is not a domain name"):
        T.DomainList().parse(text)


# -- networks ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, network",
    [
        ("127.0.0.0/8", "127.0.0.0/8"),
        ("192.0.2.1", "192.0.2.1/32"),
        ("[::1]/128", "::1/128"),
        ("[::1]", "::1/128"),
        ("[::ffff:127.0.0.0]/104", "::ffff:127.0.0.0/104"),
        ("::1", "::1/128"),
        ("2001:db8::/32", "2001:db8::/32"),
        ("fe80::/10", "fe80::/10"),
        ("[2001:DB8::]/32", "2001:db8::/32"),
    ],
)
def test_networks_good(text, network):
    assert T.Networks().parse(text) == (ipaddress.ip_network(network),)


def test_networks_list_and_tables():
    assert T.Networks().parse("127.0.0.0/8 [::1]/128, texthash:/etc/mta/networks") == (
        ipaddress.ip_network("127.0.0.0/8"),
        ipaddress.ip_network("::1/128"),
        TableSpec("texthash", "/etc/mta/networks"),
    )


@pytest.mark.parametrize("text", ["10.0.0.1/8", "[::1]/64", "192.168.1.1/24"])
def test_networks_host_bits_set(text):
    with pytest.raises(ValueError, match="has host bits set"):
        T.Networks().parse(text)


@pytest.mark.parametrize("text", ["999.1.1.1", "[::1/128", "[::1]/", "[example]", "10.0.0.0/33", "1.2.3"])
def test_networks_bad(text):
    with pytest.raises(ValueError, match="is not an address or network"):
        T.Networks().parse(text)


def test_networks_bare_ipv6_host_bits_set():
    with pytest.raises(ValueError, match="has host bits set"):
        T.Networks().parse("fe80::1/10")


# -- enumerated lists --------------------------------------------------------------


def test_choice_list_folds_case_and_drops_duplicates():
    kind = T.ChoiceList(("dns", "native"))
    assert kind.parse("DNS, native dns") == ("dns", "native")
    assert kind.parse("") == ()


@pytest.mark.parametrize("text", ["ipv5", "all, ipv5", "bounces"])
def test_choice_list_refuses_unknown_items(text):
    with pytest.raises(ValueError, match="is not one of"):
        T.ChoiceList(("all", "ipv4", "ipv6", "bounce")).parse(text)


def test_choice_list_minimum():
    with pytest.raises(ValueError, match="needs at least 1"):
        T.ChoiceList(("dns", "native"), minimum=1).parse(" ")
