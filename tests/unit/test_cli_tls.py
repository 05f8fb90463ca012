"""mta tls (mta.cli.tls): new-server-key, new-server-cert and output-server-tlsa on files in tmp_path.

The TLS parameters are not in the schema on this branch yet: these tests set them in the INI file,
so they also prove that the command reads them tolerant of their absence from the schema (and that
the rest of the file is still checked).
"""

import os
import re
import stat

import pytest
from cryptography import x509

from mta import tlskeys
from mta.cli import main as cliMain
from mta.config import loader

HOST = "mail.example.org"


@pytest.fixture(autouse=True)
def noSystemConfig(monkeypatch, tmp_path):
    monkeypatch.delenv("MTA_CONFIG", raising=False)
    monkeypatch.setattr(loader, "DEFAULT_CONFIG", str(tmp_path / "no-such-mta.ini"))


def writeIni(tmp_path, *lines):
    ini = tmp_path / "mta.ini"
    ini.write_text("\n".join(["[main]", f"myhostname = {HOST}", f"queue_directory = {tmp_path}/spool",
                              *lines, ""]))
    return str(ini)


def mta(capsys, *argv):
    code = cliMain.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def san(path):
    cert = tlskeys.certificatesIn(str(path))[0]
    return cert, cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
        x509.DNSName)


def test_newServerKeyWithNothingConfiguredMakesStampedFilesAndPrintsTheLines(tmp_path, capsys):
    ini = writeIni(tmp_path)
    code, out, err = mta(capsys, "-c", ini, "tls", "new-server-key")
    assert (code, err) == (0, "")
    keys = [n for n in os.listdir(tmp_path) if re.fullmatch(r"key-\d{8}-\d{6}\.pem", n)]
    certs = [n for n in os.listdir(tmp_path) if re.fullmatch(r"cert-\d{8}-\d{6}\.pem", n)]
    assert len(keys) == len(certs) == 1
    key, cert = tmp_path / keys[0], tmp_path / certs[0]
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert tlskeys.describeKey(tlskeys.readPrivateKey(str(key))) == "rsa 2048"
    certificate, names = san(cert)
    assert names == [HOST] and certificate.public_key() == tlskeys.readPublicKey(str(key))
    assert f"  smtpd_tls_cert_file = {cert}\n  smtpd_tls_key_file = {key}\n" \
           f"  smtpd_tls_security_level = may\n" in out
    assert f"add to [main] in {ini} (mta does not rewrite it)" in out
    assert f"  {tlskeys.tlsaRecord(HOST, certificate.public_key())}\n" in out


def test_ecdsaFilesAreNamedAsPostfixNamesThem(tmp_path, capsys):
    ini = writeIni(tmp_path)
    code, out, err = mta(capsys, "-c", ini, "tls", "new-server-key", "-t", "ecdsa", "-b", "secp384r1",
                         "mx.example.org", "mail.example.org")
    assert code == 0, err
    (key,) = [n for n in os.listdir(tmp_path) if n.startswith("eckey-")]
    (cert,) = [n for n in os.listdir(tmp_path) if n.startswith("eccert-")]
    assert tlskeys.describeKey(tlskeys.readPrivateKey(str(tmp_path / key))) == "ecdsa secp384r1"
    certificate, names = san(tmp_path / cert)
    assert names == ["mx.example.org", "mail.example.org"]
    assert certificate.subject.rfc4514_string() == "CN=mx.example.org"


