"""
The real ``twistd mta`` against real clients: Python's smtplib, swaks, Postfix's
smtp-source, Exim (its smtp transport, which half-closes after QUIT; see
tests/integration/exim.py for where it comes from) and a raw socket (for BDAT, which the
installed swaks 20201014.0 does not speak, for SMTP smuggling, half-closes, trickling
clients and over-long commands).  Every message is read back from the queue file the
daemon wrote and compared byte for byte with what the client sent.
"""

import email
import email.policy
import hashlib
import os
import re
import smtplib
import socket
import time

import pytest

from mta.queue.fileformat import readQueueFile
from mta.queue.queueid import isValidQueueId
from tests.integration.daemon import PROBE_LINES
from tests.integration.exim import Exim
from tests.integration.peers import (
    RawClient,
    RecordingSMTP,
    checkReceived,
    maillogLines,
    queueIdOf,
    readQueued,
    smtpSource,
    splitReceived,
    swaks,
    swaksSentData,
    undotStuff,
    waitFor,
)

pytestmark = pytest.mark.integration

UNTRUSTED = "mynetworks = 192.0.2.0/24\n"  # 127.0.0.1 is then a stranger


HELLO = b"Hello.\r\n"


def message(subject="test", body=HELLO, extra=b""):
    """A message with every header the server would otherwise add (From, Date, Message-ID, To)."""
    return (
        b"From: Alice <a@example.org>\r\n"
        b"To: Bob <b@mta.test>\r\n"
        b"Date: Sat, 21 Nov 2026 07:48:25 +0000\r\n"
        b"Subject: " + subject.encode() + b"\r\n"
        b"Message-ID: <" + messageId(subject, body).encode() + b">\r\n" + extra + b"\r\n" + body
    )


def messageId(subject, body):
    return hashlib.sha1(subject.encode() + b"\0" + body).hexdigest() + "@example.org"


def waitForDisconnect(d, contains="mail="):
    """The text of the first mail-log disconnect line holding C{contains}, never the start-up probe's."""
    def find():
        return next((t for _, t in maillogLines(d)
                     if t.startswith("disconnect from ") and contains in t and t != PROBE_LINES[1]), None)

    return waitFor(find, what=f"a disconnect line with {contains!r}")


# -- smtplib ----------------------------------------------------------------------


def test_smtplibSeveralRecipients(daemon):
    """
    sendmail() to three recipients: 250 "queued as ID", and incoming/ID holds the exact
    envelope and the message as sent, CRLF line ends, with our Received header first.
    """
    msg = message("several", b"line one\r\nline two\r\n\r\nlast line\r\n")
    rcpts = ["b@mta.test", "c@example.net", "d@localhost"]
    with RecordingSMTP(port=daemon.port, local_hostname="client.example") as s:
        assert s.sendmail("a@example.org", rcpts, msg) == {}
        code, text = s.dataReplies[-1]
        assert code == 250 and re.fullmatch(rb"2\.0\.0 Ok: queued as [0-9A-Za-z]{14}", text), text
        queueId = s.lastQueueId
    assert isValidQueueId(queueId)
    assert queueId in daemon.incoming()
    envelope, content = readQueued(daemon, queueId)
    assert envelope.sender == "a@example.org"
    assert [r.address for r in envelope.recipients] == rcpts
    assert all(r.notify == () and r.orcpt is None for r in envelope.recipients)
    assert envelope.helo == "client.example"
    assert envelope.protocol == "ESMTP"
    assert envelope.client_address == "127.0.0.1"
    assert envelope.client_name == "unknown"
    assert 0 < envelope.client_port < 65536
    assert envelope.body == "7BIT" and envelope.smtputf8 is False
    assert envelope.ret is None and envelope.envid is None
    assert abs(envelope.arrival_time - time.time()) < 60
    assert envelope.size == len(content)
    received, rest = splitReceived(content)
    checkReceived(received, queueId, "client.example")  # several recipients: no "for" clause
    assert rest == msg


def test_smtplibOneRecipientReceivedHasForClause(daemon):
    with RecordingSMTP(port=daemon.port, local_hostname="client.example") as s:
        s.sendmail("a@example.org", ["b@mta.test"], message())
        queueId = s.lastQueueId
    envelope, content = readQueued(daemon, queueId)
    received, rest = splitReceived(content)
    checkReceived(received, queueId, "client.example", recipient="b@mta.test")
    assert rest == message()


def test_smtplibHeloClient(daemon):
    """A HELO (not EHLO) client is recorded with protocol SMTP."""
    with RecordingSMTP(port=daemon.port, local_hostname="old.example") as s:
        assert s.helo()[0] == 250
        s.sendmail("a@example.org", ["b@mta.test"], message())
        queueId = s.lastQueueId
    envelope, content = readQueued(daemon, queueId)
    assert envelope.protocol == "SMTP" and envelope.helo == "old.example"
    received, rest = splitReceived(content)
    checkReceived(received, queueId, "old.example", protocol="SMTP", recipient="b@mta.test")
    assert rest == message()


DOTTY = (
    b".\r\n"  # a line that is only a dot (smtplib sends "..")
    b"..\r\n"
    b"...\r\n"
    b".leading dot\r\n"
    b"..two leading dots\r\n"
    b" .space then dot\r\n"
    b"\r\n"
    b".\r\n"
    b"text.\r\n"
    b"."  # the last line has no CRLF of its own: smtplib adds it
)


def test_smtplibDotStuffingRoundTrip(daemon):
    """Lines starting with "." and ".." (smtplib stuffs them) come back unstuffed, exactly."""
    msg = message("dots", DOTTY)
    with RecordingSMTP(port=daemon.port, local_hostname="client.example") as s:
        s.sendmail("a@example.org", ["b@mta.test"], msg)
        first = s.lastQueueId
        # A body that starts with dot lines right after the empty line.
        msg2 = message("dots2", b".\r\n..\r\n.x\r\n")
        s.sendmail("a@example.org", ["b@mta.test"], msg2)
        second = s.lastQueueId
    assert splitReceived(readQueued(daemon, first)[1])[1] == msg + b"\r\n"
    assert splitReceived(readQueued(daemon, second)[1])[1] == msg2


def bigMessage(size):
    """About C{size} bytes: 998-byte and short lines, with dot lines scattered everywhere."""
    lines = []
    total = 0
    i = 0
    while total < size:
        if i % 7 == 0:
            line = b"." * (i % 5 + 1) + b"dot line %d" % i
        elif i % 11 == 0:
            line = b"x" * 998  # the longest line RFC 5322 allows
        else:
            line = b"%08d " % i + hashlib.sha256(b"%d" % i).hexdigest().encode() * 2
        lines.append(line)
        total += len(line) + 2
        i += 1
    return message("big", b"\r\n".join(lines) + b"\r\n")


def test_smtplibFiveMegabytes(daemon):
    msg = bigMessage(5 * 1024 * 1024)
    with RecordingSMTP(port=daemon.port, local_hostname="client.example") as s:
        assert s.sendmail("a@example.org", ["b@mta.test"], msg) == {}
        queueId = s.lastQueueId
    envelope, content = readQueued(daemon, queueId)
    received, rest = splitReceived(content)
    assert len(rest) == len(msg)
    assert hashlib.sha256(rest).hexdigest() == hashlib.sha256(msg).hexdigest()
    assert envelope.size == len(content)
    line = waitFor(
        lambda: [t for _, t in maillogLines(daemon) if t.startswith(f"{queueId}: from=")], what="the queued line"
    )
    assert line == [f"{queueId}: from=<a@example.org>, size={len(content)}, nrcpt=1 (queued)"]


