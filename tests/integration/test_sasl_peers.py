"""
SMTP AUTH of the real ``twistd mta`` against real clients and a real Dovecot:
swaks (--auth PLAIN and LOGIN), Python's smtplib (login), msmtp (auth on), Postfix's
smtp client relaying with smtp_sasl_auth_enable (a private bench/postfix_instance.py), with
the builtin backend (a password table made by ``mta-config sasl-passwd``) and with
Dovecot's auth service (tests/integration/dovecotauth.py) over its UNIX socket and
over TCP.  AUTH in plaintext is allowed explicitly here (smtpd_tls_auth_only = no,
the default); AUTH under TLS on the submission services is tests/integration/
test_submission.py.  127.0.0.1 is a stranger
(mynetworks elsewhere), so what is accepted was accepted for the login.
"""

import smtplib
import subprocess
import sys

import pytest

from tests.integration.daemon import environment
from tests.integration.dovecotauth import DovecotAuth
from tests.integration.peers import maillogLines, queueIdOf, readQueued, requireProgram, swaks, waitFor

pytestmark = pytest.mark.integration

PASSWORD = "correct horse battery"
STRANGER = "mynetworks = 192.0.2.0/24\n"
MESSAGE = b"From: a@example.org\r\nTo: bob@mta.test\r\nSubject: auth\r\n\r\nhello\r\n"


def saslPasswd(path, user, password):
    """Run ``mta-config sasl-passwd PATH USER`` with the password on standard input."""
    done = subprocess.run([sys.executable, "-c", "import sys; from mta.cli.config import main; sys.exit(main())",
                           "sasl-passwd", str(path), user], input=password + "\n", capture_output=True, text=True,
                          env=environment(), timeout=60)
    assert done.returncode == 0, done.stderr
    assert password not in done.stdout + done.stderr
    return done


@pytest.fixture
def builtin(makeDaemon, tmp_path):
    path = tmp_path / "sasl_passwd"
    saslPasswd(path, "alice@example.org", PASSWORD)
    saslPasswd(path, "bob", "another one")
    assert PASSWORD not in path.read_text()
    d = makeDaemon(STRANGER + "smtpd_sasl_auth_enable = yes\nsmtpd_sasl_type = builtin\n"
                   f"smtpd_sasl_path = texthash:{path}\nsmtpd_sasl_authenticated_header = yes\n")
    return d.start()


@pytest.fixture
def dovecot():
    service = DovecotAuth({"alice@example.org": PASSWORD}).start()
    yield service
    service.stop()


def assertLogin(daemon, queueId, method, user="alice@example.org"):
    envelope, content = readQueued(daemon, queueId)
    assert (envelope.sasl_method, envelope.sasl_username) == (method, user)
    assert envelope.client_address == "127.0.0.1"
    lines = [text for _, text in maillogLines(daemon)]
    assert any(text.startswith(f"{queueId}: client=localhost[127.0.0.1], sasl_method={method}, "
                               f"sasl_username={user}") or
               text.startswith(f"{queueId}: client=unknown[127.0.0.1], sasl_method={method}, "
                               f"sasl_username={user}") for text in lines), lines
    assert b" with ESMTPA id " in content.split(b"\r\n\r\n")[0]
    return envelope, content


def assertNoPassword(daemon):
    text = daemon.maillogText()
    assert PASSWORD not in text
    for data in (f"\0alice@example.org\0{PASSWORD}", PASSWORD):
        import base64

        assert base64.b64encode(data.encode()).decode() not in text


# -- builtin backend ------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["PLAIN", "LOGIN"])
def test_swaks_auth_builtin(builtin, method):
    done = swaks(builtin.port, "--to", "bob@mta.test", "--from", "alice@example.org", "--auth", method,
                 "--auth-user", "alice@example.org", "--auth-password", PASSWORD, "--auth-hide-password")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "235 2.7.0 Authentication successful" in done.stdout
    queueId = queueIdOf(done.stdout)
    _, content = assertLogin(builtin, queueId, method)
    assert b"\t(Authenticated sender: alice@example.org)\r\n" in content
    assertNoPassword(builtin)


def test_swaks_wrong_password_and_unknown_user_builtin(builtin):
    replies = []
    for user, password in [("alice@example.org", "wrong"), ("nobody@example.org", PASSWORD)]:
        done = swaks(builtin.port, "--to", "bob@mta.test", "--auth", "PLAIN", "--auth-user", user,
                     "--auth-password", password)
        assert done.returncode != 0
        replies.append([line for line in done.stdout.splitlines() if line.startswith("<** 535")])
    assert replies[0] == replies[1] == ["<** 535 5.7.8 Error: authentication failed: authentication failure"]
    assert builtin.incoming() == []
    assert "SASL PLAIN authentication failed: authentication failure" in builtin.maillogText()


