"""mta.tables.dbcommon: the table file reader, db_common's templates and the domain filter."""

import os

import pytest
from twisted.internet.defer import ensureDeferred
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import capturedLogs

from mta.tables import TableError, Tables, TableTemporaryError
from mta.tables.dbcommon import DomainFilter, Templates, parseConfigText, readConfigFile

# -- the file ----------------------------------------------------------------------------


def test_continuation_is_joined_before_the_name_is_read():
    # dict_load_fp reads logical lines (readllines) first, then splits name = value.
    config = parseConfigText("/t.cf", "query\n  = SELECT 1\r\nhosts = a,\n\tb\n\n# done\n")
    assert config.value("query") == "SELECT 1"
    assert config.value("hosts") == "a, b"
    assert config.where("hosts") == "/t.cf:3"
    assert config.where("absent") == "/t.cf"
    assert config.value("absent", "dflt") == "dflt"
    assert "query" in config and "absent" not in config


def test_repeated_name_warns_only_when_the_value_changes():
    with capturedLogs() as events:
        config = parseConfigText("/t.cf", "a = 1\na = 1\na = 2\n")
    assert config.value("a") == "2" and config.where("a") == "/t.cf:3"
    assert [e["line"] for e in events if "overriding earlier entry" in e["log_format"]] == [3]


@pytest.mark.parametrize("text, message", [
    ("a = 1\nno equals sign\n", "/t.cf:2: expected 'name = value'"),
    ("a-b = 1\n", "/t.cf:1: expected 'name = value'"),
    ("\n\n= 1\n", "/t.cf:3: expected 'name = value'"),
    ("# c\n  orphan\n", "/t.cf:2: continuation line"),
])
def test_syntax_errors_name_file_and_line(text, message):
    with pytest.raises(TableError) as info:
        parseConfigText("/t.cf", text)
    assert str(info.value).startswith(message)


def test_readConfigFile(tmp_path):
    path = tmp_path / "t.cf"
    path.write_text("a = 1\n")
    config = readConfigFile(str(path))
    assert config.value("a") == "1" and config.path == str(path)
    assert config.stat.st_size == os.path.getsize(path)
    with pytest.raises(TableError, match="cannot open table configuration"):
        readConfigFile(str(tmp_path / "absent.cf"))
    path.write_bytes(b"a = \xe9\n")
    with pytest.raises(TableError, match=r"t.cf: not UTF-8 text \(byte 4\)"):
        readConfigFile(str(path))


# -- templates ---------------------------------------------------------------------------


def templates(*pairs):
    t = Templates()
    for template, query in pairs:
        t.parse(template, query)
    return t


def test_parse_reports_dynamic_and_bad_escapes():
    assert templates().parse("uid=%u", True)
    assert not templates().parse("100%% fixed", True)
    for bad in ("%x", "tail%", "%0"):
        with pytest.raises(ValueError, match="invalid query template"):
            Templates().parse(bad, True)
    with pytest.raises(ValueError, match="invalid result_format template"):
        Templates().parse("%q", False, "result_format")


def test_key_rules():
    t = templates(("%u %d", True))
    assert t.fits("u@d.example")
    assert not t.fits("u") and not t.fits("@d.example") and not t.fits("u@") and not t.fits("")
    plain = templates(("%s", True))
    assert plain.fits("@d.example") and plain.fits("u")
    assert plain.expand("%s", "") is None


def test_labels_count_only_non_empty_ones():
    t = templates(("%2.%1", True))
    assert t.expand("%2.%1", "u@a..example.com.") == "example.com"
    assert t.expand("%2.%1", "u@com") is None
    assert t.expand("%2.%1", "u@.com") is None


def test_result_rules_use_the_value_and_the_key():
    t = templates(("%s", True), ("%u at %d for %U@%D %1", False))
    assert t.expand("%u at %d for %U@%D %1", "joe@relay.example", key="bob@b.org") == \
        "joe at relay.example for bob@b.org org"
    assert t.expand("%u at %d", "no-domain", key="bob@b.org") is None
    assert t.expand("%u at %d", "@relay.example", key="bob@b.org") is None


def test_quote_applies_to_expansions_never_to_the_template_and_keys_add_no_escapes():
    t = templates(("(mail=%s)(d=%d)", True))
    quote = lambda text: text.replace("*", "\\2A")  # noqa: E731
    assert t.expand("(mail=%s)(d=%d)*", "a*%d@x*.example", quote=quote) == \
        "(mail=a\\2A%d@x\\2A.example)(d=x\\2A.example)*"


# -- the domain filter ------------------------------------------------------------------


def run(coroutine):
    out = []
    ensureDeferred(coroutine).addBoth(out.append)
    assert len(out) == 1
    return out[0]


def test_names_negation_files_and_tables(tmp_path):
    listed = tmp_path / "domains"
    listed.write_text("# listed\nfile.example, other.example\n")
    tables = Tables(MemoryReactorClock())
    f = DomainFilter("/t.cf:4", f"Example.com, !bad.example, inline:{{bad.example=1, tab.example=1}}, {listed}",
                     tables)
    assert run(f.admits("u@example.com")) and run(f.admits("u@EXAMPLE.COM"))
    assert not run(f.admits("u@bad.example"))  # the exclusion comes first
    assert run(f.admits("u@tab.example")) and run(f.admits("u@other.example"))
    assert not run(f.admits("u@elsewhere.example"))
    for key in ("example.com", "@example.com", "u@", ""):
        assert not run(f.admits(key))


def test_a_failing_table_is_a_temporary_error():
    class Down:
        async def lookup(self, key):
            raise TableTemporaryError("down")

    f = DomainFilter("/t.cf:1", "x.example")
    f._items.append((False, Down()))
    assert run(f.admits("u@x.example"))
    assert run(f.admits("u@y.example")).check(TableTemporaryError)


@pytest.mark.parametrize("text, message", [
    ("a.example, !", "/t.cf:2: empty pattern"),
    ("/nonexistent/list", "/t.cf:2: domain: cannot read /nonexistent/list"),
])
def test_domain_errors(text, message):
    with pytest.raises(TableError, match=message):
        DomainFilter("/t.cf:2", text, Tables(MemoryReactorClock()))


@pytest.mark.parametrize("item", ["/etc/domains", "hash:/etc/x"])
def test_names_only(item):
    with pytest.raises(TableError, match="only domain names"):
        DomainFilter("/t.cf:2", f"a.example {item}", namesOnly=True)
    f = DomainFilter("/t.cf:2", "a.example !b.a.example", namesOnly=True)
    assert run(f.admits("u@a.example")) and not run(f.admits("u@b.a.example"))
    assert not DomainFilter("/t.cf:2", "", namesOnly=True)
