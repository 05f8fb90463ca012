"""mta.tables.ldap and mta.tables.ldapconfig without sockets: escaping, expansion, the file, and the client on fake transports."""

import os

import pytest
from ldaptor.protocols import pureber, pureldap
from twisted.internet.defer import CancelledError
from twisted.internet.error import ConnectionDone, ConnectionRefusedError
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import LogLevel, capturedLogs
from twisted.python.failure import Failure
from zope.interface.verify import verifyObject

from mta.interfaces import ILookupTable
from mta.tables import TableError, Tables, TableTemporaryError
from mta.tables.ldap import MAX_MESSAGE, LdapTable
from mta.tables.ldapconfig import (
    Templates, escapeDnValue, escapeFilterValue, parseLdapUrl, parseQueryFilter, parseServers,
)

# -- escaping: the injection boundary ---------------------------------------------------


@pytest.mark.parametrize("key, escaped", [
    ("user@example.com", "user@example.com"),
    ("*", r"\2A"),
    ("(", r"\28"),
    (")", r"\29"),
    ("\\", r"\5C"),
    ("\x00", r"\00"),
    ("*)(uid=*))(|(uid=*", r"\2A\29\28uid=\2A\29\29\28|\28uid=\2A"),
    ("é", "é"),
])
def test_filter_escaping(key, escaped):
    assert escapeFilterValue(key) == escaped


@pytest.mark.parametrize("key", ["*", "a*", "*)(objectClass=*", "x)(|(mail=*)", "\\2a", "a\x00b", "(&)"])
def test_an_injected_key_matches_only_itself(key):
    filterText = Templates().expand("(mail=%s)", key, quote=escapeFilterValue)
    parsed = parseQueryFilter(filterText)
    assert isinstance(parsed, pureldap.LDAPFilter_equalityMatch)
    assert parsed.assertionValue.value == key


def test_injection_inside_a_compound_filter_stays_one_equality():
    parsed = parseQueryFilter(Templates().expand("(&(mail=%s)(active=TRUE))", "*)(active=*",
                                                 quote=escapeFilterValue))
    assert isinstance(parsed, pureldap.LDAPFilter_and)
    first, second = parsed
    assert first.assertionValue.value == "*)(active=*"
    assert second.assertionValue.value == "TRUE"


@pytest.mark.parametrize("key, escaped", [
    ("alice", "alice"),
    ("a,dc=evil", r"a\2Cdc\3Devil"),
    ("a+b", r"a\2Bb"),
    (' #"<>;\\', r"\20\23\22\3C\3E\3B\5C"),
    ("a\tb", r"a\09b"),
    ("a\x00b", r"a\00b"),
])
def test_dn_escaping(key, escaped):
    assert escapeDnValue(key) == escaped


def test_parseQueryFilter_adds_parentheses_and_refuses_garbage():
    assert isinstance(parseQueryFilter("mail=x"), pureldap.LDAPFilter_equalityMatch)
    with pytest.raises(ValueError):
        parseQueryFilter("(mail=x")


# -- templates (db_common.c) ------------------------------------------------------------


def expandQuery(fmt, key):
    t = Templates()
    t.parse(fmt, True)
    return t.expand(fmt, key)


@pytest.mark.parametrize("fmt, key, result", [
    ("%s", "user@mail.example.com", "user@mail.example.com"),
    ("%u", "user@mail.example.com", "user"),
    ("%u", "user", "user"),
    ("%d", "user@mail.example.com", "mail.example.com"),
    ("%1/%2/%3", "user@mail.example.com", "com/example/mail"),
    ("%%s %s", "k", "%s k"),
    ("%S-%U-%D", "u@d.example", "u@d.example-u-d.example"),
    # Suppressed: no result, no search.
    ("%d", "user", None),
    ("%u", "@example.com", None),
    ("%3", "user@example.com", None),
    ("%2", "user@.com", None),
    ("%1", "user@example.", "example"),  # empty labels do not count (Postfix's argv_split)
    ("%s", "", None),
])
def test_query_expansion(fmt, key, result):
    assert expandQuery(fmt, key) == result