def test_smtplib_login_builtin(builtin):
    with smtplib.SMTP("127.0.0.1", builtin.port, timeout=30) as client:
        client.ehlo("client.example")
        assert "PLAIN" in client.esmtp_features["auth"] and "LOGIN" in client.esmtp_features["auth"]
        with pytest.raises(smtplib.SMTPAuthenticationError):
            client.login("bob", "not it")
        code, _ = client.login("bob", "another one")
        assert code == 235
        client.sendmail("bob@example.org", ["bob@mta.test"], MESSAGE)
    waitFor(lambda: builtin.incoming(), what="the queued message")
    (queueId,) = builtin.incoming()
    assertLogin(builtin, queueId, "PLAIN", "bob")


def test_msmtp_auth_builtin(builtin, tmp_path):
    config = tmp_path / "msmtprc"
    config.write_text(f"account default\nhost 127.0.0.1\nport {builtin.port}\nfrom alice@example.org\n"
                      f"auth login\nuser alice@example.org\npassword {PASSWORD}\ntls off\n")
    config.chmod(0o600)
    done = subprocess.run([requireProgram("msmtp"), "-C", str(config), "bob@mta.test"], input=MESSAGE,
                          capture_output=True, timeout=60)
    assert done.returncode == 0, done.stderr.decode()
    waitFor(lambda: builtin.incoming(), what="the queued message")
    (queueId,) = builtin.incoming()
    assertLogin(builtin, queueId, "LOGIN")
    assertNoPassword(builtin)


def test_msmtp_wrong_password_builtin(builtin, tmp_path):
    config = tmp_path / "msmtprc"
    config.write_text(f"account default\nhost 127.0.0.1\nport {builtin.port}\nfrom alice@example.org\n"
                      "auth plain\nuser alice@example.org\npassword nope\ntls off\n")
    config.chmod(0o600)
    done = subprocess.run([requireProgram("msmtp"), "-C", str(config), "bob@mta.test"], input=MESSAGE,
                          capture_output=True, timeout=60)
    assert done.returncode != 0
    assert b"535 5.7.8" in done.stderr
    assert builtin.incoming() == []


# -- Dovecot ----------------------------------------------------------------------------------


@pytest.mark.parametrize("where", ["unix", "inet"])
def test_swaks_auth_dovecot(makeDaemon, dovecot, where):
    path = dovecot.socketPath if where == "unix" else f"inet:127.0.0.1:{dovecot.port}"
    d = makeDaemon(STRANGER + f"smtpd_sasl_auth_enable = yes\nsmtpd_sasl_type = dovecot\nsmtpd_sasl_path = {path}\n")
    d.start()
    probe = swaks(d.port, "--quit-after", "EHLO")
    assert "250-AUTH PLAIN LOGIN" in probe.stdout, probe.stdout  # what Dovecot lists
    for method in ("PLAIN", "LOGIN"):
        done = swaks(d.port, "--to", "bob@mta.test", "--from", "alice@example.org", "--auth", method,
                     "--auth-user", "alice@example.org", "--auth-password", PASSWORD)
        assert done.returncode == 0, done.stdout + done.stderr + dovecot.errors()
        assertLogin(d, queueIdOf(done.stdout), method)
    bad = swaks(d.port, "--to", "bob@mta.test", "--auth", "PLAIN", "--auth-user", "alice@example.org",
                "--auth-password", "wrong")
    assert "<** 535 5.7.8 Error: authentication failed: authentication failure" in bad.stdout
    assertNoPassword(d)


def test_smtplib_login_dovecot_and_dovecot_down(makeDaemon, dovecot):
    d = makeDaemon(STRANGER + "smtpd_sasl_auth_enable = yes\nsmtpd_sasl_type = dovecot\n"
                   f"smtpd_sasl_path = {dovecot.socketPath}\n")
    d.start()
    with smtplib.SMTP("127.0.0.1", d.port, timeout=30) as client:
        client.ehlo("client.example")
        assert client.login("alice@example.org", PASSWORD)[0] == 235
        client.sendmail("alice@example.org", ["bob@mta.test"], MESSAGE)
    waitFor(lambda: d.incoming(), what="the queued message")
    dovecot.stop()
    with smtplib.SMTP("127.0.0.1", d.port, timeout=30) as client:
        client.ehlo("client.example")
        assert "auth" in client.esmtp_features  # the mechanisms last seen
        code, text = client.docmd("AUTH", "PLAIN AGFsaWNlQGV4YW1wbGUub3JnAHdyb25n")
        assert (code, text) == (454, b"4.7.0 Temporary authentication failure: Connection lost to authentication server")
    assert "connect to Dovecot auth socket" in d.maillogText()


