"""
kill -9 under load: every message that got "250 queued as ID" survives, nothing in incoming/
is partial, and a new daemon starts on the same queue (the killed one's control socket and
lock file left behind) and takes mail.
"""

import hashlib
import os
import smtplib
import subprocess
import sys
import threading
import time

import pytest

from mta.queue.fileformat import readQueueFile
from mta.queue.queueid import isValidQueueId
from tests.integration.daemon import Daemon, environment
from tests.integration.peers import RawClient, RecordingSMTP, queueIdOf, readQueued, splitReceived, waitFor

pytestmark = pytest.mark.integration

THREADS = 10
LOAD_SECONDS = 1.5


def sender(thread):
    return f"s{thread}@example.org"


def recipients(thread, n):
    return [f"r{n}@mta.test", f"t{thread}@example.net"]


def content(thread, n):
    """A different message per (thread, n): 0 to about 60 KB, with dot lines; every header present."""
    marker = f"t{thread}-m{n}"
    lines = (thread * 7919 + n * 104729) % 800
    body = b"".join(
        (b"." if i % 9 == 0 else b"")
        + b"%s line %d %s\r\n" % (marker.encode(), i, hashlib.md5(b"%d" % i).hexdigest().encode())
        for i in range(lines)
    )
    return (
        f"From: {sender(thread)}\r\nTo: r{n}@mta.test\r\nDate: Sat, 21 Nov 2026 07:48:25 +0000\r\n"
        f"Message-ID: <{marker}@example.org>\r\nSubject: {marker}\r\nX-Marker: {marker}\r\n\r\n"
    ).encode() + body


def load(port, thread, stop, accepted, attempted):
    """Send messages on one connection until told to stop or the connection breaks."""
    try:
        s = RecordingSMTP(port=port, timeout=10, local_hostname=f"load{thread}.example")
    except OSError:
        return
    n = 0
    try:
        while not stop.is_set():
            attempted.append((thread, n))
            try:
                s.sendmail(sender(thread), recipients(thread, n), content(thread, n))
            except (smtplib.SMTPException, OSError):
                return  # the daemon died under us: this message counts for nothing
            code, text = s.dataReplies[-1]
            if code == 250:
                accepted.append((queueIdOf(text), thread, n))
            n += 1
    finally:
        s.close()


def checkQueued(d, queueId, thread, n):
    envelope, queued = readQueued(d, queueId)  # verifies the content's length and CRC-32
    assert envelope.sender == sender(thread)
    assert [r.address for r in envelope.recipients] == recipients(thread, n)
    assert envelope.helo == f"load{thread}.example" and envelope.protocol == "ESMTP"
    assert envelope.client_address == "127.0.0.1"
    assert splitReceived(queued)[1] == content(thread, n)


def filesUnder(path):
    return [os.path.join(top, name) for top, _, names in os.walk(path) for name in names]


