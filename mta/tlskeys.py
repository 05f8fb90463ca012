"""mta.tlskeys - server private keys, self-signed certificates and DANE TLSA records.

What ``postfix tls`` does with openssl(1), with the cryptography library,
for mta.cli.tls (``mta tls new-server-key``, ``new-server-cert``,
``output-server-tlsa``):

    generateKey("rsa", "2048")          RSA (2048 to 16384 bits, default 2048)
    generateKey("ecdsa", "secp256r1")   ECDSA on secp256r1 (the default; also
                                        prime256v1, secp384r1, secp521r1, or
                                        the sizes 256, 384, 521)
    selfSignedCertificate(key, ["mail.example.org"], days=36525)
                                        X.509 v3 as postfix-tls-script makes it:
                                        subject = issuer = CN=first name, every
                                        name a SAN dNSName, basicConstraints
                                        CA:FALSE, subjectKeyIdentifier,
                                        extendedKeyUsage serverAuth, clientAuth,
                                        SHA-256 signature, a random serial
    tlsaRecord("mail.example.org", publicKey)
                                        _25._tcp.mail.example.org. IN TLSA 3 1 1 HEX
                                        (DANE-EE, SubjectPublicKeyInfo, SHA2-256)
    writeFile(path, data, mode, force)  a new file, O_EXCL; with force an atomic
                                        replacement (temporary file, fsync, rename)
    readPublicKey(path)                 the public key of the private key in a
                                        PEM file, else of its first certificate

Every failure is a TlsKeyError with one line of text naming the
file; nothing here prints or exits.

SECURITY
    Private keys are written unencrypted (a daemon reads them unattended),
    PKCS#8 PEM, mode 0600, created with O_CREAT|O_EXCL|O_NOFOLLOW: an
    existing file or a symbolic link planted at the name is never written
    through.  A replacement (force) is written under a new temporary name in
    the same directory, fsynced and renamed over the old name, so a reader
    sees the old file or the new one, never a half-written key; the
    directory is fsynced too.  PEM files read here are untrusted input: a
    file that does not parse, a passphrase-protected key or a key of another
    type is an error naming the file.  RSA keys shorter than 2048 bits are
    refused.

CONFIGURATION
    None: the caller (mta.cli.tls) passes the names and files.

DEVIATIONS
    postfix-tls-script runs openssl(1) and accepts whatever RSA size openssl
    accepts; mta refuses sizes below 2048 bits and above 16384.  The
    certificate's notBefore is one minute in the past (openssl req: now), so
    that a peer whose clock is slightly behind accepts it at once.
"""

import datetime
import hashlib
import os
import re
import tempfile

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

KEY_TYPES = ("rsa", "ecdsa")
RSA_BITS = 2048        # postfix-tls-script's default
RSA_MIN, RSA_MAX = 2048, 16384
EC_CURVE = "secp256r1"  # postfix-tls-script's default
CERT_DAYS = 36525      # postfix-tls-script: a "100-year nominal expiration time"
CURVES = {
    "secp256r1": ec.SECP256R1, "prime256v1": ec.SECP256R1, "256": ec.SECP256R1, "p-256": ec.SECP256R1,
    "secp384r1": ec.SECP384R1, "384": ec.SECP384R1, "p-384": ec.SECP384R1,
    "secp521r1": ec.SECP521R1, "521": ec.SECP521R1, "p-521": ec.SECP521R1,
}
KEY_MODE = 0o600
CERT_MODE = 0o644

_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)\Z")
_PEM_KEY = re.compile(rb"-----BEGIN ((?:RSA |EC |ENCRYPTED )?PRIVATE KEY)-----.*?-----END \1-----\s*", re.S)


class TlsKeyError(Exception):
    """A key, certificate or file problem: str(e) is the one line to print."""


def defaultBits(keyType):
    return str(RSA_BITS) if keyType == "rsa" else EC_CURVE