def test_configuredFilesAreWrittenAndNeverOverwrittenWithoutForce(tmp_path, capsys):
    ini = writeIni(tmp_path, f"smtpd_tls_cert_file = {tmp_path}/tls/cert.pem",
                   f"smtpd_tls_key_file = {tmp_path}/tls/key.pem", "smtpd_tls_security_level = may")
    (tmp_path / "tls").mkdir()
    code, out, err = mta(capsys, "-c", ini, "tls", "new-server-key", "-a", "ecdsa")
    assert (code, err) == (0, "")
    assert sorted(os.listdir(tmp_path / "tls")) == ["cert.pem", "key.pem"]
    assert "the configured files were written: run mta reload to use them" in out and "add to [main]" not in out
    key = tmp_path / "tls" / "key.pem"
    first = key.read_bytes()
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    code, out, err = mta(capsys, "-c", ini, "tls", "new-server-key")
    assert (code, out) == (1, "")
    assert err == f"mta: error: {tmp_path}/tls/key.pem: already exists (use --force to replace it)\n"
    assert key.read_bytes() == first
    code, out, err = mta(capsys, "-c", ini, "tls", "new-server-key", "--force")
    assert code == 0, err
    assert key.read_bytes() != first and stat.S_IMODE(key.stat().st_mode) == 0o600
    assert tlskeys.describeKey(tlskeys.readPrivateKey(str(key))) == "rsa 2048"
    assert tlskeys.readPublicKey(str(tmp_path / "tls" / "cert.pem")) == tlskeys.readPublicKey(str(key))


def test_onlyACertFileMeansOneCombinedFileMode0600(tmp_path, capsys):
    ini = writeIni(tmp_path, f"smtpd_tls_cert_file = {tmp_path}/server.pem")
    code, out, err = mta(capsys, "-c", ini, "tls", "new-server-key")
    assert code == 0, err
    path = tmp_path / "server.pem"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert tlskeys.privateKeyIn(str(path)).public_key() == tlskeys.certificatesIn(str(path))[0].public_key()
    assert "  smtpd_tls_security_level = may\n" in out and "smtpd_tls_key_file =" not in out


def test_newServerCertKeepsTheKeyAndItsTlsaRecord(tmp_path, capsys):
    ini = writeIni(tmp_path, f"smtpd_tls_cert_file = {tmp_path}/cert.pem", f"smtpd_tls_key_file = {tmp_path}/key.pem")
    assert mta(capsys, "-c", ini, "tls", "new-server-key")[0] == 0
    key = (tmp_path / "key.pem").read_bytes()
    oldCert = tlskeys.certificatesIn(str(tmp_path / "cert.pem"))[0]
    code, out, err = mta(capsys, "-c", ini, "tls", "new-server-cert")
    assert (code, err) == (1, f"mta: error: {tmp_path}/cert.pem: already exists (use --force to replace it)\n")
    code, out, err = mta(capsys, "-c", ini, "tls", "new-server-cert", "--force", "-d", "30", "mx2.example.org")
    assert code == 0, err
    assert (tmp_path / "key.pem").read_bytes() == key
    newCert, names = san(tmp_path / "cert.pem")
    assert names == ["mx2.example.org"] and newCert.serial_number != oldCert.serial_number
    assert newCert.public_key() == oldCert.public_key()
    assert (newCert.not_valid_after_utc - newCert.not_valid_before_utc).days == 30
    assert f"the rsa 2048 private key of {tmp_path}/key.pem is kept" in out
    assert "the key's TLSA record is unchanged" in out


def test_newServerCertWithAKeyOfAnotherTypeThanAsked(tmp_path, capsys):
    ini = writeIni(tmp_path, f"smtpd_tls_cert_file = {tmp_path}/cert.pem", f"smtpd_tls_key_file = {tmp_path}/key.pem")
    assert mta(capsys, "-c", ini, "tls", "new-server-key", "-a", "ecdsa")[0] == 0
    code, out, err = mta(capsys, "-c", ini, "tls", "new-server-cert", "-a", "rsa", "--force")
    assert (code, out) == (1, "")
    assert "holds an ecdsa secp256r1 key, not rsa" in err and err.count("\n") == 1


def test_newServerCertWithoutAConfiguredKeyMakesOne(tmp_path, capsys):
    ini = writeIni(tmp_path, f"smtpd_tls_key_file = {tmp_path}/gone.pem")
    code, out, err = mta(capsys, "-c", ini, "tls", "new-server-cert")
    assert code == 0
    assert err == f"mta: warning: key file {tmp_path}/gone.pem not found, creating a new key\n"
    assert tlskeys.readPrivateKey(str(tmp_path / "gone.pem")) is not None
    (cert,) = [n for n in os.listdir(tmp_path) if n.startswith("cert-")]
    assert f"  smtpd_tls_cert_file = {tmp_path / cert}\n" in out


