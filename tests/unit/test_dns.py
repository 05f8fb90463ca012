"""mta.delivery.dns: the non-blocking DNS client, against a fake reactor (and once on loopback)."""

import random
import socket
import struct
import time

import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdatatype
import dns.rrset
import pytest
from twisted.internet import defer
from twisted.internet.protocol import DatagramProtocol, Factory, Protocol
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure

from mta.delivery.dns import DNSError, Resolver, SystemResolver, parseServer, systemServers, toASCII
from mta.testing import resultOf

# -- a fake reactor with UDP ------------------------------------------------------------------------


class FakeUDPPort:
    def __init__(self, reactor, protocol, interface):
        self.reactor = reactor
        self.protocol = protocol
        self.interface = interface
        self.sent = []
        self.connected = None
        self.listening = True
        protocol.makeConnection(self)

    def connect(self, host, port):
        assert self.connected is None
        self.connected = (host, port)

    def write(self, data, addr=None):
        if self.reactor.sendError is not None:
            raise self.reactor.sendError
        self.sent.append((data, addr or self.connected))

    def stopListening(self):
        self.listening = False
        self.protocol.doStop()

    def getHost(self):
        return None


class FakeReactor(MemoryReactorClock):
    """MemoryReactorClock plus listenUDP: every query gets its own fake port."""

    def __init__(self):
        super().__init__()
        self.udp = []
        self.sendError = None

    def listenUDP(self, port, protocol, interface="", maxPacketSize=8192):
        assert port == 0
        udpPort = FakeUDPPort(self, protocol, interface)
        self.udp.append(udpPort)
        return udpPort

    # helpers for the tests

    def open(self):
        return [p for p in self.udp if p.listening]

    def pending(self):
        """(port, query message, destination) for each open UDP query."""
        out = []
        for port in self.open():
            for data, addr in port.sent:
                out.append((port, dns.message.from_wire(data), addr))
        return out

    def only(self):
        pending = self.pending()
        assert len(pending) == 1, pending
        return pending[0]


def reply(query, *answer, authority=(), rcode=dns.rcode.NOERROR, tc=False, id=None, question=None):
    """A response to C{query}: answer/authority entries are (name, ttl, type, rdata...)."""
    response = dns.message.make_response(query)
    response.set_rcode(rcode)
    for section, entries in ((response.answer, answer), (response.authority, authority)):
        for name, ttl, rdtype, *rdatas in entries:
            section.append(dns.rrset.from_text(dns.name.from_text(name), ttl, "IN", rdtype, *rdatas))
    if tc:
        response.flags |= dns.flags.TC
    if id is not None:
        response.id = id
    if question is not None:
        response.question = [dns.rrset.RRset(dns.name.from_text(question[0]), dns.rdataclass.IN,
                                             dns.rdatatype.from_text(question[1]))]
    return response.to_wire(want_shuffle=False)


SOA = ("example.com", 3600, "SOA", "ns.example.com. hostmaster.example.com. 1 7200 900 1209600 300")


def deliver(port, wire, addr):
    port.protocol.datagramReceived(wire, addr)


result = resultOf


def failure(d, cls=DNSError):
    out = []
    d.addBoth(out.append)
    assert out and isinstance(out[0], Failure), out
    assert out[0].check(cls), out[0]
    return out[0].value


def pending(d):
    fired = []

    def seen(outcome):
        fired.append(outcome)
        return outcome

    d.addBoth(seen)
    assert not fired, fired
    return d


@pytest.fixture
def reactor():
    return FakeReactor()


def resolver(reactor, servers=("192.0.2.53",), **kw):
    kw.setdefault("rng", random.Random(7))
    return Resolver(reactor, servers, **kw)


def answerOne(reactor, *answer, **kw):
    port, query, addr = reactor.only()
    deliver(port, reply(query, *answer, **kw), addr)
    return query


# -- the basics -------------------------------------------------------------------------------------


def test_mx_lookup_over_udp(reactor):
    r = resolver(reactor, rng=random.Random(1))
    d = r.lookupMX("example.com")
    port, query, addr = reactor.only()
    assert addr == ("192.0.2.53", 53)
    assert query.question[0].name == dns.name.from_text("example.com.")
    assert query.question[0].rdtype == dns.rdatatype.MX
    assert query.flags & dns.flags.RD
    assert query.id == random.Random(1).randrange(65536)  # the id comes from the rng
    assert query.edns == 0 and query.payload == 1232
    deliver(port, reply(query, ("example.com", 300, "MX", "10 MX1.example.com.", "20 mx2.example.com.")), addr)
    assert result(d) == [(10, "mx1.example.com"), (20, "mx2.example.com")]
    assert reactor.open() == [] and reactor.getDelayedCalls() == []


def test_random_query_ids(reactor):
    r = Resolver(reactor, ["192.0.2.53"])  # SystemRandom
    ids = set()
    for i in range(20):
        r.lookupMX(f"d{i}.example")
    for port, query, addr in reactor.pending():
        ids.add(query.id)
    assert len(ids) > 15


def test_ipv6_server_and_port(reactor):
    r = resolver(reactor, ["[2001:db8::53]:5353"])
    d = r.lookupMX("example.com")
    port, query, addr = reactor.only()
    assert addr == ("2001:db8::53", 5353) and port.interface == "::"
    deliver(port, reply(query, ("example.com", 300, "MX", "0 mx.example.com.")), ("2001:db8:0::53", 5353, 0, 0))
    assert result(d) == [(0, "mx.example.com")]