def test_smtplibSmtputf8(daemon):
    """SMTPUTF8 with UTF-8 local parts and an 8-bit body; the envelope keeps them as text."""
    msg = (
        "From: jörg@example.org\r\nTo: bjørn@mta.test\r\nSubject: grüße\r\n"
        "Date: Sat, 21 Nov 2026 07:48:25 +0000\r\nMessage-ID: <ü@example.org>\r\n\r\nhällo, wörld ✓\r\n"
    ).encode()
    with RecordingSMTP(port=daemon.port, local_hostname="client.example") as s:
        assert s.has_extn("smtputf8") or s.ehlo()[0] == 250
        assert s.has_extn("smtputf8")
        s.sendmail("jörg@example.org", ["bjørn@mta.test", "ünï@example.net"], msg,
                   mail_options=["SMTPUTF8", "BODY=8BITMIME"])
        queueId = s.lastQueueId
    envelope, content = readQueued(daemon, queueId)
    assert envelope.sender == "jörg@example.org"
    assert [r.address for r in envelope.recipients] == ["bjørn@mta.test", "ünï@example.net"]
    assert envelope.smtputf8 is True
    assert envelope.body == "8BITMIME"
    assert splitReceived(content)[1] == msg


def test_nonAsciiAddressWithoutSmtputf8IsRefused(daemon):
    with RawClient(daemon.port) as c:
        c.ehlo()
        code, lines = c.command("MAIL FROM:<jörg@example.org>")
        assert code == 553 and lines[0].startswith("5.6.7"), (code, lines)
        assert c.command("MAIL FROM:<a@example.org>")[0] == 250
        code, lines = c.command("RCPT TO:<bjørn@mta.test>")
        assert code == 553 and lines[0].startswith("5.6.7"), (code, lines)
        assert c.command("QUIT")[0] == 221


def test_smtplibDsnParametersAreStored(daemon):
    """RET, ENVID, NOTIFY and ORCPT (xtext-decoded) land in the envelope, per recipient."""
    with RecordingSMTP(port=daemon.port, local_hostname="client.example") as s:
        s.ehlo()
        assert s.has_extn("dsn")
        assert s.mail("a@example.org", ["RET=HDRS", "ENVID=QQ+2B314@client.example"])[0] == 250
        assert s.rcpt("b@mta.test", ["NOTIFY=SUCCESS,FAILURE", "ORCPT=rfc822;orig+2Bx@example.com"])[0] == 250
        assert s.rcpt("c@example.net", ["NOTIFY=NEVER"])[0] == 250
        assert s.rcpt("d@example.net", ["ORCPT=rfc822;D@Example.NET", "NOTIFY=DELAY"])[0] == 250
        assert s.rcpt("e@example.net")[0] == 250
        code, text = s.data(message())
        assert code == 250, text
        queueId = queueIdOf(text)
    envelope, content = readQueued(daemon, queueId)
    assert envelope.ret == "HDRS"
    assert envelope.envid == "QQ+314@client.example"
    assert [(r.address, r.notify, r.orcpt) for r in envelope.recipients] == [
        ("b@mta.test", ("SUCCESS", "FAILURE"), "rfc822;orig+x@example.com"),
        ("c@example.net", ("NEVER",), None),
        ("d@example.net", ("DELAY",), "rfc822;D@Example.NET"),
        ("e@example.net", (), None),
    ]


@pytest.mark.parametrize(
    "options",
    [["NOTIFY=NEVER,SUCCESS"], ["NOTIFY=SOMETIMES"], ["ORCPT=rfc822"], ["NOTIFY=SUCCESS", "NOTIFY=FAILURE"]],
    ids=["never-and-success", "unknown-notify", "orcpt-without-address", "notify-twice"],
)
def test_smtplibBadDsnParametersAreRefused(daemon, options):
    with RecordingSMTP(port=daemon.port, local_hostname="client.example") as s:
        s.ehlo()
        assert s.mail("a@example.org")[0] == 250
        code, text = s.rcpt("b@mta.test", options)
        assert 500 <= code < 600, (code, text)
        assert s.rcpt("b@mta.test")[0] == 250  # the session goes on
        assert s.data(message())[0] == 250


def test_relayDeniedOutsideMynetworks(makeDaemon):
    """A stranger gets 454 4.7.1 for an outside domain (smtpd_relay_restrictions' default), 250 for our own."""
    d = makeDaemon(main=UNTRUSTED).start()
    with RecordingSMTP(port=d.port, local_hostname="client.example") as s:
        s.ehlo()
        assert s.mail("a@example.org")[0] == 250
        code, text = s.rcpt("x@example.net")
        assert (code, text) == (454, b"4.7.1 <x@example.net>: Relay access denied")
        assert s.rcpt("user@mta.test") == (250, b"2.1.5 Ok")
        code, text = s.data(message())
        assert code == 250
        queueId = queueIdOf(text)
    envelope, _ = readQueued(d, queueId)
    assert [r.address for r in envelope.recipients] == ["user@mta.test"]
    assert d.incoming() == [queueId]


RELAY_TRICKS = [
    "x@example.net",
    "X@EXAMPLE.NET",
    "x@example.net.",
    "x@sub.mta.test",
    "x@[192.0.2.1]",
    "x%example.net@mta.test",
    "example.net!x@mta.test",
    '"x@example.net"@mta.test',
    "@mta.test:x@example.net",
    "@a.example,@mta.test:x@example.net",
    "x%example.net@localhost",
]


@pytest.mark.parametrize("address", RELAY_TRICKS)
def test_relayTricksAreRefused(makeDaemon, address):
    """The classic relay tricks all fail for a stranger; nothing is queued."""
    d = makeDaemon(main=UNTRUSTED).start()
    with RawClient(d.port) as c:
        c.ehlo()
        assert c.command("MAIL FROM:<a@example.org>")[0] == 250
        code, lines = c.command(f"RCPT TO:<{address}>")
        assert 400 <= code < 600, (address, code, lines)  # 454 from defer_unauth_destination, 5xx for a bad path
        code, lines = c.command("DATA")
        assert code in (503, 554), (code, lines)  # no valid recipients: never 354
        assert c.command("QUIT")[0] == 221
    assert d.incoming() == []


@pytest.mark.parametrize("address", ["user@mta.test", "USER@MTA.Test", "user@localhost", "postmaster",
                                     "Postmaster"])
def test_localRecipientsAcceptedFromStrangers(makeDaemon, address):
    d = makeDaemon(main=UNTRUSTED).start()
    with RawClient(d.port) as c:
        c.ehlo()
        assert c.command("MAIL FROM:<>")[0] == 250
        assert c.command(f"RCPT TO:<{address}>") == (250, ["2.1.5 Ok"])


