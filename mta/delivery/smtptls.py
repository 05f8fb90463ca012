"""mta.delivery.smtptls - the SMTP/LMTP client's TLS: the pyOpenSSL client context, SNI, the certificate's verdict.

NAME
    ClientTLS(policy)     the context of one ClientTls policy (the transport's,
                          or a destination's from mta.delivery.tlspolicy)
                          (mta.config.settings.client), built once
    ClientTLS.creator(serverName, session)
                          what Twisted's transport.startTLS takes (an
                          IOpenSSLClientConnectionCreator) for one connection,
                          offering a cached session (mta.delivery.tlssessions)
    ClientTLS.judge(connection, matchNames)
                          the verdict after the handshake: a TlsVerdict
    serverNameFor(policy, host, nexthop), matchNamesFor(policy, host, nexthop)

DESCRIPTION
    The context: the smtp_tls_protocols range (may) or the mandatory one
    (encrypt and above) as min/max versions, SSLv2/SSLv3, compression and
    renegotiation off; the grade's cipher list less the excluded ciphers;
    the key-exchange groups set explicitly from tls_eecdh_auto_curves and
    tls_ffdhe_auto_groups, so that the first ClientHello carries one small
    classical key share (X25519) and never a post-quantum one that makes it
    larger than a TCP segment (pitfalls.md; Postfix 3.11 offers the large
    share only when the server asks with a HelloRetryRequest); the CAs of
    smtp_tls_CAfile / smtp_tls_CApath, or the system trust store when both
    are empty; the client certificate of smtp_tls_cert_file /
    smtp_tls_key_file, if any.

    The server's certificate is always accepted during the handshake (as
    Postfix does: the policy is applied afterwards, so that the log can say
    what was seen).  judge() then tells

        Anonymous   no server certificate (anonymous cipher)
        Untrusted   the chain does not verify against the CAs
        Trusted     the chain verifies (no name check at may/encrypt)
        Verified    the chain verifies and a name matches (verify/secure)

    and, under verify/secure, the deferral reason Postfix gives: "Server
    certificate not trusted" (chain) or "Server certificate not verified"
    (no name matches).  Names are matched with service_identity (RFC 6125:
    subjectAltName DNS names, a wildcard in the leftmost label only; the
    CN only when there is no subjectAltName); dot-nexthop matches any name
    below the next-hop domain.

SECURITY
    Nothing of the server's certificate is trusted until judge() says so.
    Names from the certificate reach the log only through
    mta.maillog.sanitize (mta.tls.info).

CONFIGURATION
    mta.config.settings.client.ClientTls: the smtp_tls_* (lmtp_tls_*)
    parameters.

DEVIATIONS
    Empty smtp_tls_CAfile and smtp_tls_CApath mean the system trust store
    (Postfix: none unless tls_append_default_CA = yes).  Sessions are
    resumed from an in-memory cache (mta.delivery.tlssessions), not
    tlsmgr(8)'s database.
"""

import weakref

import attrs
from OpenSSL import SSL
from OpenSSL._util import lib
from service_identity import VerificationError
from service_identity.pyopenssl import verify_hostname
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator
from zope.interface import implementer

from mta.tls.context import VERSIONS

__all__ = ["ClientTLS", "TlsVerdict", "dotParents", "matchNamesFor", "nexthopDomain", "serverNameFor"]


def nexthopDomain(nexthop):
    """The domain of a next-hop as routed: "[relay.example]:587" -> "relay.example", "smtp:x.org" -> "x.org"."""
    text = nexthop or ""
    if text.startswith("["):
        text = text[1:].partition("]")[0]
    elif text.count(":") == 1:
        text = text.partition(":")[0]
    return text.lower().rstrip(".")


def dotParents(name):
    """A domain then its ".parent" domains, as Postfix's parent-domain lookups: "a.b.c" -> a.b.c, .b.c, .c."""
    keys = [name]
    index = name.find(".", 1)
    while index != -1:
        keys.append(name[index:])
        index = name.find(".", index + 1)
    return keys


def serverNameFor(policy, host, nexthop):
    """smtp_tls_servername: "" (no SNI), hostname, nexthop or a literal name; never an address."""
    value = policy.serverName
    if not value:
        return None
    name = {"hostname": host.name if host is not None else "", "nexthop": nexthopDomain(nexthop)}.get(value, value)
    name = (name or "").rstrip(".")
    if not name or name[0].isdigit() and name.replace(".", "").isdigit() or ":" in name:
        return None
    return name


def matchNamesFor(policy, host, nexthop):
    """The names the certificate must match: [(kind, name)], kind "exact" or "below" (dot-nexthop)."""
    names = []
    for item in policy.matchNames:
        if item == "hostname":
            if host is not None and host.name:
                names.append(("exact", host.name.lower().rstrip(".")))
        elif item == "nexthop":
            names.append(("exact", nexthopDomain(nexthop)))
        elif item == "dot-nexthop":
            names.append(("below", nexthopDomain(nexthop)))
        else:
            names.append(("exact", item.lower().rstrip(".")))
    return [(kind, name) for kind, name in names if name]


