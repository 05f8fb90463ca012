"""mta.rewrite and mta.addrlist: Postfix's rewrite step for envelope and header addresses.

The expected header texts were checked against Postfix 3.7.11 (a private instance,
bench/postfix_instance.py, mail sent from 127.0.0.1 and 127.0.0.2 with
myorigin = bench.example): where mta's text differs, the test says what Postfix wrote
and the difference is one that mta.rewrite's DEVIATIONS section lists.
"""

import pytest
from twisted.internet.defer import fail, succeed
from twisted.internet.task import Clock
from twisted.logger import LogLevel, capturedLogs

from mta.address import PathError
from mta.addrlist import TOKEN_LIMIT, Malformed, parse, quoteLocal, scan
from mta.config import ConfigError, load, openTables
from mta.config.types import TableSpec
from mta.model import Address
from mta.rewrite import (
    ADDRESS_HEADERS,
    AddressRewriting,
    HeaderRewriteClients,
    RewriteContext,
    isOwnAddress,
)
from mta.tables import Tables, TableTemporaryError
from mta.tables.matchers import NetworkMatcher
from mta.testing import resultOf

LOCAL = RewriteContext("local", "bench.example", "")
DOTTED = RewriteContext("local", "bench.example", "localdomain")
REMOTE = RewriteContext("remote", "domain.invalid", "domain.invalid")


def settings(main=""):
    """The RewriteSettings of [main] text C{main}."""
    return load("<t>", "[main]\nmyhostname = mx.test\nmydomain = test\n" + main).settings.rewrite


def rewritten(context, value, name=b"To"):
    header = name + b": " + value + b"\r\n"
    out = context.header(header)
    assert out.endswith(b"\r\n")
    return out[len(name) + 2:-2]


# -- the tokenizer and parser (tok822) ------------------------------------------------


def addresses(text):
    tokens = scan(text)
    return [b"".join(tokens[k].value for k in group) for group in parse(tokens).addresses]


@pytest.mark.parametrize(
    "text, found",
    [
        (b"root", [b"root"]),
        (b"Charlie Root <root>", [b"root"]),
        (b"root (Charlie Root)", [b"root"]),
        (b"(c) root", [b"root"]),
        (b"a, b@c, \"quoted local\"", [b"a", b"b@c", b"quoted local"]),
        (b"group: a, b@host;, c", [b"a", b"b@host", b"c"]),
        (b"undisclosed-recipients:;", []),
        (b"John Smith", [b"John", b"Smith"]),  # no comma: two addresses, as Postfix reads it
        (b"\"Joe User\" joe@x", [b"Joe User", b"joe@x"]),
        (b"John Q. Public <jqp>", [b"jqp"]),
        (b"<@r1,@r2:u@h>", [b"@r1,@r2:u@h"]),
        (b"<a@b> c", [b"a@b", b"c"]),
        (b"g: a; b", [b"a", b"b"]),
        (b"<>", []),
        (b"", []),
        (b"(only a comment)", []),
        (b"root (c) @ host", [b"root@host"]),
        (b"a\\,b", [b"a,b"]),
        (b"x@[1.2.3.4]", [b"x@1.2.3.4"]),
    ],
)
def test_addressesAreFoundAsPostfixFindsThem(text, found):
    assert addresses(text) == found


def test_missingCommasAreReported():
    tokens = scan(b"John Smith")
    assert [tokens[k].value for k in parse(tokens).missingCommas] == [b"John"]
    tokens = scan(b"<a@b> c")
    assert [tokens[k].kind for k in parse(tokens).missingCommas] == [">"]
    tokens = scan(b"a, <@x,@y:b@c>")
    assert [tokens[k].start for k in parse(tokens).commas] == [1]  # not the commas of the route


@pytest.mark.parametrize(
    "text",
    [
        b"\"unterminated",
        b"(unterminated comment",
        b"(nested (comment)",
        b"a@[1.2.3.4",
        b"root\x00",
        b"root\x1b[31m",
        b"a\\\r\n b",
        b"a\\",
    ],
)
def test_malformedTextIsRefused(text):
    with pytest.raises(Malformed):
        scan(text)


