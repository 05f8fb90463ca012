"""
The submission services as etc/mta.ini shows them (mta.config.docs.EXAMPLE_LISTENERS:
587 with STARTTLS required and AUTH only under TLS, 465 in wrapper mode), on the real
``twistd mta`` with real clients: swaks (--tls / --tlsc with --auth), Python's smtplib
(starttls then login) and msmtp (STARTTLS and AUTH).  The builtin SASL backend with a
table made by ``mta-config sasl-passwd``; certificates from tests.tlssupport.  127.0.0.1
is a stranger (mynetworks elsewhere), so what is relayed was relayed for the login.
Also: STARTTLS after AUTH forgets the login (RFC 3207 4.2), on the port 25 service.
"""

import base64
import smtplib
import ssl
import subprocess

import pytest

from mta.config import docs
from tests.integration.daemon import freePort
from tests.integration.peers import maillogLines, readQueued, requireProgram, swaks, waitFor
from tests.integration.test_sasl_peers import PASSWORD, saslPasswd
from tests.tlssupport import Certificates

pytestmark = pytest.mark.integration

MESSAGE = b"From: alice@example.org\r\nTo: carol@elsewhere.example\r\nSubject: submission\r\n\r\nhi\r\n"


@pytest.fixture
def submissionDaemon(makeDaemon, tmp_path):
    """smtp (may, AUTH allowed in plaintext), and the documented submission and submissions."""
    (tmp_path / "certs").mkdir()
    certs = Certificates(tmp_path / "certs")
    table = tmp_path / "sasl_passwd"
    saslPasswd(table, "alice@example.org", PASSWORD)
    logins = tmp_path / "sender_logins"
    logins.write_text("alice@example.org alice@example.org\n")
    d = makeDaemon(main=certs.serverMain("may", "mynetworks = 192.0.2.0/24\nsmtpd_sasl_auth_enable = yes\n"
                                                "smtpd_sasl_type = builtin\n"
                                                f"smtpd_sasl_path = texthash:{table}\n"
                                                f"smtpd_sender_login_maps = texthash:{logins}\n"))
    ports = {}
    with open(d.config, "a") as f:
        for name, _, overrides, _ in docs.EXAMPLE_LISTENERS:
            ports[name] = freePort()
            f.write(f"\n[listener:{name}]\nendpoint = tcp:port={ports[name]}:interface=127.0.0.1\n")
            for key, value in overrides:
                if key == "smtpd_relay_restrictions":  # accepted mail is held, as the other tests do
                    value = "check_recipient_access static:HOLD, " + value
                f.write(f"{key} = {value}\n")
    d.ports, d.certs = ports, certs
    return d.start()


def relayed(d, count=1):
    waitFor(lambda: len(d.incoming()) >= count, what="the relayed message in the queue")
    return [readQueued(d, q) for q in d.incoming()]


def test_swaksSubmitsOnBothServicesWithTlsAndAuth(submissionDaemon):
    d = submissionDaemon
    for port, option in ((d.ports["submission"], "--tls"), (d.ports["submissions"], "--tlsc")):
        done = swaks(port, option, "--from", "alice@example.org", "--to", "carol@elsewhere.example",
                     "--auth", "PLAIN", "--auth-user", "alice@example.org", "--auth-password", PASSWORD,
                     "--auth-hide-password")
        assert done.returncode == 0, done.stdout + done.stderr
        assert "235 2.7.0 Authentication successful" in done.stdout
    for envelope, content in relayed(d, 2):
        assert (envelope.sasl_method, envelope.sasl_username) == ("PLAIN", "alice@example.org")
        assert b" with ESMTPSA id " in content.split(b"\r\n\r\n")[0]
    assert PASSWORD not in d.maillogText()


