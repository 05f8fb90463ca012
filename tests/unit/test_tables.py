"""mta.tables: texthash, inline and static tables, Tables, address search order."""

import os

import pytest
from twisted.internet.defer import fail, succeed
from twisted.internet.task import Clock
from twisted.logger import LogLevel, capturedLogs
from zope.interface.verify import verifyObject

from mta.interfaces import ILookupTable
from mta.tables import TableError, Tables, TableTemporaryError, addressKeys, lookupAddress
from mta.tables.inline import InlineTable, StaticTable
from mta.tables.texthash import CHECK_INTERVAL, TextHashTable, parseTextTable
from mta.testing import resultOf


result = resultOf


def lookup(table, key):
    return result(table.lookup(key))


# -- texthash: the format ----------------------------------------------------------


def test_parseTextTable_format():
    lines = [
        "# a comment",
        "",
        "alice@example.com   REJECT go away",
        "Bob@Example.COM\tOK",
        "example.net  550 5.7.1 no",
        "   thank you",  # continues the entry above
        "\t# indented comment line",
        "key value # with a hash",
    ]
    assert parseTextTable("t", lines) == {
        "alice@example.com": "REJECT go away",
        "bob@example.com": "OK",
        "example.net": "550 5.7.1 no   thank you",  # Postfix's readllines() keeps the white space
        "key": "value # with a hash",
    }


def test_parseTextTable_duplicate_keeps_the_first_and_warns():
    with capturedLogs() as events:
        entries = parseTextTable("/etc/t", ["key first", "KEY second"])
    assert entries == {"key": "first"}
    warnings = [e for e in events if e["log_level"] == LogLevel.warn]
    assert len(warnings) == 1
    assert (warnings[0]["path"], warnings[0]["line"], warnings[0]["key"]) == ("/etc/t", 2, "key")


def test_parseTextTable_missing_value():
    with pytest.raises(TableError) as info:
        parseTextTable("/etc/mta/access", ["ok OK", "# c", "lonely"])
    assert str(info.value) == "/etc/mta/access:3: expected 'key value', found only 'lonely'"


def test_parseTextTable_continuation_first():
    with pytest.raises(TableError) as info:
        parseTextTable("/etc/mta/access", ["# c", "  value"])
    assert str(info.value) == "/etc/mta/access:2: continuation line with no entry before it"


# -- texthash: the table -----------------------------------------------------------


@pytest.fixture
def clock():
    return Clock()


def writeTable(path, text, mtime):
    path.write_text(text, encoding="utf-8")
    os.utime(path, (mtime, mtime))


def test_texthash_lookup(tmp_path, clock):
    path = tmp_path / "access"
    path.write_text("Alice@Example.com OK\n")
    table = Tables(clock).open(f"texthash:{path}")
    assert isinstance(table, TextHashTable)
    assert verifyObject(ILookupTable, table)
    assert table.spec == f"texthash:{path}"
    assert lookup(table, "alice@example.com") == "OK"
    assert lookup(table, "ALICE@EXAMPLE.COM") == "OK"
    assert lookup(table, "bob@example.com") is None


def test_texthash_missing_file(tmp_path, clock):
    path = tmp_path / "nosuch"
    with pytest.raises(TableError) as info:
        TextHashTable(str(path), clock)
    assert str(info.value) == f"{path}: cannot open table: No such file or directory"


def test_texthash_syntax_error_at_open(tmp_path, clock):
    path = tmp_path / "access"
    path.write_text("a OK\nb\n")
    with pytest.raises(TableError, match=f"^{path}:2: expected 'key value'"):
        TextHashTable(str(path), clock)


def test_texthash_not_utf8(tmp_path, clock):
    path = tmp_path / "access"
    path.write_bytes(b"a OK\ncaf\xe9 OK\n")
    with pytest.raises(TableError) as info:
        TextHashTable(str(path), clock)
    assert str(info.value) == f"{path}: not UTF-8 text (byte 8)"