@pytest.mark.parametrize("fmt, value, key, result", [
    ("%s", "alice@example.com", "a@b", "alice@example.com"),
    ("smtp:[%s]", "mx.example.com", "a@b", "smtp:[mx.example.com]"),
    ("%u+ext@%d", "alice@example.com", "a@b", "alice+ext@example.com"),
    ("%d", "alice", "a@b", None),  # unqualified result skipped
    ("%u", "@example.com", "a@b", None),
    ("%s for %U at %D", "x", "key@dom.example", "x for key at dom.example"),
    ("%s %1", "x", "key@dom.example", "x example"),
    ("", "", "k", None),
])
def test_result_expansion(fmt, value, key, result):
    t = Templates()
    t.parse(fmt, False)
    assert t.expand(fmt, value, key=key) == result


@pytest.mark.parametrize("fmt", ["%x", "abc%", "%0"])
def test_bad_templates(fmt):
    with pytest.raises(ValueError):
        Templates().parse(fmt, True)


def test_dynamic_only_with_a_key_expansion():
    assert Templates().parse("dc=%2,dc=%1", True)
    assert not Templates().parse("dc=example,dc=com", True)
    assert not Templates().parse("100%%", True)


# -- server_host and URLs ---------------------------------------------------------------


def test_parseServers():
    servers = parseServers("ldap.example.com, ldap2:1444 ldap://[::1]:3890/ ldaps://ldap3 ldapi://%2Frun%2Fslapd%2Fldapi",
                           389)
    assert [repr(s) for s in servers] == [
        "ldap://ldap.example.com:389", "ldap://ldap2:1444", "ldap://[::1]:3890", "ldaps://ldap3:636",
        "ldapi:///run/slapd/ldapi"]


@pytest.mark.parametrize("text", ["http://x", "ldap://h:0", "ldap://h:x", "ldapi://relative", "bad!host", "", "h:99999"])
def test_parseServers_errors(text):
    with pytest.raises(ValueError):
        parseServers(text, 389)


def test_parseLdapUrl():
    assert parseLdapUrl("ldap:///ou=People,dc=example,dc=com?mail?sub?(uid=a%20b)") == (
        "ou=People,dc=example,dc=com", ["mail"], 2, "(uid=a b)")
    assert parseLdapUrl("ldap://h/cn=x") == ("cn=x", [], 0, "(objectClass=*)")
    with pytest.raises(ValueError):
        parseLdapUrl("ldap:///cn=x??bogus")
    with pytest.raises(ValueError):
        parseLdapUrl("ldap:///cn=x????!critical")


# -- the file -----------------------------------------------------------------------------


def writeConfig(tmp_path, text, name="ldap.cf", mode=0o600):
    path = tmp_path / name
    path.write_text(text)
    os.chmod(path, mode)
    return str(path)


def openTable(path, reactor=None):
    return Tables(reactor or MemoryReactorClock()).open(f"ldap:{path}")


def test_defaults_are_postfix_defaults(tmp_path):
    table = openTable(writeConfig(tmp_path, "search_base = dc=example, dc=com\n"))
    assert isinstance(table, LdapTable)
    verifyObject(ILookupTable, table)
    c = table.config
    assert [repr(s) for s in c.servers] == ["ldap://localhost:389"]
    assert (c.timeout, c.queryFilter, c.resultFormat, c.attributes) == (10, "(mailacceptinggeneralid=%s)", "%s",
                                                                       ["maildrop"])
    assert (c.scope, c.bind, c.recursionLimit, c.expansionLimit, c.sizeLimit, c.dereference) == (
        2, "simple", 1000, 0, 0, 0)
    assert c.domains is None and not c.startTls and c.version == 2
    assert not getattr(table, "pattern", False)


def test_continuation_comments_and_last_value_wins(tmp_path):
    table = openTable(writeConfig(tmp_path, "# LDAP aliases\nserver_host = ldap://127.0.0.1:1\n"
                                            "   ldap://127.0.0.2:2\n\nscope = one\nscope = base\n"
                                            "result_attribute = mail,\n  maildrop\nresult_filter = x%s\n"
                                            "expansion_limit = 5\n"))
    c = table.config
    assert [repr(s) for s in c.servers] == ["ldap://127.0.0.1:1", "ldap://127.0.0.2:2"]
    assert c.scope == 0 and c.attributes == ["mail", "maildrop"]
    assert c.resultFormat == "x%s"  # the old name, when result_format is absent
    assert c.sizeLimit == 5  # defaults to expansion_limit


