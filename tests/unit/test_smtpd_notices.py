"""Postmaster notices of SMTP sessions (Postfix's smtpd_chat_notify): notify_classes and the transcript."""

import email
import email.policy

import pytest
from twisted.internet.defer import fail
from twisted.internet.task import Clock

from mta.config import load, openTables
from mta.smtpd.factory import SMTPServerFactory
from mta.smtpd.chat import HISTORY_FLUSH_THRESHOLD
from mta.tables import Tables, TableTemporaryError
from mta.testing import FakeQueueStore
from tests.dialogs.harness import Dialog, MailLog

OUTSIDE = "192.0.2.7"
DOUBLE_BOUNCE = "double-bounce@mx.test"


class FlakyTable:
    """A table that cannot answer now (TableTemporaryError)."""

    def lookup(self, key):
        return fail(TableTemporaryError("down"))


def factory(main="", store=None, notices=True, tables=None):
    clock = Clock()
    config = load("<test>", "[main]\nmyhostname = mx.test\n" + main)
    t = Tables(clock)
    t._open.update(tables or {})  # tables the test made itself, by spec
    openTables(config, t)
    return SMTPServerFactory.fromScope(config.main, clock, store if store is not None else FakeQueueStore(), t,
                                       postmasterNotices=notices)


def session(f, script, peer=OUTSIDE, end=True):
    """Run C{script} (each item one write) and end the connection; the Dialog."""
    d = Dialog(f, peer=peer)
    for data in script:
        d.send(data)
    if end:
        d.protocol.connectionLost(None)
    return d


def notices(f):
    """The postmaster notices queued: (envelope, parsed message, raw bytes)."""
    return [(m.envelope, email.message_from_bytes(m.content, policy=email.policy.default), m.content)
            for m in f.store.committed if m.envelope.sender == DOUBLE_BOUNCE]


def text(message):
    return message.get_content().replace("\r\n", "\n")


def transcript(message):
    lines = text(message).split("\n")
    start = lines.index("Transcript of session follows.") + 2
    return [line for line in lines[start:] if line.startswith(" ")]


# -- one notice per class ----------------------------------------------------------------------

MAILBOXES = "virtual_mailbox_domains = box.example\nvirtual_mailbox_maps = inline:{ {a@box.example = a/} }\n"

CLASSES = {
    # class: (extra [main], script, the reply that shows the error, extra tables)
    "protocol": ("", ["EHLO c\r\n", "XYZZY\r\n", "QUIT\r\n"], "Out: 502 5.5.2 Error: command not recognized", None),
    "policy": ("", ["EHLO c\r\n", "MAIL FROM:<a@example.org>\r\n", "RCPT TO:<x@example.net>\r\n", "QUIT\r\n"],
               "Out: 454 4.7.1 <x@example.net>: Relay access denied", None),
    "bounce": (MAILBOXES, ["EHLO c\r\n", "MAIL FROM:<a@example.org>\r\n", "RCPT TO:<nobody@box.example>\r\n",
                           "QUIT\r\n"],
               "Out: 550 5.1.1 <nobody@box.example>: Recipient address rejected:", None),
    "data": ("smtpd_recipient_restrictions = check_recipient_access texthash:/flaky, permit\nsmtpd_relay_restrictions =\n",
             ["EHLO c\r\n", "MAIL FROM:<a@example.org>\r\n", "RCPT TO:<x@example.net>\r\n", "QUIT\r\n"],
             "Out: 451 4.3.0 <x@example.net>: Temporary lookup failure", {"texthash:/flaky": FlakyTable()}),
    "resource": ("queue_minfree = 1g\n", ["EHLO c\r\n", "MAIL FROM:<a@example.org>\r\n", "QUIT\r\n"],
                 "Out: 452 4.3.1 Insufficient system storage", None),
}


