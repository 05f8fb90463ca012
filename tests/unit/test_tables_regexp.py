"""mta.tables.regexp and mta.tables.retranslate: regexp: and pcre: tables."""

import os

import pytest
from twisted.internet.task import Clock
from twisted.logger import LogLevel, capturedLogs
from zope.interface.verify import verifyObject

from mta.interfaces import ILookupTable
from mta.tables import TableError, Tables, TableTemporaryError
from mta.tables.patternfile import logicalLines
from mta.tables.regexp import MAX_KEY, RegexpTable, parseReplacement
from mta.tables.pcretranslate import pcreToPython
from mta.tables.retranslate import PatternError, posixToPython
from mta.tables.texthash import CHECK_INTERVAL
from mta.testing import resultOf


@pytest.fixture
def clock():
    return Clock()


def writeTable(path, text, mtime=None):
    path.write_text(text, encoding="utf-8")
    if mtime is not None:
        os.utime(path, (mtime, mtime))


def table(tmp_path, clock, dialect, text, name="t"):
    path = tmp_path / name
    writeTable(path, text)
    return RegexpTable(dialect, str(path), clock)


def answers(t, keys):
    return {k: resultOf(t.lookup(k)) for k in keys}


def openError(tmp_path, clock, dialect, text):
    with pytest.raises(TableError) as info:
        table(tmp_path, clock, dialect, text, "bad")
    return str(info.value)


# -- the manual pages' examples -----------------------------------------------------------


REGEXP_MANUAL = r"""# Disallow sender-specified routing.
/[%!@].*[%!@]/       550 Sender-specified routing rejected

/^postmaster@/       OK

# Protect your outgoing majordomo exploders
if !/^owner-/
/^(.*)-outgoing@(.*)$/  550 Use ${1}@${2} instead
endif
/^Subject: make money fast/     REJECT
/^To: friend@public\.com/       REJECT
~^[[:alnum:]+/]{60,}$~          OK
"""


def test_regexp_manual_example(tmp_path, clock):
    t = table(tmp_path, clock, "regexp", REGEXP_MANUAL)
    assert answers(t, ["user%other@relay", "Postmaster@example.com", "list-outgoing@example.com",
                       "owner-list-outgoing@example.com", "SUBJECT: Make Money Fast!", "To: friend@public.com",
                       "To: friend@publicXcom", "QUJD" * 15, "QUJD" * 14 + "Q=", "user@example.com"]) == {
        "user%other@relay": "550 Sender-specified routing rejected",
        "Postmaster@example.com": "OK",
        "list-outgoing@example.com": "550 Use list@example.com instead",
        "owner-list-outgoing@example.com": None,
        "SUBJECT: Make Money Fast!": "REJECT",
        "To: friend@public.com": "REJECT",
        "To: friend@publicXcom": None,
        "QUJD" * 15: "OK",
        "QUJD" * 14 + "Q=": None,
        "user@example.com": None,
    }


PCRE_MANUAL = r"""/^(?!owner-)(.*)-outgoing@(.*)/ 550 Use ${1}@${2} instead
/^(friend@(?!my\.domain$).*)$/  550 Stick this in your pipe $1

# A multi-line entry. The text is sent as one line.
#
/^noddy@my\.domain$/
 550 This user is a funny one. You really don't want to send mail to
 them as it only makes their head spin.
"""


def test_pcre_manual_example(tmp_path, clock):
    t = table(tmp_path, clock, "pcre", PCRE_MANUAL)
    assert answers(t, ["list-outgoing@example.com", "owner-list-outgoing@example.com", "friend@example.org",
                       "friend@my.domain", "noddy@my.domain"]) == {
        "list-outgoing@example.com": "550 Use list@example.com instead",
        "owner-list-outgoing@example.com": None,
        "friend@example.org": "550 Stick this in your pipe friend@example.org",
        "friend@my.domain": None,
        "noddy@my.domain": "550 This user is a funny one. You really don't want to send mail to"
                           " them as it only makes their head spin.",
    }


