"""mta.delivery.mx: Postfix's choice of hosts for a next-hop (smtp_addr.c, smtp_connect.c)."""

import itertools
import random
import socket

import dns.rcode
import dns.rdatatype
import pytest
from twisted.internet.defer import Deferred, fail, maybeDeferred, succeed
from twisted.python.failure import Failure
from zope.interface import implementer

from mta.delivery.dns import DNSError, Resolver, SystemResolver, nameServiceError
from mta.delivery.mx import (
    DeliveryProblem,
    Host,
    HostList,
    PassToTransport,
    balanceInetProtocols,
    destinationHosts,
    parseInetProtocols,
)
from mta.delivery.nexthop import parseNexthop
from mta.interfaces import IDNSResolver


def nxdomain(name, rdtype):
    return DNSError(nameServiceError(name, rdtype, "Host not found"), temporary=False, rcode=dns.rcode.NXDOMAIN,
                    notFound=True)


def tryAgain(name, rdtype):
    return DNSError(nameServiceError(name, rdtype, "Host not found, try again"), temporary=True,
                    rcode=dns.rcode.SERVFAIL)


@implementer(IDNSResolver)
class FakeResolver:
    """MX and address answers from dicts; a missing name is NXDOMAIN."""

    def __init__(self, mx=None, hosts=None):
        self.mx = mx or {}
        self.hosts = hosts or {}
        self.calls = []

    def lookupMX(self, domain):
        self.calls.append(("MX", domain))
        value = self.mx.get(domain)
        if value is None:
            return fail(nxdomain(domain, "MX"))
        if isinstance(value, Exception):
            return fail(value)
        return succeed(list(value))

    def lookupAddresses(self, name, families=("ipv4", "ipv6"), preference="any"):
        self.calls.append(("addr", name, tuple(families)))
        value = self.hosts.get(name)
        if value is None:
            return fail(nxdomain(name, "AAAA"))
        if isinstance(value, Exception):
            return fail(value)
        wanted = [a for f in families for a in value if ("ipv6" if ":" in a else "ipv4") == f]
        return succeed(wanted)


def run(resolver, nexthop, **kw):
    kw.setdefault("rng", random.Random(0))
    out = []
    Deferred.fromCoroutine(destinationHosts(resolver, nexthop, **kw)).addBoth(out.append)
    assert out, "destinationHosts did not finish"
    if isinstance(out[0], Failure):
        out[0].raiseException()
    return out[0]


def problem(resolver, nexthop, **kw):
    with pytest.raises(DeliveryProblem) as info:
        run(resolver, nexthop, **kw)
    return info.value


def pairs(hosts):
    return [(h.name, h.address, h.preference) for h in hosts]


# -- MX order --------------------------------------------------------------------------------------


def test_mx_in_preference_order():
    resolver = FakeResolver(
        mx={"example.com": [(20, "b.example.com"), (10, "a.example.com"), (30, "c.example.com")]},
        hosts={"a.example.com": ["192.0.2.1"], "b.example.com": ["192.0.2.2"], "c.example.com": ["192.0.2.3"]})
    hosts = run(resolver, "example.com", randomize=False)
    assert isinstance(hosts, HostList)
    assert hosts == [Host("a.example.com", "192.0.2.1", 25, 10), Host("b.example.com", "192.0.2.2", 25, 20),
                     Host("c.example.com", "192.0.2.3", 25, 30)]
    assert hosts.sessionLimit == 2 and not hosts.foundMyself and hosts.bestPreference == 10
    assert run(resolver, "example.com:2525", randomize=False)[0].port == 2525


def test_equal_preferences_are_shuffled_and_classes_never_mix():
    resolver = FakeResolver(
        mx={"example.com": [(10, "a"), (10, "b"), (10, "c"), (20, "d"), (20, "e"), (5, "first")]},
        hosts={name: [f"192.0.2.{i + 1}"] for i, name in enumerate("abcde")} | {"first": ["192.0.2.99"]})
    best, second = set(), set()
    for seed in range(200):
        hosts = run(resolver, "example.com", rng=random.Random(seed), mxAddressLimit=0)
        names = [h.name for h in hosts]
        assert names[0] == "first"
        assert set(names[1:4]) == {"a", "b", "c"} and set(names[4:]) == {"d", "e"}
        assert [h.preference for h in hosts] == [5, 10, 10, 10, 20, 20]
        best.add(tuple(names[1:4]))
        second.add(tuple(names[4:]))
    assert best == set(itertools.permutations("abc"))
    assert second == set(itertools.permutations("de"))


