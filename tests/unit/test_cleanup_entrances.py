"""The four entrances into the one cleanup (mta.cleanup): the SMTP server, pickup, the DSN notices, the transcripts.

Where Postfix's cleanup(8) treats them alike (the header cleanup, the
message-id= log line, the hop count), mta does too, because every one goes
through mta.cleanup; where they differ (the Received: header, the
envelope's client fields), each gets what Postfix's smtpd, pickup and
bounce give.
"""

import email
import email.policy
import os
import re
import time

from twisted.internet.task import Clock
from twisted.logger import capturedLogs

from mta.cleanup import Cleanup, Origin
from mta.cli.sendmail import maildrop as M
from mta.config import load
from mta.maillog import MailLogger
from mta.model import Envelope, Recipient
from mta.queue.fileformat import readContent, readQueueFile
from mta.queue.pickup import Pickup
from mta.queue.store import QueueStore
from mta.testing import FakeQueueStore, SyncReactor, resultOf, serverFactory
from mta.transcript import Transcript, TranscriptNotices
from tests.dialogs.harness import Dialog
from tests.unit.test_queue_manager import FakeTransport, Harness

MAIN = "myorigin = origin.test\nmessage_drop_headers = bcc, x-drop-me\n"
CONTENT = (b"To: root, Charlie <charlie>\r\nBcc: secret@example.org\r\nX-Drop-Me: yes\r\nSubject: same\r\n"
           b"\r\nbody\r\n")
SENDER = "alice@origin.test"


class Lines:
    """A maillogs callable that records 'program: QUEUEID: text' lines."""

    def __init__(self):
        self.lines = []

    def __call__(self, program):
        lines = self.lines

        class Recorder(MailLogger):
            def emit(self, text, queue_id=None, level=None, prefix=True, **fields):
                lines.append(f"{program}: {queue_id + ': ' if queue_id and prefix else ''}{text}")

        return Recorder("mta", program)


def split(content):
    """(the Received: header, the other header lines with queue ids and dates made neutral, body)."""
    head, body = content.split(b"\r\n\r\n", 1)
    lines = head.split(b"\r\n")
    received = []
    while lines and (lines[0].startswith(b"Received:") or (received and lines[0][:1] in (b" ", b"\t"))):
        received.append(lines.pop(0))
    neutral = [re.sub(rb"<[0-9A-Za-z]+@mx\.test>", b"<QID@mx.test>", line) for line in lines if not line.startswith(b"Date:")]
    return b"\r\n".join(received), neutral, body


def smtpEntrance():
    """CONTENT from a client on this host (local_header_rewrite_clients' default): (id, content, envelope, log)."""
    factory = serverFactory(MAIN)
    d = Dialog(factory, peer="127.0.0.1")
    with capturedLogs() as events:
        for line in ("EHLO client.test\r\n", f"MAIL FROM:<{SENDER}>\r\n", "RCPT TO:<bob@example.org>\r\n", "DATA\r\n"):
            d.send(line)
        assert d.send(CONTENT.decode() + ".\r\n").startswith("250 2.0.0 Ok: queued as ")
    [message] = factory.store.committed
    log = [f"{e['mail_program']}: {e['mail_line']}" for e in events if "mail_line" in e]
    return message.queueId, message.content, message.envelope, log


def pickupEntrance(tmp_path):
    """CONTENT as a maildrop file, picked up: (id, content, envelope, log)."""
    clock = SyncReactor()
    clock.advance(time.time())  # maildrop files carry real mtimes
    config = load("<t>", "[main]\nmyhostname = mx.test\n" + MAIN)
    store = QueueStore(str(tmp_path / "queue"), clock)
    store.prepare()
    lines = Lines()
    drop = M.MaildropFile(store.queuePath("maildrop"))
    drop.write(CONTENT)
    drop.commit(Envelope(sender=SENDER, recipients=(Recipient("bob@example.org"),), arrival_time=clock.seconds(),
                         client_name="localhost", protocol="local"))
    pickup = Pickup(store, Cleanup(config.settings.cleanup, store, clock, lines), clock, lines)
    pickup.start()
    clock.advance(0)
    [queueId] = store.listQueue("incoming")
    path = store.queuePath("incoming", queueId)
    queueFile = readQueueFile(path, verifyContent=True)
    content = b"".join(readContent(path, queueFile.contentOffset, queueFile.contentLength))
    return queueId, content, queueFile.envelope, lines.lines