def test_interface_and_pattern_attribute(tmp_path, clock):
    for dialect in ("regexp", "pcre"):
        t = table(tmp_path, clock, dialect, "/x/ y\n")
        assert verifyObject(ILookupTable, t)
        assert t.pattern is True
        assert t.spec == f"{dialect}:{tmp_path / 't'}"


def test_opened_through_tables_registry(tmp_path, clock):
    writeTable(tmp_path / "r", "/^a/ A\n")
    tables = Tables(clock)
    for dialect in ("regexp", "pcre"):
        t = tables.open(f"{dialect}:{tmp_path / 'r'}")
        assert resultOf(t.lookup("abc")) == "A"


# -- file format --------------------------------------------------------------------------


def test_logical_lines_as_readllines():
    text = "# c\n/a/\n  b\n# inside\n\tc\n\n/d/ e  \n   \n/f/ g"
    assert logicalLines(text) == [(2, "/a/  b\tc"), (7, "/d/ e"), (9, "/f/ g")]


def test_first_match_wins_and_delimiters(tmp_path, clock):
    t = table(tmp_path, clock, "regexp", "|^a/b|   slash inside\n/^a/ first\n/^ab/ second\n%^c\\%%    percent\n")
    assert answers(t, ["a/b", "ab", "c%", "c"]) == {"a/b": "slash inside", "ab": "first", "c%": "percent", "c": None}


def test_negative_rules_and_second_pattern(tmp_path, clock):
    t = table(tmp_path, clock, "regexp", "/^a/!/b$/ a-not-b\n!/@/ no-at\n! ! /^z/ double-negation\n")
    assert answers(t, ["ax", "ab", "x@y", "z@y", "q@y"]) == {
        "ax": "a-not-b", "ab": "no-at", "x@y": None, "z@y": "double-negation", "q@y": None}


def test_if_endif_nesting(tmp_path, clock):
    text = "\n".join([
        "if /@example\\.com$/",
        "If !/^postmaster@/",
        "/^(.*)\\+.*@/ extension $1",
        "ENDIF",
        "/^postmaster@/ pm",
        "endif",
        "/^/ outside",
    ])
    t = table(tmp_path, clock, "pcre", text)
    assert answers(t, ["a+b@example.com", "postmaster@example.com", "bob@example.com", "a+b@example.org"]) == {
        "a+b@example.com": "extension a",
        "postmaster@example.com": "pm",
        "bob@example.com": "outside",
        "a+b@example.org": "outside",
    }


def test_empty_result_warns_and_answers_empty(tmp_path, clock):
    with capturedLogs() as events:
        t = table(tmp_path, clock, "regexp", "/^a/\n")
    assert resultOf(t.lookup("a")) == ""
    assert any(e["log_level"] == LogLevel.warn and e.get("line") == 1 for e in events)


def test_inline_form(clock):
    t = Tables(clock).open("regexp:{ {/^(a+)$/ many $1}, {/, comma/ with, comma} }")
    assert answers(t, ["aaa", "x, comma", "b"]) == {"aaa": "many aaa", "x, comma": "with, comma", "b": None}
    p = Tables(clock).open("pcre:{{/^\\d+$/ digits}}")
    assert resultOf(p.lookup("123")) == "digits"
    with pytest.raises(TableError) as info:
        Tables(clock).open("pcre:{ {/ok/ x}, {/(/ y} }")
    assert str(info.value).startswith("pcre:{ {/ok/ x}, {/(/ y} }:2: ")


# -- substitution -------------------------------------------------------------------------


def test_parse_replacement():
    assert parseReplacement("a $1 ${2}$(3) $$ $$1 ${1}0") == ["a ", 1, " ", 2, 3, " $ $1 ", 1, "0"]
    for bad in ("$x", "$0", "${}", "${1", "$ ", "$"):
        with pytest.raises(ValueError):
            parseReplacement(bad)


def test_substitution(tmp_path, clock):
    t = table(tmp_path, clock, "pcre", "/^(a)?(b)(c*)$/ [$1][$2][$3] $$ ${2}x $(2)y\n/^(d)$/ cost $$$1\n")
    assert resultOf(t.lookup("bc")) == "[][b][c] $ bx by"  # $1 did not take part: nothing
    assert resultOf(t.lookup("ab")) == "[a][b][] $ bx by"
    assert resultOf(t.lookup("d")) == "cost $d"