def test_without_randomizing_the_dns_order_stays():
    resolver = FakeResolver(mx={"example.com": [(10, "b"), (10, "a"), (10, "c")]},
                            hosts={"a": ["192.0.2.1"], "b": ["192.0.2.2", "192.0.2.22"], "c": ["192.0.2.3"]})
    for seed in range(20):
        hosts = run(resolver, "example.com", randomize=False, rng=random.Random(seed))
        assert [h.address for h in hosts] == ["192.0.2.2", "192.0.2.22", "192.0.2.1", "192.0.2.3"]


def test_address_limit_and_session_limit():
    resolver = FakeResolver(mx={"example.com": [(10, "a"), (20, "b"), (30, "c")]},
                            hosts={n: [f"192.0.2.{i}{j}" for j in range(3)] for i, n in enumerate("abc", 1)})
    hosts = run(resolver, "example.com", mxAddressLimit=5, mxSessionLimit=3)
    assert len(hosts) == 5 and hosts.sessionLimit == 3
    assert [h.preference for h in hosts] == [10, 10, 10, 20, 20]
    assert len(run(resolver, "example.com", mxAddressLimit=0)) == 9
    assert len(run(resolver, "example.com", mxAddressLimit=1)) == 1


def test_address_preference_within_a_preference():
    resolver = FakeResolver(mx={"example.com": [(10, "a"), (20, "b")]},
                            hosts={"a": ["192.0.2.1", "2001:db8::1", "192.0.2.2"], "b": ["2001:db8::2", "192.0.2.3"]})
    for seed in range(10):
        hosts = run(resolver, "example.com", addressPreference="ipv6", rng=random.Random(seed))
        assert [h.address for h in hosts][0] == "2001:db8::1"
        assert [h.address for h in hosts][3:] == ["2001:db8::2", "192.0.2.3"]
        hosts = run(resolver, "example.com", addressPreference="ipv4", rng=random.Random(seed))
        assert set(h.address for h in hosts[:2]) == {"192.0.2.1", "192.0.2.2"}
        assert [h.address for h in hosts][2:] == ["2001:db8::1", "192.0.2.3", "2001:db8::2"]


def test_families_are_passed_to_the_resolver():
    resolver = FakeResolver(mx={"example.com": [(10, "a")]}, hosts={"a": ["192.0.2.1", "2001:db8::1"]})
    hosts = run(resolver, "example.com", families=("ipv4",))
    assert [h.address for h in hosts] == ["192.0.2.1"]
    assert ("addr", "a", ("ipv4",)) in resolver.calls
    with pytest.raises(DeliveryProblem, match="all network protocols are disabled"):
        run(resolver, "example.com", families=())


def test_balance_inet_protocols():
    resolver = FakeResolver(mx={"example.com": [(10, "v6"), (20, "v4")]},
                            hosts={"v6": [f"2001:db8::{i}" for i in range(1, 7)], "v4": ["192.0.2.1", "192.0.2.2"]})
    hosts = run(resolver, "example.com", mxAddressLimit=5)
    assert [h.address for h in hosts].count("192.0.2.1") == 1 and len(hosts) == 5
    assert sum(":" not in h.address for h in hosts) == 2
    assert [h.preference for h in hosts] == [10, 10, 10, 20, 20]  # order kept
    hosts = run(resolver, "example.com", mxAddressLimit=5, balanceInetProtocols=False)
    assert all(":" in h.address for h in hosts)


def test_balance_function_regions():
    def make(families):
        return [Host("h", "2001:db8::1" if f == 6 else "192.0.2.1", 25, 0) for f in families]

    def count(hosts):
        return sum(":" not in h.address for h in hosts), sum(":" in h.address for h in hosts)

    assert count(balanceInetProtocols(make([6] * 8 + [4] * 1), 5)) == (1, 4)  # R1/R3: few of one kind
    assert count(balanceInetProtocols(make([4] * 8 + [6] * 2), 5)) == (3, 2)
    assert count(balanceInetProtocols(make([4] * 4 + [6] * 4), 5)) == (3, 2)  # R2: first address wins the odd one
    assert count(balanceInetProtocols(make([6] * 4 + [4] * 4), 5)) == (2, 3)
    assert count(balanceInetProtocols(make([6] * 3), 2)) == (0, 3)  # one family: untouched
    assert count(balanceInetProtocols(make([6, 4]), 5)) == (1, 1)


