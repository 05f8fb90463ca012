"""Test certificates made with `cryptography` (never committed), and an in-memory TLS dialog.

Certificates(directory) writes a CA, a server certificate for mx.test,
localhost and 127.0.0.1 (RSA, with its key in a separate file and also as a
chain file), an ECDSA server key+chain file, a client certificate signed by
the CA, and a self-signed client certificate nobody trusts.

TLSDialog is tests.dialogs.harness.Dialog over a transport that supports
startTLS the way Twisted's TCP transport does (a TLSMemoryBIOProtocol is put
between the wire and the session; the session's writes go through it), with
a pyOpenSSL client on the other end of the in-memory wire: no sockets, no
sleeps.
"""

import datetime
import ipaddress

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID
from OpenSSL import SSL
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionAborted, ConnectionDone
from twisted.internet.interfaces import ISSLTransport, ITLSTransport
from twisted.python.failure import Failure
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.protocols.tls import TLSMemoryBIOFactory
from zope.interface import directlyProvides, implementer

from tests.dialogs.harness import replyCodes

HOST = "mx.test"


def _name(cn):
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _pem(key):
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _cert(subject, key, issuer, issuerKey, *, ca=False, names=(), client=False):
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (x509.CertificateBuilder().subject_name(_name(subject)).issuer_name(_name(issuer))
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=365))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if names:
        alt = [x509.IPAddress(ipaddress.ip_address(n)) if n[0].isdigit() else x509.DNSName(n) for n in names]
        builder = builder.add_extension(x509.SubjectAlternativeName(alt), critical=False)
    if ca:
        builder = builder.add_extension(x509.KeyUsage(True, False, False, False, False, True, True, False, False),
                                        critical=True)
    else:
        usage = x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH if client else x509.oid.ExtendedKeyUsageOID.SERVER_AUTH
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        # A CRL location (never fetched: loopback), as a real CA's certificates name one (testssl.sh asks).
        point = x509.DistributionPoint([x509.UniformResourceIdentifier("http://127.0.0.1/mta-test.crl")],
                                       None, None, None)
        builder = builder.add_extension(x509.CRLDistributionPoints([point]), critical=False)
    return builder.sign(issuerKey, hashes.SHA256())


class Certificates:
    """Files in C{directory}: ca.pem, server.pem/server.key, server-chain.pem, ec-chain.pem, client.*, rogue.*."""

    def __init__(self, directory):
        self.directory = directory
        caKey = ec.generate_private_key(ec.SECP256R1())
        self.caCert = _cert("mta test CA", caKey, "mta test CA", caKey, ca=True)
        serverKey = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        serverCert = _cert(HOST, serverKey, "mta test CA", caKey, names=(HOST, "mta.test", "localhost", "127.0.0.1"))
        ecKey = ec.generate_private_key(ec.SECP256R1())
        ecCert = _cert(HOST, ecKey, "mta test CA", caKey, names=(HOST, "mta.test", "localhost", "127.0.0.1"))
        otherKey = ec.generate_private_key(ec.SECP256R1())
        otherCert = _cert("other.test", otherKey, "mta test CA", caKey, names=("other.test",))
        clientKey = ec.generate_private_key(ec.SECP256R1())
        self.clientCert = _cert("client.test", clientKey, "mta test CA", caKey, client=True)
        rogueKey = ec.generate_private_key(ec.SECP256R1())
        self.rogueCert = _cert("rogue.test", rogueKey, "rogue.test", rogueKey, client=True)
        pem = serialization.Encoding.PEM
        caPem = self.caCert.public_bytes(pem)
        self.files = {}
        for name, data in {
            "ca.pem": caPem,
            "server.pem": serverCert.public_bytes(pem) + caPem,
            "server.key": _pem(serverKey),
            "server-chain.pem": _pem(serverKey) + serverCert.public_bytes(pem) + caPem,
            "ec-chain.pem": _pem(ecKey) + ecCert.public_bytes(pem) + caPem,
            "other-chain.pem": _pem(otherKey) + otherCert.public_bytes(pem) + caPem,
            "client.pem": self.clientCert.public_bytes(pem),
            "client.key": _pem(clientKey),
            "rogue.pem": self.rogueCert.public_bytes(pem),
            "rogue.key": _pem(rogueKey),
        }.items():
            path = directory / name
            path.write_bytes(data)
            path.chmod(0o600)
            self.files[name] = str(path)

    def __getitem__(self, name):
        return self.files[name]

    def fingerprint(self, which="client", digest="sha256"):
        cert = self.clientCert if which == "client" else self.rogueCert
        return ":".join(f"{b:02X}" for b in cert.fingerprint(getattr(hashes, digest.upper())()))

    def serverMain(self, level="may", extra="", loglevel=1):
        """[main] lines for a TLS server with the RSA certificate."""
        return (f"smtpd_tls_security_level = {level}\nsmtpd_tls_cert_file = {self['server.pem']}\n"
                f"smtpd_tls_key_file = {self['server.key']}\nsmtpd_tls_loglevel = {loglevel}\n{extra}")


