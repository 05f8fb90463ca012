"""mta.delivery.dns and mx with DNSSEC: the DO/AD bits, the AD bit trusted only from trusted servers."""

import random

import dns.flags
import dns.message

from mta.delivery.mx import destinationHosts
from tests.unit.test_dns import FakeReactor, deliver, reply
from tests.unit.test_dns import result as resultOf
from mta.delivery.dns import Resolver


def answer(reactor, *records, ad=True, index=-1):
    port, query, addr = reactor.pending()[index]
    wire = reply(query, *records)
    message = dns.message.from_wire(wire)
    if ad:
        message.flags |= dns.flags.AD
    deliver(port, message.to_wire(), addr)
    return query


def test_dnssec_query_has_do_and_ad_bits_and_a_secure_answer():
    reactor = FakeReactor()
    r = Resolver(reactor, ["127.0.0.1:5353"], rng=random.Random(1))
    d = r.lookupRecords("_25._tcp.mx.example.com", "TLSA", dnssec=True)
    query = answer(reactor, ("_25._tcp.mx.example.com", 300, "TLSA", "3 1 1 " + "ab" * 32))
    assert query.flags & dns.flags.AD and query.ednsflags & dns.flags.DO
    records = resultOf(d)
    assert records.secure and len(records) == 1 and records[0].usage == 3


def test_plain_query_has_no_dnssec_bits_and_is_kept_apart_in_the_cache():
    reactor = FakeReactor()
    r = Resolver(reactor, ["127.0.0.1"])
    d = r.lookupMX("example.com")
    query = answer(reactor, ("example.com", 300, "MX", "10 mx.example.com."))
    assert not query.flags & dns.flags.AD and not query.ednsflags & dns.flags.DO
    assert resultOf(d) == [(10, "mx.example.com")]
    d = r.lookupMX("example.com", dnssec=True)  # not answered from the plain cache entry
    answer(reactor, ("example.com", 300, "MX", "10 mx.example.com."))
    mx = resultOf(d)
    assert mx == [(10, "mx.example.com")] and mx.secure


def test_ad_bit_from_an_untrusted_server_is_ignored(tmp_path):
    conf = tmp_path / "resolv.conf"
    conf.write_text("nameserver 192.0.2.53\n")
    reactor = FakeReactor()
    r = Resolver(reactor, [], resolvConf=str(conf))
    assert r.trustedServers == frozenset()  # not loopback, not configured in dns_servers
    d = r.lookupMX("example.com", dnssec=True)
    answer(reactor, ("example.com", 300, "MX", "10 mx.example.com."))
    assert not resultOf(d).secure
    conf.write_text("nameserver 127.0.0.53\n")
    assert Resolver(reactor, [], resolvConf=str(conf)).trustedServers == frozenset({("127.0.0.53", 53)})
    assert Resolver(reactor, ["192.0.2.1"]).trustedServers == frozenset({("192.0.2.1", 53)})  # configured


def test_answer_without_ad_is_insecure():
    reactor = FakeReactor()
    r = Resolver(reactor, ["127.0.0.1"])
    d = r.lookupAddresses("mx.example.com", ("ipv4",), dnssec=True)
    answer(reactor, ("mx.example.com", 300, "A", "192.0.2.1"), ad=False)
    addresses = resultOf(d)
    assert addresses == ["192.0.2.1"] and not addresses.secure


def test_cname_chain_is_secure_only_if_every_reply_was():
    reactor = FakeReactor()
    r = Resolver(reactor, ["127.0.0.1"])
    d = r.lookupAddresses("mx.example.com", ("ipv4",), dnssec=True)
    answer(reactor, ("mx.example.com", 300, "CNAME", "mail.example.net."))  # the chain stops: ask again
    answer(reactor, ("mail.example.net", 300, "A", "192.0.2.1"), ad=False)
    addresses = resultOf(d)
    assert addresses == ["192.0.2.1"] and not addresses.secure and addresses.name == "mail.example.net"


def test_mx_hosts_carry_the_secure_flags():
    reactor = FakeReactor()
    r = Resolver(reactor, ["127.0.0.1"])
    d = defer_hosts(r, "example.com")
    answer(reactor, ("example.com", 300, "MX", "10 mx.example.com."))
    answer(reactor, ("mx.example.com", 300, "A", "192.0.2.1"), ad=False)
    hosts = resultOf(d)
    assert [(h.name, h.mxSecure, h.secure) for h in hosts] == [("mx.example.com", True, False)]


def test_bracketed_next_hop_counts_as_a_secure_mx():
    reactor = FakeReactor()
    r = Resolver(reactor, ["127.0.0.1"])
    d = defer_hosts(r, "[relay.example.com]")
    answer(reactor, ("relay.example.com", 300, "A", "192.0.2.7"))
    (host,) = resultOf(d)
    assert host.mxSecure and host.secure and host.canonical == ""


def defer_hosts(resolver, nexthop):
    from twisted.internet.defer import Deferred

    return Deferred.fromCoroutine(destinationHosts(resolver, nexthop, families=("ipv4",), dnssec=True,
                                                   randomize=False))