def test_messageSizeLimit(makeDaemon):
    """message_size_limit: 552 on a SIZE that exceeds it, and on the actual size (DATA and BDAT)."""
    d = makeDaemon(main="message_size_limit = 10000\n").start()
    small = message("small", (b"x" * 98 + b"\r\n") * 50)  # 5 KB
    big = message("big", (b"y" * 70 + b"\r\n") * 200)  # about 14.4 KB
    with RecordingSMTP(port=d.port, local_hostname="client.example") as s:
        s.ehlo()
        assert s.esmtp_features["size"] == "10000"
        # SIZE declared too big: refused at MAIL.
        code, text = s.mail("a@example.org", ["SIZE=20000"])
        assert code == 552 and text.startswith(b"5.3.4 "), (code, text)
        # smtplib sends SIZE=len(msg) itself.
        with pytest.raises(smtplib.SMTPSenderRefused) as info:
            s.sendmail("a@example.org", ["b@mta.test"], big)
        assert info.value.smtp_code == 552
        # No SIZE, so the limit is found while reading DATA: the message is refused at its end.
        assert s.mail("a@example.org") == (250, b"2.1.0 Ok")
        assert s.rcpt("b@mta.test")[0] == 250
        code, text = s.data(big)
        assert code == 552 and text.startswith(b"5.3.4 "), (code, text)
        # A lying SIZE does not help either.
        assert s.mail("a@example.org", ["SIZE=100"])[0] == 250
        assert s.rcpt("b@mta.test")[0] == 250
        code, text = s.data(big)
        assert code == 552 and text.startswith(b"5.3.4 "), (code, text)
        # The session is still good for a message within the limit.
        s.sendmail("a@example.org", ["b@mta.test"], small)
        queueId = s.lastQueueId
    assert d.incoming() == [queueId]
    with RawClient(d.port) as c:
        c.ehlo()
        assert c.command("MAIL FROM:<a@example.org>")[0] == 250
        assert c.command("RCPT TO:<b@mta.test>")[0] == 250
        chunk = b"z" * 78 + b"\r\n"
        c.send(b"BDAT %d\r\n" % (len(chunk) * 100) + chunk * 100)
        assert c.reply()[0] == 250
        c.send(b"BDAT %d LAST\r\n" % (len(chunk) * 100) + chunk * 100)
        code, lines = c.reply()
        assert code == 552 and lines[0].startswith("5.3.4 "), (code, lines)
        assert c.command("NOOP")[0] == 250
        assert c.command("QUIT")[0] == 221
    # The boundary: exactly message_size_limit bytes of content are accepted, one more is not.
    exact = b"Subject: exact\r\n\r\n"
    while len(exact) + 100 <= 10000:
        exact += b"e" * 98 + b"\r\n"
    exact += b"f" * (10000 - len(exact) - 2) + b"\r\n"
    assert len(exact) == 10000
    with RawClient(d.port) as c:
        c.ehlo()
        for body, expected in ((exact, 250), (b"g" + exact, 552)):
            code = c.command(f"MAIL FROM:<a@example.org> SIZE={len(body)}")[0]
            if expected == 250:
                assert code == 250  # SIZE equal to the limit is fine
            else:
                assert code == 552  # one byte more is not; without SIZE it is found at the end
                assert c.command("MAIL FROM:<a@example.org>")[0] == 250
            assert c.command("RCPT TO:<b@mta.test>")[0] == 250
            assert c.command("DATA")[0] == 354
            c.send(body + b".\r\n")
            code, lines = c.reply()
            assert code == expected, (len(body), code, lines)
            if code == 250:
                exactId = queueIdOf(lines[0])
    time.sleep(0.1)
    assert d.incoming() == sorted([queueId, exactId])
    assert os.listdir(os.path.join(d.queue, "tmp")) == []


def test_idleClientTimesOut(makeDaemon):
    """smtpd_timeout: 421 4.4.2 and a close; the log says after which command, as Postfix's does."""
    d = makeDaemon(main="smtpd_timeout = 1s\n").start()
    with RawClient(d.port) as c:
        c.ehlo()
        started = time.monotonic()
        assert c.reply() == (421, ["4.4.2 mta.test Error: timeout exceeded"])
        assert 0.8 < time.monotonic() - started < 5
        assert c.closedByPeer()
    with RawClient(d.port) as c:
        c.ehlo()
        c.send(b"MAIL FROM:<a@example.org>\r\nRCPT TO:<b@mta.test>\r\nDATA\r\n")
        assert [c.reply()[0] for _ in range(3)] == [250, 250, 354]
        c.send(message() + b".\r\n")
        assert c.reply()[0] == 250
        assert c.reply()[0] == 421  # idle after the message
        assert c.closedByPeer()
    waitForDisconnect(d, "data=1")
    lines = [t for _, t in maillogLines(d)]
    # With the queue id or NOQUEUE first, as Postfix 3.10 and later log it.
    assert "NOQUEUE: timeout after EHLO from unknown[127.0.0.1]" in lines
    # Postfix names the end of a message END-OF-MESSAGE (smtpd.c, SMTPD_AFTER_DOT), not DATA.
    assert "NOQUEUE: timeout after END-OF-MESSAGE from unknown[127.0.0.1]" in lines, [t for t in lines if "timeout" in t]


def test_connectionCountLimitForStrangers(makeDaemon):
    """smtpd_client_connection_count_limit: the connection past the limit gets 421 4.7.0 and a close."""
    d = makeDaemon(main=UNTRUSTED + "smtpd_client_connection_count_limit = 2\n").start()
    with RawClient(d.port) as a, RawClient(d.port) as b:
        assert a.banner[0] == 220 and b.banner[0] == 220
        with RawClient(d.port) as c:
            assert c.banner == (421, ["4.7.0 mta.test Error: too many connections from 127.0.0.1"])
            assert c.closedByPeer()
        a.ehlo()
        assert a.command("QUIT")[0] == 221
    # The count goes down when the daemon has seen both sessions end (b only closed its socket).
    waitFor(lambda: sum(t.startswith("disconnect from ") and t != PROBE_LINES[1] for _, t in maillogLines(d)) >= 3,
            what="three disconnect lines")
    with RawClient(d.port) as c:  # the count went down again
        assert c.banner[0] == 220


# -- swaks ----------------------------------------------------------------------------

SWAKS_BASIC = ["--from", "a@example.org", "--to", "b@mta.test", "--h-Subject", "x", "--body", "y"]


def swaksQueued(daemon, result):
    """
    The queue id swaks was given, the envelope, our Received header and the rest of the
    queued content, which must be what swaks' transcript shows it sent (unstuffed).
    """
    assert result.returncode == 0, result.stdout + result.stderr
    queueId = queueIdOf(result.stdout)
    envelope, content = readQueued(daemon, queueId)
    received, rest = splitReceived(content)
    assert rest == undotStuff(swaksSentData(result.stdout))
    return queueId, envelope, received, rest


@pytest.mark.parametrize("extra", [[], ["--pipeline"]], ids=["plain", "pipeline"])
def test_swaks(daemon, extra):
    result = swaks(daemon.port, *SWAKS_BASIC, "--ehlo", "swaks.example", *extra)
    if extra:
        # swaks really pipelined: MAIL, RCPT and DATA went out before their replies came.
        assert re.search(r" -> MAIL FROM:<a@example.org>\n -> RCPT TO:<b@mta.test>\n -> DATA\n", result.stdout)
    queueId, envelope, received, rest = swaksQueued(daemon, result)
    assert envelope.sender == "a@example.org"
    assert [r.address for r in envelope.recipients] == ["b@mta.test"]
    assert envelope.helo == "swaks.example" and envelope.protocol == "ESMTP"
    checkReceived(received, queueId, "swaks.example", recipient="b@mta.test")
    headers = email.message_from_bytes(rest, policy=email.policy.SMTP)
    assert headers["Subject"] == "x" and headers.get_content().strip() == "y"


