"""Postmaster notices of SMTP/LMTP client sessions (Postfix's smtp_chat_notify), against scripted servers."""

import email
import email.policy

import pytest
from twisted.internet.defer import maybeDeferred
from twisted.internet.testing import MemoryReactorClock, StringTransport

from mta.cleanup import Cleanup
from mta.config import load
from mta.delivery.smtp import SMTPTransport
from mta.model import DeliveryRecipient, DeliveryRequest, Envelope, Recipient
from mta.testing import FakeQueueStore
from mta.transcript import Transcript
from tests.dialogs.harness import MailLog
from tests.unit.test_smtpclient import BODY as SESSION_BODY
from tests.unit.test_smtpclient import EHLO_ALL, Session, handshake, makeRequest

BODY = b"Subject: out\r\n\r\nhello\r\n"
DOUBLE_BOUNCE = "double-bounce@mx.test"


# -- the session: its transcript and error classes -------------------------------------------------


def session(maxLines=None):
    s = Session()
    s.protocol.transcript = Transcript(maxLines=maxLines)
    return s


def test_theTranscriptHasCommandsAndRepliesButNoContent():
    s = session()
    handshake(s)
    s.reply("250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n354 go\r\n")
    s.reply("250 2.0.0 Ok: queued\r\n221 2.0.0 Bye\r\n")
    lines = s.protocol.transcript.lines()
    assert lines[:3] == ["In:  220 mx.example.net ESMTP", "Out: EHLO client.example.org", "In:  250-mx.example.net"]
    assert lines[10:] == [
        f"Out: MAIL FROM:<alice@example.org> SIZE={len(SESSION_BODY)}",
        "Out: RCPT TO:<bob@example.net> ORCPT=rfc822;bob@example.net", "Out: DATA",
        "In:  250 2.1.0 Ok", "In:  250 2.1.5 Ok", "In:  354 go",
        "Out: .", "Out: QUIT",
        "In:  250 2.0.0 Ok: queued", "In:  221 2.0.0 Bye",
    ]
    assert not any("Hello" in line or "Subject" in line for line in lines)
    assert s.protocol.transcript.errors == set()


@pytest.mark.parametrize("replies, errors", [
    ("250 2.1.0 Ok\r\n550 5.1.1 unknown\r\n554 no valid recipients\r\n", set()),  # ordinary refusals
    ("421 4.3.2 going down\r\n", set()),
    ("250 2.1.0 Ok\r\n501 5.1.3 bad address syntax\r\n554 no\r\n", {"protocol"}),  # 500-509: a syntax error
    ("555 5.5.4 unsupported option\r\n", {"protocol"}),  # RFC 1869 6.1
    ("250 2.1.0 Ok\r\n354 what\r\n", {"protocol"}),  # a reply of the wrong class: "Protocol error"
    ("250 2.1.0 Ok\r\nno reply at all\r\n", {"protocol"}),  # non-SMTP response
    ("250-2.1.0 Ok\r\n550 5.1.1 mixed\r\n", {"protocol"}),  # malformed multi-line response
])
def test_theErrorsPostfixCountsAsProtocol(replies, errors):
    s = session()
    handshake(s)
    s.reply(replies)
    s.lose()
    assert s.protocol.transcript.errors == errors


def test_theOffendingLineIsInTheTranscript():
    s = session()
    handshake(s)
    s.reply("250 2.1.0 Ok\r\nHTTP/1.0 400 \x00\xff\r\n")
    assert s.outcome.results[0].dsn == "4.5.0"
    assert s.protocol.transcript.lines()[-1].startswith("In:  HTTP/1.0 400 ?")


def test_aReplyNobodyAskedForIsInTheTranscriptOnce():
    s = session()
    s.deliver()
    s.reply("220 mx.example.net ESMTP\r\n250 unasked\r\n")
    lines = s.protocol.transcript.lines()
    assert lines.count("In:  250 unasked") == 1
    assert s.protocol.transcript.errors == {"protocol"}


def test_theClientTranscriptIsBounded():
    s = session(maxLines=10)
    recipients = [f"r{i}@example.net" for i in range(100)]
    handshake(s, request=makeRequest(recipients))
    s.reply("250 2.1.0 Ok\r\n" + "250 2.1.5 Ok\r\n" * 100 + "354 go\r\n")
    s.reply("250 2.0.0 Ok\r\n")
    lines = s.protocol.transcript.lines()
    assert len(lines) == 11
    assert lines[:5] == ["In:  220 mx.example.net ESMTP", "Out: EHLO client.example.org", "In:  250-mx.example.net",
                         "In:  250-PIPELINING", "In:  250-SIZE 10240000"]
    assert lines[5].startswith("(... ") and lines[5].endswith(" more lines not shown ...)")
    assert lines[-3:] == ["Out: .", "Out: QUIT", "In:  250 2.0.0 Ok"]