@pytest.mark.parametrize("errorClass", sorted(CLASSES))
def test_eachClassSendsTheTranscriptWhenListed(errorClass):
    main, script, shown, tables = CLASSES[errorClass]
    store = FakeQueueStore(freeSpace=10**6 if errorClass == "resource" else 10**12)
    f = factory(f"notify_classes = {errorClass}\nbounce_notice_recipient = bounces\n" + main, store, tables=tables)
    with MailLog() as log:
        session(f, script)
    [(envelope, message, raw)] = notices(f)
    to = "bounces@mx.test" if errorClass == "bounce" else "postmaster@mx.test"
    assert envelope.sender == DOUBLE_BOUNCE and [r.address for r in envelope.recipients] == [to]
    assert envelope.protocol == "local"
    assert message["From"] == "Mail Delivery System <MAILER-DAEMON@mx.test>"
    assert message["To"] == f"Postmaster <{to}>"
    assert message["Subject"] == f"mta SMTP server: errors from unknown[{OUTSIDE}]"
    assert message["Auto-Submitted"] == "auto-generated"
    lines = transcript(message)
    assert lines[0] == " Out: 220 mx.test ESMTP mta"
    assert " In:  EHLO c" in lines and " Out: 250-mx.test" in lines
    assert any(line.startswith(" " + shown) for line in lines), lines
    assert lines[-2:] == [" In:  QUIT", " Out: 221 2.0.0 Bye"]
    body = text(message)
    assert "Session aborted" not in body  # it ended with QUIT
    assert body.endswith("\nFor other details, see the local mail logfile\n")
    newId = store.committed[-1].queueId
    assert [line for line in log.lines if line.startswith(newId)] == [f"{newId}: message-id={message['Message-Id']}"]


def test_softwareErrorSendsTheTranscriptByDefault():
    """An internal error is the software class, which the default notify_classes lists."""
    f = factory()

    async def broken(*args):
        raise RuntimeError("bug")

    f.policy.checkRecipient = broken
    d = session(f, ["EHLO c\r\n", "MAIL FROM:<a@example.org>\r\n", "RCPT TO:<x@mx.test>\r\n"], end=False)
    assert d.send("QUIT\r\n") == "221 2.0.0 Bye\r\n"  # the session goes on
    d.protocol.connectionLost(None)
    [(envelope, message, _)] = notices(f)
    assert [r.address for r in envelope.recipients] == ["postmaster@mx.test"]
    assert " Out: 451 4.3.0 Error: internal error, try again later" in transcript(message)


def test_queueFileWriteErrorIsTheResourceClass():
    store = FakeQueueStore()
    f = factory("notify_classes = resource\n", store)
    d = session(f, ["EHLO c\r\n", "MAIL FROM:<a@example.org>\r\n", "RCPT TO:<x@mx.test>\r\n", "DATA\r\n"], end=False)
    store.failCommits = True
    assert d.send("Subject: x\r\n\r\nhi\r\n.\r\n") == "451 4.3.0 Error: queue file write error\r\n"
    store.failCommits = False
    d.send("QUIT\r\n")
    d.protocol.connectionLost(None)
    [(_, message, _)] = notices(f)
    lines = transcript(message)
    assert lines[lines.index(" In:  DATA") + 1:][:2] == [" Out: 354 End data with <CR><LF>.<CR><LF>",
                                                        " Out: 451 4.3.0 Error: queue file write error"]
    assert not any("Subject: x" in line for line in lines)  # message content is never in the transcript


# -- what sends nothing ---------------------------------------------------------------------------

BAD_SESSION = ["EHLO c\r\n", "XYZZY\r\n", "MAIL FROM:<a@example.org>\r\n", "RCPT TO:<x@example.net>\r\n",
               "RCPT TO:<broken\r\n", "MAIL FROM:<b@example.org>\r\n", "QUIT\r\n"]


def test_theDefaultClassesSendNothingForOrdinaryRejects():
    f = factory()  # notify_classes = resource, software
    d = session(f, BAD_SESSION)
    assert d.protocol.transcript is not None  # kept: the session could still meet resource or software
    assert notices(f) == []


@pytest.mark.parametrize("classes", ["bounce, 2bounce, delay, data", "resource", ""])
def test_classesNotListedSendNothing(classes):
    f = factory(f"notify_classes = {classes}\n")
    session(f, BAD_SESSION)  # protocol and policy errors only
    assert notices(f) == []


def test_aCleanSessionSendsNothing():
    f = factory("notify_classes = bounce, data, policy, protocol, resource, software\n")
    session(f, ["EHLO c\r\n", "MAIL FROM:<a@example.org>\r\n", "RCPT TO:<u@mx.test>\r\n", "DATA\r\n",
                "Subject: s\r\n\r\nhi\r\n.\r\n", "RSET\r\n", "NOOP\r\n", "VRFY <u@mx.test>\r\n", "QUIT\r\n"])
    assert len(f.store.committed) == 1 and f.store.committed[0].envelope.sender == "a@example.org"