def test_wrong_id_ignored(reactor):
    r = resolver(reactor)
    d = r.lookupMX("example.com")
    port, query, addr = reactor.only()
    deliver(port, reply(query, ("example.com", 300, "MX", "10 evil.example."), id=(query.id + 1) % 65536), addr)
    pending(d)
    assert port.protocol.ignored == 1
    deliver(port, reply(query, ("example.com", 300, "MX", "10 good.example.")), addr)
    assert result(d) == [(10, "good.example")]


def test_wrong_source_ignored(reactor):
    r = resolver(reactor)
    d = r.lookupMX("example.com")
    port, query, addr = reactor.only()
    spoof = reply(query, ("example.com", 300, "MX", "10 evil.example."))
    deliver(port, spoof, ("192.0.2.66", 53))  # another address
    deliver(port, spoof, ("192.0.2.53", 5353))  # another port
    pending(d)
    assert port.protocol.ignored == 2
    deliver(port, reply(query, ("example.com", 300, "MX", "10 good.example.")), addr)
    assert result(d) == [(10, "good.example")]


def test_wrong_question_and_garbage_ignored(reactor):
    r = resolver(reactor)
    d = r.lookupMX("example.com")
    port, query, addr = reactor.only()
    deliver(port, reply(query, ("evil.example", 300, "MX", "10 evil.example."), question=("evil.example", "MX")),
            addr)
    deliver(port, reply(query, ("example.com", 300, "A", "192.0.2.1"), question=("example.com", "A")), addr)
    deliver(port, b"\x00\x01garbage", addr)
    deliver(port, query.to_wire(), addr)  # our own query echoed: QR is not set
    pending(d)
    assert port.protocol.ignored == 4
    deliver(port, reply(query, ("example.com", 300, "MX", "10 good.example.")), addr)
    assert result(d) == [(10, "good.example")]
    # A late duplicate after the answer changes nothing.
    deliver(port, reply(query, ("example.com", 300, "MX", "10 late.example.")), addr)


# -- truncation: TCP ----------------------------------------------------------------------------------


def tcpExchange(reactor, index=-1):
    """Complete the TCP connection; return (protocol, transport, query message)."""
    host, port, factory, timeout, bind = reactor.tcpClients[index]
    protocol = factory.buildProtocol(None)
    transport = StringTransport()
    protocol.makeConnection(transport)
    data = transport.value()
    (length,) = struct.unpack("!H", data[:2])
    assert len(data) == 2 + length
    return protocol, transport, dns.message.from_wire(data[2:])


def test_truncated_answer_retried_over_tcp(reactor):
    r = resolver(reactor)
    d = r.lookupMX("big.example")
    port, query, addr = reactor.only()
    deliver(port, reply(query, tc=True), addr)
    assert reactor.open() == []  # the UDP port is closed
    host, tcpPort, factory, timeout, bind = reactor.tcpClients[0]
    assert (host, tcpPort, timeout) == ("192.0.2.53", 53, 5.0)
    protocol, transport, tcpQuery = tcpExchange(reactor)
    assert tcpQuery.question == query.question
    records = [f"{i} mx{i}.big.example." for i in range(40)]
    wire = reply(tcpQuery, ("big.example", 300, "MX", *records))
    framed = struct.pack("!H", len(wire)) + wire
    protocol.dataReceived(framed[:1])  # in pieces
    protocol.dataReceived(framed[1:100])
    pending(d)
    protocol.dataReceived(framed[100:])
    assert sorted(result(d)) == [(i, f"mx{i}.big.example") for i in range(40)]
    assert transport.disconnecting
    assert reactor.getDelayedCalls() == []


def test_unparsable_truncated_datagram_still_means_tcp(reactor):
    r = resolver(reactor)
    d = r.lookupMX("big.example")
    port, query, addr = reactor.only()
    wire = reply(query, ("big.example", 300, "MX", "10 a.big.example.", "20 b.big.example."), tc=True)
    deliver(port, wire[:-5], addr)  # cut inside the last record
    protocol, transport, tcpQuery = tcpExchange(reactor)
    wire = reply(tcpQuery, ("big.example", 300, "MX", "10 a.big.example."))
    protocol.dataReceived(struct.pack("!H", len(wire)) + wire)
    assert result(d) == [(10, "a.big.example")]


def test_tcp_answer_with_wrong_id_ignored_then_timeout(reactor):
    r = resolver(reactor, attempts=1)
    d = r.lookupMX("big.example")
    port, query, addr = reactor.only()
    deliver(port, reply(query, tc=True), addr)
    protocol, transport, tcpQuery = tcpExchange(reactor)
    wire = reply(tcpQuery, ("big.example", 300, "MX", "10 evil.example."), id=(tcpQuery.id + 1) % 65536)
    protocol.dataReceived(struct.pack("!H", len(wire)) + wire)
    pending(d)
    reactor.advance(5)
    error = failure(d)
    assert error.temporary and "timeout" in error.detail
    assert reactor.getDelayedCalls() == []


