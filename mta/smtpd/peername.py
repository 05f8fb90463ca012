"""mta.smtpd.peername - the client's name: reverse lookup and forward confirmation, as Postfix's smtpd_peer.c.

    names = PeerNames(resolver, clock, maillog)
    result = names.lookup("192.0.2.1")   # a PeerName, or a Deferred of one

At connect (smtpd_peername_lookup = yes, the default) the session asks
for its client's name before it logs ``connect from NAME[ADDR]`` and
greets:

1. reverse: /etc/hosts first (as the system's name service, "files dns",
   which Postfix's getnameinfo() asks), else a PTR query through the
   daemon's DNS client (mta.delivery.dns.Resolver: cached, on the
   reactor, never blocking).  The first name that is a valid hostname
   (letters, digits, '-', '_', not all-numeric, Postfix's valid_hostname)
   is the reverse name; none, NXDOMAIN or NODATA leave "unknown" with
   status 5, a temporary failure (SERVFAIL, timeout) status 4.
2. forward: the reverse name's addresses (/etc/hosts, else its A records
   for an IPv4 client, AAAA for an IPv6 one, as Postfix asks for the
   client's address family) must include the client's address, or the
   name is "unknown" (status 5, or 4 when the lookup failed temporarily)
   with Postfix's warning::

       warning: hostname mail.example does not resolve to address 192.0.2.1
       warning: hostname mail.example does not resolve to address 192.0.2.1: Host not found, try again

PeerName carries Postfix's four values: name (the verified name, or
"unknown"), reverseName (the unverified one, or "unknown") and their
statuses nameStatus and reverseStatus (OK 2, TEMP 4, PERM 5; a forward
mismatch is FORGED, which Postfix also codes as 5 for the restrictions).
reject_unknown_client_hostname and reject_unknown_reverse_client_hostname
(mta.smtpd.restrictions) read the statuses: 4 is always a 450, never a
5xx.

SECURITY
    PTR records are the client's to write: a name is used only after the
    forward lookup gave the client's address back (name), and the
    unverified one (reverseName) only where Postfix uses it.  Names are
    checked with valid_hostname's rules before they reach a log line, a
    Received header or a table key.  /etc/hosts is read again when it
    changes (looked at no more than once per HOSTS_CHECK seconds).

CONFIGURATION
    smtpd_peername_lookup, dns_servers (through the DNS client).

DEVIATIONS
    Postfix asks the system's getnameinfo()/getaddrinfo() (files, DNS and
    whatever else nsswitch.conf lists); mta reads /etc/hosts and then asks
    DNS itself, so other NSS sources (LDAP, mDNS) are not consulted.
"""

import ipaddress
import os
import re

import attrs
from twisted.internet.defer import Deferred
from twisted.logger import Logger

log = Logger()

OK, TEMP, PERM = 2, 4, 5  # Postfix's SMTPD_PEER_CODE_OK, _TEMP, _PERM (and _FORGED, coded 5 for the checks)
UNKNOWN = "unknown"
HOSTS_FILE = "/etc/hosts"
HOSTS_CHECK = 1.0  # seconds between looks at /etc/hosts's modification time
_LABEL = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?\Z")


@attrs.frozen
class PeerName:
    name: str = UNKNOWN
    reverseName: str = UNKNOWN
    nameStatus: int = PERM
    reverseStatus: int = PERM


NOT_LOOKED_UP = PeerName()  # smtpd_peername_lookup = no, or a session without an address


def validHostname(name):
    """Postfix's valid_hostname: labels of letters, digits, '-' (not at an end) and '_'; not all-numeric."""
    if not name or len(name) > 255 or name.endswith("."):
        return False
    labels = name.split(".")
    if not all(_LABEL.match(label) for label in labels):
        return False
    return not name.replace(".", "").isdigit()


def canonicalAddress(text):
    """The address as the lookups compare it: an IPv4-mapped IPv6 address is its IPv4 one; None if invalid."""
    try:
        address = ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return None
    if address.version == 6 and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