def test_attribute_order_is_terminal_leaf_ordinary_special(tmp_path):
    c = openTable(writeConfig(tmp_path, "result_attribute = memberaddr\nspecial_result_attribute = memberdn\n"
                                        "terminal_result_attribute = maildrop\nleaf_result_attribute = mail\n")).config
    assert c.attributes == ["maildrop", "mail", "memberaddr", "memberdn"]
    assert (c.numTerminal, c.numLeaf, c.numAttributes) == (1, 1, 3)


@pytest.mark.parametrize("text, where, message", [
    ("server_host\n", 1, "expected 'name = value'"),
    ("  continued\n", 1, "continuation line"),
    ("# c\nscope = deep\n", 2, "scope: unsupported value 'deep'"),
    ("bind = sasl\n", 1, "bind = sasl is not supported"),
    ("bind = maybe\n", 1, "bind: unsupported value"),
    ("timeout = soon\n", 1, "timeout: bad numerical value"),
    ("timeout = 0\n", 1, "timeout: 0 out of range"),
    ("dereference = 4\n", 1, "dereference: 4 out of range"),
    ("version = 4\n", 1, "version: 4 out of range"),
    ("recursion_limit = 0\n", 1, "recursion_limit: 0 out of range"),
    ("start_tls = perhaps\n", 1, "start_tls: bad boolean"),
    ("\nquery_filter = (mail=%x)\n", 2, "query_filter: invalid query template"),
    ("query_filter = (mail=%s\n", 1, "query_filter: bad LDAP filter"),
    ("query_filter = (&(mail=%s)(|(a=b))\n", 1, "query_filter: bad LDAP filter"),
    ("search_base = dc=%q\n", 1, "search_base: invalid query template"),
    ("result_format = %z\n", 1, "result_format: invalid result template"),
    ("server_host = gopher://x\n", 1, "server_host:"),
    ("server_port = 0\n", 1, "server_port: 0 out of range"),
    ("domain = example.com, hash:/etc/x\n", 1, "only domain names"),
    ("tls_ca_cert_dir = /etc/ssl/certs\n", 1, "tls_ca_cert_dir is not supported"),
    ("start_tls = yes\ntls_require_cert = yes\ntls_ca_cert_file = /nonexistent\n", 3, "tls_ca_cert_file"),
    ("result_attribute = ma(il\n", 1, "bad attribute name"),
])
def test_config_errors_name_file_and_line(tmp_path, text, where, message):
    path = writeConfig(tmp_path, text)
    with pytest.raises(TableError) as info:
        openTable(path)
    assert str(info.value).startswith(f"{path}:{where}: ")
    assert message in str(info.value)


def test_missing_file_and_relative_name(tmp_path):
    with pytest.raises(TableError) as info:
        openTable(str(tmp_path / "absent.cf"))
    assert "cannot open" in str(info.value)
    with pytest.raises(TableError) as info:
        openTable("ldapsource")
    assert "absolute path" in str(info.value)


def test_warnings_for_unknown_ignored_and_readable_password(tmp_path):
    path = writeConfig(tmp_path, "bind_pw = secret\nserver_hots = x\nchase_referrals = yes\n", mode=0o644)
    with capturedLogs() as events:
        openTable(path)
    text = " ".join(e["log_format"] for e in events if e["log_level"] == LogLevel.warn)
    assert "unknown LDAP table parameter" in text
    assert "not supported and is ignored" in text
    assert "readable by others" in text


# -- the client ------------------------------------------------------------------------


_decoder = pureldap.LDAPBERDecoderContext_TopLevel(
    inherit=pureldap.LDAPBERDecoderContext_LDAPMessage(
        fallback=pureldap.LDAPBERDecoderContext(fallback=pureber.BERDecoderContext()),
        inherit=pureldap.LDAPBERDecoderContext(fallback=pureber.BERDecoderContext())))


