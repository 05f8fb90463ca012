"""mta.tls.info - TlsInfo: what an established TLS session is, and Postfix's texts of it.

TlsInfo.fromConnection(connection, trusted, digest) reads a finished
handshake from its pyOpenSSL Connection: the protocol (TLSv1.3), the cipher
(OpenSSL's name) with its used and algorithm bits, the key-exchange group,
the server's signature key, whether the session was resumed, and the
client certificate (subject and issuer CN, fingerprints of the certificate
and of its public key with smtpd_tls_fingerprint_digest, trusted or not).

The texts, as Postfix writes them:

    clientLogLine(server, trust)
                      the SMTP client's "Verified TLS connection established
                      to name[addr]:port: ..." (trust: Anonymous, Untrusted,
                      Trusted or Verified, from mta.delivery.smtptls)
    logLine(client)   "Anonymous TLS connection established from
                       name[addr]: TLSv1.3 with cipher TLS_AES_256_GCM_SHA384
                       (256/256 bits) key-exchange X25519 server-signature
                       RSA-PSS (2048 bits)" (Untrusted or Trusted with a
                       client certificate)
    certificateLine(client)
                      "name[addr]: Trusted: subject_CN=..., issuer_CN=...,
                       fingerprint=..., pkey_fingerprint=..."
    receivedComment(asked)
                      the lines of the Received: header's TLS comment
                      ("(using TLSv1.3 with cipher ...)" and the client
                      certificate's "(Client CN ..., Issuer ... (verified OK))",
                      "(Client did not present a certificate)" or
                      "(No client certificate requested)")

SECURITY
    Certificate names come from the client: they are sanitized
    (mta.maillog.sanitize) before they reach a log line or a header.

CONFIGURATION
    smtpd_tls_fingerprint_digest (via the caller).

DEVIATIONS
    Postfix also logs the server's and client's signature digests
    (server-digest SHA256); pyOpenSSL does not expose them, so mta leaves
    them out.  A server never says "Verified" (a name check is the
    client's business), as in Postfix.
"""

import attrs
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from cryptography.x509.oid import NameOID
from OpenSSL._util import ffi, lib

from mta.maillog import sanitize

__all__ = ["PeerCertificate", "TlsInfo"]

_DIGESTS = {"md5": hashes.MD5, "sha1": hashes.SHA1, "sha224": hashes.SHA224, "sha256": hashes.SHA256,
            "sha384": hashes.SHA384, "sha512": hashes.SHA512}


# OpenSSL 3+ names the groups in lower case; Postfix's log shows OBJ_nid2sn's names.
_GROUP_NAMES = {"x25519": "X25519", "x448": "X448"}


def fingerprint(data, digest):
    """Postfix's fingerprint text: upper-case hex pairs joined by colons."""
    h = hashes.Hash(_DIGESTS[digest]())
    h.update(data)
    return ":".join(f"{b:02X}" for b in h.finalize())


def _cn(name):
    values = name.get_attributes_for_oid(NameOID.COMMON_NAME)
    return sanitize(str(values[0].value)) if values else ""


@attrs.frozen
class PeerCertificate:
    """The client's certificate: names, fingerprints, trust."""

    subjectCN: str
    issuerCN: str
    fingerprint: str  # of the DER certificate
    pkeyFingerprint: str  # of the DER SubjectPublicKeyInfo
    trusted: bool

    @classmethod
    def fromX509(cls, x509, trusted, digest):
        cert = x509.to_cryptography()
        spki = cert.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
        return cls(_cn(cert.subject), _cn(cert.issuer), fingerprint(cert.public_bytes(Encoding.DER), digest),
                   fingerprint(spki, digest), trusted)


def _signature(x509, protocol):
    if x509 is None:
        return ""
    key = x509.to_cryptography().public_key()
    if isinstance(key, rsa.RSAPublicKey):
        return f"{'RSA-PSS' if protocol == 'TLSv1.3' else 'RSA'} ({key.key_size} bits)"
    if isinstance(key, ec.EllipticCurvePublicKey):
        curve = {"secp256r1": "P-256", "secp384r1": "P-384", "secp521r1": "P-521"}.get(key.curve.name, key.curve.name)
        return f"ECDSA ({curve})"
    return f"{type(key).__name__.replace('PublicKey', '')}"


