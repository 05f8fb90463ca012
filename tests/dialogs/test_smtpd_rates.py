"""The anvil's client rate limits in smtpd (mta.smtpd.anvil): connections, MAIL, RCPT and new TLS sessions.

Postfix's replies and warnings (smtpd.c): the same clients, the same
windows (anvil_rate_time_unit), smtpd_client_event_limit_exceptions exempt.
"""

import pytest
from twisted.internet.task import Clock

from mta.testing import FakeQueueStore, serverFactory
from tests.dialogs.harness import Dialog, MailLog
from tests.tlssupport import Certificates, TLSDialog, clientContext

OUTSIDE = "192.0.2.10"
MAIL = "MAIL FROM:<alice@example.org>\r\n"


def factory(main, clock=None):
    return serverFactory(main, clock=clock or Clock(), store=FakeQueueStore())


# -- smtpd_client_connection_rate_limit --------------------------------------------------------------


def test_connection_rate_limit():
    clock = Clock()
    f = factory("smtpd_client_connection_count_limit = 0\nsmtpd_client_connection_rate_limit = 2\n", clock)
    first = Dialog(f, peer=OUTSIDE)
    first.protocol.connectionLost(None)  # the rate counts connections made, closed or not
    assert Dialog(f, peer=OUTSIDE).banner.startswith("220 ")
    with MailLog() as log:
        third = Dialog(f, peer=OUTSIDE)
    assert third.banner == f"421 4.7.0 mx.test Error: too many connections from {OUTSIDE}\r\n" and third.closed
    assert log.matching(f"warning: Connection rate limit exceeded: 3 from unknown[{OUTSIDE}] for service smtp")
    assert Dialog(f, peer="192.0.2.11").banner.startswith("220 ")  # another client
    for _ in range(4):  # $mynetworks: smtpd_client_event_limit_exceptions
        assert Dialog(f, peer="127.0.0.1").banner.startswith("220 ")
    clock.advance(61)  # a new window
    assert Dialog(f, peer=OUTSIDE).banner.startswith("220 ")


def test_the_concurrency_limit_is_checked_first():
    f = factory("smtpd_client_connection_count_limit = 1\nsmtpd_client_connection_rate_limit = 1\n")
    assert Dialog(f, peer=OUTSIDE).banner.startswith("220 ")
    with MailLog() as log:
        second = Dialog(f, peer=OUTSIDE)
    assert second.banner.startswith("421 4.7.0 ")
    assert log.matching(f"warning: Connection concurrency limit exceeded: 2 from unknown[{OUTSIDE}] for service smtp")
    assert not log.matching("Connection rate limit exceeded")


# -- smtpd_client_message_rate_limit -------------------------------------------------------------------


def test_message_rate_limit_counts_mail_commands_across_sessions():
    clock = Clock()
    f = factory("smtpd_client_message_rate_limit = 2\n", clock)
    d = Dialog(f, peer=OUTSIDE)
    d.send("EHLO c.test\r\n")
    assert d.send("MAIL TO:<x@example.org>\r\n").startswith("501 5.5.4 ")  # its own syntax first: not counted
    assert d.send(MAIL) == "250 2.1.0 Ok\r\n"
    assert d.send(MAIL).startswith("503 5.5.1 Error: nested MAIL command")  # not counted either
    d.send("RSET\r\n")
    other = Dialog(f, peer=OUTSIDE)
    other.send("EHLO c.test\r\n")
    assert other.send(MAIL) == "250 2.1.0 Ok\r\n"
    d.send("RSET\r\n")
    with MailLog() as log:
        assert d.send(MAIL) == f"450 4.7.1 Error: too much mail from {OUTSIDE}\r\n"
    assert log.matching(f"warning: Message delivery request rate limit exceeded: 3 from unknown[{OUTSIDE}] "
                        "for service smtp")
    assert d.protocol.session.errors == 3  # the 501, the 503 and the 450
    local = Dialog(f, peer="127.0.0.1")  # exempt
    local.send("EHLO c.test\r\n")
    for _ in range(4):
        assert local.send(MAIL) == "250 2.1.0 Ok\r\n"
        local.send("RSET\r\n")
    clock.advance(61)
    assert d.send(MAIL) == "250 2.1.0 Ok\r\n"


def test_pipelined_mail_past_the_limit_keeps_the_replies_in_order():
    f = factory("smtpd_client_message_rate_limit = 1\n")
    d = Dialog(f, peer=OUTSIDE)
    d.send("EHLO c.test\r\n")
    d.send(MAIL + "RSET\r\n")
    assert d.send(MAIL + "RCPT TO:<bob@mx.test>\r\nNOOP\r\n") == (
        f"450 4.7.1 Error: too much mail from {OUTSIDE}\r\n"
        "503 5.5.1 Error: need MAIL command\r\n"
        "250 2.0.0 Ok\r\n")


