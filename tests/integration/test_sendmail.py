"""mta-sendmail -> maildrop/ -> pickup -> queue manager -> virtual Maildir, with a real daemon."""

import os
import pwd
import subprocess
import sys

import pytest

from mta.queue.queueid import isValidQueueId
from tests.integration.daemon import environment
from tests.integration.test_delivery import maildirFiles, waitFor

pytestmark = pytest.mark.integration


def sendmail(daemon, *args, stdin=b""):
    return subprocess.run(
        [sys.executable, "-m", "mta.cli.sendmail", "-C", daemon.config, *args],
        input=stdin, capture_output=True, env=environment(), cwd=daemon.directory, timeout=60,
    )


def maildrop(daemon):
    path = os.path.join(daemon.queue, "maildrop")
    return sorted(os.listdir(path)) if os.path.isdir(path) else []


@pytest.fixture
def mailhost(makeMailhost):
    """A daemon (not started) with virtual Maildir delivery for u@ and v@box.example."""
    return makeMailhost()


MESSAGE = (
    b"From: Cron Daemon <cron@mta.test>\n"
    b"To: Mailbox U <u@box.example>,\n"
    b"    undisclosed:;\n"
    b"Bcc: v@box.example\n"
    b"Subject: cron output\n"
    b"\n"
    b"hello from cron\n"
    b"..a line with dots\n"
)


def test_sendmailWhileTheDaemonIsStopped(mailhost):
    """The acceptance case: cron submits while mta is down; the mail is delivered once it starts."""
    result = sendmail(mailhost, "-t", stdin=MESSAGE)
    assert (result.returncode, result.stdout, result.stderr) == (0, b"", b"")
    [name] = maildrop(mailhost)
    assert isValidQueueId(name)
    assert oct(os.stat(os.path.join(mailhost.queue, "maildrop")).st_mode & 0o777) == "0o700"

    mailhost.start()
    files = waitFor(lambda: maildirFiles(mailhost.base, "box.example/u") and maildirFiles(mailhost.base, "box.example/v"),
                    what="both Maildir deliveries")
    assert files
    data = open(maildirFiles(mailhost.base, "box.example/u")[0], "rb").read()
    assert data.startswith(f"Return-Path: <{pwd.getpwuid(os.getuid()).pw_name}@mta.test>\n".encode())
    assert f"\nReceived: by mta.test (mta, from userid {os.getuid()})\n\tid ".encode() in data
    assert b"\nFrom: Cron Daemon <cron@mta.test>\nTo: Mailbox U <u@box.example>,\n    undisclosed:;\n" in data
    assert b"Bcc" not in data and b"\nMessage-Id: <" in data and b"\nDate: " in data
    assert data.endswith(b"\n\nhello from cron\n..a line with dots\n")
    assert waitFor(lambda: maildrop(mailhost) == [], what="an empty maildrop/")
    log = waitFor(lambda: "status=sent" in mailhost.maillogText() and mailhost.maillogText(), what="the log")
    assert "mta/pickup[" in log and f": uid={os.getuid()} from=<" in log


def test_sendmailWhileTheDaemonRuns(mailhost):
    mailhost.start()
    result = sendmail(mailhost, "-f", "sender@example.org", "-F", "Some One", "u@box.example",
                      stdin=b"Subject: now\r\n\r\nline\r\n.\r\nnot part of the message\r\n")
    assert result.returncode == 0, result.stderr
    [path] = waitFor(lambda: maildirFiles(mailhost.base, "box.example/u"), what="the Maildir delivery")
    data = open(path, "rb").read()
    assert data.startswith(b"Return-Path: <sender@example.org>\n")
    assert b"\nSubject: now\nFrom: Some One <sender@example.org>\n" in data
    assert data.endswith(b"\n\nline\n")
    assert waitFor(lambda: maildrop(mailhost) == [], what="an empty maildrop/")


def test_minusIKeepsTheDotLine(mailhost):
    mailhost.start()
    result = sendmail(mailhost, "-oi", "u@box.example", stdin=b"Subject: dots\n\nbefore\n.\nafter\n")
    assert result.returncode == 0, result.stderr
    [path] = waitFor(lambda: maildirFiles(mailhost.base, "box.example/u"), what="the Maildir delivery")
    assert open(path, "rb").read().endswith(b"\n\nbefore\n.\nafter\n")


def test_standaloneSmtpWhileTheDaemonRuns(mailhost):
    mailhost.start()
    dialogue = (b"EHLO client.example\r\nMAIL FROM:<bs@example.org>\r\nRCPT TO:<v@box.example>\r\nDATA\r\n"
                b"Subject: via -bs\r\n\r\nstand-alone\r\n.\r\nQUIT\r\n")
    result = sendmail(mailhost, "-bs", stdin=dialogue)
    assert result.returncode == 0, result.stderr
    out = result.stdout.decode()
    assert out.startswith("220 mta.test ESMTP mta\r\n") and "250 2.0.0 Ok: queued as " in out
    assert out.endswith("221 2.0.0 Bye\r\n")
    [path] = waitFor(lambda: maildirFiles(mailhost.base, "box.example/v"), what="the Maildir delivery")
    data = open(path, "rb").read()
    assert b"\nReceived: from client.example (localhost [127.0.0.1])\n\tby mta.test (mta) with ESMTP id " in data
    assert data.endswith(b"\n\nstand-alone\n")


def test_badAddressesLeaveNothing(mailhost):
    result = sendmail(mailhost, "u@box.example", "broken@", stdin=b"Subject: x\n\nhi\n")
    assert result.returncode == 64
    assert result.stderr.decode().startswith("mta-sendmail: fatal: bad recipient address 'broken@'")
    assert [n for n in maildrop(mailhost) if not n.endswith(".tmp")] == [] and maildrop(mailhost) == []
