"""STARTTLS, wrapper mode and the encrypt level (mta.smtpd.starttls) over an in-memory TLS wire.

The client is pyOpenSSL on the other end of tests.tlssupport.TLSDialog; the
server is the real session with Twisted's TLSMemoryBIOProtocol put in by
transport.startTLS, as on a TCP connection.
"""

import pytest
from OpenSSL import SSL
from twisted.internet.task import Clock

from mta.testing import FakeQueueStore, serverFactory
from tests.dialogs.harness import MailLog
from tests.tlssupport import Certificates, TLSDialog, clientContext

MAIL = "MAIL FROM:<alice@example.org>\r\n"
RCPT = "RCPT TO:<bob@mx.test>\r\n"


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    return Certificates(tmp_path_factory.mktemp("certs"))


@pytest.fixture
def store():
    return FakeQueueStore()


def make(certs, level="may", extra="", store=None, clock=None, cert=True, loglevel=1):
    main = certs.serverMain(level, extra, loglevel) if cert else f"smtpd_tls_security_level = {level}\n{extra}"
    return serverFactory(main, clock=clock, store=store)


def dialog(factory, certs, **kw):
    return TLSDialog(factory, context=kw.pop("context", None) or clientContext(certs), **kw)


# -- EHLO and STARTTLS's own replies ---------------------------------------------------------

def test_ehlo_offers_starttls_after_etrn_when_a_certificate_is_configured(certs):
    d = dialog(make(certs), certs)
    lines = d.send("EHLO c.test\r\n").split("\r\n")
    assert lines.index("250-STARTTLS") == lines.index("250-ETRN") + 1


@pytest.mark.parametrize("level, cert, extra", [
    ("none", True, ""),  # a certificate but TLS off
    ("may", False, ""),  # may without a certificate: nothing to offer
    ("may", True, "smtpd_discard_ehlo_keywords = starttls, silent-discard\n"),
])
def test_starttls_is_neither_offered_nor_accepted_without_tls(certs, level, cert, extra):
    d = dialog(make(certs, level, extra, cert=cert), certs)
    assert "STARTTLS" not in d.send("EHLO c.test\r\n")
    assert d.send("STARTTLS\r\n") == "502 5.5.1 Error: command not implemented\r\n"


def test_the_default_level_is_none_as_postfix(certs):
    factory = serverFactory(f"smtpd_tls_cert_file = {certs['server.pem']}\nsmtpd_tls_key_file = {certs['server.key']}\n")
    assert factory.tlsSettings.level == "none" and factory.tls is None


def test_starttls_with_an_argument_is_501(certs):
    d = dialog(make(certs), certs)
    d.send("EHLO c.test\r\n")
    assert d.send("STARTTLS now\r\n") == "501 5.5.4 Syntax: STARTTLS\r\n"
    assert d.client is None  # still plaintext


def test_starttls_inside_a_transaction_is_503(certs):
    d = dialog(make(certs), certs)
    d.send("EHLO c.test\r\n")
    d.send(MAIL)
    assert d.send("STARTTLS\r\n") == "503 5.5.1 Error: MAIL transaction in progress\r\n"


def test_a_second_starttls_is_554(certs):
    d = dialog(make(certs), certs)
    d.send("EHLO c.test\r\n")
    assert d.starttls() == "220 2.0.0 Ready to start TLS\r\n"
    d.send("EHLO c.test\r\n")
    assert d.send("STARTTLS\r\n") == "554 5.5.1 Error: TLS already active\r\n"


# -- the session starts over --------------------------------------------------------------------

def test_after_the_handshake_the_session_starts_over(certs):
    d = dialog(make(certs, extra="smtpd_helo_required = yes\n"), certs)
    d.send("EHLO c.test\r\n")
    assert d.protocol.session.helo == "c.test"
    d.protocol.session.saslUsername = "alice"  # as AUTH would have set it
    d.starttls()
    session = d.protocol.session
    assert (session.helo, session.protocol, session.saslUsername, session.tlsActive) == (None, "SMTP", None, True)
    assert session.tls.protocol.startswith("TLSv1.") and session.tls.bits >= 128
    assert d.send(MAIL) == "503 5.5.1 Error: send HELO/EHLO first\r\n"  # the EHLO before TLS is forgotten
    assert "STARTTLS" not in d.send("EHLO c.test\r\n")
    assert d.send(MAIL) == "250 2.1.0 Ok\r\n"


