"""mta.delivery.dnswire - the DNS client's wire: one query to one name server over UDP, then TCP when truncated.

NAME
    DNSWire(reactor, timeout).exchange(server, qname, rdtype)
                        -> the server's response (a dns.message.Message)
    parseServer(text)   a name server address: (address, port)
    systemServers(path) the name servers of /etc/resolv.conf
    serverText(server)  "192.0.2.1:53", "[2001:db8::1]:53"

DESCRIPTION
    exchange() builds the query with dnspython (dns.message), with EDNS0
    (payload 1232), a random 16-bit id, and sends it from a fresh UDP port
    (randomized by the kernel, connected to the server); a truncated answer
    (TC, or a datagram too broken to parse that still says id, QR and TC)
    is asked again over TCP (RFC 1035 4.2.2: a two-byte length prefix)
    through a Twisted endpoint.  A server that answers FORMERR or NOTIMP
    without an OPT record is asked again without EDNS0.  Each wait lasts at
    most C{timeout} seconds: DNSTimeout; a refused port, a lost or failed
    TCP connection, a socket that cannot be opened: DNSNetworkError.  The
    response's rcode is the caller's business (mta.delivery.dns.Resolver
    tries the next server on an error rcode).

    dns.resolver's blocking calls are never used; its
    Resolver(configure=True) only reads /etc/resolv.conf (systemServers()),
    once, when no servers are configured (no nameserver lines: 127.0.0.1,
    as the C library).

SECURITY
    Anybody can send UDP datagrams.  A datagram is accepted only from the
    queried server's address and port (the connected socket, and checked
    again in the protocol), only if it parses, has the query's id, the QR
    bit and the same question (dns.message.Message.is_response); anything
    else is ignored and the query keeps waiting.  Over TCP a reply is at
    most 65535 bytes (its length prefix); one that does not parse ends the
    query.  Ids come from random.SystemRandom unless the caller gives
    another source.

CONFIGURATION
    dns_servers (parsed by parseServer()), through the Resolver.
"""

import ipaddress
import random
import struct

import dns.flags
import dns.message
import dns.rcode
import dns.resolver
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP6ClientEndpoint, connectProtocol
from twisted.internet.error import ConnectingCancelledError
from twisted.internet.protocol import DatagramProtocol, Protocol
from twisted.logger import Logger

__all__ = ["DNS_PORT", "EDNS_PAYLOAD", "DNSNetworkError", "DNSTimeout", "DNSWire", "parseServer", "serverText",
           "systemServers"]

log = Logger()

DNS_PORT = 53
EDNS_PAYLOAD = 1232


class DNSTimeout(Exception):
    """No answer from the server in time."""

    def __str__(self):
        return "timeout"


class DNSNetworkError(Exception):
    """The query could not be sent, or its connection failed."""


_TRUNCATED = object()


def parseServer(text):
    """
    A name server: an IPv4 or IPv6 address, optionally with a port:
    C{192.0.2.1}, C{192.0.2.1:5353}, C{2001:db8::1}, C{[2001:db8::1]:53}.
    Returns (address text, port).  Raises ValueError.
    """
    text = text.strip()
    host, port = text, DNS_PORT
    if text.startswith("["):
        inner, sep, rest = text[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise ValueError(f"{text!r} is not a name server address")
        host = inner
        if rest:
            port = _port(rest[1:], text)
    elif text.count(":") == 1:
        host, portText = text.split(":")
        port = _port(portText, text)
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"{text!r} is not a name server address (an IP address is required)") from None
    return str(address), port


def _port(text, whole):
    if not text.isdigit() or not text.isascii() or not 0 < int(text) < 65536:
        raise ValueError(f"{whole!r}: bad port")
    return int(text)


def systemServers(path="/etc/resolv.conf"):
    """
    The name servers of the system's resolver configuration, read (not
    queried) with dns.resolver.Resolver(configure=True); 127.0.0.1 when
    there is none, as the C library.
    """
    try:
        resolver = dns.resolver.Resolver(filename=path, configure=True)
        names = list(resolver.nameservers)
    except (dns.resolver.NoResolverConfiguration, OSError):
        names = []
    servers = []
    for entry in names:
        address = getattr(entry, "address", entry)
        port = getattr(entry, "port", DNS_PORT)
        try:
            servers.append((str(ipaddress.ip_address(address)), int(port)))
        except ValueError:
            log.warn("ignoring name server {server!r} in {path}", server=address, path=path)
    return tuple(servers) or (("127.0.0.1", DNS_PORT),)


def _sameEndpoint(addr, server):
    try:
        return addr[1] == server[1] and ipaddress.ip_address(addr[0]) == ipaddress.ip_address(server[0])
    except (ValueError, IndexError, TypeError):
        return False


def _truncatedHeader(data, queryId):
    """A reply too broken to parse that still says: id, QR and TC."""
    if len(data) < 12:
        return False
    msgId, flags = struct.unpack("!HH", data[:4])
    return msgId == queryId and flags & dns.flags.QR and flags & dns.flags.TC