def test_tcp_connection_that_never_completes_times_out(reactor):
    r = resolver(reactor, ["192.0.2.53", "192.0.2.54"], attempts=1)
    d = r.lookupMX("big.example")
    port, query, addr = reactor.only()
    deliver(port, reply(query, tc=True), addr)
    assert len(reactor.tcpClients) == 1
    reactor.advance(5)
    port, query, addr = reactor.only()
    assert addr == ("192.0.2.54", 53)
    reactor.advance(5)
    error = failure(d)
    assert error.temporary and error.detail == "timeout at 192.0.2.53:53; timeout at 192.0.2.54:53"
    assert reactor.getDelayedCalls() == []


def test_tcp_connection_failure_goes_to_next_server(reactor):
    r = resolver(reactor, ["192.0.2.53", "192.0.2.54"])
    d = r.lookupMX("big.example")
    port, query, addr = reactor.only()
    deliver(port, reply(query, tc=True), addr)
    host, tcpPort, factory, timeout, bind = reactor.tcpClients[0]
    from twisted.internet.error import ConnectionRefusedError

    factory.clientConnectionFailed(None, Failure(ConnectionRefusedError()))
    port, query, addr = reactor.only()
    assert addr == ("192.0.2.54", 53)
    deliver(port, reply(query, ("big.example", 300, "MX", "5 mx.big.example.")), addr)
    assert result(d) == [(5, "mx.big.example")]


# -- timeouts, retries, rcodes --------------------------------------------------------------------------


def test_timeout_then_second_server(reactor):
    r = resolver(reactor, ["192.0.2.53", "192.0.2.54"])
    d = r.lookupMX("example.com")
    first, query, addr = reactor.only()
    assert addr == ("192.0.2.53", 53)
    reactor.advance(4.9)
    pending(d)
    reactor.advance(0.1)
    assert not first.listening
    second, query2, addr2 = reactor.only()
    assert addr2 == ("192.0.2.54", 53)
    # The first server answering late on its closed port does not count.
    deliver(first, reply(query, ("example.com", 300, "MX", "10 late.example.")), addr)
    pending(d)
    deliver(second, reply(query2, ("example.com", 300, "MX", "10 mx.example.com.")), addr2)
    assert result(d) == [(10, "mx.example.com")]


def test_every_server_times_out(reactor):
    r = resolver(reactor, ["192.0.2.53", "192.0.2.54"], timeout=5.0, attempts=2)
    d = r.lookupMX("example.com")
    sent = []
    for _ in range(4):
        port, query, addr = reactor.only()
        sent.append(addr[0])
        reactor.advance(5)
    assert sent == ["192.0.2.53", "192.0.2.54", "192.0.2.53", "192.0.2.54"]
    error = failure(d)
    assert error.temporary and error.rcode is None
    assert error.text == ("Host or domain name not found. Name service error for name=example.com type=MX: "
                          "Host not found, try again")
    assert error.detail.count("timeout") == 4
    assert reactor.open() == [] and reactor.getDelayedCalls() == []


def test_servfail_tries_next_server_then_fails_temporarily(reactor):
    r = resolver(reactor, ["192.0.2.53", "192.0.2.54"], attempts=1)
    d = r.lookupMX("example.com")
    answerOne(reactor, rcode=dns.rcode.SERVFAIL)
    port, query, addr = reactor.only()
    assert addr[0] == "192.0.2.54"
    deliver(port, reply(query, rcode=dns.rcode.SERVFAIL), addr)
    error = failure(d)
    assert error.temporary and error.rcode == dns.rcode.SERVFAIL
    assert "try again" in error.text and "SERVFAIL from 192.0.2.53:53" in error.detail
    # Temporary failures are not cached.
    d = r.lookupMX("example.com")
    assert len(reactor.pending()) == 1
    answerOne(reactor, ("example.com", 300, "MX", "10 mx.example.com."))
    assert result(d) == [(10, "mx.example.com")]


@pytest.mark.parametrize("rcode", [dns.rcode.REFUSED, dns.rcode.NOTIMP, dns.rcode.YXDOMAIN])
def test_other_error_rcodes_are_temporary(reactor, rcode):
    r = resolver(reactor, attempts=1)
    d = r.lookupMX("example.com")
    answerOne(reactor, rcode=rcode)
    error = failure(d)
    assert error.temporary and error.rcode == rcode


def test_servfail_then_answer_on_second_attempt(reactor):
    r = resolver(reactor, ["192.0.2.53"], attempts=2)
    d = r.lookupMX("example.com")
    answerOne(reactor, rcode=dns.rcode.SERVFAIL)
    answerOne(reactor, ("example.com", 300, "MX", "10 mx.example.com."))
    assert result(d) == [(10, "mx.example.com")]


def test_port_unreachable_goes_to_next_server_at_once(reactor):
    r = resolver(reactor, ["192.0.2.53", "192.0.2.54"])
    d = r.lookupMX("example.com")
    port, query, addr = reactor.only()
    assert port.connected == ("192.0.2.53", 53)
    port.protocol.connectionRefused()
    port, query, addr = reactor.only()
    assert addr == ("192.0.2.54", 53)
    deliver(port, reply(query, ("example.com", 300, "MX", "10 mx.example.com.")), addr)
    assert result(d) == [(10, "mx.example.com")]