def keyParameters(keyType, bits=None):
    """(keyType, size or curve class) for generateKey, checked; TlsKeyError when wrong."""
    bits = defaultBits(keyType) if bits in (None, "") else str(bits).strip()
    if keyType == "rsa":
        if not bits.isdigit() or not RSA_MIN <= int(bits) <= RSA_MAX:
            raise TlsKeyError(f"invalid RSA key size {bits!r}: {RSA_MIN} to {RSA_MAX} bits (default {RSA_BITS})")
        return keyType, int(bits)
    if keyType == "ecdsa":
        curve = CURVES.get(bits.lower())
        if curve is None:
            raise TlsKeyError(f"invalid ECDSA curve {bits!r}: secp256r1 (prime256v1, 256), "
                              f"secp384r1 (384) or secp521r1 (521)")
        return keyType, curve
    raise TlsKeyError(f"unsupported key type {keyType!r}: rsa or ecdsa")


def generateKey(keyType, bits=None):
    """A new private key: C{keyType} "rsa" or "ecdsa"; C{bits} a size (RSA) or a curve name or size (ECDSA)."""
    keyType, size = keyParameters(keyType, bits)
    if keyType == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=size)
    return ec.generate_private_key(size())


def keyType(key):
    """"rsa" or "ecdsa" for a private or public key object; None for others."""
    if isinstance(key, (rsa.RSAPrivateKey, rsa.RSAPublicKey)):
        return "rsa"
    if isinstance(key, (ec.EllipticCurvePrivateKey, ec.EllipticCurvePublicKey)):
        return "ecdsa"
    return None


def describeKey(key):
    """"rsa 2048" or "ecdsa secp256r1"."""
    kind = keyType(key)
    if kind == "rsa":
        return f"rsa {key.key_size}"
    if kind == "ecdsa":
        return f"ecdsa {key.curve.name}"
    return type(key).__name__


def checkHostname(name):
    """C{name} without a trailing dot, if it is a DNS host name (LDH labels); else TlsKeyError."""
    text = name[:-1] if name.endswith(".") else name
    if not text or len(text) > 253 or not all(_LABEL.match(label) for label in text.split(".")):
        raise TlsKeyError(f"invalid host name {name!r}: letters, digits, hyphens and dots "
                          f"(an internationalised name in its xn-- form)")
    return text.lower()


def selfSignedCertificate(key, hostnames, days=CERT_DAYS, now=None):
    """A self-signed X.509 v3 server certificate for C{key}: CN = the first name, SAN = all of them."""
    names = [checkHostname(n) for n in hostnames]
    if not names:
        raise TlsKeyError("no host name for the certificate")
    if not isinstance(days, int) or not 1 <= days <= 36525 * 2:
        raise TlsKeyError(f"invalid number of days {days!r}: 1 to {36525 * 2}")
    now = datetime.datetime.now(datetime.timezone.utc) if now is None else now
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])])
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                       critical=False)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in dict.fromkeys(names)]),
                       critical=False)
    )
    return builder.sign(key, hashes.SHA256())


def keyPem(key):
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def certificatePem(certificate):
    return certificate.public_bytes(serialization.Encoding.PEM)


def spkiSha256(publicKey):
    """The hex SHA2-256 digest of C{publicKey}'s DER SubjectPublicKeyInfo (TLSA selector 1, matching type 1)."""
    der = publicKey.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(der).hexdigest()


def tlsaRecord(hostname, publicKey, port=25):
    """Postfix's line: C{_25._tcp.HOST. IN TLSA 3 1 1 HEX} (DANE-EE, SPKI, SHA2-256)."""
    return f"_{port}._tcp.{checkHostname(hostname)}. IN TLSA 3 1 1 {spkiSha256(publicKey)}"


# -- reading ----------------------------------------------------------------------------------