class _Raw:
    """What the TLS layer writes to: the wire, bypassing TLS (as _newtls._BypassTLS)."""

    def __init__(self, transport):
        self._transport = transport

    def write(self, data):
        StringTransport.write(self._transport, data)

    def writeSequence(self, seq):
        self.write(b"".join(seq))

    def loseConnection(self):
        self._close(ConnectionDone())

    def abortConnection(self):
        self._close(ConnectionAborted())

    def _close(self, error):
        """As a TCP transport: the connection goes, connectionLost follows on the next iteration."""
        transport = self._transport
        if transport.lost:
            return
        transport.lost = True
        StringTransport.loseConnection(transport)
        transport.tlsClock.callLater(0, transport.tlsProtocol.connectionLost, Failure(error))

    def registerProducer(self, producer, streaming):
        StringTransport.registerProducer(self._transport, producer, streaming)

    def unregisterProducer(self):
        StringTransport.unregisterProducer(self._transport)

    def __getattr__(self, name):
        return getattr(self._transport, name)


@implementer(ITLSTransport)
class TLSStringTransport(StringTransport):
    """A StringTransport with startTLS as Twisted's TCP transport has it (the server side)."""

    def __init__(self, client=False, **kw):
        super().__init__(**kw)
        self.isClient = client  # startTLS makes the client side (the SMTP client's transport)
        self.tlsProtocol = None
        self.aborted = False
        self.lost = False  # the TLS layer closed the wire (connectionLost scheduled)
        self.tlsClock = Clock()  # TLSMemoryBIOProtocol aggregates small writes until the next "iteration"

    def startTLS(self, contextFactory, normal=True):
        factory = TLSMemoryBIOFactory(contextFactory, self.isClient, None, clock=self.tlsClock)
        self.tlsProtocol = factory.protocol(factory, self.protocol, False)
        directlyProvides(self, ISSLTransport)
        producer, streaming = self.producer, self.streaming
        if producer is not None:
            StringTransport.unregisterProducer(self)
        self.tlsProtocol.makeConnection(_Raw(self))
        if producer is not None:
            self.tlsProtocol.registerProducer(producer, streaming)

    def write(self, data):
        if self.tlsProtocol is not None:
            self.tlsProtocol.write(data)
        else:
            super().write(data)

    def writeSequence(self, seq):
        self.write(b"".join(seq))

    def loseConnection(self):
        if self.tlsProtocol is not None:
            self.tlsProtocol.loseConnection()
        else:
            super().loseConnection()

    def abortConnection(self):
        self.aborted = True
        super().loseConnection()

    def registerProducer(self, producer, streaming):
        if self.tlsProtocol is not None:
            self.tlsProtocol.registerProducer(producer, streaming)
        else:
            super().registerProducer(producer, streaming)

    def unregisterProducer(self):
        if self.tlsProtocol is not None:
            self.tlsProtocol.unregisterProducer()
        else:
            super().unregisterProducer()

    def getHandle(self):
        return self.tlsProtocol.getHandle()

    def getPeerCertificate(self):
        return self.tlsProtocol.getPeerCertificate()

    def deliver(self, data):
        """Bytes from the client's side of the wire (dropped once the connection is gone)."""
        if self.lost:
            return
        if self.tlsProtocol is not None:
            self.tlsProtocol.dataReceived(data)
        else:
            self.protocol.dataReceived(data)


def clientContext(certificates=None, cert=None, key=None, maxVersion=None, sessionCache=False):
    ctx = SSL.Context(SSL.TLS_METHOD)
    if certificates is not None:
        ctx.load_verify_locations(certificates["ca.pem"].encode())
        ctx.set_verify(SSL.VERIFY_PEER, lambda *a: a[-1])
    if cert:
        ctx.use_certificate_file(cert)
        ctx.use_privatekey_file(key)
    if maxVersion:
        ctx.set_max_proto_version(maxVersion)
    return ctx


