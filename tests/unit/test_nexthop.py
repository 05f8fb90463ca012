"""mta.delivery.nexthop: the smtp(8) and lmtp(8) destination syntax."""

import socket

import pytest

from mta.delivery import nexthop as nexthopModule
from mta.delivery.nexthop import Nexthop, parseNexthop, parseRelayList, servicePort

SMTP_GOOD = [
    ("example.com", Nexthop("mx", "example.com", 25)),
    ("Example.COM", Nexthop("mx", "example.com", 25)),
    ("example.com.", Nexthop("mx", "example.com", 25)),
    ("example.com:2525", Nexthop("mx", "example.com", 2525)),
    ("example.com:smtp", Nexthop("mx", "example.com", 25)),
    ("example.com:submission", Nexthop("mx", "example.com", 587)),
    ("example.com:", Nexthop("mx", "example.com", 25)),
    ("mail_relay.example.com", Nexthop("mx", "mail_relay.example.com", 25)),
    ("bücher.example", Nexthop("mx", "bücher.example", 25)),
    ("xn--bcher-kva.example", Nexthop("mx", "xn--bcher-kva.example", 25)),
    ("localhost", Nexthop("mx", "localhost", 25)),
    ("[mail.example.com]", Nexthop("host", "mail.example.com", 25)),
    ("[mail.example.com]:587", Nexthop("host", "mail.example.com", 587)),
    ("[mail.example.com]:submission", Nexthop("host", "mail.example.com", 587)),
    ("[mail.example.com]:", Nexthop("host", "mail.example.com", 25)),
    ("[192.0.2.1]", Nexthop("host", "192.0.2.1", 25, True, "ipv4")),
    ("[192.0.2.1]:2525", Nexthop("host", "192.0.2.1", 2525, True, "ipv4")),
    ("[ipv6:2001:db8::1]", Nexthop("host", "2001:db8::1", 25, True, "ipv6")),
    ("[IPv6:2001:DB8::1]:465", Nexthop("host", "2001:db8::1", 465, True, "ipv6")),
    ("[2001:db8::1]:26", Nexthop("host", "2001:db8::1", 26, True, "ipv6")),
    ("[ipv6:::ffff:192.0.2.1]", Nexthop("host", "::ffff:c000:201", 25, True, "ipv6")),
    ("192.0.2.1", Nexthop("host", "192.0.2.1", 25, True, "ipv4")),
    ("192.0.2.1:2525", Nexthop("host", "192.0.2.1", 2525, True, "ipv4")),
    ("  example.com  ", Nexthop("mx", "example.com", 25)),
    ("example.com:65535", Nexthop("mx", "example.com", 65535)),
]

SMTP_BAD = [
    ("", "empty"),
    ("   ", "empty"),
    ("[mail.example.com", 'missing "]"'),
    ("[mail.example.com]x", 'garbage after "]"'),
    ("[mail.example.com]25", 'garbage after "]"'),
    ("[]", "missing host"),
    ("[]:25", "missing host"),
    ("[ipv6:192.0.2.1]", "malformed IPv6 address"),
    ("[ipv6:not-an-address]", "malformed IPv6 address"),
    ("[ipv6:fe80::1%eth0]", "malformed IPv6 address"),
    ("2001:db8::1", "[ipv6:address]"),
    (":25", "missing host"),
    ("example.com:0", "bad network port"),
    ("example.com:65536", "bad network port"),
    ("example.com:25x", "garbage after numerical service"),
    ("example.com:-1", "invalid service name"),
    ("example.com:nosuchservice", "unknown service: nosuchservice/tcp"),
    ("exa mple.com", "not a list"),
    ("a.com,b.com", "not a list"),
    ("-bad.example.com", "valid hostname"),
    ("bad-.example.com", "valid hostname"),
    ("a..example.com", "valid hostname"),
    ("ex!ample.com", "valid hostname"),
    ("1.2.3", "valid hostname"),
    ("1.2.3.4.5", "valid hostname"),
    ("x" * 64 + ".example.com", "valid hostname"),
    ("[exa mple]", "not a list"),
    ("[ex!ample.com]", "valid hostname"),
    ("unix:/var/run/lmtp", "invalid service name"),
    ("inet:host", "unknown service: host/tcp"),
    ("a:b:25", "valid hostname"),
]