def test_swaksDotsAndSeveralRecipientsPipelined(daemon):
    body = "first\n.\n..\n.dot\nlast"
    result = swaks(
        daemon.port, "--pipeline", "--from", "a@example.org", "--to", "b@mta.test,c@example.net,d@mta.test",
        "--h-Subject", "dots", "--body", body,
    )
    queueId, envelope, received, rest = swaksQueued(daemon, result)
    assert [r.address for r in envelope.recipients] == ["b@mta.test", "c@example.net", "d@mta.test"]
    assert b"\r\n\r\nfirst\r\n.\r\n..\r\n.dot\r\nlast\r\n" in rest


def test_swaksAttachment(daemon, tmp_path):
    """A 300 KB binary attachment (base64, MIME) arrives intact."""
    blob = os.urandom(300 * 1024)
    path = tmp_path / "blob.bin"
    path.write_bytes(blob)
    result = swaks(daemon.port, *SWAKS_BASIC, "--attach", f"@{path}", "--suppress-data")
    assert result.returncode == 0, result.stdout + result.stderr
    queueId = queueIdOf(result.stdout)
    _, content = readQueued(daemon, queueId)
    parsed = email.message_from_bytes(splitReceived(content)[1], policy=email.policy.SMTP)
    parts = [p for p in parsed.walk() if p.get_content_type() == "application/octet-stream"]
    assert len(parts) == 1
    assert parts[0].get_payload(decode=True) == blob


def test_swaksQuitAfterRcptQueuesNothing(daemon):
    result = swaks(daemon.port, *SWAKS_BASIC, "--quit-after", "RCPT")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "<-  221 2.0.0 Bye" in result.stdout
    waitFor(lambda: any("ehlo=1 mail=1 rcpt=1 quit=1 commands=4" in t for _, t in maillogLines(daemon)),
            what="the disconnect line")
    assert daemon.incoming() == []


def test_swaksDropAfterDataQueuesNothing(daemon):
    """
    A client that vanishes after the 354 leaves nothing in incoming/ or tmp/, and the
    disconnect line counts its DATA as failed, as Postfix does (data=0/1).
    """
    result = swaks(daemon.port, *SWAKS_BASIC, "--drop-after", "DATA")
    assert "<-  354 " in result.stdout and "Dropping connection" in result.stdout, result.stdout
    line = waitForDisconnect(daemon)
    assert daemon.incoming() == []
    assert waitFor(lambda: os.listdir(os.path.join(daemon.queue, "tmp")) == [], what="tmp/ to be empty")
    assert line == "disconnect from unknown[127.0.0.1] ehlo=1 mail=1 rcpt=1 data=0/1 commands=3/4"


def test_connectionLostInsideMessage(daemon):
    """Half a message (past the 64 KB write buffer, so tmp/ has a file), then a close: nothing queued."""
    tmp = os.path.join(daemon.queue, "tmp")
    with RawClient(daemon.port) as c:
        c.ehlo()
        assert c.command("MAIL FROM:<a@example.org>")[0] == 250
        assert c.command("RCPT TO:<b@mta.test>")[0] == 250
        assert c.command("DATA")[0] == 354
        c.send(message("half", (b"y" * 78 + b"\r\n") * 2000))
        assert waitFor(lambda: os.listdir(tmp), what="a file in tmp/")
    line = waitForDisconnect(daemon)
    assert waitFor(lambda: os.listdir(tmp) == [], what="tmp/ to be empty")
    assert daemon.incoming() == []
    assert line == "disconnect from unknown[127.0.0.1] ehlo=1 mail=1 rcpt=1 data=0/1 commands=3/4"


def test_swaksRelayDenied(makeDaemon):
    d = makeDaemon(main=UNTRUSTED).start()
    result = swaks(d.port, "--from", "a@example.org", "--to", "x@example.net", "--body", "y")
    assert result.returncode == 24, result.stdout  # swaks: every recipient was refused
    assert "<** 454 4.7.1 <x@example.net>: Relay access denied" in result.stdout
    assert d.incoming() == []


# -- BDAT (CHUNKING) --------------------------------------------------------------------
# swaks 20201014.0 (Debian 12) has no BDAT option, so these use a raw socket.


def test_bdatChunks(daemon):
    """BDAT content is taken verbatim: no dot-unstuffing, "CRLF.CRLF" inside a chunk ends nothing."""
    body = message("bdat", b".leading\r\n..two\r\n.\r\nafter a lone dot\r\n")
    chunks = [body[:10], body[10:100], body[100:]]
    with RawClient(daemon.port) as c:
        lines = c.ehlo("bdat.example")
        assert "CHUNKING" in lines
        assert c.command("MAIL FROM:<a@example.org>")[0] == 250
        assert c.command("RCPT TO:<b@mta.test>")[0] == 250
        sent = 0
        for chunk in chunks[:-1]:
            c.send(b"BDAT %d\r\n" % len(chunk) + chunk)
            sent += len(chunk)
            assert c.reply() == (250, [f"2.0.0 Ok: {sent} bytes"])
        c.send(b"BDAT %d LAST\r\n" % len(chunks[-1]) + chunks[-1])
        code, lines = c.reply()
        assert code == 250, lines
        queueId = queueIdOf(lines[0])
        assert c.command("QUIT")[0] == 221
    envelope, content = readQueued(daemon, queueId)
    received, rest = splitReceived(content)
    checkReceived(received, queueId, "bdat.example", recipient="b@mta.test")
    assert rest == body
    assert envelope.sender == "a@example.org" and envelope.protocol == "ESMTP"


def test_bdatPipelinedInOneWrite(daemon):
    """Two transactions, every command and chunk in one write (RFC 3030 allows it); one BDAT 0 LAST."""
    first = message("one", b"first\r\n")
    second = message("two", b"\r\n.\r\nsecond\r\n")
    stream = (
        b"MAIL FROM:<a@example.org>\r\nRCPT TO:<b@mta.test>\r\nRCPT TO:<c@mta.test>\r\n"
        + b"BDAT %d LAST\r\n" % len(first) + first
        + b"MAIL FROM:<>\r\nRCPT TO:<d@mta.test>\r\n"
        + b"BDAT %d\r\n" % len(second) + second
        + b"BDAT 0 LAST\r\n"
        + b"QUIT\r\n"
    )
    with RawClient(daemon.port) as c:
        c.ehlo()
        c.send(stream)
        replies = [c.reply() for _ in range(9)]
        assert c.closedByPeer()
    codes = [code for code, _ in replies]
    assert codes == [250, 250, 250, 250, 250, 250, 250, 250, 221], replies
    ids = [queueIdOf(replies[3][1][0]), queueIdOf(replies[7][1][0])]
    assert replies[6] == (250, [f"2.0.0 Ok: {len(second)} bytes"])
    (env1, c1), (env2, c2) = readQueued(daemon, ids[0]), readQueued(daemon, ids[1])
    assert splitReceived(c1)[1] == first and splitReceived(c2)[1] == second
    assert [r.address for r in env1.recipients] == ["b@mta.test", "c@mta.test"]
    assert env2.sender == "" and [r.address for r in env2.recipients] == ["d@mta.test"]