# -- smtpd_client_recipient_rate_limit -----------------------------------------------------------------


def test_recipient_rate_limit():
    f = factory("smtpd_client_recipient_rate_limit = 2\n")
    d = Dialog(f, peer=OUTSIDE)
    d.send("EHLO c.test\r\n")
    d.send(MAIL)
    assert d.send("RCPT TO:<a@mx.test>\r\n") == "250 2.1.5 Ok\r\n"
    assert d.send("RCPT TO:<a@mx.test> BOGUS=1\r\n").startswith("555 ")  # counted: after the "TO:" check
    with MailLog() as log:
        assert d.send("RCPT TO:<b@mx.test>\r\n") == f"450 4.7.1 Error: too many recipients from {OUTSIDE}\r\n"
    assert log.matching(f"warning: Recipient address rate limit exceeded: 3 from unknown[{OUTSIDE}] for service smtp")
    assert len(d.protocol.transaction.recipients) == 1
    assert d.send("DATA\r\n").startswith("354 ")  # the recipient that was accepted still gets its mail


# -- smtpd_client_new_tls_session_rate_limit ----------------------------------------------------------------


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    return Certificates(tmp_path_factory.mktemp("certs"))


def tlsFactory(certs, extra, clock=None):
    return serverFactory(certs.serverMain("may", extra), clock=clock or Clock(), store=FakeQueueStore())


def test_new_tls_sessions_past_the_limit_are_refused_before_the_handshake(certs):
    clock = Clock()
    f = tlsFactory(certs, "smtpd_client_new_tls_session_rate_limit = 1\n", clock)
    first = TLSDialog(f, peer=OUTSIDE, context=clientContext(certs))
    first.send("EHLO c.test\r\n")
    assert first.starttls() == "220 2.0.0 Ready to start TLS\r\n"
    assert first.send("NOOP\r\n") == "250 2.0.0 Ok\r\n"  # the first new session is within the limit
    second = TLSDialog(f, peer=OUTSIDE, context=clientContext(certs))
    second.send("EHLO c.test\r\n")
    assert second.starttls() == "220 2.0.0 Ready to start TLS\r\n"  # its status is 1: not past the limit yet
    assert second.read() == f"421 4.7.0 mx.test Error: too many new TLS sessions from unknown[{OUTSIDE}]\r\n"
    assert second.send("NOOP\r\n") == ""  # the session is over: nothing more is read
    second.client.shutdown()  # the client answers the server's close_notify: the TLS layer closes the wire
    second.read()
    assert second.closed
    third = TLSDialog(f, peer=OUTSIDE, context=clientContext(certs))
    third.send("EHLO c.test\r\n")
    with MailLog() as log:
        assert third.send("STARTTLS\r\n") == f"454 4.7.0 Error: too many new TLS sessions from unknown[{OUTSIDE}]\r\n"
    assert log.matching(f"warning: Refusing STARTTLS request from unknown[{OUTSIDE}] for service smtp")
    assert third.client is None and not third.closed  # still in plaintext, the session goes on
    assert third.send("NOOP\r\n") == "250 2.0.0 Ok\r\n"
    local = TLSDialog(f, peer="127.0.0.1", context=clientContext(certs))  # exempt
    local.send("EHLO c.test\r\n")
    assert local.starttls() == "220 2.0.0 Ready to start TLS\r\n"
    clock.advance(61)
    again = TLSDialog(f, peer=OUTSIDE, context=clientContext(certs))
    again.send("EHLO c.test\r\n")
    assert again.starttls() == "220 2.0.0 Ready to start TLS\r\n"
    assert again.send("NOOP\r\n") == "250 2.0.0 Ok\r\n"


def test_a_resumed_session_is_not_a_new_one(certs):
    f = tlsFactory(certs, "smtpd_client_new_tls_session_rate_limit = 1\n")
    context = clientContext(certs)
    first = TLSDialog(f, peer=OUTSIDE, context=context)
    first.send("EHLO c.test\r\n")
    first.starttls()
    first.send("NOOP\r\n")
    for _ in range(3):
        again = TLSDialog(f, peer=OUTSIDE, context=context, session=first.client.get_session())
        again.send("EHLO c.test\r\n")
        assert again.starttls() == "220 2.0.0 Ready to start TLS\r\n"
        assert again.protocol.session.tls.reused
        assert again.send("NOOP\r\n") == "250 2.0.0 Ok\r\n"
    assert f.anvil.status(OUTSIDE, "newtls") == 1
