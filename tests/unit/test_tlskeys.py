"""mta.tlskeys: key generation, the self-signed certificate, the TLSA digest, safe file writing."""

import datetime
import hashlib
import os
import stat

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from mta import tlskeys
from mta.tlskeys import TlsKeyError

NOW = datetime.datetime(2026, 12, 2, 6, 0, 0, tzinfo=datetime.timezone.utc)


@pytest.fixture(scope="module")
def rsaKey():
    return tlskeys.generateKey("rsa")


def test_rsaDefaultIs2048Bits(rsaKey):
    assert isinstance(rsaKey, rsa.RSAPrivateKey) and rsaKey.key_size == 2048
    assert rsaKey.public_key().public_numbers().e == 65537
    assert tlskeys.describeKey(rsaKey) == "rsa 2048"


def test_rsaSizeIsTheBitsArgument():
    assert tlskeys.generateKey("rsa", "3072").key_size == 3072


@pytest.mark.parametrize("bits, curve", [(None, "secp256r1"), ("prime256v1", "secp256r1"), ("256", "secp256r1"),
                                         ("secp384r1", "secp384r1"), ("521", "secp521r1")])
def test_ecdsaCurves(bits, curve):
    key = tlskeys.generateKey("ecdsa", bits)
    assert isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == curve


@pytest.mark.parametrize("keyType, bits, message", [
    ("rsa", "1024", "invalid RSA key size '1024'"), ("rsa", "lots", "invalid RSA key size"),
    ("rsa", "32768", "invalid RSA key size"), ("ecdsa", "secp192r1", "invalid ECDSA curve"),
    ("dsa", None, "unsupported key type 'dsa'"),
])
def test_badKeyParametersAreOneLine(keyType, bits, message):
    with pytest.raises(TlsKeyError, match=message):
        tlskeys.generateKey(keyType, bits)


def test_certificateAsPostfixMakesIt(rsaKey):
    cert = tlskeys.selfSignedCertificate(rsaKey, ["Mail.Example.org.", "mx.example.org"], days=10, now=NOW)
    cn = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "mail.example.org")])
    assert cert.subject == cert.issuer == cn
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["mail.example.org", "mx.example.org"]
    basic = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert basic.critical and basic.value.ca is False
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
    assert cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value == \
        x509.SubjectKeyIdentifier.from_public_key(rsaKey.public_key())
    assert cert.not_valid_before_utc == NOW - datetime.timedelta(minutes=1)
    assert cert.not_valid_after_utc == NOW + datetime.timedelta(days=10)
    assert cert.signature_hash_algorithm.name == "sha256"
    assert cert.version == x509.Version.v3
    cert.verify_directly_issued_by(cert)  # self-signed, by this key
    assert cert.public_key() == rsaKey.public_key()


def test_defaultValidityIsPostfixs36525Days(rsaKey):
    cert = tlskeys.selfSignedCertificate(rsaKey, ["mail.example.org"], now=NOW)
    assert cert.not_valid_after_utc - NOW == datetime.timedelta(days=36525)


@pytest.mark.parametrize("name", ["", "-bad.example", "under_score.example", "a..b", "münchen.example",
                                  "x" * 64 + ".example", "mail example"])
def test_badHostNamesAreRefused(rsaKey, name):
    with pytest.raises(TlsKeyError, match="invalid host name"):
        tlskeys.selfSignedCertificate(rsaKey, [name], now=NOW)


@pytest.mark.parametrize("days", [0, -1, 100000])
def test_badDaysAreRefused(rsaKey, days):
    with pytest.raises(TlsKeyError, match="invalid number of days"):
        tlskeys.selfSignedCertificate(rsaKey, ["mail.example.org"], days=days, now=NOW)


def test_tlsaRecordIsTheSha256OfTheDerSpki(rsaKey):
    der = rsaKey.public_key().public_bytes(serialization.Encoding.DER,
                                           serialization.PublicFormat.SubjectPublicKeyInfo)
    assert der[0] == 0x30  # a DER SEQUENCE: the SubjectPublicKeyInfo, not the bare RSAPublicKey
    assert tlskeys.tlsaRecord("mail.example.org.", rsaKey.public_key()) == \
        f"_25._tcp.mail.example.org. IN TLSA 3 1 1 {hashlib.sha256(der).hexdigest()}"


