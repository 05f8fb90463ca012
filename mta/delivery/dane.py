"""mta.delivery.dane - DANE for SMTP (RFC 7672): the TLSA policy of an MX host, and the chain judged by it.

NAME
    Dane(resolver, settings, maillog=None)
        .forHost(site, host)   -> the site, evolved for this host (async)
        .judge(site, verdict, connection, host) -> a TlsVerdict
                               (TlsPolicy.dane in mta.delivery.tlspolicy)
    decide(level, host, records, ...)   the policy decision, pure
    verifyChain(tlsa, chain, names)     the chain against the TLSA records, pure
    Tlsa, usable(record), DanePolicyError

DESCRIPTION
    forHost() is called once per MX host (mta.delivery.tlspolicy's
    TlsPolicy.forHost, through TlsPolicy.dane) when the destination's level
    is dane or dane-only; for any other level the site comes back as it
    was.  As Postfix's dane_init() (smtp_tls_policy.c) it decides, in this
    order:

      configuration   smtp_dns_support_level is not dnssec, smtp_host_lookup
                      has no dns, or ignore_mx_lookup_error: "warning: DEST:
                      dane configured with dnssec lookups disabled"; dane is
                      then may, dane-only defers 4.7.5 "client TLS
                      configuration problem"
      insecure MX     the MX RRset was not validated: dane-only defers 4.7.5
                      "non DNSSEC destination"; dane follows
                      smtp_tls_dane_insecure_mx_policy: may (TLSA ignored),
                      encrypt or dane (TLSA looked up; with encrypt, usable
                      records only make TLS required; with dane they are used
                      and success is logged "Trusted", not "Verified": the MX
                      name could be forged)
      TLSA lookup     _PORT._tcp.HOST through the same DNS client, with
                      DNSSEC; for a host reached through a CNAME first at the
                      expanded name, then at the original one (RFC 7672
                      2.2.3); not for a host whose address RRset is insecure
                      unless smtp_tls_force_insecure_host_tlsa_lookup = yes
                      (Postfix's default no).  A temporary failure (SERVFAIL, timeout) defers the
                      host: 4.7.5 "TLSA lookup error for HOST:PORT".  Only a
                      secure TLSA RRset counts
      no TLSA         dane: may; dane-only: 4.7.5 "no TLSA records found"
      none usable     (only PKIX-TA(0)/PKIX-EE(1), unknown selectors or
                      matching types, digests of the wrong length) dane:
                      encrypt; dane-only: 4.7.5 "TLSA records unusable"
      usable          the level is dane: TLS required, the usable records in
                      site.tlsa, SNI the TLSA base domain, and the names a
                      DANE-TA(2) chain must match: the base domain and the MX
                      host name (expanded and original)

    A deferral comes back as site.failure (mta.delivery.tlspolicy's
    PolicyError(text, dsn)): mta.delivery.smtp records the host as deferred
    with that reason and tries the next one.  (decide() raises
    DanePolicyError for it.)

    judge() after the handshake, for a site with TLSA records: the chain the
    server sent is matched by verifyChain().  DANE-EE(3) matches the leaf
    certificate (selector 0) or its public key (selector 1), in full
    (matching type 0) or as its SHA-256 (1) or SHA-512 (2) digest; names and
    dates are not checked (RFC 7672 3.1.1).  DANE-TA(2) matches a
    certificate of the chain above the leaf; the leaf must then chain to it
    (each certificate issued and signed by the next), every certificate up
    to it must be within its validity dates, and the leaf must carry one of
    the names (subjectAltName DNS names, or the CN without them; a wildcard
    only as the whole leftmost label).  A match gives "Verified" (secure MX)
    or "Trusted" (insecure MX under policy dane), otherwise "Untrusted" and
    the deferral "Server certificate not verified", as Postfix logs them.

SECURITY
    TLSA records come from the DNS: only those of a secure RRset (the AD bit
    of a trusted resolver, mta.delivery.dns) are used, their fields are
    checked (usage, selector, matching type, digest length) before use.  The
    server's chain is untrusted: it is parsed by cryptography, a certificate
    that does not parse ends the match (no match), and only signatures that
    verify connect the leaf to a DANE-TA anchor.

CONFIGURATION
    smtp_dns_support_level (lmtp_dns_support_level), smtp_host_lookup,
    ignore_mx_lookup_error, smtp_tls_dane_insecure_mx_policy,
    smtp_tls_force_insecure_host_tlsa_lookup (and the lmtp_ twins), through
    mta.config.settings.client (ClientSettings.dnssec, ClientTls).

DEVIATIONS
    A DANE-TA(2) record must match a certificate the server sent (RFC 7671
    5.2.2 says servers must send it); a bare trust-anchor key that is not
    in the chain is not matched.  dane-only with an insecure MX defers
    ("non DNSSEC destination") whatever smtp_tls_dane_insecure_mx_policy
    says (Postfix documents that parameter for the dane level only).  An
    empty smtp_tls_dane_insecure_mx_policy means dane for every site at
    the dane level, also one that smtp_tls_policy_maps made dane (the
    Postfix 3.10 / 3.9.2 behaviour; before, the default followed only the
    main.cf level).  A warning when dnssec is on but no DNS server is
    trusted (mta.delivery.dns: no answer can then be secure).
"""