def test_network_error_on_send_goes_to_next_server(reactor):
    r = resolver(reactor, ["192.0.2.53", "192.0.2.54"], attempts=1)
    reactor.sendError = OSError(101, "Network is unreachable")
    d = r.lookupMX("example.com")
    error = failure(d)
    assert error.temporary and "Network is unreachable" in error.detail
    assert reactor.open() == [] and reactor.getDelayedCalls() == []


def test_formerr_without_edns_retries_without_edns(reactor):
    r = resolver(reactor)
    d = r.lookupMX("example.com")
    port, query, addr = reactor.only()
    assert query.edns == 0
    plain = dns.message.make_response(query)
    plain.use_edns(False)
    plain.set_rcode(dns.rcode.FORMERR)
    deliver(port, plain.to_wire(), addr)
    port, query, addr = reactor.only()
    assert query.edns < 0
    deliver(port, reply(query, ("example.com", 300, "MX", "10 mx.example.com.")), addr)
    assert result(d) == [(10, "mx.example.com")]


def test_nxdomain_is_permanent_and_cached_for_the_whole_name(reactor):
    r = resolver(reactor)
    d = r.lookupMX("nowhere.example.com")
    answerOne(reactor, rcode=dns.rcode.NXDOMAIN, authority=[SOA])
    error = failure(d)
    assert not error.temporary and error.notFound and error.rcode == dns.rcode.NXDOMAIN
    assert error.text == ("Host or domain name not found. Name service error for name=nowhere.example.com "
                          "type=MX: Host not found")
    # The name does not exist: no query for its addresses either (until the SOA minimum, 300 s).
    error = failure(r.lookupAddresses("nowhere.example.com"))
    assert not error.temporary and "type=" in error.text
    assert reactor.pending() == []
    reactor.advance(300)
    d = r.lookupMX("nowhere.example.com")
    assert len(reactor.pending()) == 1
    pending(d)


def test_nodata_is_an_empty_list_cached_per_soa_minimum(reactor):
    r = resolver(reactor)
    d = r.lookupMX("example.com")
    answerOne(reactor, authority=[("example.com", 3600, "SOA",
                                   "ns.example.com. hostmaster.example.com. 1 7200 900 1209600 60")])
    assert result(d) == []
    reactor.advance(59)
    assert result(r.lookupMX("example.com")) == []
    assert reactor.pending() == []
    reactor.advance(1)
    d = r.lookupMX("example.com")
    answerOne(reactor, ("example.com", 300, "MX", "10 mx.example.com."))
    assert result(d) == [(10, "mx.example.com")]


def test_negative_ttl_is_the_smaller_of_soa_ttl_and_minimum(reactor):
    r = resolver(reactor)
    d = r.lookupMX("example.com")
    answerOne(reactor, authority=[("example.com", 30, "SOA",
                                   "ns.example.com. hostmaster.example.com. 1 7200 900 1209600 600")])
    assert result(d) == []
    reactor.advance(30)
    pending(r.lookupMX("example.com"))
    assert len(reactor.pending()) == 1


def test_negative_answer_without_soa_is_not_cached(reactor):
    r = resolver(reactor)
    d = r.lookupMX("example.com")
    answerOne(reactor)
    assert result(d) == []
    pending(r.lookupMX("example.com"))
    assert len(reactor.pending()) == 1


def test_negative_ttl_upper_bound(reactor):
    r = resolver(reactor, maxNegativeTTL=100)
    d = r.lookupMX("example.com")
    answerOne(reactor, authority=[("example.com", 86400, "SOA",
                                   "ns.example.com. hostmaster.example.com. 1 7200 900 1209600 86400")])
    assert result(d) == []
    reactor.advance(100)
    pending(r.lookupMX("example.com"))
    assert len(reactor.pending()) == 1


# -- the cache ------------------------------------------------------------------------------------------


def test_positive_answers_cached_for_their_ttl(reactor):
    r = resolver(reactor)
    d = r.lookupMX("example.com")
    answerOne(reactor, ("example.com", 60, "MX", "10 mx.example.com."))
    assert result(d) == [(10, "mx.example.com")]
    reactor.advance(59.9)
    assert result(r.lookupMX("EXAMPLE.com.")) == [(10, "mx.example.com")]
    assert reactor.pending() == []
    reactor.advance(0.1)
    d = r.lookupMX("example.com")
    answerOne(reactor, ("example.com", 60, "MX", "20 mx2.example.com."))
    assert result(d) == [(20, "mx2.example.com")]


def test_ttl_upper_bound_and_zero_ttl(reactor):
    r = resolver(reactor, maxTTL=600)
    d = r.lookupMX("example.com")
    answerOne(reactor, ("example.com", 604800, "MX", "10 mx.example.com."))
    result(d)
    reactor.advance(600)
    pending(r.lookupMX("example.com"))
    assert len(reactor.pending()) == 1
    d = r.lookupMX("zero.example")
    port, query, addr = [p for p in reactor.pending() if p[1].question[0].name.to_text() == "zero.example."][0]
    deliver(port, reply(query, ("zero.example", 0, "MX", "10 mx.zero.example.")), addr)
    assert result(d) == [(10, "mx.zero.example")]
    pending(r.lookupMX("zero.example"))  # TTL 0: not cached


