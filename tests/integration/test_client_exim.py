"""
mta's SMTP client with STARTTLS against a real Exim (tests/integration/exim.py EximServer: the
Debian exim4-daemon-light, built with GnuTLS, fetched and unpacked, never installed) as the
next hop on 127.0.0.1, with the test certificate for mx.test (and localhost, 127.0.0.1) and
tls_advertise_hosts = *; it stores each message it accepts in a Maildir.

- smtp_tls_security_level may (Untrusted: no CAfile, so the system store, which does not know
  the test CA), may with smtp_tls_CAfile (Trusted), encrypt (Untrusted) and verify (Verified,
  the name localhost of [localhost]:PORT): delivered; Exim's <= line has X=TLS1.3:... (and
  Exim, for encrypt and verify, refuses MAIL without TLS, so the mail cannot have come in
  plaintext); the message at Exim carries the body's token.
- smtp_tls_policy_maps for [127.0.0.1]:PORT: "secure match=mx.test servername=mx.test" is
  Verified and delivered, with SNI=mx.test in Exim's log; "verify match=other.test" and
  "secure match=other.test" are deferred 4.7.5 "Server certificate not verified" (the chain
  itself Trusted) and nothing reaches Exim (mta QUITs after the handshake).
- smtp_tls_security_level = none against an Exim that requires TLS: Exim's 530 for MAIL,
  and the message is not delivered (the requiring mode works, and mta sent no STARTTLS).
- smtp_tls_connection_reuse = yes: two messages over one connection and one handshake
  ("TLS connection reused", conn_use=2; Exim logs one SMTP connection from mta for both);
  with no, two connections, the second resuming the first's TLS 1.3 session ("Reusing old
  session" at mta, the resumption mark at Exim, which offers tickets: tls_resumption_hosts).

The Exim daemon re-executes itself, as its own user, for each delivery; with -C (our
configuration) that re-execution loses root and Exim says so in its panic log ("exim user
lost privilege for using -C option"): expected, harmless (the transport runs as the Exim user
anyway), and the reason the paniclog is not asserted empty.
"""

import re

import pytest

from tests.integration.daemon import freePort
from tests.integration.exim import EximServer
from tests.integration.peers import waitFor
from tests.integration.test_client_peers import SENDER, send, waitDelivery
from tests.tlssupport import Certificates

pytestmark = pytest.mark.integration

DOMAIN = "exim.example"
RCPT = f"rcpt@{DOMAIN}"

# level: (main.cf lines, the trust mta logs, Exim requires TLS)
LEVELS = {
    "may": ("smtp_tls_security_level = may\n", "Untrusted", False),
    "may-CAfile": ("smtp_tls_security_level = may\nsmtp_tls_CAfile = {ca}\n", "Trusted", False),
    "encrypt": ("smtp_tls_security_level = encrypt\n", "Untrusted", True),
    "verify": ("smtp_tls_security_level = verify\nsmtp_tls_CAfile = {ca}\n", "Verified", True),
}


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    return Certificates(tmp_path_factory.mktemp("certs"))


@pytest.fixture
def makeExim(certs):
    """A factory of started Exim servers on a free port (requireTls=...); all stopped after the test."""
    started = []

    def make(requireTls=False):
        server = EximServer(freePort(), certs["server.pem"], certs["server.key"], requireTls=requireTls)
        started.append(server)
        return server.start()

    yield make
    for server in started:
        server.stop()


def sender(makeDaemon, nexthop, main, loglevel=1):
    """mta relaying DOMAIN to C{nexthop} with the extra [main] lines C{main}."""
    return makeDaemon(main=(f"transport_maps = inline:{{ {DOMAIN}=smtp:{nexthop} }}\nsmtp_host_lookup = native\n"
                            f"inet_protocols = ipv4\nsmtp_tls_loglevel = {loglevel}\n" + main), hold=False).start()


def tlsLine(daemon, host, port, what="established"):
    """The trust of mta's "... TLS connection established to HOST[127.0.0.1]:PORT: TLSv1.3 with cipher" line."""
    pattern = re.compile(rf"(\w+) TLS connection {what} to {re.escape(host)}\[127\.0\.0\.1\]:{port}: TLSv1\.3 "
                         r"with cipher \S+ \(\d+/\d+ bits\)")
    match = waitFor(lambda: pattern.search(daemon.maillogText()), timeout=15, what=f"the client's TLS {what} line")
    return match.group(1)