class TLSDialog:
    """An SMTP dialog whose client can start TLS over the in-memory wire."""

    def __init__(self, factory, peer="127.0.0.1", context=None, wrapper=False, serverName=None, session=None):
        self.factory = factory
        self.transport = TLSStringTransport(peerAddress=IPv4Address("TCP", peer, 40000))
        self.protocol = factory.buildProtocol(self.transport.getPeer())
        self.transport.protocol = self.protocol
        self.context = context
        self.serverName = serverName
        self.session = session  # a pyOpenSSL Session to resume
        self.client = None
        self._plain = b""
        if wrapper:
            self._makeClient()
        self.protocol.makeConnection(self.transport)
        if wrapper:
            self.handshake()
        self.banner = self.read()

    # -- plaintext phase
    def _wire(self):
        self.transport.tlsClock.advance(0)
        data = self.transport.value()
        self.transport.clear()
        return data

    def read(self):
        if self.client is None:
            return self._wire().decode("utf-8")
        self._pump()
        out = b""
        while True:
            try:
                out += self.client.recv(65536)
            except (SSL.WantReadError, SSL.ZeroReturnError):
                break
        return out.decode("utf-8")

    def send(self, data):
        if isinstance(data, str):
            data = data.encode("utf-8")
        if self.client is None:
            self.transport.deliver(data)
        else:
            self.client.sendall(data)
            self._pump()
        return self.read()

    def codes(self, data):
        return replyCodes(self.send(data))

    # -- TLS
    def _makeClient(self):
        self.client = SSL.Connection(self.context, None)
        if self.serverName:
            self.client.set_tlsext_host_name(self.serverName.encode())
        if self.session is not None:
            self.client.set_session(self.session)
        self.client.set_connect_state()

    def _pump(self):
        for _ in range(20):
            moved = False
            try:
                out = self.client.bio_read(65536)
            except SSL.WantReadError:
                out = b""
            if out:
                moved = True
                self.transport.deliver(out)
            back = self._wire()
            if back:
                moved = True
                self.client.bio_write(back)
            try:
                self.client.do_handshake()
            except SSL.WantReadError:
                pass
            if not moved:
                return

    def handshake(self):
        """Run the client's handshake over the wire; raise SSL.Error if it fails."""
        if self.client is None:
            self._makeClient()
        self._pump()
        try:
            self.client.do_handshake()
        except SSL.WantReadError:
            self._pump()
            self.client.do_handshake()

    def starttls(self):
        """Send STARTTLS (plaintext), then handshake; return the plaintext reply."""
        reply = self.send("STARTTLS\r\n")
        if reply.startswith("220"):
            self.handshake()
        return reply

    @property
    def closed(self):
        return self.transport.disconnecting or self.transport.aborted


class TLSServerEnd:
    """
    The server's end of an SMTP client's TLSStringTransport(client=True):
    plaintext lines before STARTTLS, then a pyOpenSSL server over the
    in-memory wire (no sockets, no sleeps).
    """

    def __init__(self, transport, context):
        self.transport = transport
        self.context = context
        self.server = None

    @staticmethod
    def serverContext(certificates, chain="server-chain.pem", maxVersion=None):
        ctx = SSL.Context(SSL.TLS_METHOD)
        ctx.use_certificate_chain_file(certificates[chain])
        ctx.use_privatekey_file(certificates[chain])
        if maxVersion:
            ctx.set_max_proto_version(maxVersion)
        return ctx

    def _wire(self):
        self.transport.tlsClock.advance(0)
        data = self.transport.value()
        self.transport.clear()
        return data

    def accept(self):
        """The client has started TLS: answer its handshake."""
        self.server = SSL.Connection(self.context, None)
        self.server.set_accept_state()
        self.pump()

    def pump(self):
        for _ in range(50):
            moved = False
            data = self._wire()
            if data:
                moved = True
                self.server.bio_write(data)
            try:
                self.server.do_handshake()
            except SSL.WantReadError:
                pass
            try:
                out = self.server.bio_read(65536)
            except SSL.WantReadError:
                out = b""
            if out:
                moved = True
                self.transport.deliver(out)
            if not moved:
                self.transport.tlsClock.advance(0)
                return

    def read(self):
        """What the client sent (decrypted once TLS is up)."""
        if self.server is None:
            return self._wire().decode("utf-8")
        self.pump()
        out = b""
        while True:
            try:
                out += self.server.recv(65536)
            except (SSL.WantReadError, SSL.ZeroReturnError):
                break
        return out.decode("utf-8")

    def send(self, text):
        data = text.encode("utf-8") if isinstance(text, str) else text
        if self.server is None:
            self.transport.deliver(data)
        else:
            self.server.sendall(data)
            self.pump()