def test_cache_size_bound(reactor):
    r = resolver(reactor, cacheSize=2)
    for name in ("a.example", "b.example", "c.example"):
        d = r.lookupMX(name)
        answerOne(reactor, (name, 3600, "MX", f"10 mx.{name}."))
        result(d)
    assert len(r.cache) == 2
    assert result(r.lookupMX("c.example")) == [(10, "mx.c.example")]
    assert result(r.lookupMX("b.example")) == [(10, "mx.b.example")]
    assert reactor.pending() == []
    pending(r.lookupMX("a.example"))  # evicted
    assert len(reactor.pending()) == 1


def test_results_are_copies(reactor):
    r = resolver(reactor)
    d = r.lookupAddresses("host.example", families=("ipv4",))
    answerOne(reactor, ("host.example", 300, "A", "192.0.2.1"))
    first = result(d)
    first.append("203.0.113.66")
    assert result(r.lookupAddresses("host.example", families=("ipv4",))) == ["192.0.2.1"]


def test_identical_queries_in_flight_share_one_exchange(reactor):
    r = resolver(reactor)
    d1 = r.lookupMX("example.com")
    d2 = r.lookupMX("Example.com.")
    answerOne(reactor, ("example.com", 300, "MX", "10 mx.example.com."))
    assert result(d1) == result(d2) == [(10, "mx.example.com")]


def test_shared_failure_reaches_every_caller(reactor):
    r = resolver(reactor, attempts=1)
    d1 = r.lookupMX("example.com")
    d2 = r.lookupMX("example.com")
    answerOne(reactor, rcode=dns.rcode.SERVFAIL)
    assert failure(d1).temporary and failure(d2).temporary


# -- CNAME, IDNA, names ---------------------------------------------------------------------------------


def test_cname_chain_in_answer(reactor):
    r = resolver(reactor)
    d = r.lookupAddresses("www.example.com", families=("ipv4",))
    answerOne(reactor, ("www.example.com", 3600, "CNAME", "web.example.net."),
              ("web.example.net", 30, "CNAME", "lb.example.org."),
              ("lb.example.org", 600, "A", "192.0.2.10", "192.0.2.11"),
              ("unrelated.example", 600, "A", "203.0.113.66"))
    assert result(d) == ["192.0.2.10", "192.0.2.11"]
    reactor.advance(29)
    assert result(r.lookupAddresses("www.example.com", families=("ipv4",))) == ["192.0.2.10", "192.0.2.11"]
    reactor.advance(1)  # the chain lives as long as its shortest TTL
    pending(r.lookupAddresses("www.example.com", families=("ipv4",)))


def test_records_outside_the_chain_are_not_used(reactor):
    r = resolver(reactor)
    d = r.lookupAddresses("www.example.com", families=("ipv4",))
    answerOne(reactor, ("www.example.com", 3600, "CNAME", "web.example.net."),
              ("evil.example", 600, "A", "203.0.113.66"),
              authority=[SOA])
    assert result(d) == []
    # ... nor cached: the unrelated name is looked up afresh.
    pending(r.lookupAddresses("evil.example", families=("ipv4",)))
    assert reactor.pending()[-1][1].question[0].name == dns.name.from_text("evil.example.")


def test_incomplete_cname_chain_is_followed_with_a_new_query(reactor):
    r = resolver(reactor)
    d = r.lookupMX("alias.example.com")
    answerOne(reactor, ("alias.example.com", 300, "CNAME", "real.example.net."))
    port, query, addr = reactor.only()
    assert query.question[0].name == dns.name.from_text("real.example.net.")
    deliver(port, reply(query, ("real.example.net", 300, "MX", "10 mx.example.net.")), addr)
    assert result(d) == [(10, "mx.example.net")]


def test_cname_to_nxdomain(reactor):
    r = resolver(reactor)
    d = r.lookupMX("alias.example.com")
    answerOne(reactor, ("alias.example.com", 300, "CNAME", "gone.example.net."), rcode=dns.rcode.NXDOMAIN,
              authority=[SOA])
    error = failure(d)
    assert not error.temporary and error.notFound


def test_cname_loop(reactor):
    r = resolver(reactor)
    d = r.lookupMX("a.example")
    answerOne(reactor, ("a.example", 300, "CNAME", "b.example."), ("b.example", 300, "CNAME", "a.example."))
    error = failure(d)
    assert not error.temporary and "Name server loop" in error.text


def test_cname_chain_too_long(reactor):
    r = resolver(reactor)
    d = r.lookupMX("c0.example")
    answerOne(reactor, *[(f"c{i}.example", 300, "CNAME", f"c{i + 1}.example.") for i in range(12)])
    assert "loop" in failure(d).text


def test_idna_and_trailing_dot(reactor):
    r = resolver(reactor)
    d = r.lookupMX("Bücher.example.")
    port, query, addr = reactor.only()
    assert query.question[0].name == dns.name.from_text("xn--bcher-kva.example.")
    deliver(port, reply(query, ("xn--bcher-kva.example", 300, "MX", "10 mx.xn--bcher-kva.example.")), addr)
    assert result(d) == [(10, "mx.xn--bcher-kva.example")]
    # The A-label form is the same cache entry.
    assert result(r.lookupMX("xn--bcher-kva.example")) == [(10, "mx.xn--bcher-kva.example")]
    assert toASCII("bücher.example") == "xn--bcher-kva.example"


@pytest.mark.parametrize("name", ["", ".", "a..b", "bad name.example", "1.2.3.4", "x\\.y.example",
                                  "a" * 64 + ".example"])
