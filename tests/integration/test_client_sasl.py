"""
mta's SMTP client logging in (smtp_sasl_auth_enable) at a real next hop on loopback: a private
Postfix (bench/postfix_instance.py) with smtpd TLS (the test certificate) and
smtpd_sasl_auth_enable = yes through a private Dovecot auth service
(tests/integration/dovecotauth.py).  127.0.0.1 is a stranger to that Postfix and its
smtpd_relay_restrictions are permit_sasl_authenticated, reject: mail it takes was taken for
the login.  Proven here: the right login over STARTTLS is accepted (Postfix logs
sasl_method=PLAIN, sasl_username=...; its disconnect line counts ehlo=2 starttls=1 auth=1);
a wrong password is deferred with the server's 535 text, naming the relay; and with TLS off
and the default smtp_sasl_security_options (noplaintext) no AUTH goes out at all, though
Postfix offers AUTH in plaintext (smtpd_tls_auth_only = no).
"""

import os
import re

import pytest

from tests.integration.daemon import freePort
from tests.integration.dovecotauth import DovecotAuth
from tests.integration.peers import waitFor
from tests.integration.test_client_peers import send, waitDelivery
from tests.tlssupport import Certificates

pytestmark = pytest.mark.integration

PASSWORD = "correct horse battery"
USER = "alice@example.org"


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    return Certificates(tmp_path_factory.mktemp("certs"))


@pytest.fixture(scope="module")
def dovecot():
    service = DovecotAuth({USER: PASSWORD}).start()
    yield service
    service.stop()


@pytest.fixture(scope="module")
def postfixSasl(certs, dovecot):
    from bench.postfix_instance import PostfixInstance

    instance = PostfixInstance(freePort(), tls=(certs["server.pem"], certs["server.key"]))
    instance.create()
    with open(instance.config_dir / "main.cf", "a") as f:
        f.write("mynetworks = 192.0.2.0/24\n"
                "smtpd_relay_restrictions = permit_sasl_authenticated, reject\n"
                "smtpd_recipient_restrictions = check_recipient_access inline:{ bench.example=HOLD }, "
                "permit_sasl_authenticated, reject\n"
                "smtpd_sasl_auth_enable = yes\nsmtpd_sasl_type = dovecot\n"
                f"smtpd_sasl_path = inet:127.0.0.1:{dovecot.port}\n"
                "smtpd_tls_auth_only = no\nsmtpd_tls_loglevel = 1\n")
    try:
        instance.start()
        yield instance
    finally:
        instance.stop()


def relaying(makeDaemon, postfix, level, password=PASSWORD, extra=""):
    """mta relaying bench.example to the Postfix over [localhost]:port with these credentials."""
    nexthop = f"[localhost]:{postfix.port}"
    main = (f"transport_maps = inline:{{ bench.example=smtp:{nexthop} }}\nsmtp_host_lookup = native\n"
            f"inet_protocols = ipv4\nsmtp_tls_security_level = {level}\nsmtp_tls_loglevel = 1\n"
            "smtp_sasl_auth_enable = yes\n"
            f"smtp_sasl_password_maps = inline:{{ {{ {nexthop} = {USER}:{password} }} }}\n" + extra)
    return makeDaemon(main=main, hold=False).start()


def postfixLog(postfix):
    return postfix.maillog.read_text(errors="replace")


def disconnects(postfix):
    return re.findall(r"disconnect from localhost\[127\.0\.0\.1\] (.*)", postfixLog(postfix))


def test_the_right_login_over_starttls_is_accepted(makeDaemon, postfixSasl):
    before = len(disconnects(postfixSasl))
    d = relaying(makeDaemon, postfixSasl, "encrypt", extra="smtp_sasl_tls_security_options = noanonymous\n")
    qid = send(d, ["rcpt@bench.example"])
    [line] = waitDelivery(d, qid, "rcpt@bench.example")
    assert line[3] == "sent", (line, d.maillogText(), postfixLog(postfixSasl)[-3000:])
    log = d.maillogText()
    assert f"localhost[127.0.0.1]:{postfixSasl.port}: SASL PLAIN authentication succeeded as {USER}" in log, log
    assert "TLS connection established to localhost[127.0.0.1]" in log
    assert PASSWORD not in log
    # mta's session's disconnect line (the harness's start-up probe, connect and QUIT, may be logged
    # by Postfix's postlogd after `before` was counted: it is not the one wanted).
    session = r"ehlo=2 starttls=1 auth=1 mail=1 rcpt=1 data=1 quit=1"
    text = waitFor(lambda: any(re.match(session, x) for x in disconnects(postfixSasl)[before:]) and
                   postfixLog(postfixSasl), timeout=15, what="Postfix's disconnect line of mta's session")
    assert re.search(rf"client=localhost\[127\.0\.0\.1\], sasl_method=PLAIN, sasl_username={re.escape(USER)}", text)
    assert os.listdir(postfixSasl.queue_dir / "hold") or os.listdir(postfixSasl.queue_dir / "incoming") or \
        os.listdir(postfixSasl.queue_dir / "active") or os.listdir(postfixSasl.queue_dir / "deferred")


def test_a_wrong_password_defers_with_the_535_text(makeDaemon, postfixSasl):
    before = len(disconnects(postfixSasl))
    d = relaying(makeDaemon, postfixSasl, "encrypt", password="wrong",
                 extra="smtp_sasl_tls_security_options = noanonymous\n")
    qid = send(d, ["rcpt@bench.example"])
    [line] = waitDelivery(d, qid, "rcpt@bench.example")
    assert line[2:4] == ("4.7.8", "deferred"), line
    # Postfix's own text after the colon depends on what Dovecot tells it ("(reason unavailable)").
    assert line[4].startswith("SASL authentication failed; server localhost[127.0.0.1] said: 535 5.7.8 Error: "
                              "authentication failed"), line
    waitFor(lambda: len(disconnects(postfixSasl)) > before, timeout=15, what="Postfix's disconnect line")
    assert re.match(r"ehlo=2 starttls=1 auth=0/1 quit=1", disconnects(postfixSasl)[-1]), disconnects(postfixSasl)


def test_no_auth_in_plaintext_under_noplaintext(makeDaemon, postfixSasl):
    before = len(disconnects(postfixSasl))
    d = relaying(makeDaemon, postfixSasl, "none")
    qid = send(d, ["rcpt@bench.example"])
    [line] = waitDelivery(d, qid, "rcpt@bench.example")
    assert line[2:] == ("4.7.0", "deferred", "SASL authentication failed; cannot authenticate to server "
                                             "localhost[127.0.0.1]: no mechanism available"), line
    assert "warning: SASL authentication failure: No worthy mechs found" in d.maillogText()
    waitFor(lambda: len(disconnects(postfixSasl)) > before, timeout=15, what="Postfix's disconnect line")
    last = disconnects(postfixSasl)[-1]
    assert re.match(r"ehlo=1 quit=1", last) and "auth" not in last and "starttls" not in last, last