def test_bdatBigChunksBinary(daemon):
    """About 1 MB in 64 KB BDAT chunks, one reply per chunk, the last one with the queue id."""
    body = message("binary-ish", (bytes(range(32, 127)) + b"\r\n") * 11000)
    with RawClient(daemon.port) as c:
        c.ehlo()
        assert c.command(f"MAIL FROM:<a@example.org> SIZE={len(body)}")[0] == 250
        assert c.command("RCPT TO:<b@mta.test>")[0] == 250
        offset = 0
        while offset < len(body):
            chunk = body[offset:offset + 65536]
            offset += len(chunk)
            last = b" LAST" if offset == len(body) else b""
            c.send(b"BDAT %d%s\r\n" % (len(chunk), last) + chunk)
            code, lines = c.reply()
            assert code == 250, lines
        queueId = queueIdOf(lines[0])
    assert splitReceived(readQueued(daemon, queueId)[1])[1] == body


def test_bdatBinarymime(daemon):
    """BODY=BINARYMIME with BDAT: NUL, bare CR and bare LF in the body are kept byte for byte."""
    header = message("binary", b"")
    body = bytes(range(256)) * 64 + b"\n.\n\r.\r\x00"
    with RawClient(daemon.port) as c:
        assert "BINARYMIME" in c.ehlo()
        assert c.command("MAIL FROM:<a@example.org> BODY=BINARYMIME")[0] == 250
        assert c.command("RCPT TO:<b@mta.test>")[0] == 250
        assert c.command("DATA")[0] == 503  # BINARYMIME needs BDAT (RFC 3030)
        c.send(b"BDAT %d\r\n" % len(header) + header)
        assert c.reply()[0] == 250
        c.send(b"BDAT %d LAST\r\n" % len(body) + body)
        code, lines = c.reply()
        assert code == 250, lines
        queueId = queueIdOf(lines[0])
    envelope, content = readQueued(daemon, queueId)
    assert envelope.body == "BINARYMIME"
    assert splitReceived(content)[1] == header + body


# -- Postfix's smtp-source ----------------------------------------------------------------


@pytest.mark.parametrize("reuse", [False, True], ids=["connection-per-message", "reused-connections"])
def test_smtpSource(daemon, reuse):
    """
    smtp-source, 20 sessions, 500 messages of 2048 bytes: exactly 500 good files in incoming/.
    Without -d it connects afresh for every message; with -d each session sends many.
    """
    args = ["-s", "20", "-m", "500", "-l", "2048", "-f", "a@example.org", "-t", "b@mta.test", "-M", "source.example"]
    if reuse:
        args.insert(0, "-d")
    started = time.monotonic()
    result = smtpSource(daemon.port, *args, timeout=120)
    elapsed = time.monotonic() - started
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stderr == "", result.stderr
    ids = daemon.incoming()
    assert len(ids) == 500, f"{len(ids)} files in incoming/"
    sizes = set()
    for queueId in ids:
        envelope, content = readQueued(daemon, queueId)
        assert envelope.sender == "a@example.org"
        assert [r.address for r in envelope.recipients] == ["b@mta.test"]
        assert envelope.helo == "source.example" and envelope.protocol == "SMTP"  # smtp-source says HELO
        received, rest = splitReceived(content)
        checkReceived(received, queueId, "source.example", protocol="SMTP", recipient="b@mta.test")
        assert rest.endswith(b"\r\n") and b"\r\n\r\n" in rest
        sizes.add(len(rest))
    # The same 2048-byte payload each time; only smtp-source's headers differ a little.
    assert min(sizes) > 2048 and max(sizes) - min(sizes) < 64, sizes

    def logged():
        lines = [t for _, t in maillogLines(daemon)]
        disconnects = [t for t in lines if t.startswith("disconnect from unknown[127.0.0.1] ")]
        return lines if len(disconnects) >= (500 if not reuse else 20) + 1 else None

    lines = waitFor(logged, what="the disconnect lines")
    queued = [t for t in lines if t.endswith(", nrcpt=1 (queued)")]
    assert sorted(t.split(":")[0] for t in queued) == ids
    connects = [t for t in lines if t == "connect from unknown[127.0.0.1]"]
    if reuse:
        assert len(connects) == 20 + 1  # plus the start-up probe
        sessions = [t for t in lines if t.startswith("disconnect from") and " data=" in t]
        assert len(sessions) == 20
        perSession = [int(re.search(r" data=(\d+) ", t).group(1)) for t in sessions]
        assert sum(perSession) == 500 and max(perSession) > 1, perSession
    else:
        assert len(connects) == 500 + 1
        assert sum(1 for t in lines if t.endswith(" helo=1 mail=1 rcpt=1 data=1 quit=1 commands=5")) == 500
    print(f"smtp-source {'-d ' if reuse else ''}500 messages: {elapsed:.2f}s, {500 / elapsed:.0f} msg/s")


# -- the mail log -------------------------------------------------------------------------


def test_maillogTransaction(daemon):
    """One transaction gives Postfix's smtpd lines (connect, client=, from=, disconnect) and cleanup's
    message-id=, each with a syslog prefix and our pid."""
    with RecordingSMTP(port=daemon.port, local_hostname="client.example") as s:
        s.ehlo()
        s.sendmail("a@example.org", ["b@mta.test"], message())
        queueId = s.lastQueueId
        size = readQueued(daemon, queueId)[0].size
    # The probe that waited for the banner (connect, QUIT) ended before this session began.
    expected = [
        *PROBE_LINES,
        "connect from unknown[127.0.0.1]",
        # the test daemon holds all mail (check_recipient_access static:HOLD)
        "NOQUEUE: hold: RCPT from unknown[127.0.0.1]: <b@mta.test>: Recipient address triggers HOLD action; "
        "from=<a@example.org> to=<b@mta.test> proto=ESMTP helo=<client.example>",
        f"{queueId}: client=unknown[127.0.0.1]",
        f"{queueId}: from=<a@example.org>, size={size}, nrcpt=1 (queued)",
        "disconnect from unknown[127.0.0.1] ehlo=1 mail=1 rcpt=1 data=1 quit=1 commands=5",
    ]
    lines = waitFor(lambda: (l := maillogLines(daemon)) and l[-1][1] == expected[-1] and l, what="disconnect line")
    assert [t for _, t in lines] == expected, lines
    assert [t for _, t in maillogLines(daemon, "mta/cleanup")] == [f"{queueId}: message-id=<{messageId('test', HELLO)}>"]
    assert {pid for pid, _ in lines} == {daemon.process.pid}
    prefix = re.compile(
        r"^(Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) [ 123]\d \d\d:\d\d:\d\d mta\.test "
        rf"mta/smtpd\[{daemon.process.pid}\]: "
    )
    raw = [l for l in daemon.maillogText().splitlines() if "mta/smtpd[" in l]
    assert raw and all(prefix.match(l) for l in raw), raw
    assert any(l.endswith(f"mta/smtpd[{daemon.process.pid}]: {expected[3]}") for l in raw)