def test_texthash_reloads_when_the_file_changes(tmp_path, clock):
    path = tmp_path / "access"
    writeTable(path, "a OLD\n", 1_000_000)
    table = TextHashTable(str(path), clock)
    assert lookup(table, "a") == "OLD"

    writeTable(path, "a NEW\nb ADDED\n", 1_000_100)
    clock.advance(CHECK_INTERVAL / 2)
    assert lookup(table, "a") == "OLD"  # checked at most once a second

    clock.advance(CHECK_INTERVAL)
    with capturedLogs() as events:
        assert lookup(table, "a") == "NEW"
    assert lookup(table, "b") == "ADDED"
    assert any(e.get("count") == 2 and "reloaded" in e["log_format"] for e in events)


def test_texthash_unchanged_file_is_not_read_again(tmp_path, clock, monkeypatch):
    path = tmp_path / "access"
    writeTable(path, "a OK\n", 1_000_000)
    table = TextHashTable(str(path), clock)
    monkeypatch.setattr(table, "_read", lambda: pytest.fail("read again"))
    clock.advance(5)
    assert lookup(table, "a") == "OK"


def test_texthash_keeps_old_contents_when_the_new_file_is_broken(tmp_path, clock):
    path = tmp_path / "access"
    writeTable(path, "a OLD\n", 1_000_000)
    table = TextHashTable(str(path), clock)

    writeTable(path, "a NEW\nbroken\n", 1_000_100)
    clock.advance(2)
    with capturedLogs() as events:
        assert lookup(table, "a") == "OLD"
    errors = [e for e in events if e["log_level"] == LogLevel.error]
    assert len(errors) == 1
    assert errors[0]["error"] == f"{path}:2: expected 'key value', found only 'broken'"

    # fixed again: the next check picks it up
    writeTable(path, "a FIXED\n", 1_000_200)
    clock.advance(2)
    assert lookup(table, "a") == "FIXED"


def test_texthash_keeps_old_contents_when_the_file_goes_away(tmp_path, clock):
    path = tmp_path / "access"
    writeTable(path, "a OLD\n", 1_000_000)
    table = TextHashTable(str(path), clock)
    path.unlink()
    clock.advance(2)
    with capturedLogs() as events:
        assert lookup(table, "a") == "OLD"
    assert any(e["log_level"] == LogLevel.error and e.get("path") == str(path) for e in events)


# -- inline and static ---------------------------------------------------------------


def test_inline():
    table = Tables(Clock()).open("inline:{ Alice@Example.com=OK, b=REJECT { c = 550 5.7.1 no, thanks } }")
    assert isinstance(table, InlineTable)
    assert verifyObject(ILookupTable, table)
    assert lookup(table, "alice@example.com") == "OK"
    assert lookup(table, "B") == "REJECT"
    assert lookup(table, "c") == "550 5.7.1 no, thanks"
    assert lookup(table, "d") is None


def test_inline_duplicate_keeps_the_first():
    assert lookup(InlineTable("{ a=1, A=2 }"), "a") == "1"


def test_inline_empty():
    assert lookup(InlineTable("{ }"), "a") is None


@pytest.mark.parametrize(
    "name, reason",
    [
        ("a=1", "expected inline:{ key=value, ... }"),
        ("{ a=1, b }", "entry 'b' is not key=value"),
        ("{ =1 }", "entry '=1' is not key=value"),
        # white space separates entries, as in Postfix: 'key = value' needs braces
        ("{ b = REJECT }", "entry 'b' is not key=value"),
        ("{ { a=1 }", "unbalanced '{'"),
    ],
)
def test_inline_errors(name, reason):
    with pytest.raises(TableError) as info:
        InlineTable(name)
    assert str(info.value) == f"inline:{name}: {reason}"


def test_static():
    table = Tables(Clock()).open("static:{ 550 5.7.1 go away }")
    assert isinstance(table, StaticTable)
    assert lookup(table, "anything") == "550 5.7.1 go away"
    assert lookup(StaticTable("OK"), "") == "OK"


# -- Tables ----------------------------------------------------------------------------