def test_notInStandaloneMode():
    """Like Postfix (SMTPD_STAND_ALONE): a factory made without postmasterNotices (mta-sendmail -bs) keeps no transcript."""
    f = factory("notify_classes = protocol\n", notices=False)
    d = session(f, BAD_SESSION)
    assert d.protocol.transcript is None
    assert notices(f) == []


def test_noTranscriptWhenNoServerClassIsListed():
    f = factory("notify_classes = 2bounce, delay\n")
    d = session(f, BAD_SESSION)
    assert d.protocol.transcript is None


# -- the classes Postfix gives ---------------------------------------------------------------------


@pytest.mark.parametrize("line, expected", [
    ("HELO\r\n", {"protocol"}),
    ("MAIL FROM:<a@example.org> FOO=BAR\r\n", {"protocol"}),
    ("MAIL FROM:a@example.org>\r\n", {"protocol"}),
    ("RCPT TO:<x@mx.test>\r\n", {"protocol"}),  # need MAIL
    ("DATA\r\n", {"protocol"}),
    ("RSET x\r\n", {"protocol"}),
    ("ETRN\r\n", {"protocol"}),
    ("BDAT x\r\n", {"protocol"}),
    ("XYZZY\r\n", {"protocol"}),
    ("VRFY\r\n", {"protocol"}),
    ("NOOP\r\n", set()),
    ("HELP\r\n", set()),
    ("GET / HTTP/1.0\r\n", set()),  # 221 and a close, no class (as in Postfix)
    ("MAIL FROM:<a@example.org> SIZE=999999999999\r\n", {"policy"}),
])
def test_errorClassOfEachReply(line, expected):
    f = factory("notify_classes = protocol\nmessage_size_limit = 1000\n")
    d = session(f, ["EHLO c\r\n", line], end=False)
    assert d.protocol.transcript.errors == expected


def test_disabledVrfyAndHeloRequiredArePolicy():
    f = factory("notify_classes = policy\ndisable_vrfy_command = yes\nsmtpd_helo_required = yes\n")
    d = session(f, ["MAIL FROM:<a@example.org>\r\n"], end=False)
    assert d.protocol.transcript.errors == {"policy"}
    d.protocol.transcript.clear()
    d.send("EHLO c\r\n")
    d.send("VRFY u\r\n")
    assert d.protocol.transcript.errors == {"policy"}


def test_overlongAndBareNewlineCommandsAreProtocol():
    f = factory("notify_classes = protocol\n")
    d = session(f, ["EHLO c\r\n", "NOOP " + "x" * 3000 + "\r\n"], end=False)
    assert d.protocol.transcript.errors == {"protocol"}
    entry = next(line for line in d.protocol.transcript.lines() if line.startswith("In:  NOOP"))
    assert len(entry) == len("In:  ") + 2048  # cut at line_length_limit, as smtp_get keeps it
    d.send("NOOP\nRSET\r\n")
    assert d.closed
    d.protocol.connectionLost(None)
    [(_, message, _)] = notices(f)
    lines = transcript(message)
    assert lines[-2:] == [" In:  NOOP", " Out: 550 5.5.2 mx.test Error: bare <LF> received"]


def test_tooManyRecipientsIsPolicyPastTheOvershoot():
    f = factory("notify_classes = policy\nsmtpd_recipient_limit = 1\nsmtpd_recipient_overshoot_limit = 1\n")
    d = session(f, ["EHLO c\r\n", "MAIL FROM:<a@example.org>\r\n", "RCPT TO:<u@mx.test>\r\n", "RCPT TO:<v@mx.test>\r\n"],
                end=False)
    assert d.protocol.transcript.errors == set()  # the first overshoot is not an error
    d.send("RCPT TO:<w@mx.test>\r\n")
    assert d.protocol.transcript.errors == {"policy"}