import hashlib
import datetime

import attrs
from twisted.logger import Logger

from mta.delivery.dns import DNSError
from mta.maillog import note

__all__ = ["Dane", "DaneDecision", "DanePolicyError", "Tlsa", "decide", "usable", "verifyChain"]

log = Logger()

DANE_LEVELS = ("dane", "dane-only")
DANE_TA, DANE_EE = 2, 3
DIGESTS = {1: ("sha256", 32), 2: ("sha512", 64)}
USAGE_NAMES = {0: "PKIX-TA", 1: "PKIX-EE", 2: "DANE-TA", 3: "DANE-EE"}


class DanePolicyError(Exception):
    """DANE says: do not deliver to this host now (C{dsn} 4.7.5 and Postfix's C{text})."""

    def __init__(self, dsn, text):
        super().__init__(f"{dsn} {text}")
        self.dsn = dsn
        self.text = text


@attrs.frozen
class Tlsa:
    """One TLSA record: certificate usage, selector, matching type, association data."""

    usage: int
    selector: int
    mtype: int
    data: bytes

    @classmethod
    def fromRdata(cls, rdata):
        return cls(int(rdata.usage), int(rdata.selector), int(rdata.mtype), bytes(rdata.cert))

    def __str__(self):
        return f"{self.usage} {self.selector} {self.mtype} {self.data.hex()}"


def usable(record):
    """Is a TLSA record usable for SMTP (RFC 7672 3.1): DANE-TA/DANE-EE, selector 0/1, type 0/1/2, sane data?"""
    if record.usage not in (DANE_TA, DANE_EE) or record.selector not in (0, 1) or record.mtype not in (0, 1, 2):
        return False
    if record.mtype in DIGESTS:
        return len(record.data) == DIGESTS[record.mtype][1]
    return len(record.data) > 0


@attrs.frozen
class DaneDecision:
    """What decide() found: the effective level, the usable records, the base domain, why."""

    level: str
    tlsa: tuple = ()
    base: str = ""
    names: tuple = ()  # what a DANE-TA(2) leaf must match
    mxSecure: bool = True
    reason: str = ""


def decide(level, host, found, *, insecureMxPolicy="dane", problem=""):
    """
    The decision for one host (see the module docstring), from what the
    lookups found: C{found} is None (no lookup made, or no secure TLSA RRset)
    or (base domain, [Tlsa]).  Raises DanePolicyError for dane-only (and
    configuration problems under it).  A DaneDecision otherwise.
    """
    if problem:
        if level == "dane-only":
            raise DanePolicyError("4.7.5", "client TLS configuration problem")
        return DaneDecision("may", reason=problem)
    mxSecure = bool(host.mxSecure)
    if not mxSecure and (level == "dane-only" or insecureMxPolicy == "may"):
        if level == "dane-only":
            raise DanePolicyError("4.7.5", "non DNSSEC destination")
        return DaneDecision("may", mxSecure=False, reason="non DNSSEC destination")
    if found is None or not found[1]:
        if level == "dane-only":
            raise DanePolicyError("4.7.5", "no TLSA records found")
        return DaneDecision("may", mxSecure=mxSecure, reason="no TLSA records found")
    base, records = found
    good = tuple(r for r in records if usable(r))
    if not good:
        if level == "dane-only":
            raise DanePolicyError("4.7.5", "TLSA records unusable")
        return DaneDecision("encrypt", mxSecure=mxSecure, reason="TLSA records unusable")
    if not mxSecure and insecureMxPolicy == "encrypt":
        return DaneDecision("encrypt", mxSecure=False, reason="insecure MX: TLSA records only require TLS")
    names = tuple(dict.fromkeys(n for n in (base, host.canonical, host.name.lower().rstrip(".")) if n))
    return DaneDecision("dane", good, base, names, mxSecure, "usable TLSA records")


# -- the chain ------------------------------------------------------------------------------------


def _selected(cert, selector):
    from cryptography.hazmat.primitives import serialization

    if selector == 0:
        return cert.public_bytes(serialization.Encoding.DER)
    return cert.public_key().public_bytes(serialization.Encoding.DER,
                                          serialization.PublicFormat.SubjectPublicKeyInfo)