@pytest.mark.parametrize("behind, verb", [("RSET\r\n", "RSET"), (MAIL, "MAIL")])
def test_plaintext_pipelined_after_starttls_is_discarded_never_executed(certs, behind, verb):
    d = dialog(make(certs), certs)
    d.send("EHLO c.test\r\n")
    with MailLog() as log:
        reply = d.send("STARTTLS\r\n" + behind)  # one write
        assert reply == "220 2.0.0 Ready to start TLS\r\n"  # nothing answered for the injected command
        d.handshake()
        assert d.read() == ""  # and nothing after the handshake either
    assert log.matching(f"discarding {len(behind)} bytes of plaintext pipelined after STARTTLS")
    d.send("EHLO c.test\r\n")
    # The injected MAIL did not open a transaction inside TLS: RCPT needs a MAIL of its own.
    assert d.send(RCPT) == "503 5.5.1 Error: need MAIL command\r\n"
    assert d.protocol.session.commands.get(verb.lower()) is None


def test_plaintext_sent_before_the_handshake_is_not_read_as_smtp(certs):
    d = dialog(make(certs), certs)
    d.send("EHLO c.test\r\n")
    assert d.send("STARTTLS\r\n") == "220 2.0.0 Ready to start TLS\r\n"
    # The attacker's bytes arrive in plaintext before any ClientHello: they go to TLS and fail it.
    with MailLog() as log:
        d.transport.deliver(b"MAIL FROM:<evil@example.org>\r\n")
        d.read()
    assert d.closed
    assert d.protocol.transaction.sender is None
    assert log.matching("SSL_accept error from unknown[127.0.0.1]")


# -- the encrypt level ----------------------------------------------------------------------------

@pytest.mark.parametrize("command", [MAIL, "VRFY bob\r\n", "ETRN mx.test\r\n"])
def test_encrypt_refuses_mail_vrfy_and_etrn_before_starttls(certs, command):
    d = dialog(make(certs, "encrypt"), certs)
    d.send("EHLO c.test\r\n")
    assert d.send(command) == "530 5.7.0 Must issue a STARTTLS command first\r\n"
    assert d.send("NOOP\r\n") == "250 2.0.0 Ok\r\n"
    d.starttls()
    d.send("EHLO c.test\r\n")
    assert d.send(MAIL) == "250 2.1.0 Ok\r\n"


def test_encrypt_needs_nothing_of_may_after_tls(certs, store):
    d = dialog(make(certs, "encrypt", store=store), certs)
    d.send("EHLO c.test\r\n")
    d.starttls()
    d.send("EHLO c.test\r\n")
    assert d.send(MAIL + RCPT + "DATA\r\n").endswith("354 End data with <CR><LF>.<CR><LF>\r\n")
    assert d.send("Subject: x\r\n\r\nhi\r\n.\r\n").startswith("250 2.0.0 Ok: queued as")
    assert len(store.committed) == 1


# -- failures ---------------------------------------------------------------------------------------

def test_a_failed_handshake_is_logged_and_closes_without_a_queue_file(certs, store):
    factory = make(certs, store=store)
    d = dialog(factory, certs)
    d.send("EHLO c.test\r\n")
    d.send("STARTTLS\r\n")
    with MailLog() as log:
        d.transport.deliver(b"\x16\x03\x01\x00\x05garbage-not-a-client-hello")
        d.read()
    assert d.closed
    assert log.matching("SSL_accept error from unknown[127.0.0.1]")
    assert log.matching("lost connection after STARTTLS from unknown[127.0.0.1]")
    assert store.messages == [] and store.committed == []


def test_a_client_that_never_completes_the_handshake_meets_smtpd_starttls_timeout(certs):
    clock = Clock()
    d = dialog(make(certs, extra="smtpd_starttls_timeout = 20s\n", clock=clock), certs)
    d.send("EHLO c.test\r\n")
    d.send("STARTTLS\r\n")
    with MailLog() as log:
        clock.advance(19)
        assert not d.closed
        clock.advance(1)
    assert d.closed
    assert log.matching("SSL_accept error from unknown[127.0.0.1]: timed out")
    assert log.matching("timeout after STARTTLS from unknown[127.0.0.1]")