@attrs.frozen
class TlsInfo:
    """An established TLS session; see the module docstring."""

    protocol: str
    cipher: str
    bits: int
    algBits: int
    keyExchange: str = ""
    serverSignature: str = ""
    reused: bool = False
    peer: PeerCertificate | None = None

    @classmethod
    def fromConnection(cls, connection, trusted=False, digest="sha256", client=False):
        """
        The session of a finished handshake; C{client}: we are the client
        (the peer's certificate is the server's: it gives the
        server-signature, and no client certificate is recorded).
        """
        protocol = connection.get_protocol_version_name()
        cipher = connection.get_cipher_name() or "unknown"
        alg = ffi.new("int *")
        current = lib.SSL_get_current_cipher(connection._ssl)
        bits = lib.SSL_CIPHER_get_bits(current, alg) if current != ffi.NULL else 0
        try:
            group = connection.get_group_name() or ""
        except Exception:  # older OpenSSL: no name
            group = ""
        group = _GROUP_NAMES.get(group, group)
        peerX509 = connection.get_peer_certificate()
        peer = PeerCertificate.fromX509(peerX509, trusted, digest) if peerX509 is not None else None
        serverX509 = peerX509 if client else connection.get_certificate()
        return cls(protocol=protocol, cipher=cipher, bits=bits, algBits=alg[0], keyExchange=group,
                   serverSignature=_signature(serverX509, protocol),
                   reused=bool(lib.SSL_session_reused(connection._ssl)), peer=peer)

    @property
    def trust(self):
        """Anonymous (no client certificate), Untrusted or Trusted."""
        if self.peer is None:
            return "Anonymous"
        return "Trusted" if self.peer.trusted else "Untrusted"

    def summary(self):
        """'TLSv1.3 with cipher X (256/256 bits) key-exchange X25519 server-signature RSA-PSS (2048 bits)'."""
        text = f"{self.protocol} with cipher {self.cipher} ({self.bits}/{self.algBits} bits)"
        if self.keyExchange:
            text += f" key-exchange {self.keyExchange}"
        if self.serverSignature:
            text += f" server-signature {self.serverSignature}"
        return text

    def logLine(self, client):
        return f"{self.trust} TLS connection {'reused' if self.reused else 'established'} from {client}: " \
               f"{self.summary()}"

    def clientLogLine(self, server, trust):
        """The SMTP client's line: "Verified TLS connection established to host[addr]:port: TLSv1.3 ..."."""
        return f"{trust} TLS connection {'reused' if self.reused else 'established'} to {server}: {self.summary()}"

    def certificateLine(self, client):
        """The client certificate's line (None without one)."""
        p = self.peer
        if p is None:
            return None
        return (f"{client}: {self.trust}: subject_CN={p.subjectCN}, issuer_CN={p.issuerCN}, "
                f"fingerprint={p.fingerprint}, pkey_fingerprint={p.pkeyFingerprint}")

    def receivedComment(self, asked):
        """The Received: header's TLS lines (without the leading tab or line ends), as Postfix's smtpd."""
        head = f"(using {self.protocol} with cipher {self.cipher} ({self.bits}/{self.algBits} bits)"
        extra = []
        if self.keyExchange:
            extra.append(f"key-exchange {self.keyExchange}")
        if self.serverSignature:
            extra.append(f"server-signature {self.serverSignature}")
        lines = [head + ")"] if not extra else [head, " " + " ".join(extra) + ")"]
        if self.peer is not None:
            verdict = "verified OK" if self.peer.trusted else "not verified"
            lines.append(f'(Client CN "{self.peer.subjectCN}", Issuer "{self.peer.issuerCN}" ({verdict}))')
        elif asked:
            lines.append("(Client did not present a certificate)")
        else:
            lines.append("(No client certificate requested)")
        return tuple(lines)