def test_tooManyErrorsIsProtocolWithItsReason():
    f = factory("notify_classes = policy\nsmtpd_hard_error_limit = 2\nsmtpd_recipient_restrictions = reject\n")
    d = session(f, ["EHLO c\r\n", "MAIL FROM:<a@example.org>\r\n", "RCPT TO:<u@mx.test>\r\n",
                    "RCPT TO:<v@mx.test>\r\n"])
    assert d.closed
    [(_, message, _)] = notices(f)
    assert transcript(message)[-1] == " Out: 421 4.7.0 mx.test Error: too many errors"
    assert "\nSession aborted, reason: too many errors\n" in text(message)


def test_timeoutGivesTheReason():
    f = factory("notify_classes = protocol\n")
    d = session(f, ["EHLO c\r\n", "XYZZY\r\n"], end=False)
    f.clock.advance(301)
    assert d.closed
    d.protocol.connectionLost(None)
    [(_, message, _)] = notices(f)
    assert transcript(message)[-1] == " Out: 421 4.4.2 mx.test Error: timeout exceeded"
    assert "\nSession aborted, reason: timeout\n" in text(message)


def test_lostConnectionGivesTheReason():
    f = factory("notify_classes = protocol\n")
    session(f, ["EHLO c\r\n", "XYZZY\r\n"])
    [(_, message, _)] = notices(f)
    assert "\nSession aborted, reason: lost connection\n" in text(message)


def test_pregreetDropIsProtocol():
    f = factory("notify_classes = protocol\npostscreen_greet_wait = 2s\npostscreen_greet_action = drop\n")
    d = Dialog(f, peer=OUTSIDE)
    d.send("EHLO early\r\n")
    f.clock.advance(2)
    assert d.closed
    d.protocol.connectionLost(None)
    [(_, message, _)] = notices(f)
    assert transcript(message) == [" Out: 521 5.5.1 Protocol error"]  # what it sent early was never read as a command


@pytest.mark.parametrize("action, errors", [("ignore", set()), ("enforce", {"protocol"})])
def test_pregreetIgnoreAndEnforce(action, errors):
    f = factory(f"notify_classes = protocol\npostscreen_greet_wait = 2s\npostscreen_greet_action = {action}\n")
    d = Dialog(f, peer=OUTSIDE)
    d.send("EHLO early\r\n")
    f.clock.advance(2)
    d.send("MAIL FROM:<a@example.org>\r\nRCPT TO:<u@mx.test>\r\n")
    assert d.protocol.transcript.errors == errors


def test_connectionLimitIsPolicy():
    f = factory("notify_classes = policy\nsmtpd_client_connection_count_limit = 1\n"
                "smtpd_client_event_limit_exceptions =\n")
    first = Dialog(f, peer=OUTSIDE)
    second = Dialog(f, peer=OUTSIDE)
    assert second.closed
    second.protocol.connectionLost(None)
    first.protocol.connectionLost(None)
    [(_, message, _)] = notices(f)
    assert transcript(message) == [f" Out: 421 4.7.0 mx.test Error: too many connections from {OUTSIDE}"]


# -- the transcript is untrusted, and bounded ----------------------------------------------------


def test_hostileTranscriptCannotInjectHeadersOrLines():
    f = factory("notify_classes = protocol\nsmtpd_forbid_bare_newline = normalize\n")
    session(f, [
        b"EHLO c\r\n",
        b"XYZZY \x00\x07\x1b[31m \xc3\xa9\xff\xfe\r\n",  # controls and 8-bit octets: not UTF-8, 500
        b"SUBJECT: injected\r\nFrom: evil@example.net\r\n",
        b"NOOP\r\r\n",  # a bare CR, dropped under normalize but shown
        b"X" + b" word" * 40 + b" " + b"Y" * 200 + b"\r\n",
        b".\r\n",  # not a command: 221 and a close
    ])
    [(envelope, message, raw)] = notices(f)
    assert [r.address for r in envelope.recipients] == ["postmaster@mx.test"]
    assert message.keys() == ["From", "To", "Subject", "Date", "Message-Id", "Auto-Submitted"]
    assert raw.isascii()
    head, _, body = raw.partition(b"\r\n\r\n")
    assert b"evil" not in head and b"injected" not in head
    for line in body.split(b"\r\n"):
        assert all(0x20 <= c < 0x7F for c in line), line
        assert len(line) <= 79
    lines = transcript(message)
    assert " In:  XYZZY ???[31m ????" in lines
    assert " Out: 500 5.5.2 Error: invalid characters in command" in lines
    assert " In:  SUBJECT: injected" in lines and " In:  From: evil@example.net" in lines
    assert " In:  NOOP?" in lines
    assert " In:  ." in lines
    # a long line is wrapped at 78 columns, continuation lines indented, the long word split
    start = lines.index(" In:  X word word word word word word word word word word word word word word")
    assert lines[start + 1].startswith("     word")
    assert all(len(line) <= 79 for line in lines)
    assert "".join(line.strip() for line in lines[start:start + 6]).count("Y") == 200


