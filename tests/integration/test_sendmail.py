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


# mta-sendmail as cron, PHP or mailx run it: no -C, from their own working
# directory.  The default location (/etc/mta/mta.ini) is pointed at a file that
# does not exist, so that a configuration of this machine cannot take part.
SENDMAIL = ("import sys, mta.config.loader as loader; loader.DEFAULT_CONFIG = sys.argv.pop(1); "
            "from mta.cli.sendmail import main; raise SystemExit(main())")


def sendmailAsAnApplication(cwd, *args, stdin=b"", mtaConfig=None, default="/nonexistent/mta/mta.ini"):
    env = environment()
    env.pop("MTA_CONFIG", None)
    if mtaConfig is not None:
        env["MTA_CONFIG"] = mtaConfig
    return subprocess.run([sys.executable, "-c", SENDMAIL, default, *args],
                          input=stdin, capture_output=True, env=env, cwd=cwd, timeout=60)


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
    mailhost.start()  # the first start creates the queue (mta-sendmail never does)
    code, out, err = mailhost.stop()
    assert code == 0, err
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


# -- from another working directory: the configuration found as every mta program finds it ----


def test_fromAnotherDirectoryWithMtaConfig(mailhost, tmp_path):
    """cron's working directory is not the daemon's: $MTA_CONFIG (no -C) finds the real queue."""
    mailhost.start()
    cron = tmp_path / "cron-home"
    cron.mkdir()
    result = sendmailAsAnApplication(cron, "u@box.example", stdin=b"Subject: from cron\n\nvia MTA_CONFIG\n",
                                     mtaConfig=mailhost.config)
    assert (result.returncode, result.stdout, result.stderr) == (0, b"", b"")
    [path] = waitFor(lambda: maildirFiles(mailhost.base, "box.example/u"), what="the Maildir delivery")
    assert open(path, "rb").read().endswith(b"\n\nvia MTA_CONFIG\n")
    assert os.listdir(cron) == []  # nothing made where it ran
    listing = sendmailAsAnApplication(cron, "-bp", mtaConfig=mailhost.config)  # mailq finds the same queue
    # 0 and mailq's text: it read this queue (without it: "no queue directory", exit 1)
    assert listing.returncode == 0, listing
    assert listing.stdout == b"Mail queue is empty\n" or listing.stdout.startswith(b"-Queue ID-  --Size--"), listing


def test_fromAnotherDirectoryWithTheDefaultLocation(mailhost, tmp_path):
    """No -C and no $MTA_CONFIG: the file at the default location (here a stand-in for /etc/mta/mta.ini)."""
    mailhost.start()
    cron = tmp_path / "cron-home"
    cron.mkdir()
    result = sendmailAsAnApplication(cron, "v@box.example", stdin=b"Subject: x\n\nvia the default\n",
                                     default=mailhost.config)
    assert (result.returncode, result.stderr) == (0, b"")
    [path] = waitFor(lambda: maildirFiles(mailhost.base, "box.example/v"), what="the Maildir delivery")
    assert open(path, "rb").read().endswith(b"\n\nvia the default\n")
    assert os.listdir(cron) == []


def test_fromAnotherDirectoryWithoutConfigurationFailsLoudly(tmp_path):
    """The bug: with the embedded defaults, ./var/spool/mta/maildrop was created wherever it ran, exit 0."""
    cron = tmp_path / "cron-home"
    cron.mkdir()
    result = sendmailAsAnApplication(cron, "root@example.org", stdin=b"Subject: lost?\n\nno\n")
    assert result.returncode == 78  # EX_CONFIG
    assert result.stdout == b""
    assert result.stderr.decode() == (
        f"mta-sendmail: fatal: there is no queue: {cron}/var/spool/mta/maildrop does not exist; no configuration "
        "file was found (no -C, $MTA_CONFIG or /nonexistent/mta/mta.ini) and the embedded default queue_directory "
        f"var/spool/mta is relative to the current directory {cron}; the message was not queued\n")
    assert os.listdir(cron) == []  # no queue of its own


def test_standaloneModeWithoutAQueueRefusesBeforeTheGreeting(tmp_path):
    cron = tmp_path / "cron-home"
    cron.mkdir()
    result = sendmailAsAnApplication(cron, "-bs", stdin=b"EHLO x\r\nQUIT\r\n")
    assert (result.returncode, result.stdout) == (78, b"")
    assert b"there is no queue" in result.stderr and b"Traceback" not in result.stderr
    assert os.listdir(cron) == []


def test_aQueueThatWasNeverStarted(makeMailhost, tmp_path):
    """An absolute queue_directory that the daemon has not created yet: 75, the caller keeps the message."""
    mailhost = makeMailhost()
    result = sendmailAsAnApplication(tmp_path, "u@box.example", stdin=b"Subject: early\n\nx\n",
                                     mtaConfig=mailhost.config)
    assert result.returncode == 75
    assert result.stderr.decode() == (
        f"mta-sendmail: fatal: there is no queue: {mailhost.queue}/maildrop does not exist (queue_directory of "
        f"{mailhost.config} (from $MTA_CONFIG)): mta has not been started on this queue yet; the message was not "
        "queued\n")
    assert not os.path.exists(mailhost.queue)


def test_controlCharactersInTheSenderAreRefused(mailhost):
    """-f $'a@b\\r\\nRCPT TO:<x@y>' must not make x@y an envelope address: refused, exit 64."""
    mailhost.start()
    result = sendmail(mailhost, "-f", "a@b\r\nRCPT TO:<v@box.example>", "u@box.example",
                      stdin=b"Subject: injected\n\nx\n")
    assert result.returncode == 64
    assert result.stderr == (b"mta-sendmail: fatal: argument 4 (a@b\\r\\nRCPT TO:<v@box.example>) contains the "
                             b"control character \\r; refused, nothing was queued\n")
    assert maildrop(mailhost) == []
