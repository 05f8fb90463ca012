"""Helpers for the integration tests that drive a real ``twistd mta`` with real clients.

Clients: Python's smtplib (RecordingSMTP keeps the DATA replies), a
raw-socket SMTP client, swaks and Postfix's smtp-source.  Readers for the queue files the
daemon leaves in ``incoming/`` and for its mail log.  Every network call has a timeout and
every subprocess runs under one, so no test can hang.
"""

import os
import re
import shutil
import smtplib
import socket
import subprocess

from mta.queue.fileformat import readQueueFile
from tests.integration.daemon import waitFor as _waitFor

# How long any single network read or subprocess may take before the test fails.
TIMEOUT = 30

QUEUED = re.compile(r"\b2\.0\.0 Ok: queued as ([0-9A-Za-z]{14})\b")

# Nov 21 07:48:25 mta.test mta/smtpd[4242]: text
MAILLOG_LINE = re.compile(
    r"^(?P<stamp>(?:Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) [ 123]\d \d\d:\d\d:\d\d) "
    r"(?P<host>\S+) (?P<program>[a-z]+/[a-z]+)\[(?P<pid>\d+)\]: (?P<text>.*)$"
)


def queueIdOf(reply):
    """The queue id in a ``250 2.0.0 Ok: queued as ID`` reply text (bytes or str); AssertionError if none."""
    if isinstance(reply, bytes):
        reply = reply.decode("utf-8", "replace")
    match = QUEUED.search(reply)
    assert match, f"no 'queued as ID' in {reply!r}"
    return match.group(1)


class RecordingSMTP(smtplib.SMTP):
    """smtplib.SMTP that keeps the reply to each DATA (sendmail() throws it away)."""

    def __init__(self, host="127.0.0.1", port=0, timeout=TIMEOUT, **kwargs):
        self.dataReplies = []
        super().__init__(host, port, timeout=timeout, **kwargs)

    def data(self, msg):
        code, text = super().data(msg)
        self.dataReplies.append((code, text))
        return code, text

    @property
    def lastQueueId(self):
        code, text = self.dataReplies[-1]
        assert code == 250, (code, text)
        return queueIdOf(text)


# -- the queue ----------------------------------------------------------------


def queuePath(daemon, queueId, queue="hold"):
    return os.path.join(daemon.queue, queue, queueId)


def readQueued(daemon, queueId):
    """(Envelope, content bytes) of incoming/ID, parsed and CRC-checked."""
    path = queuePath(daemon, queueId)
    parsed = readQueueFile(path, verifyContent=True)
    with open(path, "rb") as f:
        f.seek(parsed.contentOffset)
        content = f.read(parsed.contentLength)
    assert len(content) == parsed.contentLength
    return parsed.envelope, content


def splitReceived(content):
    """Split queued content into (our Received header, the rest); the header must come first."""
    assert content.startswith(b"Received: "), content[:200]
    # A header field ends at a CRLF not followed by white space (folding).
    match = re.search(rb"\r\n(?![ \t])", content)
    assert match, content[:200]
    return content[: match.end()], content[match.end() :]


def checkReceived(header, queueId, helo, protocol="ESMTP", recipient=None, hostname="mta.test"):
    """Our Received header names the client, us, the protocol and the queue id (RFC 5321 4.4)."""
    text = header.decode("utf-8")
    unfolded = re.sub(r"\r\n[ \t]+", " ", text).rstrip("\r\n")
    expected = (
        rf"Received: from {re.escape(helo)} \(unknown \[127\.0\.0\.1\]\) "
        rf"by {re.escape(hostname)} \(mta\) with {protocol} id {queueId}"
    )
    if recipient is not None:
        expected += rf" for <{re.escape(recipient)}>"
    # The date as Postfix writes it: "Sat, 21 Nov 2026 08:13:31 +0000 (UTC)" (the zone name optional).
    expected += r"; \w{3}, [ \d]?\d \w{3} \d{4} \d\d:\d\d:\d\d [+-]\d{4}( \([^()\r\n]*\))?"
    assert re.fullmatch(expected, unfolded), unfolded
    assert "\r\n" in text and not re.search(r"(?<!\r)\n", text), "the Received header must use CRLF line ends"



