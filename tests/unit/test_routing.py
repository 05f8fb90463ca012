"""mta.routing: alias expansion and transport resolution (trivial-rewrite)."""

import pytest
from twisted.internet.defer import fail
from twisted.internet.task import Clock

from mta.config import load, openTables
from mta.routing import Route, RouteError, Router, splitTransport
from mta.tables import TableTemporaryError, Tables
from mta.testing import resultOf


def router(main=""):
    config = load("<t>", "[main]\nmyhostname = mx.test\n" + main)
    tables = Tables(Clock())
    openTables(config, tables)
    return Router(config.settings.resolver, tables)


run = resultOf


def routes(r, address):
    return run(r.route(address))


def test_splitTransport():
    assert splitTransport("smtp:[relay.example]:587") == ("smtp", "[relay.example]:587")
    assert splitTransport("virtual") == ("virtual", "")
    assert splitTransport("error:5.1.1 no such user") == ("error", "5.1.1 no such user")
    assert splitTransport(":[x]") == ("", "[x]")


def test_addressClasses():
    r = router(
        "virtual_mailbox_domains = box.example\n"
        "relay_domains = relay.example\n"
        "virtual_alias_domains = alias.example\n"
    )
    assert routes(r, "u@box.example") == [Route("u@box.example", "virtual", "box.example")]
    assert routes(r, "u@sub.relay.example") == [Route("u@sub.relay.example", "relay", "sub.relay.example")]
    assert routes(r, "u@elsewhere.example") == [Route("u@elsewhere.example", "smtp", "elsewhere.example")]
    assert routes(r, "u@mx.test") == [Route("u@mx.test", "error", "5.1.1 local delivery is not available")]
    assert routes(r, "u@alias.example") == [
        RouteError("u@alias.example", "bounced", "5.1.1", "User unknown in virtual alias table")
    ]
    assert routes(r, "u@[192.0.2.1]") == [Route("u@[192.0.2.1]", "smtp", "[192.0.2.1]")]


def test_relayhost():
    r = router("relayhost = [smarthost.example]:587\nrelay_domains = relay.example\n")
    assert routes(r, "u@elsewhere.example") == [Route("u@elsewhere.example", "smtp", "[smarthost.example]:587")]
    assert routes(r, "u@relay.example") == [Route("u@relay.example", "relay", "[smarthost.example]:587")]
    r = router("relayhost = [smarthost.example]\ndefault_transport = smtp:[other.example]\n")
    assert routes(r, "u@elsewhere.example") == [Route("u@elsewhere.example", "smtp", "[other.example]")]


def test_transportMaps():
    r = router(
        "transport_maps = inline:{ special@box.example=discard:, box.example=lmtp:unix:/run/lmtp, "
        ".corp.example=:[gw.corp.example], {*=smtp:[fallback.example]} }\n"
        "virtual_mailbox_domains = box.example\nrecipient_delimiter = +\n"
    )
    assert routes(r, "special@box.example") == [Route("special@box.example", "discard", "box.example")]
    assert routes(r, "special+x@box.example") == [Route("special+x@box.example", "discard", "box.example")]
    assert routes(r, "u@box.example") == [Route("u@box.example", "lmtp", "unix:/run/lmtp")]
    assert routes(r, "u@a.corp.example") == [Route("u@a.corp.example", "smtp", "[gw.corp.example]")]
    assert routes(r, "u@corp.example") == [Route("u@corp.example", "smtp", "[fallback.example]")]