def test_writeFileCreatesMode0600AndRefusesAnExistingFile(tmp_path, rsaKey):
    path = str(tmp_path / "key.pem")
    old = os.umask(0)
    try:
        tlskeys.writeFile(path, tlskeys.keyPem(rsaKey), tlskeys.KEY_MODE)
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert tlskeys.readPrivateKey(path).private_numbers() == rsaKey.private_numbers()
    with pytest.raises(TlsKeyError, match="already exists \\(use --force to replace it\\)"):
        tlskeys.writeFile(path, b"other", tlskeys.KEY_MODE)
    assert tlskeys.readPrivateKey(path).private_numbers() == rsaKey.private_numbers()


def test_writeFileNeverFollowsASymlink(tmp_path):
    victim = tmp_path / "victim"
    victim.write_text("precious")
    os.symlink(victim, tmp_path / "key.pem")
    with pytest.raises(TlsKeyError, match="already exists"):
        tlskeys.writeFile(str(tmp_path / "key.pem"), b"key", tlskeys.KEY_MODE)
    tlskeys.writeFile(str(tmp_path / "key.pem"), b"key", tlskeys.KEY_MODE, force=True)
    assert victim.read_text() == "precious"  # the link was replaced, not written through
    assert not os.path.islink(tmp_path / "key.pem") and (tmp_path / "key.pem").read_bytes() == b"key"


def test_forceReplacesAtomicallyWithTheNewMode(tmp_path):
    path = tmp_path / "key.pem"
    path.write_bytes(b"old")
    os.chmod(path, 0o644)
    tlskeys.writeFile(str(path), b"new", tlskeys.KEY_MODE, force=True)
    assert path.read_bytes() == b"new" and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert sorted(os.listdir(tmp_path)) == ["key.pem"]  # no temporary file left


def test_writeFileInAMissingDirectoryIsOneLine(tmp_path):
    with pytest.raises(TlsKeyError, match="cannot create: No such file or directory"):
        tlskeys.writeFile(str(tmp_path / "nowhere" / "key.pem"), b"key", tlskeys.KEY_MODE)


def test_readPublicKeyFromAKeyACombinedFileOrACertificate(tmp_path, rsaKey):
    cert = tlskeys.selfSignedCertificate(rsaKey, ["mail.example.org"], now=NOW)
    (tmp_path / "cert.pem").write_bytes(tlskeys.certificatePem(cert))
    (tmp_path / "both.pem").write_bytes(tlskeys.certificatePem(cert) + tlskeys.keyPem(rsaKey))
    for name in ("cert.pem", "both.pem"):
        assert tlskeys.readPublicKey(str(tmp_path / name)) == rsaKey.public_key()
    assert tlskeys.privateKeyIn(str(tmp_path / "cert.pem")) is None
    assert tlskeys.certificatesIn(str(tmp_path / "both.pem")) == [cert]


@pytest.mark.parametrize("content, message", [
    (b"", "neither a private key nor a certificate"),
    (b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n", "the private key does not parse"),
    (b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n", "a certificate does not parse"),
    (b"-----BEGIN ENCRYPTED PRIVATE KEY-----\nAAAA\n-----END ENCRYPTED PRIVATE KEY-----\n", "passphrase"),
])
def test_badPemFilesAreOneLine(tmp_path, content, message):
    path = tmp_path / "bad.pem"
    path.write_bytes(content)
    with pytest.raises(TlsKeyError, match=message) as e:
        tlskeys.readPublicKey(str(path))
    assert str(e.value).startswith(str(path)) and "\n" not in str(e.value)


def test_anEncryptedKeyIsRefused(tmp_path, rsaKey):
    path = tmp_path / "enc.pem"
    path.write_bytes(rsaKey.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                          serialization.BestAvailableEncryption(b"secret")))
    with pytest.raises(TlsKeyError, match="protected by a passphrase"):
        tlskeys.readPrivateKey(str(path))


def test_missingFile(tmp_path):
    with pytest.raises(TlsKeyError, match="no such file"):
        tlskeys.readPublicKey(str(tmp_path / "none.pem"))