class Harness:
    """An ldap: table on a MemoryReactorClock; the test plays the server."""

    BASE = ("server_host = ldap://127.0.0.1:3890 ldap://127.0.0.2:3891\nsearch_base = dc=example,dc=com\n"
            "query_filter = (mail=%s)\nresult_attribute = maildrop\nbind = no\ntimeout = 5\n")

    def __init__(self, tmp_path, extra=""):
        self.reactor = MemoryReactorClock()
        self.table = openTable(writeConfig(tmp_path, self.BASE + extra), self.reactor)
        self.accepted = 0
        self.transports = []

    def accept(self):
        host, port, factory, timeout, bind = self.reactor.tcpClients[self.accepted]
        self.accepted += 1
        self.protocol = factory.buildProtocol(None)
        self.transport = StringTransport()
        self.protocol.makeConnection(self.transport)
        self.transports.append(self.transport)
        return host, port

    def refuse(self):
        factory = self.reactor.tcpClients[self.accepted][2]
        self.accepted += 1
        factory.clientConnectionFailed(None, Failure(ConnectionRefusedError()))

    def requests(self):
        data = self.transport.value()
        self.transport.clear()
        out = []
        while data:
            message, used = pureber.berDecodeObject(_decoder, data)
            data = data[used:]
            out.append((message.id, message.value))
        return out

    def send(self, messageId, op):
        self.protocol.dataReceived(pureldap.LDAPMessage(op, id=messageId).toWire())

    def answer(self, entries=(), code=0, message=""):
        """Answer the one search on the wire with C{entries}: [(dn, {attr: [values]})]."""
        (messageId, request), = self.requests()
        assert isinstance(request, pureldap.LDAPSearchRequest)
        self.answerId(messageId, entries, code, message)
        return request

    def answerId(self, messageId, entries=(), code=0, message=""):
        for dn, attrs in entries:
            self.send(messageId, pureldap.LDAPSearchResultEntry(
                objectName=dn, attributes=[(k, [v.encode() if isinstance(v, str) else v for v in vs])
                                           for k, vs in attrs.items()]))
        self.send(messageId, pureldap.LDAPSearchResultDone(resultCode=code, errorMessage=message))

    def lose(self):
        self.protocol.connectionLost(Failure(ConnectionDone()))


def outcome(d):
    out = []
    d.addBoth(out.append)
    return out


def failed(out):
    assert len(out) == 1 and isinstance(out[0], Failure), out
    assert out[0].check(TableTemporaryError), out[0]
    return str(out[0].value)


def test_connects_at_first_lookup_searches_and_joins_values_with_commas(tmp_path):
    h = Harness(tmp_path)
    assert h.reactor.tcpClients == []
    out = outcome(h.table.lookup("alice@example.com"))
    assert h.accept() == ("127.0.0.1", 3890)
    request = h.answer([("uid=alice,dc=example,dc=com", {"maildrop": ["a1@x", "a2@x"], "cn": ["Alice"]}),
                        ("uid=al,dc=example,dc=com", {"MailDrop": ["a3@x"]})])
    assert out == ["a1@x,a2@x,a3@x"]
    assert request.baseObject == b"dc=example,dc=com" or request.baseObject == "dc=example,dc=com"
    assert request.scope == 2 and request.timeLimit == 5 and request.sizeLimit == 0
    assert [_s(a) for a in request.attributes] == ["maildrop"]
    assert _s(request.filter.assertionValue.value) == "alice@example.com"


def _s(v):
    return v.decode() if isinstance(v, bytes) else v


def test_no_entry_or_no_values_is_not_found_and_the_connection_is_reused(tmp_path):
    h = Harness(tmp_path)
    out = outcome(h.table.lookup("nobody@example.com"))
    h.accept()
    h.answer([])
    again = outcome(h.table.lookup("novalue@example.com"))
    h.answer([("uid=x,dc=example,dc=com", {"cn": ["X"]})])
    assert (out, again) == ([None], [None])
    assert len(h.reactor.tcpClients) == 1


def test_injected_key_goes_out_as_one_equality_assertion(tmp_path):
    h = Harness(tmp_path)
    outcome(h.table.lookup("*)(mail=*"))
    h.accept()
    (messageId, request), = h.requests()
    assert isinstance(request.filter, pureldap.LDAPFilter_equalityMatch)
    assert _s(request.filter.assertionValue.value) == "*)(mail=*"