def test_unknown_table_type():
    with pytest.raises(TableError) as info:
        Tables(Clock()).open("hash:/etc/postfix/access")
    assert str(info.value) == "hash:/etc/postfix/access: unsupported table type 'hash' (known: cidr, fail, inline, ldap, lmdb, mysql, pcre, pgsql, pipemap, regexp, socketmap, sqlite, static, tcp, texthash, unionmap, unix)"


def test_tables_open_once(tmp_path):
    path = tmp_path / "t"
    path.write_text("a b\n")
    tables = Tables(Clock())
    assert tables.open(f"texthash:{path}") is tables.open(f"texthash:{path}")
    assert tables.open("static:OK") is not tables.open("static:NO")


# -- address search order ------------------------------------------------------------


@pytest.mark.parametrize(
    "address, delimiter, local, keys",
    [
        ("User+Ext@Example.COM", "+", False, ["user+ext@example.com", "user@example.com", "@example.com"]),
        (
            "user+ext@example.com",
            "+",
            True,
            ["user+ext@example.com", "user@example.com", "user+ext", "user", "@example.com"],
        ),
        ("user+ext@example.com", "", False, ["user+ext@example.com", "@example.com"]),
        ("user+ext@example.com", "", True, ["user+ext@example.com", "user+ext", "@example.com"]),
        ("user@example.com", "+", False, ["user@example.com", "@example.com"]),
        ("user@example.com", "+", True, ["user@example.com", "user", "@example.com"]),
        # several delimiter characters: the first one present cuts
        ("a-b+c@x.org", "+-", False, ["a-b+c@x.org", "a@x.org", "@x.org"]),
        # postmaster and mailer-daemon are never split (as Postfix: the whole local
        # part is compared); a leading delimiter does not cut
        ("mailer-daemon@x.org", "-", False, ["mailer-daemon@x.org", "@x.org"]),
        ("postmaster@x.org", "+-", True, ["postmaster@x.org", "postmaster", "@x.org"]),
        ("postmaster+x@x.org", "+", False, ["postmaster+x@x.org", "postmaster@x.org", "@x.org"]),
        ("+foo@x.org", "+", False, ["+foo@x.org", "@x.org"]),
        # no domain: local keys only
        ("user+ext", "+", False, ["user+ext", "user"]),
        # the last @ separates the domain
        ('"a@b"@x.org', "", False, ['"a@b"@x.org', "@x.org"]),
    ],
)
def test_addressKeys(address, delimiter, local, keys):
    assert addressKeys(address, delimiter, local) == keys


run = resultOf


def test_lookupAddress_first_match_in_order():
    table = InlineTable("{ @example.com=CATCHALL, user@example.com=USER, user=LOCAL }")
    assert run(lookupAddress(table, "user+ext@example.com", "+")) == ("user@example.com", "USER")
    assert run(lookupAddress(table, "other@example.com", "+")) == ("@example.com", "CATCHALL")
    assert run(lookupAddress(table, "user@example.org", "+", local=True)) == ("user", "LOCAL")
    assert run(lookupAddress(table, "user@example.org", "+")) is None


def test_lookupAddress_without_delimiter():
    table = InlineTable("{ user@example.com=USER }")
    assert run(lookupAddress(table, "user+ext@example.com")) is None
    assert run(lookupAddress(table, "user+ext@example.com", "+")) == ("user@example.com", "USER")


class _RecordingTable:
    def __init__(self, answers):
        self.answers = answers
        self.keys = []

    def lookup(self, key):
        self.keys.append(key)
        answer = self.answers.get(key)
        if isinstance(answer, Exception):
            return fail(answer)
        return succeed(answer)


def test_lookupAddress_stops_at_the_first_hit():
    table = _RecordingTable({"user@example.com": "HIT"})
    assert run(lookupAddress(table, "user+x@example.com", "+", local=True)) == ("user@example.com", "HIT")
    assert table.keys == ["user+x@example.com", "user@example.com"]


def test_lookupAddress_temporary_error_propagates():
    table = _RecordingTable({"user@example.com": TableTemporaryError("try again")})
    with pytest.raises(TableTemporaryError, match="try again"):
        run(lookupAddress(table, "user@example.com"))
    assert table.keys == ["user@example.com"]  # no fallback to @domain after a failure
