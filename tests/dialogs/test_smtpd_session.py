"""Scripted dialogs for the session: half-closed input, over-long commands, deadlines."""

import pytest
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.task import Clock

from mta.testing import FakeQueueStore, serverFactory
from tests.dialogs.harness import Dialog, MailLog, replyCodes

OUTSIDE = "198.51.100.7"
MESSAGE = b"Subject: x\r\n\r\nhello\r\n"


def dialog(main="", peer="127.0.0.1", clock=None, store=None):
    return Dialog(serverFactory(main, clock=clock, store=store or FakeQueueStore()), peer=peer)


# -- half-closed connections (readConnectionLost) ---------------------------------------------


def test_theServerIsHalfCloseable():
    """Twisted's TCP transports call readConnectionLost only on an IHalfCloseableProtocol."""
    assert IHalfCloseableProtocol.providedBy(dialog().protocol)


@pytest.mark.parametrize("slowCommit", [False, True], ids=["fast-commit", "slow-commit"])
def test_regression_halfCloseAfterDotAndQuit(slowCommit):
    """
    Exim: "." and QUIT in one write, then shutdown(SHUT_WR).  The message is committed once
    and both replies are written before the close (before: nothing was answered, Exim
    deferred, and sent the message again).
    """
    store = FakeQueueStore()
    store.holdCommits = slowCommit
    d = dialog(store=store)
    d.send("EHLO exim.example\r\n")
    assert replyCodes(d.send("MAIL FROM:<a@example.org>\r\nRCPT TO:<b@mx.test>\r\nDATA\r\n")) == [250, 250, 354]
    with MailLog() as log:
        d.protocol.dataReceived(MESSAGE + b".\r\nQUIT\r\n")
        d.protocol.readConnectionLost()
        if slowCommit:
            assert d.read() == "" and not d.closed  # the commit is still in progress
            store.release()
    assert d.read() == "250 2.0.0 Ok: queued as FAKE0000000001\r\n221 2.0.0 Bye\r\n"
    assert d.closed and len(store.committed) == 1
    assert not log.matching("lost connection")


def test_regression_halfCloseAfterPipelinedBdat():
    """MAIL, RCPT, BDAT LAST with its chunk and QUIT in one write, then EOF: every reply."""
    store = FakeQueueStore()
    store.holdCommits = True
    d = dialog(store=store)
    d.send("EHLO exim.example\r\n")
    d.protocol.dataReceived(
        b"MAIL FROM:<a@example.org>\r\nRCPT TO:<b@mx.test>\r\n"
        + b"BDAT %d LAST\r\n" % len(MESSAGE) + MESSAGE + b"QUIT\r\n"
    )
    d.protocol.readConnectionLost()
    assert not d.closed
    store.release()
    assert d.read().splitlines() == ["250 2.1.0 Ok", "250 2.1.5 Ok", "250 2.0.0 Ok: queued as FAKE0000000001", "221 2.0.0 Bye"]
    assert d.closed and len(store.committed) == 1


def test_halfCloseWithoutQuitAfterTheMessage():
    """EOF after the end of data: the 250 goes out, then the close; Postfix logs no lost connection then."""
    store = FakeQueueStore()
    d = dialog(store=store)
    with MailLog() as log:
        d.send("EHLO c\r\n")
        d.send("MAIL FROM:<a@example.org>\r\nRCPT TO:<b@mx.test>\r\nDATA\r\n")
        d.protocol.dataReceived(MESSAGE + b".\r\n")
        d.protocol.readConnectionLost()
        assert d.read() == "250 2.0.0 Ok: queued as FAKE0000000001\r\n"
        assert d.closed
        d.protocol.connectionLost(None)
    assert not log.matching("lost connection")
    assert log.matching("disconnect from unknown[127.0.0.1] ehlo=1 mail=1 rcpt=1 data=1 commands=4")


def test_halfCloseInsideData():
    """EOF inside the message: nothing is committed; Postfix's lost-connection line with the byte count."""
    store = FakeQueueStore()
    d = dialog(store=store)
    with MailLog() as log:
        d.send("EHLO c\r\n")
        d.send("MAIL FROM:<a@example.org>\r\nRCPT TO:<b@mx.test>\r\nDATA\r\n")
        d.protocol.dataReceived(b"Subject: cut\r\n\r\npartial")
        d.protocol.readConnectionLost()
        assert d.closed and d.read() == ""
        d.protocol.connectionLost(None)
    assert store.committed == [] and store.messages[0].aborted
    assert log.matching("FAKE0000000001: lost connection after DATA (23 bytes) from unknown[127.0.0.1]")
    assert log.matching("data=0/1")