# -- null MX, implicit MX, lookup errors ------------------------------------------------------------


def test_null_mx_bounces_without_looking_anything_up():
    resolver = FakeResolver(mx={"example.com": [(0, ".")]}, hosts={"example.com": ["192.0.2.1"]})
    p = problem(resolver, "example.com")
    assert (p.status, p.dsn, p.text) == ("bounced", "5.1.10", "Domain example.com does not accept mail (nullMX)")
    assert resolver.calls == [("MX", "example.com")]


def test_null_mx_among_other_records_still_null_mx():
    """Postfix treats any "." exchange as a null MX."""
    resolver = FakeResolver(mx={"example.com": [(10, "mx.example.com"), (0, ".")]},
                            hosts={"mx.example.com": ["192.0.2.1"]})
    assert problem(resolver, "example.com").dsn == "5.1.10"


def test_implicit_mx_only_without_mx_records():
    resolver = FakeResolver(mx={"example.com": []}, hosts={"example.com": ["192.0.2.1", "2001:db8::1"]})
    hosts = run(resolver, "example.com", randomize=False)
    assert pairs(hosts) == [("example.com", "192.0.2.1", 0), ("example.com", "2001:db8::1", 0)]
    # With MX records the domain's own addresses are never used.
    resolver = FakeResolver(mx={"example.com": [(10, "mx.example.com")]},
                            hosts={"example.com": ["192.0.2.1"], "mx.example.com": ["192.0.2.2"]})
    assert pairs(run(resolver, "example.com")) == [("mx.example.com", "192.0.2.2", 10)]
    assert ("addr", "example.com", ("ipv4", "ipv6")) not in resolver.calls


def test_implicit_mx_without_addresses_bounces():
    resolver = FakeResolver(mx={"example.com": []}, hosts={"example.com": []})
    p = problem(resolver, "example.com")
    assert p.status == "bounced" and p.dsn == "5.4.4"
    assert "Host found but no data record" in p.text


def test_nxdomain_bounces_5_4_4():
    resolver = FakeResolver()
    p = problem(resolver, "nowhere.example")
    assert (p.status, p.dsn) == ("bounced", "5.4.4")
    assert p.text.startswith("Host or domain name not found. Name service error for name=nowhere.example")
    assert resolver.calls[0] == ("MX", "nowhere.example")


def test_mx_lookup_failure_defers_never_bounces():
    resolver = FakeResolver(mx={"example.com": tryAgain("example.com", "MX")}, hosts={"example.com": ["192.0.2.1"]})
    p = problem(resolver, "example.com")
    assert (p.status, p.dsn) == ("deferred", "4.4.3")
    assert p.text == ("Host or domain name not found. Name service error for name=example.com type=MX: "
                      "Host not found, try again")
    assert resolver.calls == [("MX", "example.com")]
    # ... unless ignore_mx_lookup_error: then the domain's own addresses.
    hosts = run(resolver, "example.com", ignoreMxLookupError=True)
    assert pairs(hosts) == [("example.com", "192.0.2.1", 0)]


def test_mx_host_without_addresses_is_skipped():
    resolver = FakeResolver(mx={"example.com": [(10, "broken.example.com"), (20, "ok.example.com"),
                                                (30, "later.example.com")]},
                            hosts={"ok.example.com": ["192.0.2.2"], "broken.example.com": [],
                                   "later.example.com": tryAgain("later.example.com", "A")})
    assert pairs(run(resolver, "example.com")) == [("ok.example.com", "192.0.2.2", 20)]


def test_no_mx_host_has_an_address_bounces_or_defers():
    resolver = FakeResolver(mx={"example.com": [(10, "a.example.com"), (20, "b.example.com")]},
                            hosts={"b.example.com": []})
    p = problem(resolver, "example.com")
    assert (p.status, p.dsn) == ("bounced", "5.4.4")
    p = problem(resolver, "example.com", deferIfNoMxAddressFound=True)
    assert (p.status, p.dsn) == ("deferred", "4.4.4")


def test_a_temporary_address_failure_dominates():
    resolver = FakeResolver(mx={"example.com": [(10, "a.example.com"), (20, "b.example.com")]},
                            hosts={"a.example.com": tryAgain("a.example.com", "A")})
    p = problem(resolver, "example.com")
    assert (p.status, p.dsn) == ("deferred", "4.4.3")
    assert "a.example.com" in p.text and "try again" in p.text