def test_substitution_keeps_non_ascii(tmp_path, clock):
    t = table(tmp_path, clock, "regexp", "/^(.*)@(.*)$/ user=$1 domain=$2\n")
    assert resultOf(t.lookup("jürgen@bücher.example")) == "user=jürgen domain=bücher.example"


# -- regexp: flags ------------------------------------------------------------------------


def test_regexp_flags(tmp_path, clock):
    text = "\n".join([
        "/^case$/i sensitive",
        "/^CASE2$/ insensitive",
        "/^a.b$/ dot-newline",
        "/^x$/m line-anchors",
        "/^b\\(re\\)\\{2\\}$/x basic-$1",
        "/^c+$/x bre-plus-literal",
        "/^m.n$/m dot-no-newline",
        "/^e$/ end-only",
    ])
    t = table(tmp_path, clock, "regexp", text)
    assert answers(t, ["case", "CASE", "case2", "a\nb", "y\nx\nz", "brere", "c+", "cc", "m\nn", "e\n"]) == {
        "case": "sensitive", "CASE": None, "case2": "insensitive", "a\nb": "dot-newline", "y\nx\nz": "line-anchors",
        "brere": "basic-re", "c+": "bre-plus-literal", "cc": None, "m\nn": None, "e\n": None,
    }


def test_posix_translation():
    assert posixToPython("a{2,3}") == r"\x61{2,3}"
    assert posixToPython("[[:digit:]x-z]") == r"[\x30-\x39\x78-\x7a]"
    assert posixToPython("[^a]", newline=True) == r"[\x00-\x09\x0b-\x60\x62-\xff]"
    assert posixToPython("a$") == r"\x61\Z"  # POSIX $ is the very end, Python's also before a final newline
    assert posixToPython("a**") == r"(?:\x61*)*"  # never Python's lazy or possessive forms
    assert posixToPython("a+?") == r"(?:\x61+)?"
    assert posixToPython(r"[\.]") == r"[\x2e\x5c]"  # backslash is literal in a bracket
    assert posixToPython(r"\d") == r"\x64"  # no \d in POSIX
    assert posixToPython(r"\d", icase=True) == "(?!)"  # glibc under REG_ICASE
    assert posixToPython("a)") == r"\x61\x29"
    assert posixToPython("^*a", extended=False) == r"^\x2a\x61"
    for bad in ("a{x", "[z-a]", "(a", "*a", "[[:foo:]]", "a\\", "[a", "(*a)", "[]-a]", "[[:alpha:]-z]"):
        with pytest.raises(PatternError):
            posixToPython(bad)


def test_regexp_matches_bytes(tmp_path, clock):
    t = table(tmp_path, clock, "regexp", "/^..$/ two-bytes\n/^.$/ one-byte\n")
    assert resultOf(t.lookup("é")) == "two-bytes"  # U+00E9 is two bytes of UTF-8, as Postfix sees it
    assert resultOf(t.lookup("e")) == "one-byte"


def test_case_folding_is_ascii_only(tmp_path, clock):
    t = table(tmp_path, clock, "pcre", "/^k$/ k\n/^ä$/ a-umlaut\n")
    assert resultOf(t.lookup("K")) == "k"
    assert resultOf(t.lookup("\u212a")) is None  # the Kelvin sign is not folded to k (Python's Unicode re would)
    assert resultOf(t.lookup("Ä")) is None  # as Postfix (bytes, C locale)


# -- pcre: flags --------------------------------------------------------------------------