@attrs.frozen
class TlsVerdict:
    """What judge() found: the log's word, and the reason to defer (None: the policy is met)."""

    trust: str  # Anonymous, Untrusted, Trusted or Verified
    trusted: bool  # the chain verifies
    matched: bool  # a name matched (only checked under verify/secure)
    failure: str | None = None
    # A failure for TLS-RPT only, the delivery going on (MTA-STS "testing"): (RFC 8460 type, detail).
    report: tuple | None = None


def _dnsNames(x509):
    from cryptography import x509 as cx509

    cert = x509.to_cryptography()
    try:
        san = cert.extensions.get_extension_for_class(cx509.SubjectAlternativeName).value
        return [n.lower() for n in san.get_values_for_type(cx509.DNSName)]
    except cx509.ExtensionNotFound:
        return [str(a.value).lower() for a in cert.subject.get_attributes_for_oid(cx509.oid.NameOID.COMMON_NAME)]


def _below(pattern, domain):
    """Is the certificate name C{pattern} a name below C{domain} (dot-nexthop)?"""
    pattern = pattern.rstrip(".")
    if pattern.startswith("*."):
        pattern = pattern[2:]
        return pattern == domain or pattern.endswith("." + domain)
    return pattern.endswith("." + domain)


@implementer(IOpenSSLClientConnectionCreator)
class _Creator:
    def __init__(self, context, serverName, session=None):
        self._context = context
        self._serverName = serverName
        self._session = session

    def clientConnectionForTLS(self, tlsProtocol):
        connection = SSL.Connection(self._context, None)
        if self._serverName:
            connection.set_tlsext_host_name(self._serverName.encode("idna"))
        if self._session is not None:
            try:
                connection.set_session(self._session)  # resumption (mta.delivery.tlssessions)
            except ValueError:
                pass  # a session of another context (a rebuilt one): a full handshake
        connection.set_connect_state()
        return connection


class ClientTLS:
    """The client context of one ClientTls policy; see the module docstring."""

    def __init__(self, policy):
        self.policy = policy
        self._unverified = weakref.WeakSet()  # connections whose chain had an error
        self._context = self._build()

    def _build(self):
        p = self.policy
        ctx = SSL.Context(SSL.TLS_METHOD)
        ctx.set_options(SSL.OP_NO_SSLv2 | SSL.OP_NO_SSLv3 | SSL.OP_NO_COMPRESSION | SSL.OP_NO_RENEGOTIATION)
        low, high = p.activeProtocolRange
        ctx.set_min_proto_version(VERSIONS[low])
        ctx.set_max_proto_version(VERSIONS[high])
        ctx.set_cipher_list(p.activeCipherList.encode("ascii"))
        if p.groups:
            # Explicit groups: the first one (X25519) gets the only key share of the first ClientHello.
            lib.SSL_CTX_set1_curves_list(ctx._context, ":".join(p.groups).encode("ascii"))
        if p.caFile or p.caPath:
            ctx.load_verify_locations(p.caFile.encode() or None, p.caPath.encode() or None)
        else:
            ctx.set_default_verify_paths()
        if p.certFile:
            ctx.use_certificate_chain_file(p.certFile)
            ctx.use_privatekey_file(p.keyFile or p.certFile)
        for certFile, keyFile in p.keyPairs:  # smtp_tls_chain_files, or the ECDSA/DSA files
            ctx.use_certificate_chain_file(certFile)
            ctx.use_privatekey_file(keyFile)
        ctx.set_verify(SSL.VERIFY_PEER, self._verify)
        return ctx

    def _verify(self, connection, cert, errno, depth, ok):
        # Accept during the handshake, remember the verdict (pyOpenSSL clears the error when we accept).
        if not ok:
            self._unverified.add(connection)
        return True

    def markUntrusted(self, connection):
        """A resumed session whose original chain did not verify: judge() says Untrusted again."""
        self._unverified.add(connection)

    def getContext(self):
        return self._context

    def creator(self, serverName=None, session=None):
        """
        An IOpenSSLClientConnectionCreator for transport.startTLS, sending
        C{serverName} as SNI and offering C{session} (a pyOpenSSL Session
        from mta.delivery.tlssessions) for resumption.
        """
        return _Creator(self._context, serverName, session)

    def judge(self, connection, matchNames=()):
        """The TlsVerdict of a finished handshake (matchNames from matchNamesFor())."""
        x509 = connection.get_peer_certificate()
        if x509 is None:
            failure = "Server certificate not trusted" if self.policy.mustMatch else None
            return TlsVerdict("Anonymous", False, False, failure)
        trusted = connection not in self._unverified
        matched = False
        if self.policy.mustMatch and trusted:
            for kind, name in matchNames:
                if kind == "below":
                    matched = any(_below(n, name) for n in _dnsNames(x509))
                else:
                    try:
                        verify_hostname(connection, name)
                        matched = True
                    except (VerificationError, ValueError, Exception):  # CertificateError and friends
                        matched = False
                if matched:
                    break
        if not self.policy.mustMatch:
            return TlsVerdict("Trusted" if trusted else "Untrusted", trusted, False)
        if not trusted:
            return TlsVerdict("Untrusted", False, False, "Server certificate not trusted")
        if not matched:
            return TlsVerdict("Trusted", True, False, "Server certificate not verified")
        return TlsVerdict("Verified", True, True)