class RecordingMaillog:
    """A MailLogger stand-in: the lines emitted."""

    def __init__(self):
        self.lines = []

    def emit(self, text, queue_id=None, level=None, **fields):
        self.lines.append(text)


@pytest.mark.parametrize("exchange", ["127.0.0.1", "192.0.2.5", "::1", "2001:db8::5", "::ffff:127.0.0.1",
                                      "127.0.0.1."])
def test_numeric_mx_exchange_is_never_an_address(exchange):
    """A name from the DNS is a name: an MX exchange that is an address is skipped, with Postfix's warning."""
    resolver = FakeResolver(mx={"example.com": [(10, exchange)]},
                            hosts={exchange: ["192.0.2.99"], "example.com": ["192.0.2.80"]})
    maillog = RecordingMaillog()
    p = problem(resolver, "example.com", maillog=maillog)
    assert (p.status, p.dsn, p.text) == (
        "bounced", "5.4.4",
        "Name service error for name=example.com type=MX: Malformed or unexpected name server reply")
    assert maillog.lines == [f"warning: numeric domain name in resource data of MX record for example.com: "
                             f"{exchange}"]
    assert resolver.calls == [("MX", "example.com")]  # nothing looked up, nothing used as an address


@pytest.mark.parametrize("exchange", ["127.1", "0x7f.0.0.1", "2130706433", "017700000001", "1.2.3.4.5",
                                      "bad_-.example.com", "-lead.example.com"])
def test_mx_exchange_that_getaddrinfo_would_read_as_an_address_is_malformed(exchange):
    resolver = FakeResolver(mx={"example.com": [(10, exchange), (20, "mx.example.com")]},
                            hosts={exchange: ["127.0.0.1"], "mx.example.com": ["192.0.2.20"]})
    maillog = RecordingMaillog()
    assert pairs(run(resolver, "example.com", maillog=maillog)) == [("mx.example.com", "192.0.2.20", 20)]
    assert maillog.lines == [f"warning: malformed domain name in resource data of MX record for example.com: "
                             f"{exchange}"]
    assert ("addr", exchange, ("ipv4", "ipv6")) not in resolver.calls


def test_numeric_mx_is_skipped_and_the_others_are_used_in_order():
    resolver = FakeResolver(mx={"example.com": [(5, "127.0.0.1"), (10, "a.example.com"), (20, "192.0.2.7"),
                                                (30, "b.example.com")]},
                            hosts={"a.example.com": ["192.0.2.1"], "b.example.com": ["192.0.2.2"]})
    hosts = run(resolver, "example.com", randomize=False)
    assert pairs(hosts) == [("a.example.com", "192.0.2.1", 10), ("b.example.com", "192.0.2.2", 30)]
    assert hosts.bestPreference == 10


def test_numeric_best_mx_does_not_count_for_loop_detection():
    """The skipped record does not exist for the loop check: a valid MX that is us is then the best MX (5.4.6)."""
    resolver = FakeResolver(mx={"example.com": [(5, "192.0.2.9"), (10, "me.example.com")]},
                            hosts={"me.example.com": ["198.51.100.25"]})
    p = problem(resolver, "example.com", myAddresses={"198.51.100.25"})
    assert (p.dsn, p.text) == ("5.4.6", "mail for example.com loops back to myself")


def test_only_numeric_mx_with_ignore_mx_lookup_error_uses_the_domain_itself():
    resolver = FakeResolver(mx={"example.com": [(10, "127.0.0.1")]}, hosts={"example.com": ["192.0.2.80"]})
    assert pairs(run(resolver, "example.com", ignoreMxLookupError=True)) == [("example.com", "192.0.2.80", 0)]


def test_only_numeric_mx_at_the_relayhost_is_a_configuration_problem():
    resolver = FakeResolver(mx={"relay.example": [(10, "127.0.0.1")]})
    p = problem(resolver, "relay.example", relay=True)
    assert (p.status, p.dsn) == ("deferred", "4.3.5")


def test_numeric_mx_with_the_native_lookup_is_skipped_too():
    """smtp_host_lookup = dns, native: the numeric name never reaches getaddrinfo() either."""
    asked = []
    native = FakeNative({"127.1": ["127.0.0.1"]}).resolver
    native.getaddrinfo = lambda host, *args: asked.append(host) or socket.getaddrinfo(host, *args)
    resolver = FakeResolver(mx={"example.com": [(10, "127.1")]})
    p = problem(resolver, "example.com", hostLookup=("dns", "native"), nativeResolver=native)
    assert p.dsn == "5.4.4"
    assert asked == [] and resolver.calls == [("MX", "example.com")]