class HostsFile:
    """/etc/hosts: address -> first name, name -> addresses; read again when its mtime changes."""

    def __init__(self, clock, path=HOSTS_FILE):
        self.clock = clock
        self.path = path
        self._checked = None
        self._stamp = None
        self._reverse = {}
        self._forward = {}

    def _refresh(self):
        now = self.clock.seconds()
        if self._checked is not None and now - self._checked < HOSTS_CHECK:
            return
        self._checked = now
        try:
            st = os.stat(self.path)
            stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
        except OSError:
            stamp = None
        if stamp == self._stamp:
            return
        self._stamp = stamp
        self._reverse, self._forward = {}, {}
        if stamp is None:
            return
        try:
            with open(self.path, encoding="utf-8", errors="replace") as f:
                lines = f.read(1 << 20).splitlines()
        except OSError as e:
            log.warn("cannot read {path}: {error}", path=self.path, error=e.strerror)
            return
        for line in lines:
            fields = line.split("#", 1)[0].split()
            if len(fields) < 2:
                continue
            address = canonicalAddress(fields[0])
            if address is None:
                continue
            names = [name.lower() for name in fields[1:] if validHostname(name)]
            if names:
                self._reverse.setdefault(address, names[0])
            for name in names:
                self._forward.setdefault(name, []).append(address)

    def reverse(self, address):
        self._refresh()
        return self._reverse.get(address)

    def forward(self, name):
        self._refresh()
        return self._forward.get(name.lower())


class PeerNames:
    """The name lookups of one listener (see the module docstring)."""

    def __init__(self, resolver, clock, maillog, hosts=None):
        """C{resolver}: a callable that returns the IDNSResolver (the generation's, made on first use)."""
        self.resolver = resolver
        self.clock = clock
        self.maillog = maillog
        self.hosts = hosts if hosts is not None else HostsFile(clock)

    def lookup(self, text):
        """The PeerName of the client at address C{text}: at once when /etc/hosts answers, else a Deferred."""
        address = canonicalAddress(text)
        if address is None:
            return NOT_LOOKED_UP
        name = self.hosts.reverse(address)
        if name is not None:
            addresses = self.hosts.forward(name)
            if addresses is not None:
                return self._confirmed(name, text, address in addresses)
        return Deferred.fromCoroutine(self._lookup(text, address, name))

    def _confirmed(self, name, text, found):
        if found:
            return PeerName(name, name, OK, OK)
        self.maillog.emit(f"warning: hostname {name} does not resolve to address {text}")
        return PeerName(UNKNOWN, name, PERM, OK)

    async def _lookup(self, text, address, name):
        from mta.delivery.dns import DNSError, nameText

        resolver = self.resolver()
        if name is None:
            try:
                records = await resolver.lookupRecords(address.reverse_pointer, "PTR")
            except DNSError as e:
                status = TEMP if e.temporary else PERM
                return PeerName(UNKNOWN, UNKNOWN, status, status)
            names = [nameText(rdata.target) for rdata in records]
            name = next((n for n in names if validHostname(n)), None)
            if name is None:
                return PeerName()
        addresses = self.hosts.forward(name)
        if addresses is not None:
            return self._confirmed(name, text, address in addresses)
        try:
            found = await resolver.lookupAddresses(name, ("ipv6" if address.version == 6 else "ipv4",))
        except DNSError as e:
            self.maillog.emit(f"warning: hostname {name} does not resolve to address {text}: {e.text}")
            return PeerName(UNKNOWN, name, TEMP if e.temporary else PERM, OK)
        return self._confirmed(name, text, address in {canonicalAddress(a) for a in found})


__all__ = ["NOT_LOOKED_UP", "OK", "PERM", "TEMP", "UNKNOWN", "HostsFile", "PeerName", "PeerNames",
           "validHostname"]