def arrived(exim, token, count=1):
    """Exim's <= lines for the message(s), and the stored message holding C{token}; both checked for TLS."""
    try:
        messages = waitFor(lambda: len(exim.messages()) >= count and exim.messages(), timeout=15,
                           what=f"{count} message(s) at Exim")
    except AssertionError as e:
        raise AssertionError(f"{e}\n--- Exim's mainlog ---\n{exim.mainlog()}") from None
    [message] = [m for m in messages if token.encode() in m]
    head, _, body = message.partition(b"\n\n")
    assert body == f"hello {token}\n".encode(), message
    assert f"\nSubject: test {token}\nX-Token: {token}\n".encode() in head, message
    # Exim's own trace header, first after its Return-path and Envelope-to.
    assert re.match(rb"Return-path: <sender@back\.example>\nEnvelope-to: rcpt@exim\.example\nReceived: from "
                    rb"\[127\.0\.0\.1\] \(helo=mta\.test\)\n\tby mx\.test with esmtps\s+\(TLS1\.3\)", head), message
    log = exim.mainlog()
    received = re.findall(rf"<= {re.escape(SENDER)} H=.*\[127\.0\.0\.1\] P=esmtps X=TLS1\.3:\S+:\d+\*? .*for {RCPT}$",
                          log, re.M)
    assert len(received) == count, log
    return received


@pytest.mark.parametrize("level", list(LEVELS))
def test_relay_to_exim_over_starttls(makeDaemon, makeExim, certs, level):
    main, trust, requireTls = LEVELS[level]
    exim = makeExim(requireTls=requireTls)
    d = sender(makeDaemon, f"[localhost]:{exim.port}", main.format(ca=certs["ca.pem"]))
    token = f"token-{level}"
    qid = send(d, [RCPT], token=token)
    [line] = waitDelivery(d, qid, RCPT)
    assert line[3] == "sent" and re.search(r"250 OK id=\S+", line[4]), line
    assert tlsLine(d, "localhost", exim.port) == trust, d.maillogText()
    arrived(exim, token)


def policySender(makeDaemon, certs, tmp_path, exim, entry):
    """mta (level may) relaying to [127.0.0.1]:PORT, its smtp_tls_policy_maps entry C{entry}."""
    hop = f"[127.0.0.1]:{exim.port}"
    table = tmp_path / "tls_policy"
    table.write_text(f"{hop} {entry}\n")
    return sender(makeDaemon, hop, f"smtp_tls_security_level = may\nsmtp_tls_CAfile = {certs['ca.pem']}\n"
                                   f"smtp_tls_policy_maps = texthash:{table}\n")


def test_policy_map_secure_with_the_certificate_name(makeDaemon, makeExim, certs, tmp_path):
    exim = makeExim(requireTls=True)
    d = policySender(makeDaemon, certs, tmp_path, exim, "secure match=mx.test servername=mx.test")
    qid = send(d, [RCPT], token="token-secure")
    [line] = waitDelivery(d, qid, RCPT)
    assert line[3] == "sent", line
    assert tlsLine(d, "127.0.0.1", exim.port) == "Verified", d.maillogText()
    [received] = arrived(exim, "token-secure")
    assert " SNI=mx.test " in received, received  # the policy's servername= reached Exim


@pytest.mark.parametrize("level", ["verify", "secure"])
def test_policy_map_with_another_name_defers(makeDaemon, makeExim, certs, tmp_path, level):
    exim = makeExim()
    d = policySender(makeDaemon, certs, tmp_path, exim, f"{level} match=other.test")
    qid = send(d, [RCPT])
    [line] = waitDelivery(d, qid, RCPT)
    assert line[2:] == ("4.7.5", "deferred", "Server certificate not verified"), line
    assert tlsLine(d, "127.0.0.1", exim.port) == "Trusted", d.maillogText()
    # mta hung up after the handshake: Exim saw the connection go, and no MAIL.
    log = waitFor(lambda: exim.mainlog().count("SMTP connection from") >= 4 and exim.mainlog(), timeout=15,
                  what="the end of mta's session in Exim's log")
    assert " <= " not in log and exim.messages() == [], log
    assert log.count("SMTP connection from [127.0.0.1] closed by QUIT") == 2, log  # the probe's, and mta's