def test_dynamic_search_base_is_escaped_and_no_such_object_is_not_found(tmp_path):
    h = Harness(tmp_path, "search_base = uid=%u,ou=%d,dc=example,dc=com\n")
    out = outcome(h.table.lookup("a,b+c@x=y"))
    h.accept()
    request = h.answer(code=32, message="no such object")
    assert _s(request.baseObject) == r"uid=a\2Cb\2Bc,ou=x\3Dy,dc=example,dc=com"
    assert out == [None]


def test_static_search_base_missing_is_temporary(tmp_path):
    h = Harness(tmp_path)
    out = outcome(h.table.lookup("a@b"))
    h.accept()
    h.answer(code=32, message="no such object")
    assert "search base" in failed(out)


@pytest.mark.parametrize("code", [1, 4, 11, 50, 53])
def test_search_errors_are_temporary_and_close_the_connection(tmp_path, code):
    h = Harness(tmp_path)
    out = outcome(h.table.lookup("a@b"))
    h.accept()
    h.answer(code=code, message="busy")
    assert f"search error {code}" in failed(out)
    assert h.transport.disconnecting


def test_suppressed_keys_never_reach_the_server(tmp_path):
    h = Harness(tmp_path, "query_filter = (&(uid=%u)(dc=%2))\ndomain = example.com\n")
    for key in ("user", "@example.com", "user@other.example", "user@com", "\udc80@example.com"):
        assert outcome(h.table.lookup(key)) == [None], key
    assert h.reactor.tcpClients == []
    out = outcome(h.table.lookup("user@Example.COM"))
    h.accept()
    request = h.answer([("uid=user", {"maildrop": ["u@x"]})])
    assert out == ["u@x"]
    assert [_s(f.assertionValue.value) for f in request.filter] == ["user", "Example"]


def test_simple_bind_then_search(tmp_path):
    h = Harness(tmp_path, "bind = yes\nbind_dn = cn=mta,dc=example,dc=com\nbind_pw = pw\n")
    out = outcome(h.table.lookup("a@b"))
    h.accept()
    (messageId, bind), = h.requests()
    assert isinstance(bind, pureldap.LDAPBindRequest)
    assert (_s(bind.dn), _s(bind.auth), bind.version) == ("cn=mta,dc=example,dc=com", "pw", 3)
    assert out == []  # nothing searched before the bind answers
    h.send(messageId, pureldap.LDAPBindResponse(resultCode=0))
    h.answer([("uid=a", {"maildrop": ["A"]})])
    assert out == ["A"]


def test_bind_failure_is_temporary_and_closes(tmp_path):
    h = Harness(tmp_path, "bind = yes\nbind_dn = cn=mta\nbind_pw = wrong\n")
    with capturedLogs() as events:
        out = outcome(h.table.lookup("a@b"))
        h.accept()
        (messageId, bind), = h.requests()
        h.send(messageId, pureldap.LDAPBindResponse(resultCode=49, errorMessage="invalid credentials"))
    assert "bind as 'cn=mta' failed: 49" in failed(out)
    assert h.transport.disconnecting
    assert any("failed" in e["log_format"] or "failed" in str(e.get("message", ""))
               for e in events if e["log_level"] == LogLevel.warn)


def test_bind_timeout(tmp_path):
    h = Harness(tmp_path, "bind = yes\n")
    out = outcome(h.table.lookup("a@b"))
    h.accept()
    h.reactor.advance(5)
    assert "bind timeout" in failed(out)
    assert h.transport.disconnecting


def test_search_timeout_closes_and_the_next_lookup_reconnects(tmp_path):
    h = Harness(tmp_path)
    out = outcome(h.table.lookup("a@b"))
    h.accept()
    h.reactor.advance(4.9)
    assert out == []
    h.reactor.advance(0.1)
    assert "search timeout after 5s" in failed(out)
    assert h.transport.disconnecting
    h.lose()
    again = outcome(h.table.lookup("a@b"))
    h.accept()
    h.answer([("uid=a", {"maildrop": ["A"]})])
    assert again == ["A"]


def test_connect_timeout(tmp_path):
    h = Harness(tmp_path, "server_host = ldap://127.0.0.1:3890\n")
    out = outcome(h.table.lookup("a@b"))
    h.reactor.advance(5)
    assert "connect timeout" in failed(out)


def test_refused_server_then_the_next_in_server_host(tmp_path):
    h = Harness(tmp_path)
    out = outcome(h.table.lookup("a@b"))
    h.refuse()
    assert h.accept() == ("127.0.0.2", 3891)
    h.answer([("uid=a", {"maildrop": ["A"]})])
    assert out == ["A"]