class _UDPQuery(DatagramProtocol):
    noisy = False  # one port per query: no "starting/stopping protocol" lines for each
    """Waits for the one datagram that answers a query."""

    def __init__(self, query, server):
        self.query = query
        self.server = server
        self.deferred = Deferred()
        self.ignored = 0

    def datagramReceived(self, data, addr):
        if self.deferred.called:
            return
        if not _sameEndpoint(addr, self.server):
            self.ignored += 1
            log.debug("DNS: ignoring a datagram from {addr} (waiting for {server})", addr=addr,
                      server=self.server)
            return
        try:
            response = dns.message.from_wire(data)
        except Exception:
            if _truncatedHeader(data, self.query.id):
                self.deferred.callback(_TRUNCATED)
            else:
                self.ignored += 1
                log.debug("DNS: ignoring a malformed datagram from {addr}", addr=addr)
            return
        if not self.query.is_response(response):
            self.ignored += 1
            log.debug("DNS: ignoring a datagram from {addr} that does not answer query {id}",
                      addr=addr, id=self.query.id)
            return
        self.deferred.callback(response)

    def connectionRefused(self):
        if not self.deferred.called:
            self.deferred.errback(DNSNetworkError("connection refused"))

    def timedOut(self):
        if not self.deferred.called:
            self.deferred.errback(DNSTimeout())


class _TCPQuery(Protocol):
    """One query over TCP (RFC 1035 4.2.2: two-byte length prefix)."""

    def __init__(self, query):
        self.query = query
        self.buffer = b""
        self.deferred = Deferred()

    def connectionMade(self):
        wire = self.query.to_wire()
        self.transport.write(struct.pack("!H", len(wire)) + wire)

    def dataReceived(self, data):
        if self.deferred.called:
            return
        self.buffer += data
        while len(self.buffer) >= 2:
            (length,) = struct.unpack("!H", self.buffer[:2])
            if len(self.buffer) < 2 + length:
                return
            wire, self.buffer = self.buffer[2:2 + length], self.buffer[2 + length:]
            try:
                response = dns.message.from_wire(wire)
            except Exception as e:
                self._fail(DNSNetworkError(f"malformed reply over TCP: {e}"))
                return
            if self.query.is_response(response):
                self.deferred.callback(response)
                self.transport.loseConnection()
                return

    def _fail(self, exc):
        if not self.deferred.called:
            self.deferred.errback(exc)
        if self.transport is not None:
            self.transport.abortConnection()

    def timedOut(self):
        self._fail(DNSTimeout())

    def connectionLost(self, reason):
        if not self.deferred.called:
            self.deferred.errback(DNSNetworkError(f"connection lost: {reason.getErrorMessage()}"))


class DNSWire:
    """
    Queries on the reactor (see the module docstring).

    @ivar reactor: provides IReactorUDP, IReactorTCP and IReactorTime.
    @ivar timeout: seconds to wait for one answer (UDP, or the TCP connection and its answer).
    @ivar edns: send EDNS0 (dropped for a server that does not understand it).
    @ivar payload: the EDNS0 UDP payload size.
    @ivar rng: has randrange(), for the query ids.
    """

    def __init__(self, reactor, timeout, edns=True, payload=EDNS_PAYLOAD, rng=None):
        self.reactor = reactor
        self.timeout = timeout
        self.edns = edns
        self.payload = payload
        self.rng = rng if rng is not None else random.SystemRandom()

    async def exchange(self, server, qname, rdtype, dnssec=False):
        """
        The server's response to a query for C{qname}/C{rdtype}; DNSTimeout or
        DNSNetworkError.  With C{dnssec} the query has the DO bit (EDNS0) and
        the AD bit (RFC 6840 5.7: "tell me whether you validated it").
        """
        useEdns = self.edns
        while True:
            query = dns.message.make_query(qname, rdtype, use_edns=0 if useEdns else False,
                                           want_dnssec=bool(dnssec and useEdns),
                                           payload=self.payload, id=self.rng.randrange(65536))
            if dnssec:
                query.flags |= dns.flags.AD
            response = await self._udp(server, query)
            if response is _TRUNCATED or response.flags & dns.flags.TC:
                response = await self._tcp(server, query)
            if useEdns and response.rcode() in (dns.rcode.FORMERR, dns.rcode.NOTIMP) and response.edns < 0:
                useEdns = False
                continue
            return response

    async def _udp(self, server, query):
        address, port = server
        protocol = _UDPQuery(query, server)
        interface = "::" if ":" in address else ""
        try:
            listening = self.reactor.listenUDP(0, protocol, interface=interface)
        except Exception as e:
            raise DNSNetworkError(f"cannot open a UDP socket: {e}") from None
        timer = self.reactor.callLater(self.timeout, protocol.timedOut)
        try:
            try:
                # A connected socket: the kernel drops datagrams from other
                # sources, and an ICMP "port unreachable" ends the wait.
                protocol.transport.connect(address.split("%")[0], port)
                protocol.transport.write(query.to_wire())
            except Exception as e:
                raise DNSNetworkError(f"cannot send: {e}") from None
            return await protocol.deferred
        finally:
            if timer.active():
                timer.cancel()
            listening.stopListening()

    async def _tcp(self, server, query):
        address, port = server
        endpointClass = TCP6ClientEndpoint if ":" in address else TCP4ClientEndpoint
        endpoint = endpointClass(self.reactor, address, port, timeout=self.timeout)
        protocol = _TCPQuery(query)
        connecting = connectProtocol(endpoint, protocol)

        expired = []

        def timedOut():
            expired.append(True)
            if not connecting.called:
                connecting.cancel()
            else:
                protocol.timedOut()

        timer = self.reactor.callLater(self.timeout, timedOut)
        try:
            try:
                await connecting
            except Exception as e:
                if expired or isinstance(e, (CancelledError, ConnectingCancelledError)):
                    raise DNSTimeout() from None
                raise DNSNetworkError(f"TCP connection failed: {e}") from None
            return await protocol.deferred
        finally:
            if timer.active():
                timer.cancel()
            if protocol.transport is not None:
                protocol.transport.loseConnection()


def serverText(server):
    """An (address, port) pair as text: 192.0.2.1:53, [2001:db8::1]:53."""
    address, port = server
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"