def test_chainFilesGetNewStampedFilesAndTheChainLine(tmp_path, capsys):
    ini = writeIni(tmp_path, f"smtpd_tls_chain_files = {tmp_path}/old.pem")
    code, out, err = mta(capsys, "-c", ini, "tls", "new-server-key")
    assert code == 0, err
    (key,) = [n for n in os.listdir(tmp_path) if n.startswith("key-")]
    (cert,) = [n for n in os.listdir(tmp_path) if n.startswith("cert-")]
    assert f"  smtpd_tls_chain_files = {tmp_path / key}, {tmp_path / cert}\n" in out


def test_outputServerTlsa(tmp_path, capsys):
    ini = writeIni(tmp_path, f"smtpd_tls_cert_file = {tmp_path}/cert.pem", f"smtpd_tls_key_file = {tmp_path}/key.pem")
    assert mta(capsys, "-c", ini, "tls", "new-server-key", "-a", "ecdsa")[0] == 0
    public = tlskeys.readPublicKey(str(tmp_path / "key.pem"))
    digest = tlskeys.spkiSha256(public)
    code, out, err = mta(capsys, "-c", ini, "tls", "output-server-tlsa")
    assert (code, out, err) == (0, f"; {tmp_path}/key.pem\n_25._tcp.{HOST}. IN TLSA 3 1 1 {digest}\n", "")
    code, out, err = mta(capsys, "-c", ini, "tls", "output-server-tlsa", "-h", "mx.example.net", "ecdsa", "rsa")
    assert (code, out) == (0, f"; {tmp_path}/key.pem\n_25._tcp.mx.example.net. IN TLSA 3 1 1 {digest}\n")
    code, out, err = mta(capsys, "-c", ini, "tls", "output-server-tlsa", "rsa")  # no rsa key configured
    assert code == 1 and out == "" and "no usable key file given or configured" in err
    code, out, err = mta(capsys, "-c", ini, "tls", "output-server-tlsa", str(tmp_path / "cert.pem"))
    assert (code, out) == (0, f"; {tmp_path}/cert.pem\n_25._tcp.{HOST}. IN TLSA 3 1 1 {digest}\n")


def test_outputServerTlsaWithNothingConfigured(tmp_path, capsys):
    code, out, err = mta(capsys, "-c", writeIni(tmp_path), "tls", "output-server-tlsa")
    assert (code, out) == (1, "")
    assert err == "mta: error: no usable key file given or configured (smtpd_tls_key_file " \
                  "(smtpd_tls_cert_file) is empty)\n"


def test_theEmbeddedDefaultsHaveNoDirectoryForTheFiles(capsys):
    code, out, err = mta(capsys, "tls", "new-server-key")
    assert (code, out) == (1, "")
    assert err.startswith("mta: error: no configuration file is in effect (the embedded defaults)")


def test_theRestOfTheFileIsStillChecked(tmp_path, capsys):
    ini = writeIni(tmp_path, f"smtpd_tls_cert_file = {tmp_path}/cert.pem", "mesage_size_limit = 10")
    code, out, err = mta(capsys, "-c", ini, "tls", "new-server-key")
    assert (code, out) == (1, "")
    assert err == f"mta: error: {ini}:5: [main] mesage_size_limit: unknown parameter " \
                  f"(did you mean message_size_limit?)\n"
    assert not os.path.exists(tmp_path / "cert.pem")


def test_aTlsParameterWithContinuationLinesAndAnExpansion(tmp_path, capsys):
    ini = writeIni(tmp_path, "smtpd_tls_cert_file =", f"    {tmp_path}/$myhostname.pem",
                   "[listener:smtp]", "endpoint = tcp:port=2525:interface=127.0.0.1", "smtpd_tls_security_level = may")
    code, out, err = mta(capsys, "-c", ini, "tls", "new-server-key")
    assert code == 0, err
    assert tlskeys.privateKeyIn(str(tmp_path / f"{HOST}.pem")) is not None


