"""mta.tables.cidr: cidr: tables."""

import os

import pytest
from twisted.internet.task import Clock
from twisted.logger import LogLevel, capturedLogs
from zope.interface.verify import verifyObject

from mta.interfaces import ILookupTable
from mta.tables import TableError, Tables
from mta.tables.cidr import CidrTable, parseAddress
from mta.tables.texthash import CHECK_INTERVAL
from mta.testing import resultOf


@pytest.fixture
def clock():
    return Clock()


def table(tmp_path, clock, text, name="t"):
    path = tmp_path / name
    path.write_text(text)
    return CidrTable(str(path), clock)


def answers(t, keys):
    return {k: resultOf(t.lookup(k)) for k in keys}


MANUAL = """# Rule order matters. Put more specific allowlist entries
# before more general denylist entries.
192.168.1.1             OK
192.168.0.0/16          REJECT
2001:db8::1             OK
2001:db8::/32           REJECT
"""


def test_manual_example(tmp_path, clock):
    t = table(tmp_path, clock, MANUAL)
    assert verifyObject(ILookupTable, t)
    assert t.pattern is True
    assert answers(t, ["192.168.1.1", "192.168.200.7", "192.169.0.1", "2001:db8::1", "2001:DB8:0::1",
                       "2001:db8::2", "2001:db9::1", "::ffff:192.168.1.1"]) == {
        "192.168.1.1": "OK", "192.168.200.7": "REJECT", "192.169.0.1": None, "2001:db8::1": "OK",
        "2001:DB8:0::1": "OK", "2001:db8::2": "REJECT", "2001:db9::1": None,
        "::ffff:192.168.1.1": None,  # an IPv6 key never matches an IPv4 rule
    }


def test_negation_brackets_and_families(tmp_path, clock):
    t = table(tmp_path, clock, "[::1] loopback6\n[127.0.0.0]/8 loopback\n!10.0.0.0/8 not-ten\n::/0 any6\n")
    assert answers(t, ["::1", "127.1.2.3", "10.1.1.1", "11.1.1.1", "fe80::1"]) == {
        "::1": "loopback6", "127.1.2.3": "loopback", "10.1.1.1": None, "11.1.1.1": "not-ten", "fe80::1": "any6"}


def test_if_endif_nesting(tmp_path, clock):
    text = "\n".join([
        "if 172.16.0.0/12",
        "IF !172.16.5.0/24",
        "172.16.0.0/16 in-16-not-5",
        "endif",
        "172.16.0.0/12 rest",
        "ENDIF",
        "if ::/0",
        "0.0.0.0/0 never",  # an IPv4 rule inside an IPv6 block
        "endif",
        "0.0.0.0/0 any4",
    ])
    t = table(tmp_path, clock, text)
    assert answers(t, ["172.16.1.1", "172.16.5.1", "172.17.0.1", "10.0.0.1", "::1"]) == {
        "172.16.1.1": "in-16-not-5", "172.16.5.1": "rest", "172.17.0.1": "rest", "10.0.0.1": "any4", "::1": None}


def test_keys_that_are_not_addresses_match_nothing(tmp_path, clock):
    t = table(tmp_path, clock, "0.0.0.0/0 any4\n::/0 any6\n")
    for key in ["", "example.com", "1.2.3", "1.2.3.4.5", "01.2.3.4", "1.2.3.256", "[1.2.3.4]", " 1.2.3.4",
                "1.2.3.4 ", "1.2.3.4/32", "fe80::1%eth0", "1:2:3:4:5:6:7:8:9", "١.٢.٣.٤", "1.2.3.4\n", "\0"]:
        assert resultOf(t.lookup(key)) is None, key
    assert parseAddress("::1.2.3.4").version == 6


def test_host_bits_set_warns_and_skips_the_rule(tmp_path, clock):
    with capturedLogs() as events:
        t = table(tmp_path, clock, "10.1.2.3/8 skipped\n10.0.0.0/8 ten\n")
    assert resultOf(t.lookup("10.1.2.3")) == "ten"
    warnings = [e for e in events if e["log_level"] == LogLevel.warn]
    assert len(warnings) == 1 and warnings[0]["line"] == 1
    assert warnings[0]["reason"] == ('non-null host address bits in "10.1.2.3/8", '
                                     'perhaps you should use "10.0.0.0/8" instead')


@pytest.mark.parametrize("text, message", [
    ("10.0.0.0/33 x\n", ':1: bad mask length in "10.0.0.0/33"'),
    ("1.2.3.4\n", ":1: no lookup result"),
    ("10.0.0.0/a x\n", ':1: bad mask value in "10.0.0.0/a"'),
    ("# c\n10.0.0.256/8 x\n", ':2: bad network value in "10.0.0.256/8"'),
    ("example.com x\n", ':1: bad address pattern: "example.com"'),
    ("[1.2.3.4 x\n", ":1: missing ']' character"),
    ("[1.2.3.4]x y\n", ':1: garbage after "[1.2.3.4]"'),
    ("if 10.0.0.0/8\nendif x\n", ":2: garbage after ENDIF"),
    ("endif\n", ":1: ENDIF without matching IF"),
    ("if 10.0.0.0/8\n", ":1: IF has no matching ENDIF"),
    ("if\n", ":1: no address pattern"),
])
def test_errors_name_file_and_line(tmp_path, clock, text, message):
    with pytest.raises(TableError) as info:
        table(tmp_path, clock, text, "bad")
    assert str(info.value).startswith(str(tmp_path / "bad") + message), str(info.value)


def test_inline_form(clock):
    t = Tables(clock).open("cidr:{ {10.0.0.0/8 ten}, {2001:db8::/32 doc, prefix} }")
    assert answers(t, ["10.9.9.9", "2001:db8::7", "11.0.0.1"]) == {
        "10.9.9.9": "ten", "2001:db8::7": "doc, prefix", "11.0.0.1": None}
    with pytest.raises(TableError) as info:
        Tables(clock).open("cidr:{ {10.0.0.0/8 ten}, {bogus x} }")
    assert ":2: bad address pattern" in str(info.value)


def test_reload(tmp_path, clock):
    path = tmp_path / "c"
    path.write_text("10.0.0.0/8 OLD\n")
    os.utime(path, (1_000_000, 1_000_000))
    t = CidrTable(str(path), clock)
    path.write_text("10.0.0.0/8 NEW\n")
    os.utime(path, (1_000_100, 1_000_100))
    assert resultOf(t.lookup("10.0.0.1")) == "OLD"
    clock.advance(CHECK_INTERVAL + 0.1)
    assert resultOf(t.lookup("10.0.0.1")) == "NEW"
    path.write_text("10.0.0.0/40 broken\n")
    os.utime(path, (1_000_200, 1_000_200))
    clock.advance(CHECK_INTERVAL + 0.1)
    with capturedLogs() as events:
        assert resultOf(t.lookup("10.0.0.1")) == "NEW"
    assert any(e["log_level"] == LogLevel.error for e in events)