def test_a_bracketed_address_is_still_a_literal():
    resolver = FakeResolver()
    assert pairs(run(resolver, "[192.0.2.5]")) == [("192.0.2.5", "192.0.2.5", 0)]
    assert resolver.calls == []


def test_too_many_mx_records_are_cut():
    resolver = FakeResolver(mx={"example.com": [(i, f"mx{i}") for i in range(150)]},
                            hosts={f"mx{i}": [f"10.0.{i // 256}.{i % 256}"] for i in range(150)})
    hosts = run(resolver, "example.com", mxAddressLimit=0)
    assert len(hosts) == 100


# -- loops back to myself ------------------------------------------------------------------------------


LOOPY = {"example.com": [(10, "a.example.com"), (20, "me.example.com"), (30, "c.example.com")]}
LOOPY_HOSTS = {"a.example.com": ["192.0.2.1"], "me.example.com": ["198.51.100.25"], "c.example.com": ["192.0.2.3"],
               "b.example.com": ["192.0.2.2"]}


def test_best_mx_is_us():
    resolver = FakeResolver(mx={"example.com": [(10, "me.example.com"), (20, "c.example.com")]}, hosts=LOOPY_HOSTS)
    p = problem(resolver, "example.com", myAddresses={"198.51.100.25"})
    assert (p.status, p.dsn, p.text) == ("bounced", "5.4.6", "mail for example.com loops back to myself")
    assert p.loops


def test_a_worse_mx_is_us():
    resolver = FakeResolver(mx=LOOPY, hosts=LOOPY_HOSTS)
    hosts = run(resolver, "example.com", myAddresses={"198.51.100.25"})
    assert pairs(hosts) == [("a.example.com", "192.0.2.1", 10)]
    assert hosts.foundMyself
    assert not run(resolver, "example.com").foundMyself


def test_equal_preference_to_us_is_dropped_too():
    resolver = FakeResolver(mx={"example.com": [(10, "a.example.com"), (20, "b.example.com"),
                                                (20, "me.example.com")]}, hosts=LOOPY_HOSTS)
    hosts = run(resolver, "example.com", myAddresses={"198.51.100.25"})
    assert pairs(hosts) == [("a.example.com", "192.0.2.1", 10)]


def test_only_mx_is_us():
    resolver = FakeResolver(mx={"example.com": [(10, "me.example.com")]}, hosts=LOOPY_HOSTS)
    p = problem(resolver, "example.com", myAddresses={"198.51.100.25", "127.0.0.1"})
    assert p.dsn == "5.4.6"


def test_us_by_host_name():
    resolver = FakeResolver(mx=LOOPY, hosts=LOOPY_HOSTS)
    hosts = run(resolver, "example.com", myHostnames={"ME.example.com."})
    assert pairs(hosts) == [("a.example.com", "192.0.2.1", 10)]


def test_better_mx_without_address_and_us_is_no_primary_relay():
    resolver = FakeResolver(mx={"example.com": [(10, "gone.example.com"), (20, "me.example.com")]},
                            hosts=LOOPY_HOSTS)
    p = problem(resolver, "example.com", myAddresses={"198.51.100.25"})
    assert (p.status, p.dsn, p.text) == ("deferred", "4.4.4", "unable to find primary relay for example.com")


def test_implicit_mx_that_is_us():
    resolver = FakeResolver(mx={"example.com": []}, hosts={"example.com": ["192.0.2.7", "198.51.100.25"]})
    assert problem(resolver, "example.com", myAddresses={"198.51.100.25"}).dsn == "5.4.6"


def test_ipv4_mapped_address_of_us():
    resolver = FakeResolver(mx={"example.com": [(10, "me.example.com")]},
                            hosts={"me.example.com": ["::ffff:198.51.100.25"]})
    assert problem(resolver, "example.com", myAddresses={"198.51.100.25"}).dsn == "5.4.6"