def test_submissionRefusesMailAndAuthBeforeTls(submissionDaemon):
    d = submissionDaemon
    with smtplib.SMTP("127.0.0.1", d.ports["submission"], timeout=30) as client:
        client.ehlo("client.example")
        assert "auth" not in client.esmtp_features and "starttls" in client.esmtp_features
        code, text = client.docmd("AUTH", "PLAIN " + base64.b64encode(
            f"\0alice@example.org\0{PASSWORD}".encode()).decode())
        assert code in (504, 530), (code, text)
        assert client.docmd("MAIL", "FROM:<alice@example.org>") == (530, b"5.7.0 Must issue a STARTTLS command first")
    assert d.incoming() == []


def test_submissionRelaysOnlyForTheLoginAndItsOwnAddresses(submissionDaemon):
    d = submissionDaemon
    context = ssl.create_default_context(cafile=d.certs["ca.pem"])
    with smtplib.SMTP("127.0.0.1", d.ports["submission"], timeout=30) as client:
        client.starttls(context=context)
        client.ehlo("client.example")
        assert "PLAIN" in client.esmtp_features["auth"]
        # No login: alice's address needs her login; any other sender ends at the final reject.
        with pytest.raises(smtplib.SMTPRecipientsRefused) as refused:
            client.sendmail("alice@example.org", ["carol@elsewhere.example"], MESSAGE)
        assert list(refused.value.recipients.values())[0] == (
            553, b"5.7.1 <alice@example.org>: Sender address rejected: not logged in")
        with pytest.raises(smtplib.SMTPRecipientsRefused) as refused:
            client.sendmail("dave@example.org", ["carol@elsewhere.example"], MESSAGE)
        assert list(refused.value.recipients.values())[0][0] == 554
        client.login("alice@example.org", PASSWORD)
        with pytest.raises(smtplib.SMTPRecipientsRefused) as refused:  # not alice's address
            client.sendmail("mallory@example.org", ["carol@elsewhere.example"], MESSAGE)
        code, text = list(refused.value.recipients.values())[0]
        assert (code, text) == (553, b"5.7.1 <mallory@example.org>: Sender address rejected: not owned by user "
                                     b"alice@example.org")
        client.sendmail("alice@example.org", ["carol@elsewhere.example"], MESSAGE)
    [(envelope, _)] = relayed(d)
    assert envelope.sasl_username == "alice@example.org" and envelope.sender == "alice@example.org"


def test_msmtpSubmitsWithStarttlsAndAuth(submissionDaemon, tmp_path):
    d = submissionDaemon
    config = tmp_path / "msmtprc"
    config.write_text(f"account default\nhost 127.0.0.1\nport {d.ports['submission']}\nfrom alice@example.org\n"
                      f"auth plain\nuser alice@example.org\npassword {PASSWORD}\ntls on\ntls_starttls on\n"
                      f"tls_trust_file {d.certs['ca.pem']}\n")
    config.chmod(0o600)
    done = subprocess.run([requireProgram("msmtp"), "-C", str(config), "carol@elsewhere.example"], input=MESSAGE,
                          capture_output=True, timeout=60)
    assert done.returncode == 0, done.stderr.decode()
    [(envelope, content)] = relayed(d)
    assert envelope.sasl_method == "PLAIN" and b" with ESMTPSA id " in content


def test_starttlsAfterAuthForgetsTheLogin(submissionDaemon):
    d = submissionDaemon
    context = ssl.create_default_context(cafile=d.certs["ca.pem"])
    with smtplib.SMTP("127.0.0.1", d.port, timeout=30) as client:  # port 25's service: AUTH in plaintext allowed
        client.ehlo("client.example")
        client.login("alice@example.org", PASSWORD)
        client.starttls(context=context)
        client.ehlo("client.example")
        assert client.docmd("MAIL", "FROM:<alice@example.org>")[0] == 250
        code, text = client.docmd("RCPT", "TO:<carol@elsewhere.example>")
        assert code == 454 and b"Relay access denied" in text, (code, text)  # smtpd_relay_restrictions' default
    assert d.incoming() == []
    assert any("sasl_username" not in text for _, text in maillogLines(d))