def test_invalid_names_fail_without_a_query(reactor, name):
    r = resolver(reactor)
    error = failure(r.lookupMX(name))
    assert not error.temporary and error.notFound and "invalid host or domain name" in error.text
    assert reactor.pending() == []


def test_null_mx_exchange_is_a_dot(reactor):
    r = resolver(reactor)
    d = r.lookupMX("nomail.example")
    answerOne(reactor, ("nomail.example", 300, "MX", "0 ."))
    assert result(d) == [(0, ".")]


# -- addresses ------------------------------------------------------------------------------------------


def answerAddresses(reactor, a=(), aaaa=(), name="host.example"):
    for port, query, addr in reactor.pending():
        rdtype = query.question[0].rdtype
        if rdtype == dns.rdatatype.A:
            entries = [(name, 300, "A", *a)] if a else []
        else:
            entries = [(name, 300, "AAAA", *aaaa)] if aaaa else []
        deliver(port, reply(query, *entries, authority=[] if entries else [SOA]), addr)


def test_addresses_both_families_in_parallel(reactor):
    r = resolver(reactor)
    d = r.lookupAddresses("host.example")
    types = sorted(dns.rdatatype.to_text(q.question[0].rdtype) for _, q, _ in reactor.pending())
    assert types == ["A", "AAAA"]
    answerAddresses(reactor, a=["192.0.2.1", "192.0.2.2"], aaaa=["2001:DB8:0::1"])
    assert result(d) == ["192.0.2.1", "192.0.2.2", "2001:db8::1"]
    assert result(r.lookupAddresses("host.example", ("ipv6", "ipv4"))) == ["2001:db8::1", "192.0.2.1", "192.0.2.2"]
    assert result(r.lookupAddresses("host.example", preference="ipv6")) == ["2001:db8::1", "192.0.2.1", "192.0.2.2"]
    assert result(r.lookupAddresses("host.example", ("ipv6", "ipv4"), "ipv4")) == ["192.0.2.1", "192.0.2.2",
                                                                                   "2001:db8::1"]
    assert result(r.lookupAddresses("host.example", ("ipv6",))) == ["2001:db8::1"]


def test_addresses_one_family_only(reactor):
    r = resolver(reactor)
    d = r.lookupAddresses("host.example", ("ipv4",))
    assert [q.question[0].rdtype for _, q, _ in reactor.pending()] == [dns.rdatatype.A]
    answerAddresses(reactor, a=["192.0.2.1"])
    assert result(d) == ["192.0.2.1"]


def test_addresses_one_family_failing_is_ignored(reactor):
    r = resolver(reactor, attempts=1)
    d = r.lookupAddresses("host.example")
    for port, query, addr in reactor.pending():
        if query.question[0].rdtype == dns.rdatatype.A:
            deliver(port, reply(query, ("host.example", 300, "A", "192.0.2.1")), addr)
        else:
            deliver(port, reply(query, rcode=dns.rcode.SERVFAIL), addr)
    assert result(d) == ["192.0.2.1"]


def test_addresses_nodata_and_temporary_failure_is_temporary(reactor):
    r = resolver(reactor, attempts=1)
    d = r.lookupAddresses("host.example")
    for port, query, addr in reactor.pending():
        if query.question[0].rdtype == dns.rdatatype.A:
            deliver(port, reply(query, authority=[SOA]), addr)
        else:
            deliver(port, reply(query, rcode=dns.rcode.SERVFAIL), addr)
    error = failure(d)
    assert error.temporary and "type=AAAA" in error.text


def test_addresses_nodata_is_empty(reactor):
    r = resolver(reactor)
    d = r.lookupAddresses("host.example")
    answerAddresses(reactor)
    assert result(d) == []


def test_address_literals(reactor):
    r = resolver(reactor)
    assert result(r.lookupAddresses("192.0.2.7")) == ["192.0.2.7"]
    assert result(r.lookupAddresses("2001:DB8::7")) == ["2001:db8::7"]
    assert result(r.lookupAddresses("2001:db8::7", ("ipv4",))) == []
    assert reactor.pending() == []


def test_unknown_family_is_a_programming_error(reactor):
    r = resolver(reactor)
    failure(r.lookupAddresses("host.example", ("ipx",)), ValueError)
    failure(r.lookupAddresses("host.example", preference="ipv5"), ValueError)


# -- configuration ------------------------------------------------------------------------------------


def test_parse_server():
    assert parseServer("192.0.2.1") == ("192.0.2.1", 53)
    assert parseServer("192.0.2.1:5353") == ("192.0.2.1", 5353)
    assert parseServer("2001:db8::1") == ("2001:db8::1", 53)
    assert parseServer("[2001:db8::1]:5353") == ("2001:db8::1", 5353)
    assert parseServer("[2001:db8::1]") == ("2001:db8::1", 53)
    for bad in ("ns.example.com", "192.0.2.1:0", "192.0.2.1:x", "[2001:db8::1]x", "[2001:db8::1", "",
                "192.0.2.1:65536"):
        with pytest.raises(ValueError):
            parseServer(bad)