def test_all_servers_down_is_temporary_and_later_retried(tmp_path):
    h = Harness(tmp_path)
    outs = [outcome(h.table.lookup("a@b")), outcome(h.table.lookup("c@d"))]
    h.refuse()
    h.refuse()
    assert all("cannot connect" in failed(o) for o in outs)
    assert len(h.reactor.tcpClients) == 2  # both lookups waited on one attempt
    again = outcome(h.table.lookup("a@b"))
    h.accept()
    h.answer([("uid=a", {"maildrop": ["A"]})])
    assert again == ["A"]


def test_connection_lost_during_a_search_is_retried_once(tmp_path):
    h = Harness(tmp_path)
    out = outcome(h.table.lookup("a@b"))
    h.accept()
    h.requests()
    h.lose()
    assert out == []
    h.accept()
    h.answer([("uid=a", {"maildrop": ["A"]})])
    assert out == ["A"]


def test_connection_lost_twice_is_temporary(tmp_path):
    h = Harness(tmp_path)
    out = outcome(h.table.lookup("a@b"))
    h.accept()
    h.lose()
    h.accept()
    h.lose()
    assert "connection lost, twice" in failed(out)


def test_concurrent_lookups_share_the_connection(tmp_path):
    h = Harness(tmp_path)
    first, second = outcome(h.table.lookup("a@b")), outcome(h.table.lookup("c@d"))
    h.accept()
    (id1, r1), (id2, r2) = h.requests()
    h.answerId(id2, [("uid=c", {"maildrop": ["C"]})])
    h.answerId(id1, [("uid=a", {"maildrop": ["A"]})])
    assert (first, second) == (["A"], ["C"])


def test_result_format_and_expansion_limit(tmp_path):
    h = Harness(tmp_path, "result_format = smtp:[%s]\nexpansion_limit = 2\nsize_limit = 0\n")
    out = outcome(h.table.lookup("a@b"))
    h.accept()
    h.answer([("uid=a", {"maildrop": ["mx1", "mx2"]})])
    assert out == ["smtp:[mx1],smtp:[mx2]"]
    over = outcome(h.table.lookup("a@b"))
    h.answer([("uid=a", {"maildrop": ["mx1", "mx2", "mx3"]})])
    assert "expansion limit" in failed(over)


def test_size_limit_counts_entries(tmp_path):
    h = Harness(tmp_path, "size_limit = 1\n")
    out = outcome(h.table.lookup("a@b"))
    h.accept()
    request = h.answer([("uid=a", {"maildrop": ["A"]}), ("uid=b", {"maildrop": ["B"]})])
    assert request.sizeLimit == 1
    assert "size limit" in failed(out)


def test_special_attribute_dn_is_followed(tmp_path):
    h = Harness(tmp_path, "special_result_attribute = member\n")
    out = outcome(h.table.lookup("list@b"))
    h.accept()
    h.answer([("cn=list", {"maildrop": ["owner@x"], "member": ["uid=a,dc=example,dc=com"]})])
    (messageId, follow), = h.requests()
    assert (_s(follow.baseObject), follow.scope) == ("uid=a,dc=example,dc=com", 0)
    assert [_s(a) for a in follow.attributes] == ["maildrop", "member"]
    h.answerId(messageId, [("uid=a,dc=example,dc=com", {"maildrop": ["a@x"]})])
    assert out == ["owner@x,a@x"]


def test_special_attribute_missing_dn_is_skipped(tmp_path):
    h = Harness(tmp_path, "special_result_attribute = member\n")
    out = outcome(h.table.lookup("list@b"))
    h.accept()
    h.answer([("cn=list", {"member": ["uid=gone"], "maildrop": ["o@x"]})])
    (messageId, _), = h.requests()
    h.answerId(messageId, code=32)
    assert out == ["o@x"]


