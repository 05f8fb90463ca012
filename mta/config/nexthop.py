"""mta.config.nexthop - the next-hop syntax of smtp(8) and lmtp(8) (also mta.delivery.nexthop).

It lives in the configuration layer so that load() checks smtp_fallback_relay,
lmtp_fallback_relay and lmtp_tcp_port with their file:line
(mta.config.settings.client); the delivery agents import it as
mta.delivery.nexthop.

parseNexthop() turns one destination into a Nexthop, as Postfix's
smtp_connect.c and host_port() read it:

    SMTP (the default service is smtp, port 25; smtp_tcp_port)
        domain              MX lookup, then the domain's own addresses
        domain:port         the same, another port
        [host]              no MX lookup: the addresses of host only
        [host]:port
        [address]           an IPv4 address, or an IPv6 address with or
        [ipv6:address]:port without Postfix's "ipv6:" prefix
        a.b.c.d[:port]      a bare IPv4 address (Postfix is "sloppy" and
                            accepts it): no MX lookup

    LMTP (the default service is port 24; lmtp_tcp_port)
        unix:/path          a UNIX-domain socket
        inet:host[:port]    TCP to host; LMTP never looks up MX records
        inet:[address]:port
        host, host:port     as inet:

A port is a number (1-65535) or a service name from /etc/services
(smtp, submission, submissions, lmtp; with a built-in table for systems
without the file).  "host:" and "[host]:" mean the default port, as in
Postfix.  Anything else raises ValueError with Postfix's wording
('missing "]"', 'garbage after "]"', "malformed IPv6 address", "valid
hostname or network address required", "unknown service: x/tcp", ...).

parseRelayList() reads a list of destinations separated by commas or white
space (smtp_fallback_relay, and the several-destinations next-hop of
Postfix 3.5 and later).

Host names are folded to lower case; a non-ASCII (U-label) name is kept as
written and must convert to A-labels (IDNA, as the DNS client does it).
Unlike Postfix, one trailing dot is accepted and removed.  A bare IPv6
address (without brackets) is refused, as by Postfix's host_port(): its
colons cannot be told from the port separator.

SECURITY
    Next-hops come from the configuration (relayhost, transport_maps,
    smtp_fallback_relay), that is from the administrator, but transport
    tables may be fed by other programs: every form is validated, nothing
    is passed on that is not a valid host name, address, port or path.

CONFIGURATION
    None here; the callers pass smtp_tcp_port (smtp) or lmtp_tcp_port (24)
    as defaultPort.
"""

import ipaddress
import re
import socket

import attrs

SMTP_PORT = 25
LMTP_PORT = 24

# Used when getservbyname() does not know a name (no /etc/services, as in
# minimal containers).
SERVICES = {
    "smtp": 25,
    "lmtp": 24,
    "submission": 587,
    "submissions": 465,
    "smtps": 465,
    "ssmtp": 465,
    "urd": 465,
}

_LABEL = re.compile(r"[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?")
_SERVICE = re.compile(r"[a-z][a-z0-9_.+-]*", re.I | re.A)


@attrs.frozen
class Nexthop:
    """
    One destination.

    @ivar kind: C{"mx"} (look up MX records), C{"host"} (look up addresses
        only) or C{"unix"} (a UNIX-domain socket path).
    @ivar name: the domain, host name, address (without brackets or
        "ipv6:") or socket path.
    @ivar port: the TCP port; None for C{"unix"}.
    @ivar literal: the name is a numeric IP address.
    @ivar family: C{"ipv4"} or C{"ipv6"} for a literal, else None.
    """

    kind: str
    name: str
    port: int | None
    literal: bool = False
    family: str | None = None

    def __str__(self):
        if self.kind == "unix":
            return f"unix:{self.name}"
        if self.kind == "mx":
            return self.name if self.port == SMTP_PORT else f"{self.name}:{self.port}"
        host = f"ipv6:{self.name}" if self.family == "ipv6" else self.name
        return f"[{host}]:{self.port}"


def servicePort(service, protocol="tcp"):
    """
    The port number for a service: digits (1-65535) or a name known to
    getservbyname() or to L{SERVICES}.  Raises ValueError.
    """
    if isinstance(service, int):
        port = service
    else:
        service = service.strip()
        if service[:1].isdigit():
            if not service.isdigit() or not service.isascii():
                raise ValueError(f"garbage after numerical service: {service!r}")
            port = int(service)
        else:
            if not _SERVICE.fullmatch(service):
                raise ValueError(f"invalid service name: {service!r}")
            try:
                port = socket.getservbyname(service.lower(), protocol)
            except OSError:
                port = SERVICES.get(service.lower())
                if port is None:
                    raise ValueError(f"unknown service: {service}/{protocol}") from None
    if not 0 < port < 65536:
        raise ValueError(f"bad network port: {port}")
    return port