def test_maillogRelayReject(makeDaemon):
    d = makeDaemon(main=UNTRUSTED).start()
    with RawClient(d.port) as c:
        c.ehlo("client.example")
        assert c.command("MAIL FROM:<a@example.org>")[0] == 250
        assert c.command("RCPT TO:<x@example.net>")[0] == 454
        assert c.command("QUIT")[0] == 221
    line = (
        "NOQUEUE: reject: RCPT from unknown[127.0.0.1]: 454 4.7.1 <x@example.net>: Relay access denied; "
        "from=<a@example.org> to=<x@example.net> proto=ESMTP helo=<client.example>"
    )
    lines = waitFor(
        lambda: (l := [t for _, t in maillogLines(d)]) and any(t.startswith("disconnect") and "rcpt=0/1" in t
                                                                 for t in l) and l,
        what="the disconnect line",
    )
    assert line in lines, lines
    assert "disconnect from unknown[127.0.0.1] ehlo=1 mail=1 rcpt=0/1 quit=1 commands=3/4" in lines


def test_maillogBareNewlineReject(makeDaemon):
    """A DATA refused for a bare LF is a failed DATA in the disconnect line (data=0/1, commands=3/4)."""
    d = makeDaemon(main=UNTRUSTED).start()
    with RawClient(d.port) as c:
        c.ehlo()
        assert c.command("MAIL FROM:<a@example.org>")[0] == 250
        assert c.command("RCPT TO:<b@mta.test>")[0] == 250
        assert c.command("DATA")[0] == 354
        c.send(b"Subject: x\r\n\r\nbody\n.\n")
        assert c.reply()[0] == 550
        assert c.closedByPeer()
    line = waitForDisconnect(d)
    assert line == "disconnect from unknown[127.0.0.1] ehlo=1 mail=1 rcpt=1 data=0/1 commands=3/4"


def test_maillogCannotBeForged(daemon):
    """CR/LF and control characters from the client never make a line of their own."""
    with RawClient(daemon.port) as c:
        c.ehlo("evil.example\x07")
        assert c.command("MAIL FROM:<a\x01b@example.org>")[0] in (250, 501, 553)
        assert c.command("QUIT")[0] == 221
    waitForDisconnect(daemon, "ehlo=1")
    for line in daemon.maillogText().splitlines():
        assert "\x07" not in line and "\x01" not in line


# -- header cleanup on the way in -------------------------------------------------------------


def test_cleanupDropsAndAddsHeaders(daemon):
    """
    As Postfix's cleanup: Bcc, Content-Length and Return-Path are dropped (message_drop_headers);
    a client on this host gets the missing Message-Id and Date, and the mail log names the id.
    """
    msg = (
        b"Return-Path: <forged@example.org>\r\n"
        b"From: a@example.org\r\n"
        b"To: b@mta.test\r\n"
        b"Bcc: secret@example.net,\r\n other-secret@example.net\r\n"
        b"Content-Length: 12\r\n"
        b"Subject: cleanup\r\n"
        b"\r\n"
        b"Bcc: in the body stays\r\n"
    )
    with RecordingSMTP(port=daemon.port, local_hostname="client.example") as s:
        s.sendmail("a@example.org", ["b@mta.test"], msg)
        queueId = s.lastQueueId
    _, content = readQueued(daemon, queueId)
    rest = splitReceived(content)[1]
    head, body = rest.split(b"\r\n\r\n", 1)
    names = [line.split(b":")[0].lower() for line in head.split(b"\r\n") if line[:1] not in (b" ", b"\t")]
    assert names == [b"from", b"to", b"subject", b"message-id", b"date"], head
    assert f"Message-Id: <{queueId}@mta.test>".encode() in head.split(b"\r\n")
    assert body == b"Bcc: in the body stays\r\n"
    assert b"secret" not in head and b"forged" not in head
    waitFor(lambda: any(t == f"{queueId}: message-id=<{queueId}@mta.test>" for _, t in maillogLines(daemon, "mta/cleanup")),
            what="the message-id line")


def test_bigHeaderSectionRoundTrip(daemon):
    """
    A header section of 1,000 headers and one folded header of about 90 KB (under
    header_size_limit, 102400) crosses many reads and write buffers and comes back unchanged.
    """
    folded = b"X-Long: start" + b"".join(b"\r\n\t" + b"%04d" % i + b"v" * 896 for i in range(100)) + b"\r\n"
    many = b"".join(b"X-Header-%04d: value %d\r\n" % (i, i) for i in range(1000))
    msg = message("headers", b"body\r\n", extra=many + folded)
    with RecordingSMTP(port=daemon.port, local_hostname="client.example") as s:
        s.sendmail("a@example.org", ["b@mta.test"], msg)
        queueId = s.lastQueueId
    assert splitReceived(readQueued(daemon, queueId)[1])[1] == msg


def test_hopCountLimit(daemon):
    """hopcount_limit 50, our own Received counted: 48 Received headers pass, 49 get 554 5.4.0."""
    def hops(n):
        return b"".join(b"Received: from hop%d.example by hop%d.example; Sat, 21 Nov 2026 07:48:25 +0000\r\n"
                        % (i, i + 1) for i in range(n))

    with RecordingSMTP(port=daemon.port, local_hostname="client.example") as s:
        s.ehlo()
        for n, expected in ((48, 250), (49, 554)):
            assert s.mail("a@example.org")[0] == 250
            assert s.rcpt("b@mta.test")[0] == 250
            code, text = s.data(hops(n) + message(f"hops{n}"))
            assert code == expected, (n, code, text)
        assert text == b"5.4.0 Error: too many hops"
    assert len(daemon.incoming()) == 1


# -- SMTP smuggling --------------------------------------------------------------------------
# smtpd_forbid_bare_newline = reject applies to strangers; $mynetworks (smtpd_forbid_bare_newline_
# exclusions) gets "normalize", as in Postfix: a bare LF is a line end inside the message, never
# the end of data.  Either way the smuggled second message must never exist.

SMUGGLED = b"MAIL FROM:<evil@example.org>\r\nRCPT TO:<victim@mta.test>\r\nDATA\r\nSubject: smuggled\r\n\r\nx\r\n.\r\n"
ENDINGS = [b"\n.\n", b"\r.\r\n", b"\n.\r\n", b"\r\n.\n", b"\r\n.\r", b"\r.\n"]
ENDING_IDS = ["LF.LF", "CR.CRLF", "LF.CRLF", "CRLF.LF", "CRLF.CR", "CR.LF"]
SPLITS = ["one-write", "two-writes", "bytewise"]
REJECT_521 = "smtpd_forbid_bare_newline_exclusions =\nsmtpd_forbid_bare_newline_reject_code = 521\n"


def sendSmuggling(c, ending, split):
    """
    Open a message and send C{ending} plus a second transaction, in one write, in two (the
    second after the ending) or with the ending byte by byte; return the first reply after it.
    """
    c.ehlo()
    assert c.command("MAIL FROM:<a@example.org>")[0] == 250
    assert c.command("RCPT TO:<b@mta.test>")[0] == 250
    assert c.command("DATA")[0] == 354
    head = b"Subject: outer\r\n\r\nbody"
    if split == "one-write":
        c.send(head + ending + SMUGGLED)
        return c.reply()
    pieces = [head + ending] if split == "two-writes" else [head] + [bytes([b]) for b in ending]
    try:
        for piece in pieces + [SMUGGLED]:
            c.send(piece)
            time.sleep(0.1 if split == "two-writes" else 0.02)
    except OSError:
        pass  # already closed: fine
    return c.reply()