def _read(path):
    try:
        with open(path, "rb") as f:
            return f.read(1 << 20)
    except FileNotFoundError:
        raise TlsKeyError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise TlsKeyError(f"{path}: is a directory") from None
    except OSError as e:
        raise TlsKeyError(f"{path}: cannot read: {e.strerror or e}") from None


def privateKeyIn(path, data=None):
    """The private key in PEM file C{path} (which may also hold certificates), or None when it has none."""
    data = _read(path) if data is None else data
    match = _PEM_KEY.search(data)
    if match is None:
        return None
    if match.group(1) == b"ENCRYPTED PRIVATE KEY" or b"Proc-Type: 4,ENCRYPTED" in match.group(0):
        raise TlsKeyError(f"{path}: the private key is protected by a passphrase (the server cannot use it)")
    try:
        key = serialization.load_pem_private_key(match.group(0), password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as e:
        raise TlsKeyError(f"{path}: the private key does not parse: {str(e).splitlines()[0] if str(e) else e}") from None
    if keyType(key) is None:
        raise TlsKeyError(f"{path}: unsupported private key type {type(key).__name__} (rsa or ecdsa)")
    return key


def certificatesIn(path, data=None):
    """The certificates in PEM file C{path}, in file order (may be empty)."""
    data = _read(path) if data is None else data
    if b"-----BEGIN CERTIFICATE-----" not in data:
        return []
    try:
        return x509.load_pem_x509_certificates(data)
    except ValueError as e:
        raise TlsKeyError(f"{path}: a certificate does not parse: {e}") from None


def readPrivateKey(path):
    key = privateKeyIn(path)
    if key is None:
        raise TlsKeyError(f"{path}: no private key found in the file")
    return key


def readPublicKey(path):
    """The public key of the private key in C{path}, else of the first certificate there."""
    data = _read(path)
    key = privateKeyIn(path, data)
    if key is not None:
        return key.public_key()
    certificates = certificatesIn(path, data)
    if not certificates:
        raise TlsKeyError(f"{path}: neither a private key nor a certificate found in the file")
    public = certificates[0].public_key()
    if keyType(public) is None:
        raise TlsKeyError(f"{path}: unsupported public key type {type(public).__name__} (rsa or ecdsa)")
    return public


# -- writing ----------------------------------------------------------------------------------


def writeFile(path, data, mode, force=False, owner=None):
    """
    Write C{data} to a new file C{path} with C{mode} (O_EXCL: an existing
    name is refused); with C{force}, replace an existing file atomically.
    C{owner} (uid, gid) is given to the file before anything is written.
    """
    directory = os.path.dirname(os.path.abspath(path))
    if os.path.lexists(path) and not force:
        raise TlsKeyError(f"{path}: already exists (use --force to replace it)")
    if os.path.isdir(path):
        raise TlsKeyError(f"{path}: is a directory")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    target = path
    if force and os.path.lexists(path):
        handle, target = tempfile.mkstemp(prefix=".", suffix=".new", dir=directory)
        os.close(handle)
        os.unlink(target)  # reopened below with O_EXCL and the right mode from the start
    try:
        fd = os.open(target, flags, mode)
    except FileExistsError:
        raise TlsKeyError(f"{path}: already exists (use --force to replace it)") from None
    except OSError as e:
        raise TlsKeyError(f"{path}: cannot create: {e.strerror or e}") from None
    try:
        try:
            if owner is not None:
                os.fchown(fd, *owner)
            os.fchmod(fd, mode)  # the umask may have taken bits away (0644 files); never adds any to a key
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        if target != path:
            os.rename(target, path)
    except OSError as e:
        try:
            os.unlink(target)
        except OSError:
            pass
        raise TlsKeyError(f"{path}: cannot write: {e.strerror or e}") from None
    try:
        dirfd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dirfd)
        finally:
            os.close(dirfd)
    except OSError:
        pass  # the file is written; a directory that cannot be fsynced is not worth failing for