def _matches(record, cert):
    data = _selected(cert, record.selector)
    if record.mtype in DIGESTS:
        data = hashlib.new(DIGESTS[record.mtype][0], data).digest()
    return data == record.data


def _certNames(cert):
    from cryptography import x509

    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        return [n.lower().rstrip(".") for n in san.get_values_for_type(x509.DNSName)]
    except x509.ExtensionNotFound:
        return [str(a.value).lower().rstrip(".") for a in cert.subject.get_attributes_for_oid(x509.oid.NameOID.COMMON_NAME)]


def nameMatches(pattern, name):
    """RFC 6125 matching of one certificate name: exact, or "*." as the whole leftmost label."""
    if pattern.startswith("*."):
        head, _, rest = name.partition(".")
        return bool(head) and rest == pattern[2:] and "*" not in rest
    return pattern == name


def _issued(cert, issuer):
    try:
        cert.verify_directly_issued_by(issuer)
    except Exception:  # wrong issuer name, bad signature, unsupported algorithm
        return False
    return True


def _current(cert, now):
    try:
        before, after = cert.not_valid_before_utc, cert.not_valid_after_utc
    except AttributeError:  # older cryptography
        before = cert.not_valid_before.replace(tzinfo=datetime.timezone.utc)
        after = cert.not_valid_after.replace(tzinfo=datetime.timezone.utc)
    return before <= now <= after


@attrs.frozen
class ChainResult:
    matched: bool
    record: object = None  # the Tlsa that matched
    detail: str = ""


def verifyChain(tlsa, chain, names, now=None):
    """
    Match the server's C{chain} (cryptography certificates, leaf first, as
    sent) against the usable C{tlsa} records; C{names} are what a DANE-TA
    leaf must match.  A ChainResult.
    """
    if not chain:
        return ChainResult(False, detail="no server certificate")
    now = now or datetime.datetime.now(datetime.timezone.utc)
    leaf = chain[0]
    details = []
    for record in tlsa:
        if record.usage == DANE_EE and _matches(record, leaf):
            return ChainResult(True, record, f"DANE-EE {record.selector} {record.mtype} matches the leaf")
    for record in tlsa:
        if record.usage != DANE_TA:
            continue
        for index in range(1, len(chain)):
            if not _matches(record, chain[index]):
                continue
            path = chain[:index + 1]
            if not all(_issued(path[k], path[k + 1]) for k in range(index)):
                details.append(f"DANE-TA at depth {index}: the chain does not lead to it")
                continue
            if not all(_current(c, now) for c in path[:index]):
                details.append(f"DANE-TA at depth {index}: a certificate has expired or is not yet valid")
                continue
            certNames = _certNames(leaf)
            if not any(nameMatches(p, n) for p in certNames for n in names):
                details.append(f"DANE-TA at depth {index}: no name of the certificate matches {', '.join(names)}")
                continue
            return ChainResult(True, record, f"DANE-TA {record.selector} {record.mtype} at depth {index}")
    return ChainResult(False, detail="; ".join(details) or "no TLSA record matches the server's chain")


def peerChain(connection):
    """The chain a pyOpenSSL connection's peer sent, as cryptography certificates (leaf first)."""
    chain = connection.get_peer_cert_chain() or []
    certs = [c.to_cryptography() for c in chain]
    leaf = connection.get_peer_certificate()
    if leaf is not None and (not certs or certs[0] != leaf.to_cryptography()):
        certs.insert(0, leaf.to_cryptography())
    return certs


# -- the hooks ----------------------------------------------------------------------------------------