def waitFor(predicate, timeout=10.0, interval=0.02, what="condition"):
    """tests.integration.daemon.waitFor with this module's shorter defaults."""
    return _waitFor(predicate, timeout=timeout, what=what, interval=interval)



# -- a raw SMTP client -----------------------------------------------------------


class RawClient:
    """A socket speaking SMTP byte for byte, for what smtplib will not send."""

    def __init__(self, port, timeout=10):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.file = self.sock.makefile("rb")
        self.banner = self.reply()

    def close(self):
        self.file.close()
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def send(self, data):
        self.sock.sendall(data)

    def reply(self):
        """One (possibly multi-line) reply: (code, [text lines]); (None, []) at end of stream."""
        lines = []
        while True:
            line = self.file.readline(4096)
            if not line:
                assert not lines, f"connection closed inside a reply: {lines!r}"
                return None, []
            assert line.endswith(b"\r\n"), f"reply line without CRLF: {line!r}"
            code, sep, text = line[:3], line[3:4], line[4:-2]
            lines.append(text.decode("utf-8", "replace"))
            if sep == b" " or line == code + b"\r\n":
                return int(code), lines
            assert sep == b"-", f"bad reply line {line!r}"

    def command(self, line):
        if isinstance(line, str):
            line = line.encode("utf-8")
        self.send(line + b"\r\n")
        return self.reply()

    def ehlo(self, name="client.example"):
        code, lines = self.command(f"EHLO {name}")
        assert code == 250, (code, lines)
        return lines

    def closedByPeer(self, timeout=5.0):
        """True if the server closes the connection (reads nothing more) within C{timeout}."""
        self.sock.settimeout(timeout)
        try:
            rest = self.file.read()
        except ConnectionResetError:
            return True  # closed with our unread input still in its buffer: a reset
        except socket.timeout:
            return False
        assert rest == b"", f"more after the last reply: {rest!r}"
        return True


# -- external programs -----------------------------------------------------------


def requireProgram(path):
    """The path of a program the suite needs; scripts/test installs them (fail, never skip)."""
    found = shutil.which(path) or (path if os.access(path, os.X_OK) else None)
    assert found, f"{path} is not installed; scripts/test installs swaks and postfix"
    return found


def swaks(port, *args, timeout=TIMEOUT):
    """Run swaks against 127.0.0.1:port; CompletedProcess with text output."""
    return subprocess.run(
        [requireProgram("swaks"), "--server", "127.0.0.1", "--port", str(port), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def swaksSentData(transcript):
    """
    The message text swaks sent after 354, as it appeared on the wire (dot-stuffed,
    CRLF line ends, without the final "."), read from its " -> " transcript lines.
    """
    lines = transcript.split("\n")
    start = next(i for i, line in enumerate(lines) if line.startswith("<-  354 "))
    data = []
    # With --pipeline the DATA command and its replies come before the content lines;
    # the content is every " -> " line after the 354 up to the lone ".".
    for line in lines[start + 1 :]:
        if line.startswith(" -> "):
            text = line[4:]
            if text == ".":
                return "".join(t + "\r\n" for t in data).encode("utf-8")
            data.append(text)
    raise AssertionError(f"no end of data in swaks transcript:\n{transcript}")


def undotStuff(wire):
    """Content from dot-stuffed wire text (RFC 5321 4.5.2)."""
    return re.sub(rb"(?m)^\.", b"", wire) if wire else wire


def smtpSource(port, *args, timeout=TIMEOUT):
    """Run Postfix's smtp-source against 127.0.0.1:port; CompletedProcess with text output."""
    return subprocess.run(
        [requireProgram("/usr/sbin/smtp-source"), *args, f"127.0.0.1:{port}"],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


# -- the mail log -----------------------------------------------------------------


def maillogLines(daemon, program="mta/smtpd"):
    """(pid, text) of each complete mail-log line of C{program}; every line must have syslog's shape."""
    result = []
    for line in daemon.maillogText().splitlines(keepends=True):
        if not line.endswith("\n"):
            break  # still being written
        match = MAILLOG_LINE.match(line.rstrip("\n"))
        assert match, f"mail-log line not in syslog shape: {line!r}"
        assert match.group("host") == "mta.test", line
        if match.group("program") == program:
            result.append((int(match.group("pid")), match.group("text")))
    return result