def test_theTranscriptIsFlushedPastTheThreshold():
    """Postfix's smtpd_history_flush_threshold: past 100 lines the history is sent (if it had errors) and restarted."""
    f = factory("notify_classes = protocol\n")
    d = session(f, ["EHLO c\r\n", "XYZZY\r\n"], end=False)
    for _ in range(60):
        assert d.send("NOOP\r\n") == "250 2.0.0 Ok\r\n"
        assert len(d.protocol.transcript) <= HISTORY_FLUSH_THRESHOLD + 2
    [(_, first, _)] = notices(f)  # sent while the session goes on
    assert " In:  XYZZY" in transcript(first)
    assert len(transcript(first)) == HISTORY_FLUSH_THRESHOLD + 1
    assert d.send("QUIT\r\n") == "221 2.0.0 Bye\r\n"
    d.protocol.connectionLost(None)
    assert len(notices(f)) == 1  # the rest of the session had no error


def test_aLongCleanSessionKeepsABoundedTranscript():
    f = factory("notify_classes = protocol\nsmtpd_junk_command_limit = 10000\n")
    d = session(f, ["EHLO c\r\n"], end=False)
    for _ in range(500):
        d.send("NOOP\r\n")
        assert len(d.protocol.transcript) <= HISTORY_FLUSH_THRESHOLD + 2
    d.send("XYZZY\r\nQUIT\r\n")
    d.protocol.connectionLost(None)
    [(_, message, _)] = notices(f)
    assert len(transcript(message)) <= HISTORY_FLUSH_THRESHOLD + 6
    assert transcript(message)[-4:] == [" In:  XYZZY", " Out: 502 5.5.2 Error: command not recognized",
                                        " In:  QUIT", " Out: 221 2.0.0 Bye"]


def test_aNoticeThatCannotBeQueuedDoesNotTouchTheSession():
    store = FakeQueueStore()
    f = factory("notify_classes = protocol\n", store)
    store.failCommits = True
    with MailLog() as log:
        d = session(f, ["EHLO c\r\n", "XYZZY\r\n"], end=False)
        assert d.send("NOOP\r\n") == "250 2.0.0 Ok\r\n"
        d.protocol.connectionLost(None)
    assert "warning: postmaster notify: fake: disk full" in log.lines
    assert log.lines[-1].startswith(f"disconnect from unknown[{OUTSIDE}]")

    class BrokenStore(FakeQueueStore):
        def newMessage(self):
            raise OSError(28, "No space left on device")

    f = factory("notify_classes = protocol\n", BrokenStore())
    with MailLog() as log:
        session(f, ["EHLO c\r\n", "XYZZY\r\n"])
    assert "warning: postmaster notify: [Errno 28] No space left on device" in log.lines


def test_aSlowNoticeCommitIsNotWaitedFor():
    store = FakeQueueStore()
    store.holdCommits = True
    f = factory("notify_classes = protocol\n", store)
    with MailLog() as log:
        session(f, ["EHLO c\r\n", "XYZZY\r\n", "QUIT\r\n"])
        assert any(line.startswith("disconnect from") for line in log.lines)
        assert not any("message-id=" in line for line in log.lines)
        store.release()
    assert len(notices(f)) == 1
    assert any(line.startswith(f"{store.committed[0].queueId}: message-id=<") for line in log.lines)