def noSmuggledMessage(d, expected):
    """The daemon's session ended; incoming/ holds exactly C{expected} and nothing from evil@."""
    waitFor(lambda: any(t.startswith("disconnect from") and "mail=1" in t for _, t in maillogLines(d)),
            what="the disconnect line")
    time.sleep(0.2)  # a commit, had there been one, goes through the thread pool
    assert d.incoming() == expected
    for queueId in expected:
        assert readQueued(d, queueId)[0].sender == "a@example.org"
    assert not any("evil@example.org" in t for _, t in maillogLines(d))


@pytest.mark.parametrize("ending", ENDINGS, ids=ENDING_IDS)
@pytest.mark.parametrize("split", SPLITS)
def test_smugglingFromStrangerIsRejected(makeDaemon, ending, split):
    """
    A stranger's non-standard end of data followed by a second message: the reject code
    (550 5.5.2 by default, Postfix's), the connection is closed, and nothing is queued.
    """
    d = makeDaemon(main=UNTRUSTED).start()
    with RawClient(d.port) as c:
        code, lines = sendSmuggling(c, ending, split)
        assert code == 550 and lines[0].startswith("5.5.2 "), (code, lines)
        assert c.closedByPeer()
    noSmuggledMessage(d, [])
    assert any(t.startswith("reject: bare <LF> received") for _, t in maillogLines(d))


@pytest.mark.parametrize("ending", ENDINGS[:2], ids=ENDING_IDS[:2])
def test_smugglingRejectCode521(makeDaemon, ending):
    """With no exclusions and reject code 521, even 127.0.0.1 gets 521 and a close."""
    d = makeDaemon(main=REJECT_521).start()
    with RawClient(d.port) as c:
        code, lines = sendSmuggling(c, ending, "one-write")
        assert code == 521 and lines[0].startswith("5.5.2 "), (code, lines)
        assert c.closedByPeer()
    noSmuggledMessage(d, [])


@pytest.mark.parametrize("ending", ENDINGS, ids=ENDING_IDS)
@pytest.mark.parametrize("split", SPLITS)
def test_smugglingFromMynetworksIsNormalized(daemon, ending, split):
    """
    From $mynetworks the bare LF is normalized: the odd "." line does not end the message, the
    would-be second message is text of the first, and the message ends at the real CRLF.CRLF.
    """
    with RawClient(daemon.port) as c:
        code, lines = sendSmuggling(c, ending, split)
        assert code == 250, (code, lines)
        queueId = queueIdOf(lines[0])
        assert c.command("QUIT")[0] == 221
    noSmuggledMessage(daemon, [queueId])
    envelope, content = readQueued(daemon, queueId)
    assert [r.address for r in envelope.recipients] == ["b@mta.test"]
    rest = splitReceived(content)[1]
    assert b"MAIL FROM:<evil@example.org>\r\nRCPT TO:<victim@mta.test>\r\nDATA\r\nSubject: smuggled\r\n" in rest
    assert rest.endswith(b"\r\nx\r\n")
    assert not re.search(rb"(?<!\r)\n", rest), "a bare LF was stored"


@pytest.mark.parametrize("line", [b"NOOP\n", b"MAIL FROM:<a@example.org>\n", b"NOOP\rRSET\r\n"],
                         ids=["LF", "MAIL-LF", "CR"])
def test_bareNewlineInCommandFromStranger(makeDaemon, line):
    d = makeDaemon(main=UNTRUSTED).start()
    with RawClient(d.port) as c:
        c.ehlo()
        c.send(line + b"QUIT\r\n")
        code, lines = c.reply()
        assert code == 550 and lines[0].startswith("5.5.2 "), (code, lines)
        assert c.closedByPeer()


def test_smugglingAfterGoodMessageInSameSession(makeDaemon):
    """A good message, then a smuggling attempt: the first is queued once, nothing else."""
    d = makeDaemon(main=UNTRUSTED).start()
    good = message("good", b"fine\r\n")
    with RawClient(d.port) as c:
        c.ehlo()
        c.send(b"MAIL FROM:<a@example.org>\r\nRCPT TO:<b@mta.test>\r\nDATA\r\n")
        assert [c.reply()[0] for _ in range(3)] == [250, 250, 354]
        c.send(good + b".\r\n")
        code, lines = c.reply()
        assert code == 250
        queueId = queueIdOf(lines[0])
        c.send(b"MAIL FROM:<a@example.org>\r\nRCPT TO:<b@mta.test>\r\nDATA\r\n")
        assert [c.reply()[0] for _ in range(3)] == [250, 250, 354]
        c.send(b"Subject: outer\r\n\r\nbody\n.\n" + SMUGGLED)
        assert c.reply()[0] == 550
        assert c.closedByPeer()
    time.sleep(0.2)
    assert d.incoming() == [queueId]
    assert splitReceived(readQueued(d, queueId)[1])[1] == good


# -- everything left in the queue parses ---------------------------------------------------------


def test_everyQueuedFileParses(daemon):
    """After a mix of clients, every file in incoming/ is a complete queue file; tmp/ is empty."""
    assert swaks(daemon.port, *SWAKS_BASIC).returncode == 0
    with RecordingSMTP(port=daemon.port) as s:
        for i in range(5):
            s.sendmail("a@example.org", ["b@mta.test"], message(f"n{i}"))
    assert smtpSource(daemon.port, "-s", "5", "-m", "20", "-f", "a@example.org", "-t", "b@mta.test").returncode == 0
    ids = daemon.incoming()
    assert len(ids) == 26
    for queueId in ids:
        readQueueFile(os.path.join(daemon.queue, "hold", queueId), verifyContent=True)
    assert os.listdir(os.path.join(daemon.queue, "tmp")) == []


# -- half-closed connections: Exim, and a raw socket ---------------------------------------------


def readToEnd(c, timeout=10):
    """Every reply until the server closes: [(code, lines)]."""
    c.sock.settimeout(timeout)
    replies = []
    while True:
        code, lines = c.reply()
        if code is None:
            return replies
        replies.append((code, lines))


@pytest.mark.parametrize("command", ["DATA", "BDAT"])
def test_regression_halfCloseAfterTheLastCommandGetsEveryReply(daemon, command):
    """
    The client sends its last commands and shuts down its sending side (shutdown(SHUT_WR)):
    every reply still comes, then the close, and the message is queued once.
    """
    body = message(f"half-close {command}")
    with RawClient(daemon.port) as c:
        c.ehlo()
        if command == "DATA":
            c.send(b"MAIL FROM:<a@example.org>\r\nRCPT TO:<b@mta.test>\r\nDATA\r\n")
            assert [c.reply()[0] for _ in range(3)] == [250, 250, 354]
            c.send(body + b".\r\nQUIT\r\n")
        else:
            c.send(b"MAIL FROM:<a@example.org>\r\nRCPT TO:<b@mta.test>\r\n"
                   + b"BDAT %d LAST\r\n" % len(body) + body + b"QUIT\r\n")
        c.sock.shutdown(socket.SHUT_WR)
        replies = readToEnd(c)
    codes = [code for code, _ in replies]
    assert codes == ([250, 221] if command == "DATA" else [250, 250, 250, 221]), replies
    queueId = queueIdOf(replies[-2][1][0])
    assert daemon.incoming() == [queueId]
    assert splitReceived(readQueued(daemon, queueId)[1])[1] == body