def test_smtp_and_pickup_get_the_same_header_cleanup(tmp_path):
    smtpId, smtp, smtpEnvelope, smtpLog = smtpEntrance()
    localId, local, localEnvelope, localLog = pickupEntrance(tmp_path)
    smtpReceived, smtpHeaders, smtpBody = split(smtp)
    localReceived, localHeaders, localBody = split(local)
    # message_drop_headers, the local rewriting context, the missing headers: the same
    assert smtpHeaders == localHeaders == [
        b"To: root@origin.test, Charlie <charlie@origin.test>",
        b"Subject: same",
        b"Message-Id: <QID@mx.test>",
        b"From: alice@origin.test",
    ]
    assert smtpBody == localBody == b"body\r\n"
    # the Received: header is each entrance's own, as Postfix's smtpd and pickup write them
    assert smtpReceived.startswith(b"Received: from client.test (unknown [127.0.0.1])\r\n\tby mx.test (mta) with ESMTP id "
                                + smtpId.encode() + b"\r\n\tfor <bob@example.org>;")
    assert re.match(rb"Received: by mx.test \(mta, from userid %d\)\r\n\tid [0-9A-Za-z]{14}; " % os.getuid(),
                    localReceived)
    assert (smtpEnvelope.protocol, smtpEnvelope.client_address, localEnvelope.protocol, localEnvelope.client_address) == (
        "ESMTP", "127.0.0.1", "local", "")
    # cleanup's message-id= line, after the entrance's own first line
    assert [line for line in smtpLog if smtpId in line] == [
        f"smtpd: {smtpId}: client=unknown[127.0.0.1]",
        f"cleanup: {smtpId}: message-id=<{smtpId}@mx.test>",
        f"smtpd: {smtpId}: from=<{SENDER}>, size={len(smtp)}, nrcpt=1 (queued)",
    ]
    assert localLog == [
        f"pickup: {localId}: uid={os.getuid()} from=<{SENDER}>",
        f"cleanup: {localId}: message-id=<{localId}@mx.test>",
    ]


def test_every_entrance_goes_through_the_header_cleanup(tmp_path):
    """A header listed in message_drop_headers is removed whichever way a message comes in (notices too)."""
    drop = "message_drop_headers = bcc, auto-submitted\n"
    # a postmaster transcript
    config = load("<t>", "[main]\nmyhostname = mx.test\n" + drop)
    store = FakeQueueStore()
    lines = Lines()
    notices = TranscriptNotices(config.settings.notices, Cleanup(config.settings.cleanup, store, Clock(), lines),
                                Clock(), lines("smtpd"))
    transcript = Transcript()
    transcript.received(b"XYZZY")
    transcript.error("protocol")
    newId = resultOf(notices.send("SMTP server", "unknown[192.0.2.7]", transcript))
    [message] = store.committed
    parsed = email.message_from_bytes(message.content, policy=email.policy.default)
    assert parsed["Auto-Submitted"] is None and parsed["Subject"] == "mta SMTP server: errors from unknown[192.0.2.7]"
    assert lines.lines == [f"cleanup: {newId}: message-id={parsed['Message-Id']}"]
    # a delivery status notice (a bounce)
    h = Harness(tmp_path, drop, {"smtp": FakeTransport(lambda r: ("bounced", "5.1.1", "550 5.1.1 no such user")),
                                 "virtual": FakeTransport()})
    h.manager.start()
    queueId = h.submit(["bad@far.example"])
    [(request, bounce)] = [(r, c) for r, c in zip(h.transports["smtp"].requests, h.transports["smtp"].contents)
                           if r.envelope.sender == ""]
    parsed = email.message_from_bytes(bounce, policy=email.policy.default)
    assert parsed["Auto-Submitted"] is None and parsed.get_content_type() == "multipart/report"
    assert not bounce.startswith(b"Received:")  # mta's notices carry none (mta.cleanup, DEVIATIONS)
    assert (request.envelope.protocol, request.envelope.client_address) == ("local", "127.0.0.1")
    # Postfix's cleanup logs the notice's message-id too (mta did not, before the one cleanup)
    newId = request.queue_id
    assert f"cleanup: {newId}: message-id={parsed['Message-Id']}" in h.lines
    assert h.lines.index(f"cleanup: {newId}: message-id={parsed['Message-Id']}") < h.lines.index(
        f"bounce: {queueId}: sender non-delivery notification: {newId}")