def test_special_attribute_url_is_searched(tmp_path):
    h = Harness(tmp_path, "special_result_attribute = memberURL\nresult_attribute = maildrop, mail\n")
    out = outcome(h.table.lookup("dyn@b"))
    h.accept()
    h.answer([("cn=dyn", {"memberURL": ["ldap:///ou=p,dc=example,dc=com?mail,cn?one?(dept=7)"]})])
    (messageId, follow), = h.requests()
    assert (_s(follow.baseObject), follow.scope) == ("ou=p,dc=example,dc=com", 1)
    assert [_s(a) for a in follow.attributes] == ["mail"]
    assert _s(follow.filter.assertionValue.value) == "7"
    h.answerId(messageId, [("uid=a", {"mail": ["a@x"]}), ("uid=b", {"mail": ["b@x"]})])
    assert out == ["a@x,b@x"]


def test_recursion_limit(tmp_path):
    h = Harness(tmp_path, "special_result_attribute = member\nrecursion_limit = 2\n")
    out = outcome(h.table.lookup("loop@b"))
    h.accept()
    h.answer([("cn=l1", {"member": ["cn=l2"]})])
    h.answer([("cn=l2", {"member": ["cn=l1"]})])
    assert "recursion limit" in failed(out)


def test_terminal_and_leaf_attributes(tmp_path):
    h = Harness(tmp_path, "result_attribute = memberaddr\nspecial_result_attribute = memberdn\n"
                          "terminal_result_attribute = maildrop\nleaf_result_attribute = mail\n")
    # A terminal entry: only its terminal attribute, no recursion.
    out = outcome(h.table.lookup("g1@b"))
    h.accept()
    h.answer([("cn=g1", {"maildrop": ["g1@hub"], "memberaddr": ["x@y"], "memberdn": ["uid=a"]})])
    assert out == ["g1@hub"] and h.requests() == []
    # A group: its leaf attribute is skipped, its members' is used.
    out = outcome(h.table.lookup("g2@b"))
    h.answer([("cn=g2", {"mail": ["g2@b"], "memberaddr": ["ext@y"], "memberdn": ["uid=a"]})])
    h.answer([("uid=a", {"mail": ["a@b"]})])
    assert out == ["ext@y,a@b"]


@pytest.mark.parametrize("value", [b"\xff\xfe", b"a\nb", b"a\x00b", b"a\rb"])
def test_untrusted_values_refused(tmp_path, value):
    h = Harness(tmp_path)
    out = outcome(h.table.lookup("a@b"))
    h.accept()
    h.answer([("uid=a", {"maildrop": [value]})])
    failed(out)


def test_garbage_from_the_server_closes_the_connection(tmp_path):
    h = Harness(tmp_path)
    out = outcome(h.table.lookup("a@b"))
    h.accept()
    with capturedLogs() as events:
        h.protocol.dataReceived(b"\x30\x03\x02\x01\x07")  # a message with no operation
    assert h.transport.disconnecting
    assert any(e["log_level"] == LogLevel.warn for e in events)
    h.lose()
    # The lookup is retried on a new connection.
    h.accept()
    h.answer([("uid=a", {"maildrop": ["A"]})])
    assert out == ["A"]


def test_reply_to_no_request_and_oversized_buffer_close(tmp_path):
    h = Harness(tmp_path)
    outcome(h.table.lookup("a@b"))
    h.accept()
    h.requests()
    h.send(4242, pureldap.LDAPSearchResultDone(resultCode=0))
    assert h.transport.disconnecting
    h.lose()
    h.accept()
    h.protocol.dataReceived(b"\x30\x84\x7f\xff\xff\xff" + b"x" * MAX_MESSAGE)
    assert h.transport.disconnecting


def test_close_fails_what_waits(tmp_path):
    h = Harness(tmp_path)
    out = outcome(h.table.lookup("a@b"))
    h.accept()
    h.table.close()
    assert h.transport.disconnecting
    h.lose()
    assert "closed" in failed(out)
    assert "closed" in failed(outcome(h.table.lookup("a@b")))


def test_close_while_connecting(tmp_path):
    h = Harness(tmp_path)
    out = outcome(h.table.lookup("a@b"))
    h.table.close()
    failed(out)


# -- StartTLS ----------------------------------------------------------------------------


class TlsStringTransport(StringTransport):
    def __init__(self):
        super().__init__()
        self.tlsStarted = []

    def startTLS(self, options):
        self.tlsStarted.append(options)