def test_halfCloseInsideTheMessageQueuesNothing(daemon):
    with RawClient(daemon.port) as c:
        c.ehlo()
        c.send(b"MAIL FROM:<a@example.org>\r\nRCPT TO:<b@mta.test>\r\nDATA\r\n")
        assert [c.reply()[0] for _ in range(3)] == [250, 250, 354]
        partial = b"Subject: cut\r\n\r\nno end"
        c.send(partial)
        c.sock.shutdown(socket.SHUT_WR)
        assert readToEnd(c) == []
    line = waitFor(lambda: [t for _, t in maillogLines(daemon) if "lost connection after DATA" in t], what="lost")
    assert re.fullmatch(rf"[0-9A-Za-z]{{14}}: lost connection after DATA \({len(partial)} bytes\) "
                        r"from unknown\[127\.0\.0\.1\]", line[0]), line
    time.sleep(0.2)
    assert daemon.incoming() == []


@pytest.mark.parametrize("chunking", [False, True], ids=["DATA", "BDAT"])
def test_regression_eximDeliversExactlyOnce(daemon, chunking):
    """
    Exim sends "." (or the last BDAT chunk) and QUIT in one write and half-closes.  mta used
    to answer nothing: Exim deferred ("Remote host closed connection in response to end of
    data") and sent the message again, so every message arrived twice.  Now Exim logs it
    delivered, with our queue id, and mta holds exactly one copy.
    """
    exim = Exim(daemon.port, chunking=chunking)
    try:
        token = hashlib.sha1(os.urandom(8)).hexdigest()
        text = (f"From: Alice <a@example.org>\nTo: b@mta.test\nSubject: from exim {token}\n\n"
                f"Hello from Exim.\n.\n..dots\n").encode()
        result = exim.send("a@example.org", ["b@mta.test"], text)
        assert result.returncode == 0, (result.stdout, result.stderr, exim.mainlog())
        log = exim.mainlog()
        assert "=> b@mta.test R=smarthost T=mta H=127.0.0.1 [127.0.0.1]" in log, log
        assert " Completed" in log, log
        assert " == " not in log and "defer" not in log and "closed connection" not in log, log
        ids = waitFor(daemon.incoming, what="the queued message")
        time.sleep(0.5)  # a second copy, had Exim retried, would be here by now
        assert len(daemon.incoming()) == 1, daemon.incoming()
        queueId = ids[0]
        assert f'C="250 2.0.0 Ok: queued as {queueId}"' in log, log
        envelope, content = readQueued(daemon, queueId)
        assert envelope.sender == "a@example.org" and [r.address for r in envelope.recipients] == ["b@mta.test"]
        assert envelope.helo == "exim.test"
        assert f"Subject: from exim {token}\r\n".encode() in content
        assert content.endswith(b"\r\nHello from Exim.\r\n.\r\n..dots\r\n")  # unstuffed once, CRLF
        line = waitForDisconnect(daemon, "mail=1")
        assert " quit=1 " in line and ("bdat=1" in line) is chunking and ("data=1" in line) is not chunking, line
    finally:
        exim.cleanup()


# -- slow clients: the per-request deadline --------------------------------------------------------


def trickle(c, data, pause):
    """Send C{data} a byte at a time; True if the server closed the connection on the way."""
    for i in range(len(data)):
        try:
            c.send(data[i : i + 1])
        except OSError:
            return True
        time.sleep(pause)
    return False


def test_regression_tricklingClientsAreCutOff(makeDaemon):
    """smtpd_timeout = 2s: a command, or message content, at a few bytes a second is cut off near 2 s."""
    d = makeDaemon(main="smtpd_timeout = 2s\n").start()
    with RawClient(d.port) as c:
        c.ehlo()
        started = time.monotonic()
        trickle(c, b"MAIL FROM:<alice@example.org>\r\n", 0.25)  # 8 s if it were let through
        assert c.reply() == (421, ["4.4.2 mta.test Error: timeout exceeded"])
        assert 1.5 < time.monotonic() - started < 4
        assert c.closedByPeer()
    with RawClient(d.port) as c:
        c.ehlo()
        c.send(b"MAIL FROM:<a@example.org>\r\nRCPT TO:<b@mta.test>\r\nDATA\r\n")
        assert [c.reply()[0] for _ in range(3)] == [250, 250, 354]
        started = time.monotonic()
        trickle(c, b"Subject: slow\r\n\r\n" + b"x" * 40 + b"\r\n.\r\n", 0.2)
        assert c.reply() == (421, ["4.4.2 mta.test Error: timeout exceeded"])
        assert 1.5 < time.monotonic() - started < 4
    lines = [t for _, t in maillogLines(d)]
    assert "NOQUEUE: timeout after EHLO from unknown[127.0.0.1]" in lines
    assert any(re.fullmatch(r"[0-9A-Za-z]{14}: timeout after DATA \(\d+ bytes\) from unknown\[127\.0\.0\.1\]", t)
               for t in lines), lines
    assert d.incoming() == []


def test_overlongCommandInOneWrite(daemon):
    with RawClient(daemon.port) as c:
        c.send(b"NOOP " + b"x" * 20000 + b"\r\nHELO " + b"h" * 1000 + b"\r\n")
        assert c.reply() == (500, ["5.5.2 mta.test Error: command too long"])
        assert c.reply()[0] == 501
        assert c.command("NOOP") == (250, ["2.0.0 Ok"])


# -- ETRN with the queue manager's flush ---------------------------------------------------------------


def test_etrnFlushesDeferredMail(makeDaemon):
    """
    A message for example.net is deferred (its relay is down); the relay comes up, and ETRN
    example.net has the queue manager (QueueManager.flushSite) deliver it at once, long before
    the next queue run.
    """
    from tests.integration.peerservers import SmtpSink, freePort

    port = freePort()
    d = makeDaemon(
        main=(
            f"relayhost = [127.0.0.1]:{port}\nfast_flush_domains = example.net\n"
            "queue_run_delay = 1h\nminimal_backoff_time = 1h\nmaximal_backoff_time = 2h\n"
            "smtp_connect_timeout = 2s\n"
        ),
        hold=False,
    ).start()
    with RecordingSMTP(port=d.port, local_hostname="client.example") as s:
        s.sendmail("a@example.org", ["r@example.net"], message("etrn"))
        queueId = s.lastQueueId

    def delivery(status):
        return [t for t in d.maillogText().splitlines() if f"{queueId}: to=<r@example.net>" in t and f"status={status}" in t]

    waitFor(lambda: delivery("deferred"), timeout=30, what="the deferred delivery")
    waitFor(lambda: os.path.exists(os.path.join(d.queue, "deferred", queueId)), what="the file in deferred/")
    sink = SmtpSink("127.0.0.1", port).start()
    try:
        with RawClient(d.port) as c:
            c.ehlo()
            assert c.command("ETRN example.org") == (459, ["<example.org>: service unavailable"])
            assert c.command("ETRN example.net") == (250, ["Queuing started"])
            assert c.command("QUIT")[0] == 221
        waitFor(lambda: delivery("sent"), timeout=30, what="the delivery after ETRN")
        assert any(b"Subject: etrn" in m for m in sink.messages())
    finally:
        sink.stop()