def test_virtualAliasesOneToManyRecursiveWithExtensions():
    r = router(
        "virtual_alias_maps = inline:{ {team@alias.example = a@box.example, b@alias.example}, "
        "b@alias.example=b@box.example, {@catch.example = catchall@box.example}, "
        "self@box.example=self@box.example }\n"
        "virtual_alias_domains = alias.example, catch.example\n"
        "virtual_mailbox_domains = box.example\nrecipient_delimiter = +\n"
    )
    assert routes(r, "team@alias.example") == [
        Route("a@box.example", "virtual", "box.example"),
        Route("b@box.example", "virtual", "box.example"),
    ]
    assert routes(r, "team+sales@alias.example") == [
        Route("a+sales@box.example", "virtual", "box.example"),
        Route("b+sales@box.example", "virtual", "box.example"),
    ]
    assert routes(r, "anyone@catch.example") == [Route("catchall@box.example", "virtual", "box.example")]
    assert routes(r, "self@box.example") == [Route("self@box.example", "virtual", "box.example")]


def test_aliasLoopsAreBounced():
    r = router("virtual_alias_maps = inline:{ a@x.example=b@x.example, b@x.example=a@x.example }\n")
    # a -> b -> a: a maps back into the chain; it is delivered as itself, not looped forever
    assert routes(r, "a@x.example") == [Route("a@x.example", "smtp", "x.example")]
    # a chain through catch-alls closes on an address already expanded: delivered there
    r = router("virtual_alias_maps = inline:{ @x.example=more@y.example, @y.example=more@x.example }\n")
    assert routes(r, "a@x.example") == [Route("more@y.example", "smtp", "y.example")]
    # a chain deeper than virtual_alias_recursion_limit is a loop
    chain = ", ".join(f"u{i}@x.example=u{i + 1}@x.example" for i in range(10))
    r = router(f"virtual_alias_maps = inline:{{ {chain} }}\nvirtual_alias_recursion_limit = 5\n")
    result = routes(r, "u0@x.example")
    assert result[0].status == "bounced" and result[0].dsn == "5.4.6"
    r = router(f"virtual_alias_maps = inline:{{ {chain} }}\nvirtual_alias_recursion_limit = 20\n")
    assert routes(r, "u0@x.example") == [Route("u10@x.example", "smtp", "x.example")]


def test_expansionLimit():
    targets = ", ".join(f"u{i}@y.example" for i in range(20))
    r = router(f"virtual_alias_maps = inline:{{ {{list@x.example = {targets}}} }}\nvirtual_alias_expansion_limit = 10\n")
    result = routes(r, "list@x.example")
    assert result == [RouteError("list@x.example", "bounced", "5.3.0", "virtual alias table expansion limit exceeded")]


def test_localAliases():
    r = router(
        "alias_maps = inline:{ postmaster=admin@box.example, root=postmaster, {list = |/usr/bin/prog} }\n"
        "virtual_mailbox_domains = box.example\n"
    )
    assert routes(r, "root@mx.test") == [Route("admin@box.example", "virtual", "box.example")]
    assert routes(r, "postmaster@localhost") == [Route("admin@box.example", "virtual", "box.example")]
    result = routes(r, "list@mx.test")
    assert result[0].status == "deferred" and "unsupported target" in result[0].text
    assert routes(r, "root@elsewhere.example") == [Route("root@elsewhere.example", "smtp", "elsewhere.example")]


def test_emptyAliasIsAnError():
    r = router("virtual_alias_maps = inline:{ {a@x.example = ,} }\n")
    result = routes(r, "a@x.example")
    assert result[0].status == "deferred" and result[0].dsn == "4.3.0"


class FailingTable:
    spec = "failing:"

    def lookup(self, key):
        return fail(TableTemporaryError("down"))


def test_tableFailuresDefer():
    r = router()
    r.virtualAliases = [FailingTable()]
    assert routes(r, "a@x.example") == [RouteError("a@x.example", "deferred", "4.3.0", "alias table lookup failure")]
    r = router()
    r.resolver.transportMaps = [FailingTable()]
    assert routes(r, "a@x.example") == [RouteError("a@x.example", "deferred", "4.3.0", "transport table lookup failure")]


@pytest.mark.parametrize("address", ["User@MX.TEST", "user@mx.test"])
def test_localDomainCaseInsensitive(address):
    assert routes(router(), address)[0].transport == "error"