def test_theFastPathsOfTheTokenizerAgreeWithTheSlowOnes(monkeypatch):
    """scan() reads plain atoms, strings, literals and comments with regular expressions."""
    import random

    from mta import addrlist

    pieces = [b"a", b"bc", b" ", b"\t", b"\r\n ", b'"', b"\\", b"(", b")", b"[", b"]", b"<", b">", b"@", b",",
              b";", b":", b".", b"%", b"\xc3\xb6", b"x.y"]
    rnd = random.Random(5)
    samples = [b"".join(rnd.choice(pieces) for _ in range(rnd.randint(0, 25))) for _ in range(3000)]

    def tokens(text):
        try:
            return [(t.kind, t.value, t.start, t.end) for t in scan(text)]
        except Malformed:
            return "malformed"

    fast = [tokens(text) for text in samples]
    never = __import__("re").compile(rb"(?!)")
    for name in ("_PLAIN_ATOM", "_PLAIN_QSTRING", "_PLAIN_DOMLIT", "_PLAIN_COMMENT"):
        monkeypatch.setattr(addrlist, name, never)
    assert [tokens(text) for text in samples] == fast
    assert sum(result != "malformed" for result in fast) > 1000


def test_theHeaderFastPathOnlyPassesWhatTheFullPathLeavesAlone(monkeypatch):
    """header() skips the tokenizer for plain qualified addresses; the full path agrees."""
    import random

    from mta import rewrite

    pieces = [b"a", b"bob", b"x.org", b"host", b"@", b"@x.org", b"@host", b".", b"..", b" ", b"\r\n\t", b",", b", ",
              b"<", b">", b"Bob ", b"J. Smith ", b'"', b"(c)", b"\\", b"[1.2.3.4]", b":", b";", b"\xc3\xb6", b"-",
              b"a@b.org", b"Bob <bob@x.org>", b"root", b"x@y.z.", b"+tag"]
    rnd = random.Random(7)
    samples = [b"".join(rnd.choice(pieces) for _ in range(rnd.randint(1, 12))) for _ in range(20000)]
    samples += [b"a@b.org", b"Bob Smith <bob@x.org>, c@d.example", b"Bob\r\n\t<bob@x.org>", b"J. R. <j@x.org>"]
    contexts = [LOCAL, DOTTED, REMOTE]
    passed = [value for value in samples if rewrite._plainlyQualified(b" " + value + b"\r\n")]
    monkeypatch.setattr(rewrite, "_plainlyQualified", lambda value: False)
    for value in passed:
        header = b"To: " + value + b"\r\n"
        for context in contexts:
            assert context.header(header) == header, (value, context)
    assert len(passed) > 100