LMTP_GOOD = [
    ("unix:/var/run/dovecot/lmtp", Nexthop("unix", "/var/run/dovecot/lmtp", None)),
    ("unix:private/dovecot-lmtp", Nexthop("unix", "private/dovecot-lmtp", None)),
    ("inet:mail.example.com", Nexthop("host", "mail.example.com", 24)),
    ("inet:mail.example.com:2424", Nexthop("host", "mail.example.com", 2424)),
    ("inet:mail.example.com:lmtp", Nexthop("host", "mail.example.com", 24)),
    ("inet:[192.0.2.5]:24", Nexthop("host", "192.0.2.5", 24, True, "ipv4")),
    ("inet:[ipv6:::1]:2424", Nexthop("host", "::1", 2424, True, "ipv6")),
    ("inet:127.0.0.1", Nexthop("host", "127.0.0.1", 24, True, "ipv4")),
    ("mail.example.com", Nexthop("host", "mail.example.com", 24)),
    ("mail.example.com:8024", Nexthop("host", "mail.example.com", 8024)),
    ("[mail.example.com]:8024", Nexthop("host", "mail.example.com", 8024)),
]

LMTP_BAD = [
    ("unix:", "missing UNIX-domain socket path"),
    ("inet:", "missing host"),
    ("inet::24", "missing host"),
    ("inet:[::1]x", 'garbage after "]"'),
    ("inet:host:0", "bad network port"),
    ("tcp:host:24", "valid hostname"),
]


@pytest.mark.parametrize("text, expected", SMTP_GOOD)
def test_smtp_good(text, expected):
    assert parseNexthop(text) == expected


@pytest.mark.parametrize("text, reason", SMTP_BAD)
def test_smtp_bad(text, reason):
    with pytest.raises(ValueError, match=reason.replace("[", r"\[").replace("]", r"\]")):
        parseNexthop(text)


@pytest.mark.parametrize("text, expected", LMTP_GOOD)
def test_lmtp_good(text, expected):
    assert parseNexthop(text, "lmtp") == expected


@pytest.mark.parametrize("text, reason", LMTP_BAD)
def test_lmtp_bad(text, reason):
    with pytest.raises(ValueError, match=reason):
        parseNexthop(text, "lmtp")


def test_default_port_parameter():
    """smtp_tcp_port / lmtp_tcp_port, as a number or a service name."""
    assert parseNexthop("example.com", defaultPort=2525).port == 2525
    assert parseNexthop("[example.com]", defaultPort="submission").port == 587
    assert parseNexthop("example.com:26", defaultPort=2525).port == 26
    assert parseNexthop("inet:host", "lmtp", defaultPort="2424").port == 2424


def test_unknown_protocol():
    with pytest.raises(ValueError, match="protocol"):
        parseNexthop("example.com", "uucp")


def test_service_fallback_table(monkeypatch):
    """Without /etc/services, the usual names still work."""

    def nothing(name, proto):
        raise OSError("service not found")

    monkeypatch.setattr(socket, "getservbyname", nothing)
    assert servicePort("smtp") == 25
    assert servicePort("submission") == 587
    assert servicePort("submissions") == 465
    assert servicePort("lmtp") == 24
    with pytest.raises(ValueError, match="unknown service: gopher/tcp"):
        servicePort("gopher")
    assert nexthopModule.parseNexthop("[h.example]:smtps").port == 465


def test_str_roundtrip():
    for text in ("example.com", "example.com:2525", "[mail.example.com]:25", "[192.0.2.1]:25",
                 "[ipv6:2001:db8::1]:25"):
        assert str(parseNexthop(text)) == text
    assert str(parseNexthop("unix:/run/lmtp", "lmtp")) == "unix:/run/lmtp"
    assert str(parseNexthop(str(parseNexthop("[ipv6:2001:db8::2]:26")))) == "[ipv6:2001:db8::2]:26"


def test_nexthop_is_frozen():
    hop = parseNexthop("example.com")
    with pytest.raises(Exception):
        hop.port = 26
    assert hash(hop) == hash(Nexthop("mx", "example.com", 25))


def test_relay_list():
    assert parseRelayList("") == ()
    assert parseRelayList("  ") == ()
    assert parseRelayList("[relay1.example]:587, relay2.example\n\t[192.0.2.9]") == (
        Nexthop("host", "relay1.example", 587),
        Nexthop("mx", "relay2.example", 25),
        Nexthop("host", "192.0.2.9", 25, True, "ipv4"),
    )
    assert parseRelayList(("a.example", "b.example,c.example")) == tuple(
        Nexthop("mx", n, 25) for n in ("a.example", "b.example", "c.example"))
    assert parseRelayList("unix:/run/lmtp inet:h:24", "lmtp") == (
        Nexthop("unix", "/run/lmtp", None), Nexthop("host", "h", 24))


def test_relay_list_names_the_bad_item():
    with pytest.raises(ValueError, match=r"^\[oops: missing"):
        parseRelayList("good.example, [oops")