def test_system_servers(tmp_path):
    conf = tmp_path / "resolv.conf"
    conf.write_text("search example.org\nnameserver 192.0.2.1\nnameserver 2001:db8::53\noptions timeout:1\n")
    assert systemServers(str(conf)) == (("192.0.2.1", 53), ("2001:db8::53", 53))
    conf.write_text("search example.org\n")
    assert systemServers(str(conf)) == (("127.0.0.1", 53),)
    assert systemServers(str(tmp_path / "missing")) == (("127.0.0.1", 53),)


def test_resolver_reads_resolv_conf_without_querying(reactor, tmp_path):
    conf = tmp_path / "resolv.conf"
    conf.write_text("nameserver 192.0.2.99\n")
    r = Resolver(reactor, [], resolvConf=str(conf))
    assert r.servers == (("192.0.2.99", 53),)
    assert reactor.udp == [] and reactor.tcpClients == []
    assert Resolver(reactor, ["192.0.2.1:5300", ("192.0.2.2", 53)]).servers == (("192.0.2.1", 5300),
                                                                                 ("192.0.2.2", 53))
    with pytest.raises(ValueError):
        Resolver(reactor, ["192.0.2.1"], timeout=0)


# -- the native (getaddrinfo) resolver ---------------------------------------------------------------


def fakeGetaddrinfo(table):
    calls = []

    def getaddrinfo(host, port, family=0, type=0):
        calls.append((host, family))
        entry = table[host]
        if isinstance(entry, Exception):
            raise entry
        out = []
        for address in entry:
            if ":" in address:
                if family in (socket.AF_UNSPEC, socket.AF_INET6):
                    out.append((socket.AF_INET6, socket.SOCK_STREAM, 6, "", (address, 0, 0, 0)))
            elif family in (socket.AF_UNSPEC, socket.AF_INET):
                out.append((socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, 0)))
        return out

    getaddrinfo.calls = calls
    return getaddrinfo


def native(table):
    gai = fakeGetaddrinfo(table)
    return SystemResolver(None, getaddrinfo=gai, runInThread=lambda f, *a: defer.maybeDeferred(f, *a)), gai


def test_system_resolver_addresses():
    r, gai = native({"host.example": ["2001:db8::1", "192.0.2.1", "192.0.2.1"],
                     "xn--bcher-kva.example": ["192.0.2.5"]})
    assert result(r.lookupAddresses("host.example")) == ["192.0.2.1", "2001:db8::1"]
    assert result(r.lookupAddresses("host.example", preference="ipv6")) == ["2001:db8::1", "192.0.2.1"]
    assert result(r.lookupAddresses("host.example", ("ipv4",))) == ["192.0.2.1"]
    assert gai.calls[-1] == ("host.example", socket.AF_INET)
    assert result(r.lookupAddresses("bücher.example")) == ["192.0.2.5"]
    assert result(r.lookupAddresses("192.0.2.9")) == ["192.0.2.9"]


def test_system_resolver_errors():
    r, gai = native({"gone.example": socket.gaierror(socket.EAI_NONAME, "Name or service not known"),
                     "later.example": socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution"),
                     "odd.example": socket.gaierror(socket.EAI_FAIL, "Non-recoverable failure in name resolution")})
    error = failure(r.lookupAddresses("gone.example"))
    assert not error.temporary and error.notFound
    assert error.text == "unable to look up host gone.example: Name or service not known"
    error = failure(r.lookupAddresses("later.example"))
    assert error.temporary and error.notFound
    error = failure(r.lookupAddresses("odd.example"))
    assert not error.temporary and not error.notFound


# -- on the wire: a tiny DNS server on 127.0.0.1 -----------------------------------------------------


class TinyDNS(DatagramProtocol):
    """Answers from a zone dict; names in BIG get a truncated UDP answer."""

    def __init__(self, zone, big=()):
        self.zone = zone
        self.big = set(big)
        self.queries = []

    def answer(self, wire, tcp=False):
        maxSize = 65535 if tcp else 512
        query = dns.message.from_wire(wire)
        question = query.question[0]
        name = question.name.to_text(omit_final_dot=True).lower()
        rdtype = dns.rdatatype.to_text(question.rdtype)
        self.queries.append((name, rdtype, "tcp" if tcp else "udp"))
        response = dns.message.make_response(query)
        if name not in {key[0] for key in self.zone}:
            response.set_rcode(dns.rcode.NXDOMAIN)
            response.authority.append(dns.rrset.from_text(dns.name.from_text(SOA[0]), SOA[1], "IN", "SOA",
                                                          SOA[3]))
        elif name in self.big and not tcp:
            response.flags |= dns.flags.TC
        else:
            rdatas = self.zone.get((name, rdtype))
            if rdatas:
                response.answer.append(dns.rrset.from_text(dns.name.from_text(name), 300, "IN", rdtype, *rdatas))
            else:
                response.authority.append(dns.rrset.from_text(dns.name.from_text(SOA[0]), SOA[1], "IN", "SOA",
                                                              SOA[3]))
        return response.to_wire(max_size=maxSize)

    def datagramReceived(self, data, addr):
        self.transport.write(self.answer(data), addr)


class TinyDNSOverTCP(Protocol):
    def __init__(self, server):
        self.server = server
        self.buffer = b""

    def dataReceived(self, data):
        self.buffer += data
        if len(self.buffer) >= 2:
            (length,) = struct.unpack("!H", self.buffer[:2])
            if len(self.buffer) >= 2 + length:
                wire = self.server.answer(self.buffer[2:2 + length], tcp=True)
                self.transport.write(struct.pack("!H", len(wire)) + wire)