def test_tokenLimit():
    scan(b"a," * (TOKEN_LIMIT // 2))
    with pytest.raises(Malformed):
        scan(b"a," * (TOKEN_LIMIT // 2) + b"b")


@pytest.mark.parametrize(
    "mailbox, quoted",
    [
        (b"root@x", b"root@x"),
        (b"a..b@x", b'"a..b"@x'),
        (b".a@x", b'".a"@x'),
        (b"a.@x", b'"a."@x'),
        (b"john smith@x", b'"john smith"@x'),
        (b"a@b@x", b'"a@b"@x'),
        (b'a"b@x', b'"a\\"b"@x'),
        (b"@r:a b@x", b'@r:"a b"@x'),
        (b"j\xc3\xb6rg@x", b"j\xc3\xb6rg@x"),  # 8-bit is left alone
        (b"", b'""'),
    ],
)
def test_quoteLocal(mailbox, quoted):
    assert quoteLocal(mailbox) == quoted


# -- header rewriting ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "value, expected",
    [
        # append_at_myorigin, with phrases and comments kept where they are
        (b"root", b"root@bench.example"),
        (b"root (Charlie Root)", b"root@bench.example (Charlie Root)"),
        (b"Charlie Root <root>", b"Charlie Root <root@bench.example>"),
        # Postfix: "root@bench.example (comment)"; mta leaves the comment in place
        (b"(comment) root", b"(comment) root@bench.example"),
        (b"a, b@c, \"quoted local\"", b"a@bench.example, b@c, \"quoted local\"@bench.example"),
        # groups
        (b"group: a, b@host;, c", b"group: a@bench.example, b@host;, c@bench.example"),
        (b"undisclosed-recipients:;", b"undisclosed-recipients:;"),
        (b"g: a; b", b"g: a@bench.example;, b@bench.example"),
        # route addresses: the route goes
        (b"<@r1,@r2:u@h>", b"<u@h>"),
        (b"<@r1:u>", b"<u@bench.example>"),
        # trailing dot, literals, already qualified
        (b"u@h.", b"u@h"),
        (b"u@h", b"u@h"),
        (b"u@[1.2.3.4]", b"u@[1.2.3.4]"),
        # missing commas are added, as Postfix adds them
        (b"John Smith", b"John@bench.example, Smith@bench.example"),
        (b"\"Joe User\" joe@x", b"\"Joe User\"@bench.example, joe@x"),
        (b"<a@b> c", b"<a@b>, c@bench.example"),
        # 8-bit and UTF-8 text, RFC 2047 encoded words: passed through
        ("Jörg <jörg>".encode(), "Jörg <jörg@bench.example>".encode()),
        (b"J\xf6rg <j\xf6rg>", b"J\xf6rg <j\xf6rg@bench.example>"),
        (b"=?utf-8?q?J=C3=B6rg?= <j>", b"=?utf-8?q?J=C3=B6rg?= <j@bench.example>"),
        # empty addresses
        (b"\"\"", b"\"\""),
        (b"<>", b"<>"),
        (b"@", b"\"\""),
        (b"root@", b"root@"),
        # quoted local parts, and local parts that must be quoted
        (b"\"a@b\"", b"\"a@b\"@bench.example"),
        (b"\"a\\\"b\"", b"\"a\\\"b\"@bench.example"),
        (b"a\\,b", b"\"a,b\"@bench.example"),
        (b"a..b", b"\"a..b\"@bench.example"),
        (b".a", b"\".a\"@bench.example"),
        (b"a . b", b"a.b@bench.example"),
        # Postfix: "<root@bench.example>(comment)"
        (b"<root> (comment)", b"<root@bench.example> (comment)"),
        # a comment inside an address moves after it (as in Postfix)
        (b"x@y, (c1) root (c2), z", b"x@y, (c1) root@bench.example (c2), z@bench.example"),
        # nothing to do: the very same bytes
        (b"root (c) @ host", b"root (c) @ host"),
        (b"(only comment)", b"(only comment)"),
        # Postfix: "John Q.Public <jqp@bench.example>" (it re-emits the phrase)
        (b"John Q. Public <jqp>", b"John Q. Public <jqp@bench.example>"),
        # swap_bangpath and allow_percent_hack are not implemented (Postfix: a@b, d@c)
        (b"a%b, c!d", b"a%b@bench.example, c!d@bench.example"),
    ],
)
def test_headerAddressesInTheLocalContext(value, expected):
    assert rewritten(LOCAL, value) == expected


@pytest.mark.parametrize(
    "value, expected",
    [
        (b"root", b"root@domain.invalid"),
        (b"a, b@c, \"quoted local\"", b"a@domain.invalid, b@c.domain.invalid, \"quoted local\"@domain.invalid"),
        (b"<@r1,@r2:u@h>", b"<u@h.domain.invalid>"),
        (b"u@h.", b"u@h"),
        (b"u@[1.2.3.4]", b"u@[1.2.3.4]"),
        (b"root (c) @ host", b"root@host.domain.invalid (c)"),
        (b"<jqp@host> (John)", b"<jqp@host.domain.invalid> (John)"),
        (b"root@", b"root@"),
    ],
)
def test_headerAddressesInTheRemoteContext(value, expected):
    """remote_header_rewrite_domain: used for @domain and for .domain (Postfix's remote_context)."""
    assert rewritten(REMOTE, value) == expected


def test_appendDotMydomain():
    assert rewritten(DOTTED, b"u@host, v@host.example, w@[1.2.3.4], root, x@") == (
        b"u@host.localdomain, v@host.example, w@[1.2.3.4], root@bench.example, x@")
    assert rewritten(LOCAL, b"u@host") == b"u@host"  # the default: append_dot_mydomain = no


@pytest.mark.parametrize("name", sorted(ADDRESS_HEADERS))
def test_everyAddressHeader(name):
    display = "-".join(p.capitalize() for p in name.decode().split("-")).encode()
    assert LOCAL.header(display + b": root\r\n") == display + b": root@bench.example\r\n"
    assert LOCAL.header(name.upper() + b":root\r\n") == name.upper() + b":root@bench.example\r\n"


def test_theAddressHeadersArePostfixs():
    assert ADDRESS_HEADERS == {
        b"from", b"sender", b"reply-to", b"to", b"cc", b"bcc", b"resent-from", b"resent-sender",
        b"resent-to", b"resent-cc", b"resent-bcc", b"resent-reply-to", b"return-path",
        b"return-receipt-to", b"errors-to", b"disposition-notification-to", b"mail-followup-to",
        b"apparently-to",
    }


def test_anUnchangedHeaderIsTheSameObject():
    header = b"To: Bob <bob@example.org>,\r\n  carol@example.org\r\n"
    assert LOCAL.header(header) is header


@pytest.mark.parametrize(
    "value",
    [b"\"unterminated root", b"root (unterminated", b"root\x01", b"a@[1.2.3.4", b"root\\\r\n x", b"a," * 6000],
)
def test_malformedHeadersAreLeftAsTheyAre(value):
    header = b"To: " + value + b"\r\n"
    assert LOCAL.header(header) is header


def test_originalFoldingIsKept():
    header = b"To: root,\r\n\tfolded,\r\n  other@example.org\r\n"
    assert LOCAL.header(header) == b"To: root@bench.example,\r\n\tfolded@bench.example,\r\n  other@example.org\r\n"


def test_aLineMadeTooLongIsFoldedBetweenAddresses():
    value = b", ".join(b"addr%d" % i for i in range(30))
    out = LOCAL.header(b"To: " + value + b"\r\n")
    lines = out.split(b"\r\n")[:-1]
    assert all(len(line) <= 78 for line in lines), lines
    assert lines[0] == b"To: addr0@bench.example, addr1@bench.example, addr2@bench.example,"
    assert all(line.startswith(b"\taddr") for line in lines[1:])
    assert b" ".join(line.strip() for line in lines) == b"To: " + b", ".join(b"addr%d@bench.example" % i for i in range(30))
    # Postfix 3.7.11 folds this header at the same places.
    assert lines[1] == b"\taddr3@bench.example, addr4@bench.example, addr5@bench.example,"


def test_aLongLineThatDidNotChangeIsNotFolded():
    long = b", ".join(b"user%d@example.org" % i for i in range(8))
    header = b"To: " + long + b",\r\n root\r\n"
    assert LOCAL.header(header) == b"To: " + long + b",\r\n root@bench.example\r\n"


def test_withoutOriginNothingIsAppended():
    context = RewriteContext("local", "", "")
    assert rewritten(context, b"root, <@r:u@h>, u@h.") == b"root, <u@h>, u@h"


# -- the contexts from the parameters --------------------------------------------------------


def test_defaults():
    rewriting = AddressRewriting(settings())
    assert (rewriting.local.origin, rewriting.local.domain) == ("mx.test", "")  # myorigin = $myhostname
    assert rewriting.remote is None and rewriting.headerContext(False) is None
    assert rewriting.headerContext(True) is rewriting.local


def test_appendAtMyoriginNo():
    rewriting = AddressRewriting(settings("append_at_myorigin = no\nremote_header_rewrite_domain = x.invalid\n"))
    assert rewriting.local.header(b"To: root\r\n") == b"To: root\r\n"
    assert rewriting.remote.header(b"To: root\r\n") == b"To: root\r\n"
    with pytest.raises(PathError, match="no domain"):
        rewriting.parsePath("<root>", allowNull=False)
    assert rewriting.parsePath("<postmaster>", allowNull=False) == Address("postmaster", "")


def test_appendDotMydomainFromParameters():
    rewriting = AddressRewriting(settings("append_dot_mydomain = yes\nremote_header_rewrite_domain = x.invalid\n"))
    assert rewriting.local.header(b"To: u@host\r\n") == b"To: u@host.test\r\n"
    assert rewriting.remote.header(b"To: u@host, root\r\n") == b"To: u@host.x.invalid, root@x.invalid\r\n"
    assert rewriting.parsePath("<u@host>", allowNull=False) == Address("u", "host.test")
    assert rewriting.parsePath("<u@[1.2.3.4]>", allowNull=False) == Address("u", "[1.2.3.4]")


def test_remoteHeaderRewriteDomain():
    rewriting = AddressRewriting(settings("remote_header_rewrite_domain = domain.invalid\n"))
    assert rewriting.headerContext(False) is rewriting.remote
    assert rewriting.remote.header(b"From: Root <root>\r\n") == b"From: Root <root@domain.invalid>\r\n"
    # the envelope is always rewritten in the local context
    assert rewriting.parsePath("<root>", allowNull=False) == Address("root", "mx.test")


def test_aDomainParameterThatIsNotADomainIsNotUsed():
    with capturedLogs() as events:
        rewriting = AddressRewriting(settings("myorigin = exa mple, com\nremote_header_rewrite_domain = a@b\n"))
    assert rewriting.local.origin == "" and rewriting.remote.origin == ""
    assert rewriting.local.header(b"To: root\r\n") == b"To: root\r\n"
    assert rewriting.remote.header(b"To: root\r\n") == b"To: root\r\n"
    assert sorted(e["name"] for e in events if e["log_level"] == LogLevel.error) == [
        "myorigin", "remote_header_rewrite_domain"]


# -- envelope addresses ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "path, allowNull, address",
    [
        ("<root>", False, Address("root", "mx.test")),
        ("<root>", True, Address("root", "mx.test")),
        ("<Root>", False, Address("Root", "mx.test")),
        ("<postmaster>", False, Address("postmaster", "mx.test")),
        ("<postmaster>", True, Address("postmaster", "mx.test")),
        ('<"john doe">', False, Address("john doe", "mx.test")),
        ('<"a@b">', False, Address("a@b", "mx.test")),
        ("<@relay.example:root>", False, Address("root", "mx.test")),
        ("<a%b>", False, Address("a%b", "mx.test")),
        ("<u@Example.ORG>", False, Address("u", "example.org")),
        ("<u@host>", False, Address("u", "host")),  # append_dot_mydomain = no
        ("<>", True, Address("", "")),
    ],
)
def test_envelopePathsInTheLocalContext(path, allowNull, address):
    assert AddressRewriting(settings()).parsePath(path, allowNull) == address


@pytest.mark.parametrize("path", ["<>", "<@relay:>", "<a b>", "<root@>", '<"unbalanced>'])
def test_badEnvelopePathsStayBad(path):
    with pytest.raises(PathError):
        AddressRewriting(settings()).parsePath(path, allowNull=False)


def test_envelopeAddressOfAQueueFile():
    rewriting = AddressRewriting(settings("append_dot_mydomain = yes\n"))
    assert rewriting.envelopeAddress("root", allowNull=False) == "root@mx.test"
    assert rewriting.envelopeAddress('"john doe"', allowNull=False) == '"john doe"@mx.test'  # as str(Address) wrote it
    assert rewriting.envelopeAddress("u@host", allowNull=False) == "u@host.test"
    assert rewriting.envelopeAddress("", allowNull=True) == ""
    with pytest.raises(PathError):
        rewriting.envelopeAddress("", allowNull=False)


# -- local_header_rewrite_clients ---------------------------------------------------------------


class FailingTable:
    def lookup(self, key):
        return fail(TableTemporaryError("down"))


class FakeTables:
    def __init__(self, tables):
        self.tables = tables

    def open(self, spec):
        return self.tables[str(spec)]


class DictTable:
    def __init__(self, entries):
        self.entries = entries
        self.keys = []

    def lookup(self, key):
        self.keys.append(key)
        return succeed(self.entries.get(key))


def clients(text, mynetworks="127.0.0.0/8", tables=None):
    config = load("<t>", f"[main]\nlocal_header_rewrite_clients = {text}\nmynetworks = {mynetworks}\n")
    real = Tables(Clock())
    return HeaderRewriteClients(config.settings.rewrite.localHeaderRewriteClients,
                                NetworkMatcher(config.main["mynetworks"], real), tables or real)


def decide(c, client, server="192.0.2.1"):
    static = c.staticMatch(client, server) if c.static else None
    full = resultOf(c.matches(client, server))
    if static is not None:
        assert static == full
    return full


@pytest.mark.parametrize(
    "client, server, own",
    [
        ("127.0.0.1", "127.0.0.1", True),
        ("127.0.0.2", "127.0.0.1", True),
        ("::1", "::1", True),
        ("::ffff:127.0.0.1", "::ffff:127.0.0.1", True),
        ("192.0.2.1", "192.0.2.1", True),  # the listener's own address
        ("::ffff:192.0.2.1", "192.0.2.1", True),
        ("192.0.2.2", "192.0.2.1", False),
        ("2001:db8::1", "2001:db8::2", False),
        ("fe80::1%eth0", "fe80::1%eth0", True),
        ("", "192.0.2.1", False),
        ("not an address", None, False),
    ],
)
def test_permitInetInterfaces(client, server, own):
    assert isOwnAddress(client, server) is own
    c = clients("permit_inet_interfaces")
    assert c.static and decide(c, client, server) is own


def test_permitMynetworks():
    c = clients("permit_mynetworks", mynetworks="192.0.2.0/24")
    assert c.static
    assert decide(c, "192.0.2.77") is True
    assert decide(c, "127.0.0.1") is False  # loopback is not in this mynetworks
    assert decide(clients("permit_mynetworks, permit_inet_interfaces", "192.0.2.0/24"), "127.0.0.1") is True


def test_saslAndTlsNeverMatchYet():
    c = clients("permit_sasl_authenticated, permit_tls_clientcerts, permit_tls_all_clientcerts")
    assert decide(c, "127.0.0.1") is False


def test_emptyListMatchesNobody():
    assert decide(clients(""), "127.0.0.1") is False


def test_checkAddressMap():
    table = DictTable({"198.51.100.7": "pop-before-smtp", "2001:db8::7": "x"})
    tables = FakeTables({"texthash:/pop": table})
    c = clients("check_address_map texthash:/pop", tables=tables)
    assert not c.static
    assert decide(c, "198.51.100.7") is True
    assert decide(c, "::ffff:198.51.100.7") is True
    assert decide(c, "2001:db8::7") is True
    assert decide(c, "198.51.100.8") is False
    assert table.keys == ["198.51.100.7", "198.51.100.7", "2001:db8::7", "198.51.100.8"]


def test_aBareTableIsCheckAddressMap():
    c = clients("static:all")
    assert decide(c, "203.0.113.9") is True  # Postfix's "rewrite every client's headers"


def test_firstMatchWinsAndErrorsPropagateInOrder():
    tables = FakeTables({"texthash:/down": FailingTable()})
    c = clients("permit_inet_interfaces, check_address_map texthash:/down", tables=tables)
    assert decide(c, "127.0.0.1") is True  # decided before the table is asked
    with pytest.raises(TableTemporaryError):
        resultOf(c.matches("203.0.113.9", "192.0.2.1"))


# -- the parameter is checked when the configuration is loaded ----------------------------------


@pytest.mark.parametrize(
    "value, message",
    [
        ("permit_everyone", "'permit_everyone' is not one of permit_inet_interfaces"),
        ("permit_mynetworks, check_address_map", "check_address_map needs a type:table argument"),
        ("check_address_map permit_mynetworks", "'permit_mynetworks' is not a lookup table"),
    ],
)
def test_badListsAreConfigErrors(value, message):
    with pytest.raises(ConfigError, match=f"local_header_rewrite_clients: {message}"):
        load("<t>", f"[main]\nlocal_header_rewrite_clients = {value}\n")


def test_theListIsParsed():
    config = load("<t>", "[main]\nlocal_header_rewrite_clients = Permit_Mynetworks,\n"
                         "  check_address_map inline:{ 192.0.2.1=x }, permit_sasl_authenticated static:all\n")
    assert config["local_header_rewrite_clients"] == (
        "permit_mynetworks", TableSpec("inline", "{ 192.0.2.1=x }"), "permit_sasl_authenticated",
        TableSpec("static", "all"))


def test_itsTablesAreOpenedByTheCheck(tmp_path):
    config = load("<t>", f"[main]\nlocal_header_rewrite_clients = check_address_map texthash:{tmp_path}/absent\n")
    with pytest.raises(ConfigError, match="local_header_rewrite_clients"):
        openTables(config, Tables(Clock()))