def test_pcre_flags(tmp_path, clock):
    text = "\n".join([
        "/^case$/i sensitive",
        "/^r.s$/ dotall-default",
        "/^t.u$/s no-dotall",
        "/^x$/m multiline",
        "/^ p  q # comment/x extended",
        "/o/A anchored",
        "/^e$/E dollar-end-only",
        "/^f$/ dollar-before-newline",
        "/^(g+)(g*)$/U ungreedy [$1][$2]",
        "/^(h+?)(h*)$/U ungreedy-toggled [$1][$2]",
        "/^qq$/X obsolete",
    ])
    with capturedLogs() as events:
        t = table(tmp_path, clock, "pcre", text)
    assert any("obsolete" in e.get("log_format", "") for e in events)
    assert answers(t, ["case", "CASE", "r\ns", "t\nu", "a\nx", "pq", "om", "xo", "e\n", "f\n", "ggg", "hhh",
                       "QQ"]) == {
        "case": "sensitive", "CASE": None, "r\ns": "dotall-default", "t\nu": None, "a\nx": "multiline",
        "pq": "extended", "om": "anchored", "xo": None, "e\n": None, "f\n": "dollar-before-newline",
        "ggg": "ungreedy [g][gg]", "hhh": "ungreedy-toggled [hhh][]", "QQ": "obsolete",
    }


def test_pcre_translation():
    assert pcreToPython(r"\Qa.b\E") == r"\x61\x2e\x62"
    assert pcreToPython(r"\x{41}\e\cA") == r"\x41\x1b\x01"
    assert pcreToPython(r"[[:^digit:]]") == r"[\x00-\x2f\x3a-\xff]"
    assert pcreToPython(r"(?<n>a)\k<n>") == r"(?P<n>\x61)(?P=n)"
    assert pcreToPython(r"(a)\g{-1}") == r"(\x61)(?:\1)"
    assert pcreToPython(r"a\z") == r"\x61\Z"
    assert pcreToPython("a$", dollarEndOnly=True) == r"\x61\Z"
    assert pcreToPython("(?i)a|b") == r"(?i:\x61|\x62)"
    assert pcreToPython("a*+b") == r"\x61*+\x62"  # possessive: Python 3.11 has them
    assert pcreToPython("{x}") == r"\x7b\x78\x7d"  # not a quantifier: literal
    assert pcreToPython(r"\12\101") == r"\x0a\x41"  # fewer groups than that before it: octal
    assert pcreToPython(r"(a)\1") == r"(\x61)(?:\1)"
    for bad in (r"a\Kb", r"(?R)", r"(?1)", r"(?|a)", r"(*UTF)a", r"\p{L}", r"\x{100}", r"[\d-z]",
                r"a(?i)b|c", r"(?x)a", r"[a", r"a**"):
        with pytest.raises(PatternError):
            pcreToPython(bad)


def test_pcre_features(tmp_path, clock):
    t = table(tmp_path, clock, "pcre", "\n".join([
        r"/^(?>a+)b$/ atomic",
        r"/^c++c$/ possessive-never",
        r"/^(?=.*\d)\w{4,}$/ lookahead",
        r"/^[[:alpha:]]+[[:digit:]]$/ posix",
        r"/^(w)?(?(1)x|y)$/ conditional",
        r"/\Gv/ g-is-start",
    ]))
    assert answers(t, ["aab", "ccc", "abc1", "abcd", "xy9", "wx", "y", "wy", "vv", "xv"]) == {
        "aab": "atomic", "ccc": None, "abc1": "lookahead", "abcd": None, "xy9": "posix", "wx": "conditional",
        "y": "conditional", "wy": None, "vv": "g-is-start", "xv": None}


# -- errors -------------------------------------------------------------------------------


@pytest.mark.parametrize("dialect, text, message", [
    ("regexp", "/ok/ x\n/(/ y\n", ":2: error in regex /(/"),
    ("pcre", "/ok/ x\n\n/a\\Kb/ y\n", ":3: error in regex /a\\Kb/: \\K (reset match start) is not supported"),
    ("pcre", "/[z-a]/ y\n", ":1: error in regex"),
    ("regexp", "/abc x\n", ':1: no closing regexp delimiter "/"'),
    ("regexp", "/a/q x\n", ':1: unknown regexp option "q"'),
    ("regexp", "/a/s x\n", ':1: unknown regexp option "s"'),  # s is pcre: only
    ("pcre", "/a/Z x\n", ':1: unknown regexp option "Z"'),
    ("pcre", "/(a)/ $2\n", ':1: out of range replacement index "2"'),
    ("regexp", "/a/ $foo\n", ':1: bad replacement syntax: non-numeric replacement index "foo"'),
    ("pcre", "/a/ $0\n", ':1: bad replacement syntax: out of range replacement index "0"'),
    ("regexp", "!/(a)/ $1\n", ":1: $number found in negative match replacement text"),
    ("regexp", "hello world\n", ":1: unrecognized request 'hello'"),
    ("pcre", "endif\n", ":1: ENDIF without matching IF"),
    ("regexp", "/x/ y\nif /a/\nif /b/\nendif\n", ":2: IF has no matching ENDIF"),
    ("pcre", "!\n", ":1: no regexp"),
])
def test_syntax_errors_name_file_and_line(tmp_path, clock, dialect, text, message):
    error = openError(tmp_path, clock, dialect, text)
    assert error.startswith(str(tmp_path / "bad") + message), error