# -- the transport: the notice --------------------------------------------------------------------


class ContentStore(FakeQueueStore):
    """A FakeQueueStore that also runs the transport's content reads (inPool) at once."""

    def inPool(self, f, *args):
        return maybeDeferred(f, *args)


class Context:
    def __init__(self, clock, store):
        self.clock = clock
        self.store = store
        self.resolver = None
        self.transports = None
        self.lines = []

    def listenerDescriptions(self):
        return [("smtp", "tcp:port=25:interface=127.0.0.1")]

    def maillogFor(self, program):
        from mta.maillog import MailLogger

        return MailLogger("mta", program)


class Client:
    """An smtp (or lmtp) transport whose connections go to scripted servers."""

    def __init__(self, tmp_path, main="", lmtp=False):
        self.reactor = MemoryReactorClock()
        self.store = ContentStore()
        config = load(text="[main]\nmyhostname = mx.test\n" + main, checkEndpoints=False)
        settings = config.settings.lmtpClient if lmtp else config.settings.smtpClient
        context = Context(self.reactor, self.store)
        context.cleanup = Cleanup(config.settings.cleanup, self.store, self.reactor, context.maillogFor)
        self.transport = SMTPTransport("lmtp" if lmtp else "smtp", settings, context, config.settings.notices)
        self.path = tmp_path / "content"
        self.path.write_bytes(BODY)
        self.servers = []
        self.results = []

    def deliver(self, recipients=("bob@example.net",), sender="alice@example.org", nexthop="[192.0.2.1]:25"):
        env = Envelope(sender=sender, recipients=tuple(Recipient(r) for r in recipients), arrival_time=0.0)
        rcpts = tuple(DeliveryRecipient(index=i, address=a, original=a) for i, a in enumerate(recipients))
        request = DeliveryRequest("4TbC0hR2x8Zq", "smtp", nexthop, env, rcpts, str(self.path), 0, len(BODY))
        self.transport.deliver(request).addBoth(self.results.append)

    def accept(self):
        """The connection the transport asked for last: its server side (a StringTransport)."""
        host, port, factory, _, _ = self.reactor.tcpClients[len(self.servers)]
        protocol = factory.buildProtocol(None)
        server = StringTransport()
        protocol.makeConnection(server)
        self.servers.append((protocol, server))
        return protocol, server

    def notices(self):
        return [(m.envelope, email.message_from_bytes(m.content, policy=email.policy.default))
                for m in self.store.committed if m.envelope.sender == DOUBLE_BOUNCE]


def converse(protocol, server, replies):
    """Answer each expected command with its reply; the commands sent."""
    sent = []
    for reply in replies:
        protocol.dataReceived(reply.encode())
        sent.append(server.value().decode())
        server.clear()
    return sent


GARBAGE_AT_MAIL = ["220 mx ESMTP\r\n", EHLO_ALL, "250 2.1.0 Ok\r\n250 2.1.5 Ok\r\nthis is not SMTP\r\n"]


def body(message):
    return message.get_content().replace("\r\n", "\n")


def test_aProtocolErrorSendsTheTranscript(tmp_path):
    c = Client(tmp_path, "notify_classes = protocol\nerror_notice_recipient = errors\n")
    c.deliver()
    protocol, server = c.accept()
    with MailLog() as log:
        converse(protocol, server, GARBAGE_AT_MAIL)
    [result] = c.results[0]
    assert result.status == "deferred" and result.dsn == "4.5.0"
    [(envelope, message)] = c.notices()
    assert envelope.sender == DOUBLE_BOUNCE and [r.address for r in envelope.recipients] == ["errors@mx.test"]
    assert message["From"] == "Mail Delivery System <MAILER-DAEMON@mx.test>"
    assert message["To"] == "Postmaster <errors@mx.test>"
    assert message["Subject"] == "mta SMTP client: errors from 192.0.2.1[192.0.2.1]:25"
    text = body(message)
    assert text.startswith("Unexpected response from 192.0.2.1[192.0.2.1]:25.\n\nTranscript of session follows.\n\n")
    assert (f" Out: MAIL FROM:<alice@example.org> SIZE={len(BODY)}\n"
            " Out: RCPT TO:<bob@example.net> ORCPT=rfc822;bob@example.net\n Out: DATA\n") in text
    assert " In:  250 2.1.5 Ok\n In:  this is not SMTP\n" in text
    assert text.endswith("\nFor other details, see the local mail logfile\n")
    newId = c.store.committed[-1].queueId
    assert any(line.startswith(f"{newId}: message-id=<") for line in log.lines)