@pytest.mark.parametrize("argv, message", [
    (["new-server-key", "-b", "512"], "mta: error: invalid RSA key size '512'"),
    (["new-server-key", "bad_name.example"], "mta: error: invalid host name 'bad_name.example'"),
    (["output-server-tlsa", "/no/such/key.pem"], "mta: error: /no/such/key.pem: no such file"),
])
def test_errorsAreOneLineAndExitOne(tmp_path, capsys, argv, message):
    code, out, err = mta(capsys, "-c", writeIni(tmp_path), "tls", *argv)
    assert (code, out) == (1, "")
    assert err.startswith(message) and err.count("\n") == 1
    assert [n for n in os.listdir(tmp_path) if n.endswith(".pem")] == []


def test_usageErrors(tmp_path, capsys):
    assert mta(capsys, "tls")[0] == 2
    code, out, err = mta(capsys, "tls", "new-server-key", "-a", "dsa")
    assert code == 2 and "invalid choice: 'dsa'" in err


def test_newServerCertWithChainFilesCopiesTheKeyOfTheTypeAsked(tmp_path, capsys):
    rsaKey, ecKey = tlskeys.generateKey("rsa"), tlskeys.generateKey("ecdsa")
    for name, key in (("rsa.pem", rsaKey), ("ec.pem", ecKey)):
        cert = tlskeys.selfSignedCertificate(key, [HOST])
        (tmp_path / name).write_bytes(tlskeys.keyPem(key) + tlskeys.certificatePem(cert))
    ini = writeIni(tmp_path, f"smtpd_tls_chain_files = {tmp_path}/rsa.pem, {tmp_path}/ec.pem")
    code, out, err = mta(capsys, "-c", ini, "tls", "new-server-cert", "-a", "ecdsa")
    assert (code, err) == (0, "")
    (key,) = [n for n in os.listdir(tmp_path) if n.startswith("eckey-")]
    (cert,) = [n for n in os.listdir(tmp_path) if n.startswith("eccert-")]
    assert tlskeys.readPrivateKey(str(tmp_path / key)).private_numbers() == ecKey.private_numbers()
    assert tlskeys.readPublicKey(str(tmp_path / cert)) == ecKey.public_key()
    assert f"  smtpd_tls_chain_files = {tmp_path / key}, {tmp_path / cert}\n" in out
    assert f"(in place of the entry for {tmp_path}/ec.pem and its certificate;" in out
    code, out, err = mta(capsys, "-c", ini, "tls", "output-server-tlsa")
    assert out == (f"; {tmp_path}/rsa.pem\n{tlskeys.tlsaRecord(HOST, rsaKey.public_key())}\n"
                   f"; {tmp_path}/ec.pem\n{tlskeys.tlsaRecord(HOST, ecKey.public_key())}\n")


def test_ownerGivesTheNewFilesToTheDaemonsUser(tmp_path, capsys):
    import pwd

    nobody = pwd.getpwnam("nobody")
    ini = writeIni(tmp_path, f"smtpd_tls_cert_file = {tmp_path}/cert.pem", f"smtpd_tls_key_file = {tmp_path}/key.pem")
    if os.geteuid() != 0:  # not root: another user is refused, one's own user works
        code, out, err = mta(capsys, "-c", ini, "tls", "new-server-key", "--owner", "nobody")
        assert (code, err) == (1, "mta: error: --owner: only root can give files to nobody\n")
        nobody = pwd.getpwuid(os.geteuid())
    code, out, err = mta(capsys, "-c", ini, "tls", "new-server-key", "--owner", nobody.pw_name)
    assert code == 0, err
    for name, mode in (("key.pem", 0o600), ("cert.pem", 0o644)):
        st = (tmp_path / name).stat()
        assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (nobody.pw_uid, nobody.pw_gid, mode)
    assert "belongs to root" not in out


@pytest.mark.parametrize("owner, message", [("no-such-user-xyz", "no such user 'no-such-user-xyz'"),
                                            ("root:no-such-group-xyz", "no such group 'no-such-group-xyz'")])
def test_aBadOwnerIsRefusedBeforeAnythingIsWritten(tmp_path, capsys, owner, message):
    code, out, err = mta(capsys, "-c", writeIni(tmp_path), "tls", "new-server-key", "--owner", owner)
    assert (code, out, err) == (1, "", f"mta: error: --owner: {message}\n")
    assert [n for n in os.listdir(tmp_path) if n.endswith(".pem")] == []