def test_halfCloseAfterPipelinedCommandsAndAPartialLine():
    """The complete commands are answered; the unfinished line after them is never run."""
    d = dialog()
    with MailLog() as log:
        d.send("EHLO c\r\n")
        d.protocol.dataReceived(b"MAIL FROM:<a@example.org>\r\nRCPT TO:<b@mx.test>\r\nRSET")
        d.protocol.readConnectionLost()
    assert replyCodes(d.read()) == [250, 250]
    assert d.closed
    assert log.matching("NOQUEUE: lost connection after RCPT from unknown[127.0.0.1]")


def test_halfCloseWhileATarpitDelaysTheReplies():
    clock = Clock()
    d = dialog("smtpd_soft_error_limit = 0\nsmtpd_error_sleep_time = 5s\n", clock=clock)
    d.send("EHLO c\r\n")
    d.protocol.dataReceived(b"BOGUS\r\nQUIT\r\n")
    d.protocol.readConnectionLost()
    assert not d.closed
    clock.advance(5)  # the 502, delayed
    assert not d.closed
    clock.advance(5)  # the 221, delayed too
    assert d.read().splitlines()[-2:] == ["502 5.5.2 Error: command not recognized", "221 2.0.0 Bye"]
    assert d.closed


# -- over-long command lines ----------------------------------------------------------------


TOO_LONG = "500 5.5.2 mx.test Error: command too long\r\n"


@pytest.mark.parametrize("how", ["one-read", "two-reads", "bytewise"])
def test_regression_overlongCommandIsNeverRun(how):
    """NOOP and 20,000 bytes got 250 when the line came in one read; now 500 however it arrives."""
    d = dialog()
    line = b"NOOP " + b"x" * 20000 + b"\r\n"
    if how == "one-read":
        out = d.send(line + b"NOOP\r\n")
    elif how == "two-reads":
        out = d.send(line[:10000]) + d.send(line[10000:] + b"NOOP\r\n")
    else:
        out = d.send(line + b"NOOP\r\n", bytewise=True)
    assert out == TOO_LONG + "250 2.0.0 Ok\r\n"


def test_commandLengthLimitIsPostfixs():
    """line_length_limit octets or more, CRLF not counted, are too long (Postfix's smtp_get bound)."""
    d = dialog()
    assert d.send("NOOP " + "x" * 2042 + "\r\n") == "250 2.0.0 Ok\r\n"  # 2047 octets
    assert d.send("NOOP " + "x" * 2043 + "\r\n") == TOO_LONG  # 2048
    d = dialog("line_length_limit = 100\n")
    assert d.send("RSET" + " " * 95 + "\r\n") == "250 2.0.0 Ok\r\n"
    assert d.send("RSET" + " " * 96 + "\r\n") == TOO_LONG


def test_overlongCommandIsLoggedAndPipelinedCommandsGoOn():
    d = dialog()
    with MailLog() as log:
        d.send("EHLO c\r\n")
        out = d.send(b"MAIL FROM:<" + b"a" * 3000 + b"@example.org>\r\nRSET\r\nQUIT\r\n")
    assert out.splitlines()[-3:] == [TOO_LONG.strip(), "250 2.0.0 Ok", "221 2.0.0 Bye"]
    assert log.matching("warning: unknown[127.0.0.1]: request longer than 2048: MAIL FROM:<aaaaaaaaaaaaaaaaaaa...")


def test_overlongCommandEndingInABareLineFeedIsJustTooLong():
    """As in Postfix, the skipped line ends at any LF; the bare-LF check does not see it."""
    d = dialog(peer=OUTSIDE)
    assert d.send(b"NOOP " + b"x" * 3000 + b"\nNOOP\r\n") == TOO_LONG + "250 2.0.0 Ok\r\n"
    assert not d.closed


@pytest.mark.parametrize("verb", ["HELO", "EHLO"])
def test_heloHostnameLongerThanADomain(verb):
    d = dialog()
    with MailLog() as log:
        out = d.send(f"{verb} {'h' * 256}\r\n")
    assert out == f"501 5.5.2 <{'h' * 64}...>: Helo command rejected: Invalid name\r\n"
    assert log.matching(f"NOQUEUE: reject: {verb} from unknown[127.0.0.1]: 501 5.5.2 <hhhh")
    assert replyCodes(d.send(f"{verb} {'h' * 1000}\r\n")) == [501]
    assert replyCodes(d.send(f"{verb} {'h' * 255}\r\n")) == [250]
    assert d.protocol.session.helo == "h" * 255


# -- deadlines (smtpd_per_request_deadline, smtpd_min_data_rate) ----------------------------------


TIMEOUT = "421 4.4.2 mx.test Error: timeout exceeded\r\n"