def test_exim_requiring_tls_refuses_mail_in_plaintext(makeDaemon, makeExim):
    exim = makeExim(requireTls=True)
    d = sender(makeDaemon, f"[localhost]:{exim.port}", "smtp_tls_security_level = none\n")
    qid = send(d, [RCPT])
    [line] = waitDelivery(d, qid, RCPT)
    assert line[2:] == ("5.7.0", "bounced", "host localhost[127.0.0.1] said: 530 5.7.0 Must issue a STARTTLS command "
                                            "first (in reply to MAIL FROM command)"), line
    assert "TLS connection established" not in d.maillogText()
    assert exim.messages() == []
    assert re.search(r"rejected MAIL <sender@back\.example>: 530 5\.7\.0 Must issue a STARTTLS command first",
                     exim.mainlog()), exim.mainlog()


def test_a_cached_tls_connection_to_exim_is_used_again(makeDaemon, makeExim):
    """smtp_tls_connection_reuse = yes: the second message over the first's TLS connection, one handshake."""
    exim = makeExim(requireTls=True)
    d = sender(makeDaemon, f"[localhost]:{exim.port}",
               "smtp_tls_security_level = encrypt\nsmtp_tls_connection_reuse = yes\n"
               "smtp_connection_cache_time_limit = 30s\n", loglevel=2)
    for n in (1, 2):
        qid = send(d, [RCPT], token=f"token-reuse-{n}")
        [line] = waitDelivery(d, qid, RCPT)
        assert line[3] == "sent", line
        arrived(exim, f"token-reuse-{n}", count=n)
    text = d.maillogText()
    assert len(re.findall(r"TLS connection established to localhost\[127\.0\.0\.1\]", text)) == 1, text
    assert tlsLine(d, "localhost", exim.port, "reused") == "Untrusted", text
    assert "conn_use=2" in text, text
    log = exim.mainlog()
    # The start-up probe (connection and QUIT), then mta's one connection, still open (cached).
    assert log.count("SMTP connection from [127.0.0.1] (TCP/IP connection count") == 2, log
    assert log.count("closed by QUIT") == 1, log
    # Stopping mta closes the cached connection properly: QUIT and the TLS close_notify go out
    # before the reactor stops (mta.delivery.connectioncache.closeAll waits for the socket).
    d.stop()
    log = waitFor(lambda: exim.mainlog().count("closed by QUIT") >= 2 and exim.mainlog(), timeout=15,
                  what="the cached connection's QUIT at Exim")
    assert "non-properly terminated" not in log and " lost D=" not in log, log


def test_a_new_connection_to_exim_resumes_the_tls_session(makeDaemon, makeExim):
    """
    smtp_tls_connection_reuse = no: each message its own connection (QUIT after it); the second
    resumes the first's TLS 1.3 session (Exim's tls_resumption_hosts = *; it marks a resumed
    session with * after the X= field).
    """
    exim = makeExim(requireTls=True)
    d = sender(makeDaemon, f"[localhost]:{exim.port}",
               "smtp_tls_security_level = encrypt\nsmtp_tls_connection_reuse = no\n", loglevel=2)
    received = []
    for n in (1, 2):
        qid = send(d, [RCPT], token=f"token-resume-{n}")
        [line] = waitDelivery(d, qid, RCPT)
        assert line[3] == "sent", line
        received = arrived(exim, f"token-resume-{n}", count=n)
    text = d.maillogText()
    assert len(re.findall(r"Untrusted TLS connection established to localhost\[127\.0\.0\.1\]", text)) == 2, text
    assert len(re.findall(rf"smtp:127\.0\.0\.1:{exim.port}: Reusing old session", text)) == 1, text
    assert "conn_use=" not in text and "TLS connection reused" not in text, text
    first, second = received
    assert not re.search(r" X=\S+\* ", first) and re.search(r" X=\S+\* ", second), received
    log = waitFor(lambda: exim.mainlog().count("closed by QUIT") >= 3 and exim.mainlog(), timeout=15,
                  what="Exim's three QUITs (the probe's and mta's two)")
    assert log.count("SMTP connection from [127.0.0.1] (TCP/IP connection count") == 3, log