class TlsHarness(Harness):
    BASE = Harness.BASE.replace("bind = no", "bind = yes") + "start_tls = yes\n"

    def accept(self):
        host, port, factory, timeout, bind = self.reactor.tcpClients[self.accepted]
        self.accepted += 1
        self.protocol = factory.buildProtocol(None)
        self.transport = TlsStringTransport()
        self.protocol.makeConnection(self.transport)
        return host, port


def test_start_tls_before_the_bind_and_the_search(tmp_path):
    h = TlsHarness(tmp_path)
    out = outcome(h.table.lookup("a@b"))
    h.accept()
    (messageId, request), = h.requests()
    assert isinstance(request, pureldap.LDAPExtendedRequest)
    assert _s(request.requestName) == pureldap.LDAPStartTLSRequest.oid.decode()
    h.send(messageId, pureldap.LDAPExtendedResponse(resultCode=0, responseName=pureldap.LDAPStartTLSRequest.oid))
    assert len(h.transport.tlsStarted) == 1
    assert h.requests() == []  # nothing in the clear after StartTLS, not even the bind
    h.protocol.handshakeCompleted()
    (messageId, bind), = h.requests()
    assert isinstance(bind, pureldap.LDAPBindRequest)
    h.send(messageId, pureldap.LDAPBindResponse(resultCode=0))
    h.answer([("uid=a", {"maildrop": ["A"]})])
    assert out == ["A"]


def test_start_tls_refused_is_temporary(tmp_path):
    h = TlsHarness(tmp_path)
    out = outcome(h.table.lookup("a@b"))
    h.accept()
    (messageId, request), = h.requests()
    h.send(messageId, pureldap.LDAPExtendedResponse(resultCode=2, errorMessage="unsupported"))
    assert "StartTLS refused: 2" in failed(out)
    assert h.transport.tlsStarted == [] and h.transport.disconnecting


def test_tls_handshake_timeout_and_failure(tmp_path):
    h = TlsHarness(tmp_path)
    out = outcome(h.table.lookup("a@b"))
    h.accept()
    (messageId, request), = h.requests()
    h.send(messageId, pureldap.LDAPExtendedResponse(resultCode=0))
    h.reactor.advance(5)
    assert "TLS handshake timeout" in failed(out)
    again = outcome(h.table.lookup("a@b"))
    h.accept()
    (messageId, request), = h.requests()
    h.send(messageId, pureldap.LDAPExtendedResponse(resultCode=0))
    h.protocol.connectionLost(Failure(ConnectionDone("certificate verify failed")))
    message = failed(again)
    assert "TLS handshake failed" in message and "certificate verify failed" in message


def test_pending_lookups_are_bounded(tmp_path, monkeypatch):
    import mta.tables.ldap as ldapModule

    monkeypatch.setattr(ldapModule, "MAX_PENDING", 3)
    h = Harness(tmp_path)
    outs = [outcome(h.table.lookup(f"k{i}@b")) for i in range(3)]
    assert "more than 3 lookups at once" in failed(outcome(h.table.lookup("k3@b")))
    h.accept()
    for messageId, request in h.requests():
        h.answerId(messageId, [("uid=k", {"maildrop": [_s(request.filter.assertionValue.value)]})])
    assert [o[0] for o in outs] == ["k0@b", "k1@b", "k2@b"]
    assert outcome(h.table.lookup("k4@b")) == []  # room again


def test_group_cycles_are_bounded_in_searches(tmp_path, monkeypatch):
    import mta.tables.ldap as ldapModule

    monkeypatch.setattr(ldapModule, "MAX_SEARCHES", 5)
    h = Harness(tmp_path, "special_result_attribute = member\n")
    out = outcome(h.table.lookup("g@b"))
    h.accept()
    h.answer([("cn=g", {"member": ["cn=g", "cn=g"]})])
    for _ in range(5):
        if out:
            break
        h.answer([("cn=g", {"member": ["cn=g", "cn=g"]})])
    assert "more than 5 DN or URL searches" in failed(out)


def test_a_cancelled_lookup_is_not_an_internal_error(tmp_path):
    h = Harness(tmp_path)
    d = h.table.lookup("a@b")
    h.accept()
    with capturedLogs() as events:
        d.cancel()
    out = outcome(d)
    assert out and isinstance(out[0], Failure) and out[0].check(CancelledError)
    assert not any("lookup failed" in e["log_format"] for e in events)