def test_theLmtpClientSaysSo(tmp_path):
    c = Client(tmp_path, "notify_classes = protocol\n", lmtp=True)
    c.deliver(nexthop="inet:[192.0.2.1]:24")
    protocol, server = c.accept()
    converse(protocol, server, ["220 mx LMTP\r\n", EHLO_ALL, "250 2.1.0 Ok\r\n250 2.1.5 Ok\r\nthis is not LMTP\r\n"])
    [(_, message)] = c.notices()
    assert message["Subject"] == "mta LMTP client: errors from 192.0.2.1[192.0.2.1]:24"
    assert " Out: LHLO mx.test" in body(message)


@pytest.mark.parametrize("main", ["", "notify_classes = bounce, 2bounce, delay, policy, resource, software, data\n"])
def test_nothingWithoutTheProtocolClass(tmp_path, main):
    c = Client(tmp_path, main)
    c.deliver()
    converse(*c.accept(), GARBAGE_AT_MAIL)
    assert c.results[0][0].dsn == "4.5.0"
    assert c.notices() == []
    # nothing kept either, but for the data class (the EHLO keyword maps: mta.delivery.smtpquirks)
    assert (c.servers[0][0]._wrappedProtocol.transcript is None) == ("data" not in main)


@pytest.mark.parametrize("sender", ["", DOUBLE_BOUNCE, "Double-Bounce@MX.test"])
def test_noNoticeAboutBouncesOrNotices(tmp_path, sender):
    """Postfix: "Don't send notifications about errors while sending notifications"."""
    c = Client(tmp_path, "notify_classes = protocol\n")
    c.deliver(sender=sender)
    converse(*c.accept(), GARBAGE_AT_MAIL)
    assert c.results[0][0].dsn == "4.5.0"
    assert c.notices() == []


def test_aCleanSessionSendsNothing(tmp_path):
    c = Client(tmp_path, "notify_classes = protocol\n")
    c.deliver(["bob@example.net", "nobody@example.net"])
    converse(*c.accept(), ["220 mx ESMTP\r\n", EHLO_ALL,
                           "250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n550 5.1.1 unknown\r\n354 go\r\n",
                           "250 2.0.0 Ok: queued\r\n"])
    assert [r.status for r in c.results[0]] == ["sent", "bounced"]
    assert c.notices() == []


def test_eachDeliveryOnACachedConnectionHasItsOwnTranscript(tmp_path):
    c = Client(tmp_path, "notify_classes = protocol\n")
    c.deliver(["bob@example.net", "bad@example.net"])
    protocol, server = c.accept()
    converse(protocol, server, ["220 mx ESMTP\r\n", EHLO_ALL,
                                "250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n501 5.1.3 bad address syntax\r\n354 go\r\n",
                                "250 2.0.0 Ok: queued\r\n"])
    assert [r.status for r in c.results[0]] == ["sent", "bounced"]
    [(_, first)] = c.notices()
    assert " In:  501 5.1.3 bad address syntax" in body(first)
    # the connection was cached: the next delivery reuses it, without errors, and sends nothing
    c.deliver(["carol@example.net"])
    assert len(c.reactor.tcpClients) == 1
    converse(protocol, server, ["250 2.0.0 Ok\r\n", "250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n354 go\r\n",
                                "250 2.0.0 Ok: queued\r\n"])
    assert [r.status for r in c.results[1]] == ["sent"]
    assert len(c.notices()) == 1
    assert protocol._wrappedProtocol.transcript.lines() == []  # cleared after each delivery


def test_aNoticeThatCannotBeQueuedIsOnlyLogged(tmp_path):
    c = Client(tmp_path, "notify_classes = protocol\n")
    c.store.failCommits = True
    c.deliver()
    with MailLog() as log:
        converse(*c.accept(), GARBAGE_AT_MAIL)
    assert c.results[0][0].dsn == "4.5.0"  # the delivery's result is untouched
    assert "warning: postmaster notify: fake: disk full" in log.lines