def test_mandatory_protocols_refuse_an_old_client_under_encrypt(certs):
    d = dialog(make(certs, "encrypt", "smtpd_tls_mandatory_protocols = >=TLSv1.3\n"), certs,
               context=clientContext(certs, maxVersion=SSL.TLS1_2_VERSION))
    d.send("EHLO c.test\r\n")
    assert d.send("STARTTLS\r\n").startswith("220")
    with pytest.raises(SSL.Error):
        d.handshake()
    assert not d.protocol.session.tlsActive


def test_opportunistic_protocols_let_tls12_in(certs):
    with MailLog() as log:
        d = dialog(make(certs, "may", "smtpd_tls_protocols = >=TLSv1.2\n"), certs,
                   context=clientContext(certs, maxVersion=SSL.TLS1_2_VERSION))
        d.send("EHLO c.test\r\n")
        d.starttls()
    assert d.protocol.session.tls.protocol == "TLSv1.2"
    line = log.matching("TLS connection established")[0]
    assert "TLSv1.2 with cipher ECDHE-RSA-" in line and "server-signature RSA (2048 bits)" in line


# -- logs and the Received: header -----------------------------------------------------------------

def test_the_handshake_is_logged_as_postfix(certs):
    with MailLog() as log:
        d = dialog(make(certs), certs)
        d.send("EHLO c.test\r\n")
        d.starttls()
    [line] = log.matching("TLS connection established")
    assert line.startswith("Anonymous TLS connection established from unknown[127.0.0.1]: TLSv1.3 with cipher "
                           "TLS_AES_256_GCM_SHA384 (256/256 bits) key-exchange X25519 server-signature RSA-PSS (2048 bits)")


def test_loglevel_0_logs_no_summary(certs):
    with MailLog() as log:
        d = dialog(make(certs, loglevel=0), certs)
        d.send("EHLO c.test\r\n")
        d.starttls()
    assert d.protocol.session.tlsActive and not log.matching("TLS connection established")


def _queue(d):
    d.send("EHLO c.test\r\n")
    d.send(MAIL + RCPT + "DATA\r\n")
    return d.send("Subject: x\r\n\r\nhi\r\n.\r\n")


def test_received_says_esmtps_and_without_the_header_option_nothing_more(certs, store):
    d = dialog(make(certs, store=store), certs)
    d.send("EHLO c.test\r\n")
    d.starttls()
    _queue(d)
    content = store.committed[0].content
    assert b"\tby mx.test (mta) with ESMTPS id " in content
    assert b"(using " not in content


def test_smtpd_tls_received_header_puts_the_tls_comment_into_received(certs, store):
    d = dialog(make(certs, extra="smtpd_tls_received_header = yes\n", store=store), certs)
    d.send("EHLO c.test\r\n")
    d.starttls()
    _queue(d)
    head = store.committed[0].content.split(b"\tby mx.test")[0]
    assert head == (b"Received: from c.test (unknown [127.0.0.1])\r\n"
                    b"\t(using TLSv1.3 with cipher TLS_AES_256_GCM_SHA384 (256/256 bits)\r\n"
                    b"\t key-exchange X25519 server-signature RSA-PSS (2048 bits))\r\n"
                    b"\t(No client certificate requested)\r\n")


def test_utf8smtps(certs, store):
    d = dialog(make(certs, store=store), certs)
    d.send("EHLO c.test\r\n")
    d.starttls()
    d.send("EHLO c.test\r\n")
    d.send("MAIL FROM:<alice@example.org> SMTPUTF8\r\n" + RCPT + "DATA\r\n")
    d.send("Subject: x\r\n\r\nhi\r\n.\r\n")
    assert b" with UTF8SMTPS id " in store.committed[0].content


# -- wrapper mode (465) ----------------------------------------------------------------------------

def test_wrapper_mode_speaks_tls_from_the_first_byte(certs, store):
    factory = make(certs, extra="smtpd_tls_wrappermode = yes\n", store=store)
    d = TLSDialog(factory, context=clientContext(certs), wrapper=True)
    assert d.banner == "220 mx.test ESMTP mta\r\n"  # read through TLS
    assert d.protocol.session.tlsActive
    ehlo = d.send("EHLO c.test\r\n")
    assert "STARTTLS" not in ehlo
    assert d.send("STARTTLS\r\n") == "554 5.5.1 Error: TLS already active\r\n"
    _queue(d)
    assert b" with ESMTPS id " in store.committed[0].content