def trickle(d, clock, data, seconds=1.0):
    """Send C{data} a byte every C{seconds}; the output, and whether the session was closed early."""
    out = ""
    for i in range(len(data)):
        if d.closed:
            return out, True
        clock.advance(seconds)
        if d.closed:
            return out, True
        out += d.send(data[i : i + 1])
    return out, d.closed


def test_regression_tricklingCommandIsCutOffAtTheDeadline():
    clock = Clock()
    d = dialog("smtpd_timeout = 10s\n", clock=clock)
    d.send("EHLO c\r\n")
    with MailLog() as log:
        out, closed = trickle(d, clock, b"MAIL FROM:<alice@example.org>\r\n")
    assert closed and out + d.read() == TIMEOUT
    assert clock.seconds() == pytest.approx(10, abs=1)
    assert log.matching("NOQUEUE: timeout after EHLO from unknown[127.0.0.1]")


def test_regression_tricklingDataIsCutOffAtTheDeadline():
    clock = Clock()
    store = FakeQueueStore()
    d = dialog("smtpd_timeout = 10s\n", clock=clock, store=store)
    d.send("EHLO c\r\n")
    d.send("MAIL FROM:<a@example.org>\r\nRCPT TO:<b@mx.test>\r\nDATA\r\n")
    start = clock.seconds()
    with MailLog() as log:
        out, closed = trickle(d, clock, b"Subject: slow\r\n\r\n" + b"x" * 100 + b"\r\n.\r\n")
    assert closed and out + d.read() == TIMEOUT
    assert 10 < clock.seconds() - start <= 11  # 10 s, plus 1/500 s for each byte
    assert log.matching("FAKE0000000001: timeout after DATA (10 bytes) from unknown[127.0.0.1]")
    assert store.committed == []


def test_dataAtTheMinimumRateIsNotCutOff():
    clock = Clock()
    store = FakeQueueStore()
    d = dialog("smtpd_timeout = 10s\nsmtpd_min_data_rate = 500\n", clock=clock, store=store)
    d.send("EHLO c\r\n")
    d.send("MAIL FROM:<a@example.org>\r\nRCPT TO:<b@mx.test>\r\nDATA\r\n")
    line = b"x" * 498 + b"\r\n"
    for _ in range(60):  # a minute at 500 bytes a second, six times smtpd_timeout
        clock.advance(1)
        assert d.send(line) == ""
    clock.advance(1)
    assert d.send(b".\r\n") == "250 2.0.0 Ok: queued as FAKE0000000001\r\n"
    assert not d.closed


def test_theServersOwnTimeIsNotCounted():
    """A commit that takes longer than smtpd_timeout does not time the client out."""
    clock = Clock()
    store = FakeQueueStore()
    store.holdCommits = True
    d = dialog("smtpd_timeout = 10s\n", clock=clock, store=store)
    d.send("EHLO c\r\n")
    d.send("MAIL FROM:<a@example.org>\r\nRCPT TO:<b@mx.test>\r\nDATA\r\n")
    d.send(MESSAGE + b".\r\n")
    clock.advance(100)
    assert not d.closed
    store.release()
    assert d.read() == "250 2.0.0 Ok: queued as FAKE0000000001\r\n"
    clock.advance(9)
    assert not d.closed
    clock.advance(2)
    assert d.read() == TIMEOUT and d.closed


def test_aClientThatDoesNotReadIsCutOff():
    """Replies the client does not read count against the deadline; the close does not wait for it."""
    clock = Clock()
    d = dialog("smtpd_timeout = 10s\n", clock=clock)
    d.protocol.pauseProducing()  # what the transport does when its write buffer is full
    assert d.send("NOOP\r\n") == ""  # held: the session does not work while the client does not read
    clock.advance(11)
    assert d.closed
    d.protocol.resumeProducing()


def test_noDeadlineKeepsTheIdleTimer():
    """smtpd_per_request_deadline = no: every read renews smtpd_timeout, as in Postfix by default."""
    clock = Clock()
    store = FakeQueueStore()
    d = dialog("smtpd_timeout = 10s\nsmtpd_per_request_deadline = no\n", clock=clock, store=store)
    d.send("EHLO c\r\n")
    out, closed = trickle(d, clock, b"MAIL FROM:<alice@example.org>\r\n" + b"RCPT TO:<b@mx.test>\r\nDATA\r\n")
    assert not closed and replyCodes(out) == [250, 250, 354]
    out, closed = trickle(d, clock, b"x" * 40 + b"\r\n.\r\n")  # 45 s, a byte a second
    assert not closed and out == "250 2.0.0 Ok: queued as FAKE0000000001\r\n"
    clock.advance(9)
    assert not d.closed
    clock.advance(2)
    assert d.read() == TIMEOUT and d.closed