def validHostname(name):
    """
    True if C{name} (lower case, no trailing dot) is a valid host or domain
    name as Postfix's valid_utf8_hostname(): LDH labels (and "_") of 1-63
    characters, 255 in all, not all numeric; a non-ASCII name must convert
    to A-labels.
    """
    if not name or len(name) > 255:
        return False
    if not name.isascii():
        try:
            name = _toASCII(name)
        except ValueError:
            return False
    labels = name.split(".")
    if not all(_LABEL.fullmatch(label) for label in labels):
        return False
    if all(label.isdigit() for label in labels):
        return False  # Postfix: "numeric hostname"
    return True


def _toASCII(name):
    """A-labels, as the DNS client converts names (mta.delivery.dns: UTS 46 non-transitional or IDNA 2003)."""
    import dns.exception
    import dns.name

    codec = dns.name.IDNA_2008_Practical if dns.name.have_idna_2008 else dns.name.IDNA_2003_Practical
    try:
        return dns.name.from_text(name, origin=dns.name.root, idna_codec=codec).to_text(omit_final_dot=True).lower()
    except (dns.exception.DNSException, UnicodeError, ValueError) as e:
        raise ValueError(str(e)) from None


def _address(text):
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def _hostname(text, original):
    name = text.lower()
    if name.endswith(".") and not name.endswith(".."):
        name = name[:-1]
    if not validHostname(name):
        raise ValueError(f"valid hostname or network address required: {original!r}")
    return name


def parseNexthop(text, protocol="smtp", defaultPort=None):
    """
    Parse one smtp(8) or lmtp(8) destination into a L{Nexthop}.

    @param protocol: C{"smtp"} or C{"lmtp"}.
    @param defaultPort: the port when none is given (a number or a service
        name): smtp_tcp_port or lmtp_tcp_port; default 25 or 24.
    @raise ValueError: bad syntax, with the reason.
    """
    if protocol not in ("smtp", "lmtp"):
        raise ValueError(f"unknown protocol {protocol!r}")
    original = text
    text = text.strip()
    if not text:
        raise ValueError("empty next-hop destination")
    if any(ch.isspace() or ch == "," for ch in text):
        raise ValueError(f"one destination expected, not a list: {original!r}")
    if defaultPort is None:
        defaultPort = SMTP_PORT if protocol == "smtp" else LMTP_PORT
    lmtp = protocol == "lmtp"
    if lmtp:
        if text.startswith("unix:"):
            path = text[len("unix:"):]
            if not path or "\0" in path:
                raise ValueError(f"missing UNIX-domain socket path: {original!r}")
            return Nexthop("unix", path, None)
        if text.startswith("inet:"):
            text = text[len("inet:"):]
            if not text:
                raise ValueError(f"missing host information: {original!r}")

    if text.startswith("["):
        inner, sep, rest = text[1:].partition("]")
        if not sep:
            raise ValueError(f'missing "]": {original!r}')
        if rest and not rest.startswith(":"):
            raise ValueError(f'garbage after "]": {original!r}')
        service = rest[1:]
        if inner[:5].lower() == "ipv6:":
            inner = inner[5:]
            address = _address(inner)
            if address is None or address.version != 6 or "%" in inner:
                raise ValueError(f"malformed IPv6 address: {original!r}")
        else:
            address = _address(inner) if "%" not in inner else None
        if not inner:
            raise ValueError(f"missing host information: {original!r}")
        port = servicePort(service) if service else servicePort(defaultPort)
        if address is not None:
            return Nexthop("host", str(address), port, True, f"ipv{address.version}")
        return Nexthop("host", _hostname(inner, original), port)

    host, sep, service = text.rpartition(":")
    if not sep:
        host, service = text, ""
    if not host:
        raise ValueError(f"missing host information: {original!r}")
    if ":" in host:
        if _address(text) is not None:
            raise ValueError(f"an IPv6 address must be written as [ipv6:address]: {original!r}")
        raise ValueError(f"valid hostname or network address required: {original!r}")
    port = servicePort(service) if service else servicePort(defaultPort)
    address = _address(host)
    if address is not None:
        # Postfix's "sloppy" bare address: an address has no MX records.
        return Nexthop("host", str(address), port, True, "ipv4")
    return Nexthop("host" if lmtp else "mx", _hostname(host, original), port)


def parseRelayList(text, protocol="smtp", defaultPort=None):
    """
    Destinations separated by commas and/or white space (smtp_fallback_relay),
    as a tuple of L{Nexthop}; an empty text gives an empty tuple.
    """
    if isinstance(text, (list, tuple)):
        items = [item for part in text for item in re.split(r"[,\s]+", part) if item]
    else:
        items = [item for item in re.split(r"[,\s]+", text or "") if item]
    result = []
    for item in items:
        try:
            result.append(parseNexthop(item, protocol, defaultPort))
        except ValueError as e:
            raise ValueError(f"{item}: {e}") from None
    return tuple(result)