def test_loop_detection_only_for_smtp_on_port_25():
    resolver = FakeResolver(mx={"example.com": [(10, "me.example.com")]}, hosts=LOOPY_HOSTS)
    hosts = run(resolver, "example.com:2525", myAddresses={"198.51.100.25"})
    assert pairs(hosts) == [("me.example.com", "198.51.100.25", 10)]
    resolver = FakeResolver(hosts=LOOPY_HOSTS)
    hosts = run(resolver, "me.example.com:25", lmtp=True, myAddresses={"198.51.100.25"})
    assert pairs(hosts) == [("me.example.com", "198.51.100.25", 0)]
    assert resolver.calls == [("addr", "me.example.com", ("ipv4", "ipv6"))]  # LMTP: no MX lookup


def test_best_mx_transport():
    resolver = FakeResolver(mx={"example.com": [(10, "me.example.com")]}, hosts=LOOPY_HOSTS)
    result = run(resolver, "example.com", myAddresses={"198.51.100.25"}, bestMxTransport="local")
    assert result == PassToTransport("local", None, "mail for example.com loops back to myself")
    result = run(resolver, "example.com", myAddresses={"198.51.100.25"}, bestMxTransport="relay:[inside.example]")
    assert (result.transport, result.nexthop) == ("relay", "[inside.example]")
    # Not for "unable to find primary relay".
    resolver = FakeResolver(mx={"example.com": [(10, "gone"), (20, "me.example.com")]}, hosts=LOOPY_HOSTS)
    assert problem(resolver, "example.com", myAddresses={"198.51.100.25"}, bestMxTransport="local").dsn == "4.4.4"


def test_relayhost_problems_are_configuration_problems():
    resolver = FakeResolver(mx={"relay.example": [(10, "me.example.com")]}, hosts=LOOPY_HOSTS)
    p = problem(resolver, "relay.example", myAddresses={"198.51.100.25"}, relay=True, bestMxTransport="local")
    assert (p.status, p.dsn, p.text) == ("deferred", "4.3.5", "mail for relay.example loops back to myself")
    p = problem(FakeResolver(), "[gone.example]", relay=True)
    assert (p.status, p.dsn) == ("deferred", "4.3.5")


# -- [host], native lookups -----------------------------------------------------------------------------


def test_bracketed_host_does_address_lookups_only():
    resolver = FakeResolver(mx={"mail.example.com": [(10, "elsewhere.example")]},
                            hosts={"mail.example.com": ["192.0.2.8"]})
    hosts = run(resolver, "[mail.example.com]:587")
    assert hosts == [Host("mail.example.com", "192.0.2.8", 587, 0)]
    assert resolver.calls == [("addr", "mail.example.com", ("ipv4", "ipv6"))]
    p = problem(FakeResolver(), "[gone.example.com]")
    assert (p.status, p.dsn) == ("bounced", "5.4.4")
    p = problem(FakeResolver(hosts={"slow.example": tryAgain("slow.example", "A")}), "[slow.example]")
    assert (p.status, p.dsn) == ("deferred", "4.4.3")


def test_address_literal():
    resolver = FakeResolver()
    assert run(resolver, "[192.0.2.1]") == [Host("192.0.2.1", "192.0.2.1", 25, 0)]
    assert run(resolver, parseNexthop("[ipv6:2001:db8::1]:26")) == [Host("2001:db8::1", "2001:db8::1", 26, 0)]
    assert run(resolver, "192.0.2.1:2525") == [Host("192.0.2.1", "192.0.2.1", 2525, 0)]
    assert resolver.calls == []
    p = problem(resolver, "[2001:db8::1]", families=("ipv4",))
    assert p.dsn == "5.4.4" and "disabled" in p.text
    assert problem(resolver, "[198.51.100.25]", myAddresses={"198.51.100.25"}).dsn == "5.4.6"


def test_unix_nexthop_has_no_hosts():
    with pytest.raises(ValueError):
        run(FakeResolver(), parseNexthop("unix:/run/lmtp", "lmtp"))


class FakeNative:
    def __init__(self, table):
        def getaddrinfo(host, port, family=0, type=0):
            entry = table[host]
            if isinstance(entry, Exception):
                raise entry
            return [(socket.AF_INET6 if ":" in a else socket.AF_INET, socket.SOCK_STREAM, 6, "",
                     (a, 0, 0, 0) if ":" in a else (a, 0)) for a in entry]

        self.resolver = SystemResolver(None, getaddrinfo=getaddrinfo, runInThread=maybeDeferred)