class Dane:
    """
    TlsPolicy.dane (see the module docstring).

    @param resolver: a mta.delivery.dns.Resolver (lookupRecords(..., dnssec=True)).
    @param settings: the transport's ClientSettings (dnssec, hostLookup,
        ignoreMxLookupError, lmtp, tls.insecureMxPolicy).
    @param maillog: a mta.maillog.MailLogger for the warnings, or None.
    """

    def __init__(self, resolver, settings, maillog=None):
        self.resolver = resolver
        self.settings = settings
        self.maillog = maillog
        trusted = getattr(resolver, "trustedServers", None)
        if settings.dnssec and trusted is not None and not trusted:
            self._log("smtp_dns_support_level = dnssec, but no DNS server is trusted (dns_servers, or a loopback "
                      "address in /etc/resolv.conf): no answer will be DNSSEC-validated", warn=True)

    def problem(self, level):
        """Postfix's NONDANE_CONFIG reasons (without the destination), or ""."""
        s = self.settings
        if not s.dnssec or "dns" not in s.hostLookup:
            return f"{level} configured with dnssec lookups disabled"
        if not s.lmtp and s.ignoreMxLookupError:
            return f"{level} configured with MX lookup errors ignored"
        return ""

    async def lookup(self, host):
        """(base domain, [Tlsa]) of a secure TLSA RRset, or None; DanePolicyError on a temporary failure."""
        if not host.secure and not getattr(self.settings, "forceInsecureHostTlsaLookup", False):
            return None  # an insecure address RRset: no TLSA lookup (RFC 7672 2.2.2)
        candidates = [n for n in (host.canonical, host.name.lower().rstrip(".")) if n]
        for name in dict.fromkeys(candidates):
            qname = f"_{host.port}._tcp.{name}"
            try:
                records = await self.resolver.lookupRecords(qname, "TLSA", dnssec=True)
            except DNSError as e:
                if e.temporary:
                    self._log(f"TLSA lookup error for {qname}: {e.detail or e.text}", warn=True)
                    raise DanePolicyError("4.7.5", f"TLSA lookup error for {host.name}:{host.port}") from None
                continue
            if len(records) and getattr(records, "secure", False):
                return name, [Tlsa.fromRdata(r) for r in records]
            if len(records):
                self._log(f"{qname}: ignoring TLSA records that are not DNSSEC-validated")
        return None

    async def forHost(self, site, host):
        """The site for one host: evolved by decide() when its level is dane or dane-only."""
        tls = site.tls
        if tls.level not in DANE_LEVELS:
            if tls.daneProblem and tls.configuredLevel == "dane" and tls.level == "may" and host is not None:
                # (settings made it may already: Postfix's warning, per delivery)
                self._log(f"{getattr(site, 'domain', '') or host.name}: {tls.daneProblem}", warn=True)
            return site
        level = tls.level
        if host is None:  # LMTP over a UNIX socket: Postfix's "dane is invalid for unix-domain sockets"
            self._log(f"{level} security level is invalid for delivery via unix-domain sockets", warn=True)
            return self._failed(site, DanePolicyError("4.7.5", "client TLS configuration problem"))
        destination = getattr(site, "domain", "") or host.name
        problem = self.problem(level)
        if problem:
            self._log(f"{destination}: {problem}", warn=True)
        # Explicit, or Postfix's default: dane for the dane level (also when a policy map set it: 3.10)
        insecureMxPolicy = getattr(self.settings, "insecureMxPolicy", "") or "dane"
        try:
            found = None
            if not problem and (host.mxSecure or (level == "dane" and insecureMxPolicy != "may")):
                found = await self.lookup(host)
            decision = decide(level, host, found, insecureMxPolicy=insecureMxPolicy, problem=problem)
        except DanePolicyError as e:
            self._log(f"{host.name}[{host.address}]:{host.port}: {level}: {e.text}; deferred")
            return self._failed(site, e)
        self._log(f"{host.name}[{host.address}]:{host.port}: {level}: {decision.reason}; TLS level "
                  f"{decision.level}" + (f" ({len(decision.tlsa)} TLSA records at _{host.port}._tcp."
                                        f"{decision.base})" if decision.tlsa else ""))
        if decision.level != "dane":
            return attrs.evolve(site, tls=attrs.evolve(tls, level=decision.level), tlsa=(), mxSecure=decision.mxSecure)
        newTls = attrs.evolve(tls, level="dane", serverName=decision.base, verifyCertMatch=decision.names)
        return attrs.evolve(site, tls=newTls, source="dane", tlsa=decision.tlsa, mxSecure=decision.mxSecure)

    @staticmethod
    def _failed(site, error):
        from mta.delivery.tlspolicy import PolicyError

        return attrs.evolve(site, failure=PolicyError(error.text, error.dsn))

    def judge(self, site, verdict, connection, host=None):
        """The verdict for a DANE site (site.tlsa non-empty): by the TLSA records, not by CAs; else C{verdict}."""
        from mta.delivery.smtptls import TlsVerdict

        if not site.tlsa:
            return verdict
        try:
            chain = peerChain(connection)
        except Exception as e:  # a certificate cryptography cannot read
            chain, why = [], f"unreadable certificate: {e}"
        else:
            why = ""
        result = verifyChain(site.tlsa, chain, site.tls.verifyCertMatch) if chain else ChainResult(False, detail=why)
        if result.matched:
            trust = "Verified" if site.mxSecure else "Trusted"
            self._log(f"DANE: {result.detail}")
            return TlsVerdict(trust, True, True)
        self._log(f"DANE: {result.detail or 'no match'}", warn=True)
        return TlsVerdict("Untrusted", False, False, "Server certificate not verified")

    def _log(self, text, warn=False):
        note(self.maillog, text, warn, log)