def test_the_hop_count_counts_our_own_received_header_only_where_there_is_one():
    config = load("<t>", "[main]\nmyhostname = mx.test\nhopcount_limit = 3\n")
    store = FakeQueueStore()
    cleanup = Cleanup(config.settings.cleanup, store, Clock(), Lines())
    hops = b"Received: a\r\nReceived: b\r\n\r\nbody\r\n"
    origins = {
        "smtp": Origin.smtp(clientName="c", clientAddress="192.0.2.1", clientPort=25, helo="c", protocol="SMTP"),
        "local": Origin.localSubmission(1000, 0.0),
        "internal": Origin.internal(),
    }
    refused = {}
    for name, origin in origins.items():
        message = cleanup.open(origin, SENDER, (Recipient("bob@example.org"),))
        message.write(hops)
        refused[name] = message.finish()
        message.abort()
    # two Received: headers and ours make three: a loop; a notice has no header of ours
    assert str(refused["smtp"]) == str(refused["local"]) == "554 5.4.0 Error: too many hops"
    assert refused["internal"] is None


def test_the_received_header_cannot_be_broken_by_the_origin():
    """Whatever an entrance passes, the names in our Received: header have no line ends."""
    config = load("<t>", "[main]\nmyhostname = mx.test\n")
    store = FakeQueueStore()
    cleanup = Cleanup(config.settings.cleanup, store, Clock(), Lines())
    origin = Origin.smtp(clientName="evil\r\nX-Injected: 1", clientAddress="192.0.2.1", clientPort=25,
                         helo="h\nBcc: all@example.org", protocol="ESMTP")
    message = cleanup.open(origin, SENDER, (Recipient("bob@example.org"),))
    message.write(b"Subject: s\r\n\r\n")
    assert message.finish() is None
    resultOf(message.commit())
    content = store.committed[0].content
    received = content.split(b"Subject:")[0]
    assert b"\nX-Injected" not in received and b"\nBcc" not in received
    assert received.startswith(b"Received: from h\\x0aBcc: all@example.org (evil\\x0d\\x0aX-Injected: 1 [192.0.2.1])")


def test_a_message_id_with_control_characters_is_escaped_in_the_log():
    """The server's message-id= line was written as the client sent it; now escaped, as pickup's always was."""
    factory = serverFactory()
    d = Dialog(factory, peer="192.0.2.9")
    with capturedLogs() as events:
        for line in ("EHLO c\r\n", "MAIL FROM:<a@example.org>\r\n", "RCPT TO:<b@mx.test>\r\n", "DATA\r\n"):
            d.send(line)
        d.send("Message-Id: <a\x1b[2Jb@example.org>\r\n\r\nhi\r\n.\r\n")
    [line] = [e["mail_line"] for e in events if "message-id=" in e.get("mail_line", "")]
    assert line.endswith(": message-id=<a\\x1b[2Jb@example.org>")