def test_disable_dns_lookups_uses_the_native_resolver_only():
    resolver = FakeResolver(mx={"example.com": [(10, "mx.example.com")]})
    native = FakeNative({"example.com": ["192.0.2.44"]}).resolver
    hosts = run(resolver, "example.com", disableDnsLookups=True, nativeResolver=native)
    assert pairs(hosts) == [("example.com", "192.0.2.44", 0)]
    assert resolver.calls == []


def test_native_after_dns_not_found():
    resolver = FakeResolver(mx={"example.com": [(10, "mx.example.com"), (20, "local-only")]},
                            hosts={"mx.example.com": []})
    native = FakeNative({"mx.example.com": socket.gaierror(socket.EAI_NONAME, "Name or service not known"),
                         "local-only": ["10.1.2.3"]}).resolver
    hosts = run(resolver, "example.com", hostLookup=("dns", "native"), nativeResolver=native)
    assert pairs(hosts) == [("local-only", "10.1.2.3", 20)]
    # DNS alone does not find it.
    assert problem(resolver, "example.com").dsn == "5.4.4"


def test_native_errors():
    native = FakeNative({"later": socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution"),
                         "gone": socket.gaierror(socket.EAI_NONAME, "Name or service not known"),
                         "odd": socket.gaierror(socket.EAI_FAIL, "Non-recoverable failure in name resolution"),
                         "empty": []}).resolver
    p = problem(FakeResolver(), "[later]", hostLookup=("native",), nativeResolver=native)
    assert (p.dsn, p.text) == ("4.4.4", "unable to look up host later: Temporary failure in name resolution")
    p = problem(FakeResolver(), "[gone]", hostLookup=("native",), nativeResolver=native)
    assert (p.status, p.dsn) == ("bounced", "5.4.4")
    assert problem(FakeResolver(), "[odd]", hostLookup=("native",), nativeResolver=native).dsn == "5.3.0"
    p = problem(FakeResolver(), "[empty]", hostLookup=("native",), nativeResolver=native)
    assert (p.dsn, p.text) == ("5.4.4", "empty: host not found")


def test_bad_arguments():
    for kw in ({"hostLookup": ("nis",)}, {"hostLookup": ()}, {"families": ("ipx",)},
               {"addressPreference": "ipv5"}):
        with pytest.raises(ValueError):
            run(FakeResolver(), "example.com", **kw)
    with pytest.raises(ValueError):
        DeliveryProblem("sent", "2.0.0", "ok")


def test_parse_inet_protocols():
    assert parseInetProtocols("all") == ("ipv4", "ipv6")
    assert parseInetProtocols(("ipv6", "ipv4")) == ("ipv4", "ipv6")
    assert parseInetProtocols("ipv6") == ("ipv6",)
    assert parseInetProtocols("ipv4, ipv6") == ("ipv4", "ipv6")
    with pytest.raises(ValueError):
        parseInetProtocols("ipx")


# -- with the real Resolver on a fake reactor -----------------------------------------------------


def test_with_the_dns_resolver():
    from tests.unit.test_dns import FakeReactor, deliver, reply

    reactor = FakeReactor()
    resolver = Resolver(reactor, ["192.0.2.53"], rng=random.Random(3))
    out = []
    Deferred.fromCoroutine(destinationHosts(resolver, "Example.com", rng=random.Random(0))).addBoth(out.append)
    port, query, addr = reactor.only()
    deliver(port, reply(query, ("example.com", 300, "MX", "10 mx1.example.com.", "0 mx0.example.com.")), addr)
    answers = {"mx0.example.com": {"A": ["192.0.2.10"], "AAAA": []},
               "mx1.example.com": {"A": ["192.0.2.11"], "AAAA": ["2001:db8::11"]}}
    for port, query, addr in reactor.pending():
        name = query.question[0].name.to_text(omit_final_dot=True)
        rdtype = dns.rdatatype.to_text(query.question[0].rdtype)
        records = answers[name][rdtype]
        deliver(port, reply(query, *([(name, 300, rdtype, *records)] if records else [])), addr)
    assert not isinstance(out[0], Failure), out[0]
    assert pairs(out[0]) in ([("mx0.example.com", "192.0.2.10", 0), ("mx1.example.com", "192.0.2.11", 10),
                              ("mx1.example.com", "2001:db8::11", 10)],
                             [("mx0.example.com", "192.0.2.10", 0), ("mx1.example.com", "2001:db8::11", 10),
                              ("mx1.example.com", "192.0.2.11", 10)])