def test_unreadable_and_non_utf8(tmp_path, clock):
    with pytest.raises(TableError) as info:
        RegexpTable("regexp", str(tmp_path / "missing"), clock)
    assert "cannot open table" in str(info.value)
    (tmp_path / "latin1").write_bytes(b"/\xe9/ x\n")
    with pytest.raises(TableError) as info:
        RegexpTable("pcre", str(tmp_path / "latin1"), clock)
    assert "not UTF-8" in str(info.value)
    (tmp_path / "nul").write_bytes(b"/a\0b/ x\n")
    with pytest.raises(TableError) as info:
        RegexpTable("regexp", str(tmp_path / "nul"), clock)
    assert "NUL" in str(info.value)


# -- untrusted keys -----------------------------------------------------------------------


def test_keys_are_matched_not_interpreted(tmp_path, clock):
    t = table(tmp_path, clock, "pcre", "/^a\\.b$/ exact\n/^(.*)$/ echo $1\n")
    assert resultOf(t.lookup("a.b")) == "exact"
    for key in ["a*b", "(?R)", "$1", "${1}", "\\", "a\0b", "\udcff", "\ud800"]:
        assert resultOf(t.lookup(key)) is not None  # the catch-all, whatever the key holds
    assert resultOf(t.lookup("$2 ${1}")) == "echo $2 ${1}"  # captured text is never expanded again


def test_key_over_the_cap_is_a_temporary_error(tmp_path, clock):
    t = table(tmp_path, clock, "regexp", "/./ any\n")
    assert resultOf(t.lookup("x" * MAX_KEY)) == "any"
    with capturedLogs() as events:
        d = t.lookup("x" * (MAX_KEY + 1))
    failures = []
    d.addErrback(failures.append)
    assert failures and failures[0].check(TableTemporaryError)
    assert any(e["log_level"] == LogLevel.warn for e in events)


# -- reload -------------------------------------------------------------------------------


def test_reload_when_the_file_changes(tmp_path, clock):
    path = tmp_path / "r"
    writeTable(path, "/^a/ OLD\n", 1_000_000)
    t = RegexpTable("regexp", str(path), clock)
    writeTable(path, "/^a/ NEW\n/^b/ ADDED\n", 1_000_100)
    clock.advance(CHECK_INTERVAL / 2)
    assert resultOf(t.lookup("a")) == "OLD"  # checked at most once a second
    clock.advance(CHECK_INTERVAL)
    assert resultOf(t.lookup("a")) == "NEW"
    assert resultOf(t.lookup("b")) == "ADDED"


def test_broken_new_version_keeps_the_old_rules(tmp_path, clock):
    path = tmp_path / "r"
    writeTable(path, "/^a/ OLD\n", 1_000_000)
    t = RegexpTable("pcre", str(path), clock)
    writeTable(path, "/^a/ NEW\n/(/ broken\n", 1_000_100)
    clock.advance(2)
    with capturedLogs() as events:
        assert resultOf(t.lookup("a")) == "OLD"
    errors = [e for e in events if e["log_level"] == LogLevel.error]
    assert errors and f"{path}:2:" in errors[0]["error"]
    writeTable(path, "/^a/ FIXED\n", 1_000_200)
    clock.advance(2)
    assert resultOf(t.lookup("a")) == "FIXED"
    path.unlink()
    clock.advance(2)
    with capturedLogs() as events:
        assert resultOf(t.lookup("a")) == "FIXED"
    assert any(e["log_level"] == LogLevel.error for e in events)
