"""mta.delivery.localaddr - this host's own addresses, for mail-loop detection.

NAME
    listenerAddresses(descriptions) - the addresses the listeners receive
    mail on, as Postfix's own_inet_addr_list() of inet_interfaces;
    localAddresses() - every address of this host's interfaces, as
    Postfix's inet_addr_local() (inet_interfaces = all).

DESCRIPTION
    A listener is a Twisted server endpoint description
    ("tcp:port=25:interface=192.0.2.1", "tcp6:port=25:interface=\\:\\:1",
    "ssl:465:privateKey=...", "unix:/run/mta.sock").  It is read with
    Twisted's own parser, twisted.internet.endpoints.serverFromString(),
    so that its quoting rules (backslash-escaped colons, positional and
    keyword arguments) are applied exactly as when the listener is made:
    the endpoint is built on a recording stand-in for the reactor and asked
    to listen, which tells the interface it would bind without binding
    anything.  Twisted has no public accessor for the interface of a
    server endpoint (its _parseServer() and the endpoints' _interface are
    private); listen() and IReactorTCP.listenTCP()/IReactorSSL.listenSSL()
    are public interfaces.

    The addresses that count:

        interface=192.0.2.1, interface=\\:\\:1   that address
        tcp or ssl without interface, or 0.0.0.0  every IPv4 address of the host
        tcp6 without interface, or ::             every address of the host
                                                  (IPv6, and IPv4: a dual-stack socket)
        unix:..., anything else                   none (no address)

    localAddresses() asks the C library's getifaddrs() (through ctypes, the
    call Postfix's inet_addr_local() makes); without it (no such C
    library) only the loopback addresses are known.  IPv6 scope ids are
    dropped and IPv4-mapped IPv6 addresses become IPv4.

SECURITY
    The descriptions come from the configuration; nothing is bound or
    connected, no name is looked up (an interface given as a host name
    is ignored, with a warning).

CONFIGURATION
    The [listener:NAME] endpoint lines, and proxy_interfaces (read by the
    smtp transport).
"""

import ctypes
import ctypes.util
import ipaddress
import socket
import sys

from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger

__all__ = ["localAddresses", "listenerAddresses", "listenerInterface", "parseAddress"]

log = Logger()

LOOPBACK = (ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1"))


def parseAddress(text):
    """An ipaddress object for "192.0.2.1", "[192.0.2.1]", "::1", "[ipv6:::1]", "fe80::1%eth0"; None if not one."""
    text = str(text).strip()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    if text[:5].lower() == "ipv6:":
        text = text[5:]
    text = text.split("%", 1)[0]
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if address.version == 6 and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address


# -- what a listener binds ----------------------------------------------------------------


class _RecordingReactor:
    """Stands in for the reactor when an endpoint is asked to listen: records what it would bind."""

    def __init__(self):
        self.bound = []  # (kind, interface)

    def listenTCP(self, port, factory, backlog=50, interface=""):
        self.bound.append(("tcp", interface))

    def listenSSL(self, port, factory, contextFactory, backlog=50, interface=""):
        self.bound.append(("tcp", interface))

    def listenUNIX(self, address, factory, backlog=50, mode=0o666, wantPID=0):
        self.bound.append(("unix", address))


def listenerInterface(description):
    """
    What a server endpoint description would bind, through Twisted's parser:
    ("tcp", interface) ("" for every IPv4 address, "::" for every address
    of a TCP6 endpoint), ("unix", path), or None when it is not known
    (another kind of endpoint, or a description that does not parse).
    """
    from twisted.internet.endpoints import serverFromString

    reactor = _RecordingReactor()
    try:
        endpoint = serverFromString(reactor, description)
        d = endpoint.listen(Factory.forProtocol(Protocol))
    except Exception:
        return None
    d.addErrback(lambda failure: None)  # a kind of endpoint the recorder cannot serve
    return reactor.bound[0] if reactor.bound else None


def listenerAddresses(descriptions, hostAddresses=None, warn=None):
    """
    The addresses of the listeners C{descriptions} (endpoint strings), as
    a set of ipaddress objects; a wildcard counts as every address of the
    host (C{hostAddresses}, default L{localAddresses}, called at most once).
    C{warn(text)} is told of interfaces that are not addresses.
    """
    found = set()
    allAddresses = None
    for description in descriptions:
        bound = listenerInterface(description)
        if bound is None or bound[0] != "tcp":
            continue
        interface = bound[1]
        if interface in ("", "0.0.0.0", "::"):
            if allAddresses is None:
                allAddresses = set(hostAddresses() if hostAddresses is not None else localAddresses())
            if interface == "::":
                found.update(allAddresses)  # a dual-stack socket: IPv6 and IPv4
            else:
                found.update(a for a in allAddresses if a.version == 4)
            continue
        address = parseAddress(interface)
        if address is None:
            if warn is not None:
                warn(f"listener endpoint {description}: interface {interface} is not an IP address; "
                     "not used for mail loop detection")
            continue
        found.add(address)
    return found


# -- this host's addresses -----------------------------------------------------------------


class _SockAddr(ctypes.Structure):
    if sys.platform.startswith(("darwin", "freebsd", "openbsd", "netbsd", "dragonfly")):
        _fields_ = [("sa_len", ctypes.c_uint8), ("sa_family", ctypes.c_uint8)]
    else:
        _fields_ = [("sa_family", ctypes.c_ushort)]


class _IfAddrs(ctypes.Structure):
    pass


_IfAddrs._fields_ = [
    ("ifa_next", ctypes.POINTER(_IfAddrs)),
    ("ifa_name", ctypes.c_char_p),
    ("ifa_flags", ctypes.c_uint),
    ("ifa_addr", ctypes.POINTER(_SockAddr)),
    ("ifa_netmask", ctypes.POINTER(_SockAddr)),
    ("ifa_ifu", ctypes.c_void_p),
    ("ifa_data", ctypes.c_void_p),
]

# Where the address sits in struct sockaddr_in and sockaddr_in6 (the same on every Unix).
_OFFSETS = {socket.AF_INET: (4, 4), socket.AF_INET6: (8, 16)}


def _getifaddrs():
    libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
    getifaddrs, freeifaddrs = libc.getifaddrs, libc.freeifaddrs
    getifaddrs.argtypes = [ctypes.POINTER(ctypes.POINTER(_IfAddrs))]
    getifaddrs.restype = ctypes.c_int
    freeifaddrs.argtypes = [ctypes.POINTER(_IfAddrs)]
    head = ctypes.POINTER(_IfAddrs)()
    if getifaddrs(ctypes.byref(head)) != 0:
        raise OSError(ctypes.get_errno(), "getifaddrs() failed")
    found = []
    try:
        entry = head
        while entry:
            sockaddr = entry.contents.ifa_addr
            if sockaddr:
                family = sockaddr.contents.sa_family
                if family in _OFFSETS:
                    offset, size = _OFFSETS[family]
                    raw = ctypes.string_at(ctypes.addressof(sockaddr.contents) + offset, size)
                    found.append(parseAddress(socket.inet_ntop(family, raw)))
            entry = entry.contents.ifa_next
    finally:
        freeifaddrs(head)
    return [a for a in found if a is not None]


def localAddresses():
    """Every IPv4 and IPv6 address of this host's interfaces (loopback included), as ipaddress objects."""
    try:
        addresses = _getifaddrs()
    except (OSError, AttributeError, ValueError) as e:
        log.warn("cannot list this host's interface addresses ({error}); only loopback counts as myself",
                 error=e)
        addresses = LOOPBACK
    return sorted(set(addresses), key=lambda a: (a.version, a))