def test_wrapper_mode_sends_no_plaintext_banner(certs):
    factory = make(certs, extra="smtpd_tls_wrappermode = yes\n")
    d = TLSDialog(factory, context=clientContext(certs))  # a plaintext client
    assert not d.banner.startswith("220")  # nothing readable: the banner waits inside TLS
    with MailLog() as log:
        d.transport.deliver(b"EHLO c.test\r\n")
        d.read()
    assert log.matching("SSL_accept error from unknown[127.0.0.1]")
    assert not d.protocol.session.extended


def test_encrypt_without_a_certificate_refuses_starttls_with_454(certs):
    with MailLog() as log:
        factory = make(certs, "encrypt", cert=False)
        assert log.matching("warning: ") and "no client can send mail" in log.lines[0]
    d = dialog(factory, certs)
    assert "STARTTLS" not in d.send("EHLO c.test\r\n")
    assert d.send("STARTTLS\r\n") == "454 4.7.0 TLS not available due to local problem\r\n"
    assert d.send(MAIL) == "530 5.7.0 Must issue a STARTTLS command first\r\n"


def test_a_transport_without_tls_never_offers_starttls(certs):
    """Standard I/O (mta-sendmail -bs) cannot start TLS: no STARTTLS, and wrapper mode is ignored."""
    from tests.dialogs.harness import Dialog

    d = Dialog(make(certs))  # a plain StringTransport: no ITLSTransport
    assert "STARTTLS" not in d.send("EHLO c.test\r\n")
    assert d.send("STARTTLS\r\n") == "502 5.5.1 Error: command not implemented\r\n"
    wrapped = Dialog(make(certs, extra="smtpd_tls_wrappermode = yes\n"))
    assert wrapped.banner == "220 mx.test ESMTP mta\r\n"


def test_the_tls_layer_buffering_during_the_handshake_does_not_stop_the_session(certs):
    """
    Before its handshake Twisted's TLS layer buffers what the session writes and pauses its
    producer (the session); on a TCP socket that pause would stop reading, so the handshake
    could never finish.  During a handshake the session ignores the pause.
    """
    factory = make(certs, extra="smtpd_tls_wrappermode = yes\n")
    d = TLSDialog(factory, context=clientContext(certs))
    assert d.protocol._handshaking
    d.protocol.pauseProducing()  # what TLSMemoryBIOProtocol._bufferedWrite does
    assert not d.protocol._writeBlocked and d.transport.producerState != "paused"
    d.handshake()
    assert d.read() == "220 mx.test ESMTP mta\r\n"
    d.protocol.pauseProducing()  # after the handshake a pause is a real one
    assert d.protocol._writeBlocked


# -- the encrypt level and AUTH ----------------------------------------------------------------


def test_encrypt_implies_tls_auth_only(certs, tmp_path):
    """Postfix: smtpd_tls_security_level = encrypt implies smtpd_tls_auth_only = yes."""
    from argon2 import PasswordHasher

    table = tmp_path / "sasl_passwd"
    table.write_text(f"alice@example.org  {PasswordHasher(time_cost=1, memory_cost=8, parallelism=1).hash('pw')}\n")
    factory = make(certs, "encrypt", f"smtpd_sasl_auth_enable = yes\nsmtpd_sasl_type = builtin\n"
                                     f"smtpd_sasl_path = texthash:{table}\n")
    assert not factory.saslSettings.tlsAuthOnly  # not set: implied
    d = dialog(factory, certs)
    assert "AUTH" not in d.send("EHLO c.test\r\n")
    assert d.send("AUTH PLAIN AGFsaWNlQGV4YW1wbGUub3JnAHB3\r\n").startswith("530 5.7.0 ")
    d.starttls()
    assert "250-AUTH PLAIN LOGIN" in d.send("EHLO c.test\r\n")
    assert d.send("AUTH PLAIN AGFsaWNlQGV4YW1wbGUub3JnAHB3\r\n") == "235 2.7.0 Authentication successful\r\n"
