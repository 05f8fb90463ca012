"""Postmaster transcript notices (notify_classes) from a real ``twistd mta``, delivered to a Maildir."""

import email
import email.policy
import socket

import pytest

from tests.integration.daemon import waitFor
from tests.integration.test_delivery import maildirFiles

pytestmark = pytest.mark.integration

# 127.0.0.1 is kept out of mynetworks, so a recipient elsewhere is a relay attempt (policy).
OUTSIDER = "mynetworks = 192.0.2.0/24\n"


def converse(port, lines):
    """One session, one command at a time; the last line of each reply (the greeting first)."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        f = s.makefile("rb")
        replies = [f.readline()]
        for line in lines:
            s.sendall(line)
            reply = [f.readline()]
            while reply[-1][3:4] == b"-":
                reply.append(f.readline())
            replies.append(reply[-1])
    return replies


def badSession(port):
    """A client that makes a protocol error (a command with NUL and 8-bit octets) and meets a policy reject."""
    return converse(port, [b"EHLO client.example\r\n", b"XYZZY \x00\xff\r\n", b"MAIL FROM:<sender@example.org>\r\n",
                           b"RCPT TO:<someone@elsewhere.example>\r\n", b"QUIT\r\n"])


def test_protocolAndPolicyErrorsReachThePostmastersMaildir(makeMailhost):
    d = makeMailhost(OUTSIDER + "notify_classes = protocol, policy\nerror_notice_recipient = u@box.example\n").start()
    replies = badSession(d.port)
    assert replies[2].startswith(b"500 5.5.2") and replies[4].startswith(b"454 4.7.1")
    files = waitFor(lambda: maildirFiles(d.base, "box.example/u"), what="the notice in u's Maildir")
    assert len(files) == 1
    data = open(files[0], "rb").read()
    message = email.message_from_bytes(data, policy=email.policy.default)
    assert message["Return-Path"] == "<double-bounce@mta.test>"
    assert message["Delivered-To"] == "u@box.example"
    assert message["From"] == "Mail Delivery System <MAILER-DAEMON@mta.test>"
    assert message["To"] == "Postmaster <u@box.example>"
    assert message["Subject"] == "mta SMTP server: errors from unknown[127.0.0.1]"
    body = message.get_content()
    assert body.startswith("Transcript of session follows.\n\n Out: 220 mta.test ESMTP mta\n In:  EHLO client.example\n")
    assert " In:  XYZZY ??\n Out: 500 5.5.2 Error: invalid characters in command\n" in body
    assert " In:  RCPT TO:<someone@elsewhere.example>\n Out: 454 4.7.1 <someone@elsewhere.example>: Relay access" in body
    assert body.endswith(" In:  QUIT\n Out: 221 2.0.0 Bye\n\n\nFor other details, see the local mail logfile\n")
    log = waitFor(lambda: "removed" in d.maillogText() and d.maillogText(), what="the notice removed")
    lines = log.splitlines()
    [cleanup] = [line for line in lines if "mta/cleanup" in line and "message-id=<" in line]
    newId = cleanup.split("]: ", 1)[1].split(":", 1)[0]
    assert any("mta/qmgr" in line and f"{newId}: from=<double-bounce@mta.test>, size=" in line for line in lines)
    assert any(f"{newId}: to=<u@box.example>" in line and "status=sent (delivered to maildir)" in line
               for line in lines)


def test_theDefaultClassesSendNothingForTheSameSession(makeMailhost):
    d = makeMailhost(OUTSIDER + "error_notice_recipient = u@box.example\n").start()  # resource, software
    replies = badSession(d.port)
    assert replies[2].startswith(b"500 5.5.2") and replies[4].startswith(b"454 4.7.1")
    # A message behind it: once it is delivered, a notice queued at the end of the first session
    # would have been delivered, or at least taken up by the queue manager, too.
    replies = converse(d.port, [b"HELO c\r\n", b"MAIL FROM:<sender@example.org>\r\n", b"RCPT TO:<v@box.example>\r\n",
                                b"DATA\r\n", b"Subject: after\r\n\r\nhi\r\n.\r\n", b"QUIT\r\n"])
    assert replies[5].startswith(b"250 2.0.0 Ok: queued as")
    waitFor(lambda: maildirFiles(d.base, "box.example/v"), what="the message after the session")
    waitFor(lambda: "removed" in d.maillogText(), what="the message removed")
    assert maildirFiles(d.base, "box.example/u") == []
    assert "double-bounce" not in d.maillogText()