def test_theSessionsOwnMessagesAreUntouched():
    """A policy reject and a delivered message in one session: the notice is one more message, from double-bounce."""
    f = factory("notify_classes = policy\n")
    session(f, ["EHLO c\r\n", "MAIL FROM:<a@example.org>\r\n", "RCPT TO:<x@example.net>\r\n",
                "RCPT TO:<u@mx.test>\r\n", "DATA\r\n", "Subject: s\r\n\r\nhi\r\n.\r\n", "QUIT\r\n"])
    senders = [m.envelope.sender for m in f.store.committed]
    assert senders == ["a@example.org", DOUBLE_BOUNCE]
    [(_, message, _)] = notices(f)
    lines = transcript(message)
    assert " Out: 250 2.0.0 Ok: queued as FAKE0000000001" in lines



# With a footer the XYZZY reply has two lines: the greeting, EHLO and XYZZY make 16, each NOOP 2 more.
EVEN = "notify_classes = protocol\nsmtpd_reject_footer = see the log\n"


def linesBefore(f, count):
    """A session with a protocol error whose transcript has exactly C{count} lines (greeting, EHLO, XYZZY, NOOPs)."""
    d = session(f, ["EHLO c\r\n", "XYZZY\r\n"], end=False)
    while len(d.protocol.transcript) < count:
        d.send("NOOP\r\n")
    assert len(d.protocol.transcript) == count
    return d


@pytest.mark.parametrize("verb, after", [("EHLO c", " Out: 250-mx.test"), ("RSET", " Out: 250 2.0.0 Ok")])
def test_ehloAndRsetFlushTheTranscriptBeforeTheirReply(verb, after):
    """Postfix's chat_reset() in ehlo_cmd and rset_cmd: the line that passes the threshold flushes at once."""
    f = factory(EVEN)
    d = linesBefore(f, HISTORY_FLUSH_THRESHOLD)
    d.send(f"{verb}\r\n")
    [(_, message, _)] = notices(f)
    assert transcript(message)[-1] == f" In:  {verb}"
    assert " " + d.protocol.transcript.lines()[0] == after  # the new transcript starts with the reply
    assert d.protocol.transcript.errors == set()


def test_theEndOfDataFlushesTheTranscriptAfterItsReply():
    f = factory(EVEN)
    d = linesBefore(f, HISTORY_FLUSH_THRESHOLD - 6)
    d.send("MAIL FROM:<a@example.org>\r\n")
    d.send("RCPT TO:<u@mx.test>\r\n")
    d.send("DATA\r\n")
    assert len(d.protocol.transcript) == HISTORY_FLUSH_THRESHOLD
    assert notices(f) == []
    d.send("Subject: s\r\n\r\nhi\r\n.\r\n")  # its reply is line 101: flushed now, not at the next command
    [(_, message, _)] = notices(f)
    assert transcript(message)[-1] == " Out: 250 2.0.0 Ok: queued as FAKE0000000001"
    assert len(d.protocol.transcript) == 0


TRANSACTION = ["EHLO c\r\n", "MAIL FROM:<a@example.org>\r\n", "RCPT TO:<u@mx.test>\r\n"]


@pytest.mark.parametrize("main, script, reply, errors", [
    ("message_size_limit = 100\n", ["DATA\r\n", "Subject: s\r\n\r\n" + "x" * 200 + "\r\n.\r\n"],
     "552 5.3.4 Error: message file too big", {"bounce"}),  # cleanup's CLEANUP_STAT_SIZE
    ("hopcount_limit = 2\n", ["DATA\r\n", "Received: a\r\nReceived: b\r\nReceived: c\r\n\r\nhi\r\n.\r\n"],
     "554 5.4.0 Error: too many hops", {"bounce"}),  # CLEANUP_STAT_HOPS
    ("", ["DATA\r\n", "Subject: s\r\n\r\n" + "x" * 3000 + "\r\n.\r\n"],
     "552 5.3.4 Error: message line longer than 2048 bytes", {"protocol"}),
    ("message_size_limit = 100\n", ["BDAT 200 LAST\r\n" + "x" * 200],
     "552 5.3.4 Error: message file too big", {"policy"}),  # Postfix's BDAT size check
    ("", ["BDAT 5 LAST\r\nabcde", "DATA\r\n"], "503 5.5.1 Error: need MAIL command", {"protocol"}),
])
def test_contentErrorClasses(main, script, reply, errors):
    f = factory("notify_classes = bounce, policy, protocol\n" + main)
    d = session(f, TRANSACTION, end=False)
    for data in script:
        out = d.send(data)
    assert out.endswith(reply + "\r\n")
    assert d.protocol.transcript.errors == errors