def test_tls_auth_only_hides_and_refuses_auth_in_plaintext(makeDaemon, tmp_path):
    path = tmp_path / "sasl_passwd"
    saslPasswd(path, "alice@example.org", PASSWORD)
    d = makeDaemon(STRANGER + "smtpd_sasl_auth_enable = yes\nsmtpd_sasl_type = builtin\n"
                   f"smtpd_sasl_path = texthash:{path}\nsmtpd_tls_auth_only = yes\n").start()
    probe = swaks(d.port, "--quit-after", "EHLO")
    assert "AUTH" not in probe.stdout
    with smtplib.SMTP("127.0.0.1", d.port, timeout=30) as client:
        client.ehlo("client.example")
        assert "auth" not in client.esmtp_features
        code, text = client.docmd("AUTH", "PLAIN " + __import__("base64").b64encode(
            f"\0alice@example.org\0{PASSWORD}".encode()).decode())
        assert (code, text) == (504, b"5.5.4 Encryption required for requested authentication mechanism")
    done = swaks(d.port, "--to", "bob@mta.test", "--auth", "PLAIN", "--auth-user", "alice@example.org",
                 "--auth-password", PASSWORD)
    assert done.returncode != 0 and d.incoming() == []
    assertNoPassword(d)


def test_auth_rate_limit_with_swaks(makeDaemon, tmp_path):
    path = tmp_path / "sasl_passwd"
    saslPasswd(path, "alice@example.org", PASSWORD)
    d = makeDaemon(STRANGER + "smtpd_sasl_auth_enable = yes\nsmtpd_sasl_type = builtin\n"
                   f"smtpd_sasl_path = texthash:{path}\nsmtpd_client_auth_rate_limit = 2\n"
                   "smtpd_client_event_limit_exceptions =\n").start()
    outcomes = []
    for password in ("wrong", PASSWORD, PASSWORD):
        done = swaks(d.port, "--to", "bob@mta.test", "--auth", "PLAIN", "--auth-user", "alice@example.org",
                     "--auth-password", password)
        outcomes.append([line for line in done.stdout.splitlines() if line[4:7] in ("535", "235", "450")])
    assert outcomes == [["<** 535 5.7.8 Error: authentication failed: authentication failure"],
                        ["<-  235 2.7.0 Authentication successful"],
                        ["<** 450 4.7.1 Error: too many AUTH commands from 127.0.0.1"]]
    assert "AUTH command rate limit exceeded: 3 from " in d.maillogText()


@pytest.mark.parametrize("mechanism", ["plain", "login"])
def test_postfix_smtp_client_with_sasl(builtin, mechanism):
    """A private Postfix (bench/postfix_instance.py) relays to mta with smtp_sasl_auth_enable."""
    from bench.postfix_instance import PostfixInstance
    from tests.integration.daemon import freePort

    instance = PostfixInstance(freePort(), relay_port=builtin.port)
    try:
        instance.create()
        with open(instance.config_dir / "main.cf", "a") as f:
            f.write("smtp_sasl_auth_enable = yes\nsmtp_sasl_security_options = noanonymous\n"
                    f"smtp_sasl_password_maps = inline:{{ {{ [127.0.0.1]:{builtin.port} = "
                    f"alice@example.org:{PASSWORD} }} }}\nsmtp_sasl_mechanism_filter = {mechanism}\n")
        instance.start()
        done = swaks(instance.port, "--from", "alice@example.org", "--to", "bob@mta.test")
        assert done.returncode == 0, done.stdout + done.stderr
        try:
            waitFor(lambda: builtin.incoming(), timeout=30, what="the relayed message")
            waitFor(lambda: "status=sent" in instance.maillog.read_text(errors="replace"), timeout=30,
                    what="Postfix's delivery line")
        except AssertionError as e:
            raise AssertionError(f"{e}\n{instance.logTail()}\n{builtin.maillogText()}") from None
    finally:
        instance.stop()
    (queueId,) = builtin.incoming()
    envelope, _ = assertLogin(builtin, queueId, mechanism.upper())
    assert envelope.helo == "bench-postfix.localdomain" and envelope.sender == "alice@example.org"
    assertNoPassword(builtin)