class PrivateReactor:
    """
    A reactor of our own (not the global one, which other tests may have
    run and stopped), driven by hand until a Deferred fires.
    """

    def __init__(self):
        from twisted.internet.selectreactor import SelectReactor

        self.reactor = SelectReactor()

    def wait(self, d, limit=10.0):
        out = []
        d.addBoth(out.append)
        deadline = time.monotonic() + limit
        while not out and time.monotonic() < deadline:
            self.reactor.iterate(0.01)
        assert out, "no answer from the loopback DNS server"
        if isinstance(out[0], Failure):
            out[0].raiseException()
        return out[0]

    def close(self, *ports):
        for port in ports:
            port.stopListening()
        for _ in range(5):
            self.reactor.iterate(0)
        for call in self.reactor.getDelayedCalls():
            call.cancel()
        self.reactor.removeAll()
        waker = getattr(self.reactor, "waker", None)
        if waker is not None:
            waker.connectionLost(None)  # closes its pipe


def test_loopback_udp_and_tcp():
    """The real wire path: Twisted UDP and TCP on 127.0.0.1 only."""
    private = PrivateReactor()
    reactor = private.reactor
    big = [f"{i} mx{i:02d}.big.example." for i in range(60)]
    records = {
        ("example.com", "MX"): ["10 mx1.example.com.", "20 mx2.example.com."],
        ("mx1.example.com", "A"): ["127.0.0.11"],
        ("mx1.example.com", "AAAA"): ["::1"],
        ("big.example", "MX"): big,
    }
    for attempt in range(20):
        # A fresh protocol per attempt: one whose port was stopped keeps its transport until the
        # (not running) reactor tells it, and a protocol can be bound once.
        server = TinyDNS(records, big=["big.example"])
        udp = reactor.listenUDP(0, server, interface="127.0.0.1")
        port = udp.getHost().port
        try:
            tcp = reactor.listenTCP(port, Factory.forProtocol(lambda: TinyDNSOverTCP(server)), interface="127.0.0.1")
            break
        except Exception:
            udp.stopListening()
    else:
        raise RuntimeError("no free UDP/TCP port pair on 127.0.0.1")
    try:
        r = Resolver(reactor, [f"127.0.0.1:{port}"], timeout=5.0, attempts=1)
        mx = private.wait(r.lookupMX("example.com"))
        assert sorted(mx) == [(10, "mx1.example.com"), (20, "mx2.example.com")]
        assert private.wait(r.lookupAddresses("mx1.example.com", preference="ipv6")) == ["::1", "127.0.0.11"]
        assert private.wait(r.lookupAddresses("mx1.example.com", ("ipv4",))) == ["127.0.0.11"]
        assert private.wait(r.lookupMX("mx1.example.com")) == []
        with pytest.raises(DNSError) as info:
            private.wait(r.lookupMX("nonexistent.example"))
        assert not info.value.temporary and info.value.rcode == dns.rcode.NXDOMAIN
        assert len(private.wait(r.lookupMX("big.example"))) == 60
        assert ("big.example", "MX", "udp") in server.queries and ("big.example", "MX", "tcp") in server.queries
        count = len(server.queries)
        assert sorted(private.wait(r.lookupMX("example.com"))) == sorted(mx)  # cached
        assert len(server.queries) == count
    finally:
        private.close(udp, tcp)


def test_system_resolver_runs_getaddrinfo_in_a_thread():
    """The default SystemResolver never calls getaddrinfo() on the reactor thread."""
    import threading

    private = PrivateReactor()
    threads = []

    def getaddrinfo(host, port, family=0, type=0):
        threads.append(threading.current_thread())
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("192.0.2.77", 0))]

    pool = private.reactor.getThreadPool()
    pool.start()
    try:
        r = SystemResolver(private.reactor, getaddrinfo=getaddrinfo)
        assert private.wait(r.lookupAddresses("host.example")) == ["192.0.2.77"]
        assert threads and threads[0] is not threading.current_thread()
    finally:
        pool.stop()
        private.close()


def test_cached_ttl_of_positive_and_negative_answers(reactor):
    """cachedTTL: the seconds left of a cached answer (postscreen's DNSBL TTL), None when nothing is cached."""
    r = resolver(reactor)
    assert r.cachedTTL("2.0.0.127.zen.example", "A") is None
    d = r.lookupRecords("2.0.0.127.zen.example", "A")
    answerOne(reactor, ("2.0.0.127.zen.example", 900, "A", "127.0.0.2"))
    assert [a.address for a in result(d)] == ["127.0.0.2"]
    assert r.cachedTTL("2.0.0.127.zen.example", "A") == 900
    reactor.advance(100)
    assert r.cachedTTL("2.0.0.127.zen.example", "A") == 800
    d = r.lookupRecords("3.0.0.127.example.com", "A")
    answerOne(reactor, authority=[SOA], rcode=dns.rcode.NXDOMAIN)
    assert result(d.addErrback(lambda f: f.trap(DNSError))) is DNSError
    assert r.cachedTTL("3.0.0.127.example.com", "A") == 300  # the SOA's minimum
    reactor.advance(800)
    assert r.cachedTTL("2.0.0.127.zen.example", "A") is None
    assert r.cachedTTL("not a name..", "A") is None