@pytest.mark.parametrize("workerProcesses", [0, 2], ids=["one-process", "two-workers"])
def test_killDashNineUnderLoad(tmp_path, workerProcesses):
    """
    10 clients send in a loop (one smtplib connection each) and a raw client is half-way
    through a message; after 1.5 s, kill -9 (of the master and its worker processes at once,
    with worker_processes = 2).  Then: every 250 has its complete, correct file in incoming/;
    every file there is whole and is a message that was sent; a new daemon on the same queue
    directory starts, takes mail and answers on its control socket.
    """
    started = time.monotonic()
    main = f"worker_processes = {workerProcesses}\n"
    d = Daemon(tmp_path, main=main).start()
    restarted = None
    try:
        if workerProcesses:
            d.waitForWorkers(workerProcesses)
            started = time.monotonic()
        stop = threading.Event()
        accepted, attempted = [], []
        workers = [
            threading.Thread(target=load, args=(d.port, i, stop, accepted, attempted), daemon=True)
            for i in range(THREADS)
        ]
        for w in workers:
            w.start()
        time.sleep(LOAD_SECONDS - 0.3)

        # One more client is in the middle of a big message (past the 64 KB write buffer) when
        # the daemon dies: whatever it left in tmp/ must never reach incoming/.
        partial = RawClient(d.port)
        partial.ehlo()
        assert partial.command("MAIL FROM:<partial@example.org>")[0] == 250
        assert partial.command("RCPT TO:<partial@mta.test>")[0] == 250
        assert partial.command("DATA")[0] == 354
        partial.send(b"Subject: partial\r\n\r\n" + (b"p" * 78 + b"\r\n") * 3000)
        tmp = os.path.join(d.queue, "tmp")
        waitFor(lambda: filesUnder(tmp), timeout=5, what="a file in tmp/ (or a worker's tmp/worker.PID)")
        time.sleep(max(0.0, started + LOAD_SECONDS + 0.5 - time.monotonic()))

        code, out, err = d.kill(everyone=True)
        assert code == -9
        stop.set()
        for w in workers:
            w.join(15)
        assert not any(w.is_alive() for w in workers), "a client thread hung after the kill"
        partial.close()

        # Every 250 is a complete, correct queue file.
        assert len(accepted) >= THREADS, f"only {len(accepted)} messages accepted in {LOAD_SECONDS}s"
        incoming = set(d.incoming())
        for queueId, thread, n in accepted:
            assert queueId in incoming, f"{queueId} got 250 but is not in incoming/ after kill -9"
            checkQueued(d, queueId, thread, n)

        # Nothing in incoming/ is partial: each file is whole and is one of the messages sent
        # (a few may have been committed while their 250 was on its way).
        sent = {f"t{t}-m{n}": (t, n) for t, n in attempted}
        byId = {queueId: (t, n) for queueId, t, n in accepted}
        unacknowledged = []
        for queueId in sorted(incoming):
            assert isValidQueueId(queueId), f"stray name in incoming/: {queueId!r}"
            readQueueFile(os.path.join(d.queue, "hold", queueId), verifyContent=True)
            if queueId in byId:
                continue
            envelope, queued = readQueued(d, queueId)
            assert envelope.sender != "partial@example.org"
            marker = queued.split(b"\r\nX-Marker: ", 1)[1].split(b"\r\n", 1)[0].decode()
            assert marker in sent, marker
            checkQueued(d, queueId, *sent[marker])
            unacknowledged.append(queueId)
        assert len(unacknowledged) <= THREADS, unacknowledged  # at most one in flight per client
        garbage = filesUnder(os.path.join(d.queue, "tmp"))  # allowed: unfinished messages stay there

        # The killed daemon left its control socket and lock behind.
        private = os.path.join(d.queue, "private")
        assert os.path.lexists(os.path.join(private, "control.lock"))
        assert os.path.lexists(os.path.join(private, "control"))

        # A new daemon on the same queue directory starts and takes mail.
        restarted = Daemon(tmp_path, main=main).start()
        assert restarted.queue == d.queue
        with RecordingSMTP(port=restarted.port, local_hostname="after.example") as s:
            s.sendmail("after@example.org", ["b@mta.test"], content(99, 0))
            after = s.lastQueueId
        envelope, queued = readQueued(restarted, after)
        assert envelope.sender == "after@example.org" and splitReceived(queued)[1] == content(99, 0)
        assert set(restarted.incoming()) == incoming | {after}

        # Its control channel is its own (the stale socket was replaced).
        status = subprocess.run(
            [sys.executable, "-m", "mta.cli.queue", "--config", restarted.config, "status"],
            env=environment(), capture_output=True, text=True, timeout=30,
        )
        assert status.returncode == 0, status.stderr
        assert f"pid {restarted.process.pid}" in status.stdout

        if workerProcesses:
            assert not filesUnder(os.path.join(restarted.queue, "tmp")), "the killed workers' files were not removed"
        code, out, err = restarted.stop()
        restarted = None
        assert code == 0, out + err
        assert "Traceback" not in out + err
        print(
            f"kill -9 ({workerProcesses} workers) after {LOAD_SECONDS}s: {len(accepted)} acknowledged, {len(unacknowledged)} queued "
            f"without a 250 seen, {len(garbage)} file(s) left in tmp/; whole test {time.monotonic() - started:.1f}s"
        )
    finally:
        for daemon in (d, restarted):
            if daemon is not None and daemon.process is not None and daemon.process.poll() is None:
                daemon.process.kill()
                daemon.process.wait(10)
    assert time.monotonic() - started < 30
