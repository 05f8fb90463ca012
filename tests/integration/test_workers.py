"""
worker_processes = N against a real ``twistd mta`` (the master and its ``python -m mta.workers``
children, seen in /proc, in twistd's log and in the mail log, whose smtpd lines carry the pid of
the worker that ran the session):

- the workers serve the sessions, the master delivers (its qmgr and smtp lines), each message
  once; ``mta status`` lists the workers;
- kill -9 of a worker under load loses nothing acknowledged, the master logs it, starts another
  at once and removes the dead one's tmp/worker.PID; the queue drains;
- the connection count and the connection and message rates are the master's, summed over the
  workers; QUIT and a worker's death release the counts;
- SIGHUP: a new set of workers, the old one with an open session finishes it; reloads to
  worker_processes = 0 and back, under load, lose nothing;
- SIGTERM and kill -9 of the master leave no worker behind;
- a worker that cannot start (the file edited, not reloaded) is throttled with Postfix's lines
  while the master accepts, and comes back once the file is mended;
- worker_processes = 0 starts none.

Deliveries go to Postfix's smtp-sink on loopback (tests/integration/peerservers.SmtpSink),
each message carrying an X-Marker header that names it, so that "delivered exactly once" is a
count of markers in the sink's dump files.  No test here takes 30 s on an idle machine.
"""

import itertools
import os
import re
import signal
import smtplib
import socket
import subprocess
import sys
import threading
import time

import pytest

from tests.integration.daemon import environment, waitFor
from tests.integration.peers import (
    MAILLOG_LINE,
    RawClient,
    RecordingSMTP,
    maillogLines,
    queueIdOf,
    readQueued,
)
from tests.integration.peerservers import SmtpSink

pytestmark = pytest.mark.integration

READY = re.compile(r"\] worker (\d+)\[(\d+)\]: ready$", re.MULTILINE)
MARKER = re.compile(rb"^X-Marker: (\S+)$", re.MULTILINE)


# -- helpers ---------------------------------------------------------------------------


def twistdLog(d):
    """What twistd has written to its standard output so far (the master's log, with the workers' lines)."""
    return b"".join(list(d._output["stdout"])).decode("utf-8", "replace")


def alive(pid):
    """True while C{pid} is a running (not zombie) process."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return state != "Z"


def children(pid):
    """The pids of the live children of C{pid} (from /proc)."""
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            found.append(int(name))
    return sorted(found)


def isWorker(pid):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return b"mta.workers" in f.read()
    except (FileNotFoundError, ProcessLookupError):
        return False


def readyWorkers(d, count, exclude=(), timeout=60):
    """Wait until C{count} workers not in C{exclude} have said ready and still run: {index: pid}."""

    def current():
        found = {}
        for index, pid in READY.findall(twistdLog(d)):
            if int(pid) not in exclude and alive(int(pid)):
                found[int(index)] = int(pid)
        return found if len(found) >= count else None

    try:
        return waitFor(current, timeout=timeout, what=f"{count} ready worker(s) not in {sorted(exclude)}")
    except AssertionError as e:
        raise AssertionError(f"{e}; twistd's log:\n{twistdLog(d)}") from None


def maillogNow(d):
    """
    The mail log's complete lines as they are now.  (Daemon.maillogText waits for the file to
    settle, up to 2 s a call, which it never does under load.)
    """
    try:
        with open(d.maillog) as f:
            text = f.read()
    except FileNotFoundError:
        return ""
    return text[: text.rfind("\n") + 1]


def waitRetired(d, pids, timeout=30):
    """Wait until the master has logged the end of each retiring worker in C{pids} (it has reaped them)."""
    for pid in pids:
        line = re.compile(rf"\] worker \d+\[{pid}\]: retired \(exit status 0\)$", re.MULTILINE)
        waitFor(lambda line=line: line.search(twistdLog(d)), timeout=timeout, what=f"worker {pid} to retire")
        assert not alive(pid)


def sessionPids(d, settled=False):
    """
    The pids on the mail log's ``connect from`` lines so far, in file order; C{settled}: once
    the lines of what has happened are written (Daemon.maillogText).
    """
    pids = []
    text = d.maillogText() if settled else maillogNow(d)
    for line in text[: text.rfind("\n") + 1].splitlines():
        match = MAILLOG_LINE.match(line)
        assert match, f"mail-log line not in syslog shape: {line!r}"
        if match.group("program") == "mta/smtpd" and match.group("text").startswith("connect from "):
            pids.append(int(match.group("pid")))
    return pids


def openSession(d):
    """A RawClient with its banner read, and the pid of the process that serves it (from its connect line)."""
    before = len(sessionPids(d, settled=True))
    client = RawClient(d.port, timeout=30)
    pids = waitFor(lambda: len(sessionPids(d)) > before and sessionPids(d), what="the session's connect line")
    assert len(pids) == before + 1, "another session was logged meanwhile"
    return client, pids[-1]


def queueEmpty(d):
    return all(not os.listdir(os.path.join(d.queue, q)) for q in ("incoming", "active", "deferred"))


def content(marker):
    return (f"From: <s@example.org>\r\nTo: <u@sink.example>\r\nSubject: {marker}\r\n"
            f"Message-ID: <{marker}@example.org>\r\nX-Marker: {marker}\r\n\r\n"
            + "".join(f"{marker} line {i}\r\n" for i in range(40))).encode()


def sinkMarkers(sink):
    """Marker -> how many times smtp-sink received it."""
    counts = {}
    for data in sink.messages():
        for marker in MARKER.findall(data):
            counts[marker.decode()] = counts.get(marker.decode(), 0) + 1
    return counts


def sighup(d, edit=None):
    """Apply C{edit} (old, new) to the configuration file, SIGHUP, and wait for ``reload done``."""
    if edit is not None:
        with open(d.config) as f:
            text = f.read()
        assert edit[0] in text
        with open(d.config, "w") as f:
            f.write(text.replace(*edit))
    seen = maillogNow(d).count("reload done")
    d.process.send_signal(signal.SIGHUP)
    waitFor(lambda: maillogNow(d).count("reload done") > seen, what="reload done")


def status(d):
    """The first line of ``mta status``."""
    result = subprocess.run([sys.executable, "-m", "mta.cli.main", "-c", d.config, "status"],
                            check=False, env=environment(), capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout


def relayTo(sink):
    return f"transport_maps = inline:{{ sink.example=smtp:[127.0.0.1]:{sink.port} }}\n"


@pytest.fixture
def sink():
    s = SmtpSink().start()
    yield s
    s.stop()


class Stream:
    """
    Client threads that send messages in a loop, each on its own connection, opening a new
    connection when one breaks; C{accepted} holds (queue id, marker) of every 250.
    """

    def __init__(self, port, threads, perConnection=None, pause=0.0):
        self.port = port
        self.pause = pause  # seconds between two messages of a thread
        self.perConnection = perConnection  # messages per connection (None: until it breaks)
        self.stopping = threading.Event()
        self.accepted = []
        self.attempted = []
        self.broken = 0
        self.threads = [threading.Thread(target=self.run, args=(i,), daemon=True) for i in range(threads)]

    def start(self):
        for t in self.threads:
            t.start()
        return self

    def run(self, thread):
        n = 0
        while not self.stopping.is_set():
            try:
                s = RecordingSMTP(port=self.port, timeout=20, local_hostname=f"load{thread}.example")
            except OSError:
                self.broken += 1
                time.sleep(0.05)
                continue
            try:
                for _ in itertools.count() if self.perConnection is None else range(self.perConnection):
                    if self.stopping.is_set():
                        break
                    marker = f"t{thread}-m{n}"
                    n += 1
                    self.attempted.append(marker)
                    s.sendmail("s@example.org", ["u@sink.example"], content(marker))
                    code, text = s.dataReplies[-1]
                    if code == 250:
                        self.accepted.append((queueIdOf(text), marker))
                    self.stopping.wait(self.pause)
                s.quit()
            except (smtplib.SMTPException, OSError):
                self.broken += 1  # the worker died under us: this message counts for nothing
            finally:
                s.close()

    def stop(self):
        self.stopping.set()
        for t in self.threads:
            t.join(30)
        assert not any(t.is_alive() for t in self.threads), "a client thread hung"


def checkDeliveredOnce(d, sink, accepted, attempted):
    """Wait until every accepted marker is at the sink and the queue is empty; each exactly once."""
    want = {marker for _, marker in accepted}
    waitFor(lambda: want <= set(sinkMarkers(sink)) and queueEmpty(d), timeout=60,
            what=f"{len(want)} messages delivered and an empty queue")
    counts = sinkMarkers(sink)
    twice = {m: c for m, c in counts.items() if c != 1}
    assert not twice, f"delivered more than once: {twice}"
    assert set(counts) <= set(attempted), set(counts) - set(attempted)
    return counts


# -- the tests ----------------------------------------------------------------------------


def test_workersServeTheSessionsAndTheMasterDelivers(makeDaemon, sink):
    """50 messages over 5 connections at once: served by the 2 workers, delivered by the master, each once."""
    d = makeDaemon(main="worker_processes = 2\n" + relayTo(sink), hold=False).start()
    master = d.process.pid
    workers = readyWorkers(d, 2)
    assert sorted(workers) == [1, 2]
    assert master not in workers.values() and len(set(workers.values())) == 2
    assert sorted(workers.values()) == [pid for pid in children(master) if isWorker(pid)]
    assert f", workers: worker 1[{workers[1]}] ready, worker 2[{workers[2]}] ready\n" in status(d)

    accepted = []

    def send(thread):
        with RecordingSMTP(port=d.port, local_hostname=f"c{thread}.example") as s:
            for n in range(10):
                marker = f"c{thread}-m{n}"
                s.sendmail("s@example.org", ["u@sink.example"], content(marker))
                accepted.append((s.lastQueueId, marker))

    threads = [threading.Thread(target=send, args=(i,)) for i in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(accepted) == 50
    checkDeliveredOnce(d, sink, accepted, [m for _, m in accepted])
    assert len(sinkMarkers(sink)) == 50

    # Each message's smtpd lines carry the pid of the worker that took it; its delivery and
    # removal are the master's.
    smtpd = {}
    for pid, text in maillogLines(d):
        match = re.match(r"([0-9A-Za-z]{14}): client=", text)
        if match:
            smtpd[match.group(1)] = pid
    served = {smtpd[queueId] for queueId, _ in accepted}
    assert served <= set(workers.values()), (served, workers)
    cleanup = {text.split(":", 1)[0]: pid for pid, text in maillogLines(d, "mta/cleanup") if "message-id=" in text}
    assert {queueId: cleanup[queueId] for queueId, _ in accepted} == {queueId: smtpd[queueId] for queueId, _ in accepted}
    for program in ("mta/qmgr", "mta/smtp"):
        pids = {pid for pid, _ in maillogLines(d, program)}
        assert pids == {master}, (program, pids, master)
    sent = [text for _, text in maillogLines(d, "mta/smtp") if "status=sent" in text]
    assert len(sent) == 50 and all(f"relay=127.0.0.1[127.0.0.1]:{sink.port}" in line for line in sent)
    print(f"messages per worker: { {pid: list(smtpd.values()).count(pid) for pid in served} }")


def test_killDashNineOfAWorkerLosesNothingAcknowledged(makeDaemon, sink):
    """
    A worker killed with -9 while 4 clients stream messages and one is half-way through DATA
    on it: every 250 is delivered once, the master logs the death and starts a new worker at
    once, the dead one's tmp directory goes, and the queue drains.
    """
    d = makeDaemon(main="worker_processes = 2\n" + relayTo(sink), hold=False).start()
    master = d.process.pid
    workers = readyWorkers(d, 2)

    # The victim is the worker that serves a session in the middle of a big message.
    partial, victim = openSession(d)
    assert victim in workers.values()
    partial.ehlo()
    assert partial.command("MAIL FROM:<partial@example.org>")[0] == 250
    assert partial.command("RCPT TO:<partial@sink.example>")[0] == 250
    assert partial.command("DATA")[0] == 354
    partial.send(b"Subject: partial\r\nX-Marker: partial\r\n\r\n" + (b"p" * 78 + b"\r\n") * 3000)
    victimTmp = os.path.join(d.queue, "tmp", f"worker.{victim}")
    waitFor(lambda: os.path.isdir(victimTmp) and os.listdir(victimTmp), what="a file in the victim's tmp/")

    stream = Stream(d.port, 4).start()
    try:
        waitFor(lambda: len(stream.accepted) >= 20, timeout=30, what="20 messages accepted")
        os.kill(victim, signal.SIGKILL)
        killedAt = len(stream.accepted)
        index = next(i for i, pid in workers.items() if pid == victim)
        again = readyWorkers(d, 2, exclude={victim})
        assert again[index] != victim and again[3 - index] == workers[3 - index]
        waitFor(lambda: len(stream.accepted) >= killedAt + 20, timeout=30, what="20 more messages after the kill")
    finally:
        stream.stop()
    assert partial.closedByPeer()
    partial.close()

    log = d.maillogText()
    assert f"mta/master[{master}]: warning: process mta-worker pid {victim} killed by signal 9\n" in log
    assert f"[mta/master#warn] warning: process mta-worker pid {victim} killed by signal 9\n" in twistdLog(d)
    assert not alive(victim)
    counts = checkDeliveredOnce(d, sink, stream.accepted, stream.attempted)
    assert "partial" not in counts
    unacknowledged = set(counts) - {m for _, m in stream.accepted}
    assert len(unacknowledged) <= 4, unacknowledged  # at most one in flight per client

    # Nothing left behind: the dead worker's directory is gone, the live ones' are empty.
    tmp = os.path.join(d.queue, "tmp")
    live = {f"worker.{pid}" for pid in again.values()}
    assert set(os.listdir(tmp)) <= live, os.listdir(tmp)
    for name in os.listdir(tmp):
        assert os.listdir(os.path.join(tmp, name)) == [], name
    assert re.search(rf"worker {index}\[{victim}\]: removed [1-9]\d* unfinished file\(s\) in its tmp directory",
                     twistdLog(d))
    print(f"kill -9 of a worker: {len(stream.accepted)} acknowledged ({killedAt} before the kill), "
          f"{len(unacknowledged)} delivered without a 250 seen, {stream.broken} connection(s) broken")


def test_connectionLimitIsCountedAcrossWorkers(makeDaemon):
    """
    smtpd_client_connection_count_limit = 3 with 2 workers: 3 sessions spread over both
    workers, the 4th is refused; closed sessions and a killed worker's sessions are released.
    """
    d = makeDaemon(main="worker_processes = 2\nsmtpd_client_connection_count_limit = 3\n"
                        "smtpd_client_event_limit_exceptions =\n").start()
    master = d.process.pid
    workers = readyWorkers(d, 2)

    def refused():
        before = maillogNow(d).count("Connection concurrency limit exceeded")
        with RawClient(d.port) as fourth:
            assert fourth.banner == (421, ["4.7.0 mta.test Error: too many connections from 127.0.0.1"])
            assert fourth.closedByPeer()
        waitFor(lambda: maillogNow(d).count("Connection concurrency limit exceeded") > before,
                what="the limit's mail-log line")

    def quit(sessions):
        for client, _ in sessions:
            assert client.command("QUIT")[0] == 221
            assert client.closedByPeer()
            client.close()

    # The kernel hands each connection to one of the accepting workers: open three until they
    # are not all on the same one, so that the count is really the sum over processes.
    for attempt in range(20):
        sessions = [openSession(d) for _ in range(3)]
        assert all(client.banner[0] == 220 for client, _ in sessions)
        if len({pid for _, pid in sessions}) == 2:
            break
        quit(sessions)
    else:
        raise AssertionError("20 times three sessions all went to the same worker")
    assert {pid for _, pid in sessions} == set(workers.values())
    refused()
    line = [(pid, text) for pid, text in maillogLines(d) if "Connection concurrency limit exceeded" in text][-1]
    assert line[1] == "warning: Connection concurrency limit exceeded: 4 from unknown[127.0.0.1] for service smtp"
    assert line[0] in workers.values() and line[0] != master

    # QUIT releases: three new sessions are accepted, and a fourth is refused again.
    quit(sessions)
    sessions = [openSession(d) for _ in range(3)]
    assert all(client.banner[0] == 220 for client, _ in sessions)
    refused()

    # A worker killed with sessions open: its counts are released, the other worker's stay.
    victim = sessions[0][1]
    os.kill(victim, signal.SIGKILL)
    for client, pid in sessions:
        if pid == victim:
            assert client.closedByPeer()
            client.close()
    kept = [(client, pid) for client, pid in sessions if pid != victim]
    readyWorkers(d, 2, exclude={victim})
    more = [openSession(d) for _ in range(3 - len(kept))]
    assert all(client.banner[0] == 220 for client, _ in more)
    refused()
    quit(kept + more)


def test_ratesAreCountedAcrossWorkers(makeDaemon):
    """
    smtpd_client_message_rate_limit and smtpd_client_connection_rate_limit with 2 workers: the
    master's anvil counts the events of both, and of the master's own start-up probe session.
    """
    limit = 12
    d = makeDaemon(main=f"worker_processes = 2\nsmtpd_client_connection_rate_limit = {limit}\n"
                        "smtpd_client_message_rate_limit = 3\nanvil_rate_time_unit = 600s\n"
                        "smtpd_client_event_limit_exceptions =\n").start()
    workers = readyWorkers(d, 2)
    connections = 1  # Daemon.start's probe, served by the master before the workers were ready
    kept = {}  # pid -> a session it serves
    while len(kept) < 2:
        assert connections < limit, f"{connections} sessions all went to the same worker"
        client, pid = openSession(d)
        connections += 1
        assert client.banner[0] == 220
        if pid in kept:
            assert client.command("QUIT")[0] == 221
            client.close()
        else:
            kept[pid] = client
    assert set(kept) == set(workers.values())
    (_, first), (b, second) = kept.items()

    # Three MAILs from the two workers together, the fourth is one too many.
    first.ehlo()
    second.ehlo()
    assert first.command("MAIL FROM:<a@example.org>")[0] == 250
    assert second.command("MAIL FROM:<a@example.org>")[0] == 250
    assert first.command("RSET")[0] == 250
    assert first.command("MAIL FROM:<a@example.org>")[0] == 250
    assert second.command("RSET")[0] == 250
    assert second.command("MAIL FROM:<a@example.org>") == (450, ["4.7.1 Error: too much mail from 127.0.0.1"])
    warning = "warning: Message delivery request rate limit exceeded: 4 from unknown[127.0.0.1] for service smtp"
    waitFor(lambda: (b, warning) in maillogLines(d), what="the message rate warning from the second worker")
    for client in (first, second):
        assert client.command("QUIT")[0] == 221
        client.close()

    # Connections: up to the limit, counting every process's, then 421.
    while connections < limit:
        client, _ = openSession(d)
        connections += 1
        assert client.banner[0] == 220, (connections, client.banner)
        assert client.command("QUIT")[0] == 221
        client.close()
    with RawClient(d.port) as over:
        assert over.banner == (421, ["4.7.0 mta.test Error: too many connections from 127.0.0.1"])
        assert over.closedByPeer()
    warning = f"warning: Connection rate limit exceeded: {limit + 1} from unknown[127.0.0.1] for service smtp"
    waitFor(lambda: any(text == warning for _, text in maillogLines(d)), what="the connection rate warning")


def test_sighupReplacesTheWorkersAndAnOpenSessionFinishes(makeDaemon):
    """
    SIGHUP: a new set of workers with the new configuration; the old worker without a session
    exits at once, the one with an open session keeps serving it (old settings) and exits
    after its QUIT.
    """
    d = makeDaemon(main="worker_processes = 2\nmessage_size_limit = 100000\n").start()
    old = readyWorkers(d, 2)
    session, holder = openSession(d)
    assert "SIZE 100000" in session.ehlo()

    sighup(d, ("message_size_limit = 100000", "message_size_limit = 200000"))
    new = readyWorkers(d, 2, exclude=set(old.values()))
    assert not set(new.values()) & set(old.values())

    idle = next(pid for pid in old.values() if pid != holder)
    waitRetired(d, [idle])  # at once: it has no session
    assert alive(holder)
    assert re.search(rf", workers: worker 1\[\d+\] ready, worker 2\[\d+\] ready, worker \d\[{holder}\] retiring\n",
                     status(d))

    # The old session still works, with the old settings, and its message is queued.
    assert "SIZE 100000" in session.ehlo()
    assert session.command("MAIL FROM:<old@example.org>")[0] == 250
    assert session.command("RCPT TO:<u@mta.test>")[0] == 250
    assert session.command("DATA")[0] == 354
    code, lines = session.command("Subject: across a reload\r\n\r\nhello\r\n.")
    assert code == 250, lines
    queueId = queueIdOf(lines[0])
    envelope, _ = waitFor(lambda: os.path.exists(os.path.join(d.queue, "hold", queueId))
                          and readQueued(d, queueId), what="the message on hold")
    assert envelope.sender == "old@example.org"
    assert alive(holder)
    assert session.command("QUIT")[0] == 221
    assert session.closedByPeer()
    session.close()
    waitRetired(d, [holder])

    # New sessions go to the new workers, with the new settings.
    client, pid = openSession(d)
    assert pid in new.values()
    assert "SIZE 200000" in client.ehlo()
    client.close()
    assert sorted(new.values()) == [p for p in children(d.process.pid) if isWorker(p)]


def test_reloadsUnderLoadLoseNothing(makeDaemon, sink):
    """
    Clients stream messages (5 per connection) through three reloads: new workers, then
    worker_processes = 0 (the master serves alone), then 2 again; every 250 is delivered once.
    """
    d = makeDaemon(main="worker_processes = 2\n" + relayTo(sink), hold=False).start()
    master = d.process.pid
    first = readyWorkers(d, 2)
    stream = Stream(d.port, 3, perConnection=5, pause=0.02).start()
    try:
        waitFor(lambda: len(stream.accepted) >= 10, timeout=30, what="10 messages accepted")
        sighup(d)
        second = readyWorkers(d, 2, exclude=set(first.values()))
        waitRetired(d, first.values())

        sighup(d, ("worker_processes = 2", "worker_processes = 0"))
        waitRetired(d, second.values())
        assert [pid for pid in children(master) if isWorker(pid)] == []
        # Sessions that begin from now on are the master's own (3 clients, 5 messages a session:
        # 20 messages take at least one new session).
        mark, sessions = len(stream.accepted), len(sessionPids(d))
        waitFor(lambda: len(stream.accepted) >= mark + 20 and len(sessionPids(d)) > sessions, timeout=30,
                what="20 messages and a new session with no worker")
        alone = sessionPids(d)[sessions:]
        assert set(alone) == {master}, alone

        sighup(d, ("worker_processes = 0", "worker_processes = 2"))
        third = readyWorkers(d, 2, exclude=set(first.values()) | set(second.values()))
        mark, sessions = len(stream.accepted), len(sessionPids(d))
        waitFor(lambda: len(stream.accepted) >= mark + 20 and set(sessionPids(d)[sessions:]) & set(third.values()),
                timeout=30, what="20 messages and a session on a new worker after the last reload")
    finally:
        stream.stop()
    checkDeliveredOnce(d, sink, stream.accepted, stream.attempted)
    assert stream.broken == 0, "a session broke during a reload"
    assert "warning: process mta-worker" not in d.maillogText()
    print(f"three reloads under load: {len(stream.accepted)} messages acknowledged and delivered once")


def test_sigtermStopsTheMasterAndEveryWorker(makeDaemon):
    """SIGTERM with a worker retiring (an open session across a reload) and a session on a new one: all exit."""
    d = makeDaemon(main="worker_processes = 2\n").start()
    old = readyWorkers(d, 2)
    retiring, holder = openSession(d)
    sighup(d)
    new = readyWorkers(d, 2, exclude=set(old.values()))
    assert alive(holder)
    session, pid = openSession(d)
    assert pid in new.values()
    everyone = {holder, *new.values()}
    started = time.monotonic()
    code, out, err = d.stop(timeout=15)
    took = time.monotonic() - started
    assert code == 0, out + err
    assert took < 10, f"SIGTERM took {took:.1f}s (the workers needed SIGKILL?)"
    for client in (retiring, session):
        assert client.closedByPeer()
        client.close()
    orphans = [pid for pid in everyone if alive(pid)]
    assert not orphans, f"workers still running after the master exited: {orphans}"
    assert "Traceback" not in out + err
    assert "daemon stopped" in out


def test_workersStopWhenTheMasterIsKilled(makeDaemon):
    """kill -9 of the master: the workers see their channel close and exit; nothing listens any more."""
    d = makeDaemon(main="worker_processes = 2\n").start()
    workers = readyWorkers(d, 2)
    code, _, _ = d.kill()
    assert code == -9
    waitFor(lambda: not any(alive(pid) for pid in workers.values()), timeout=15, what="the workers to exit")
    try:
        socket.create_connection(("127.0.0.1", d.port), timeout=5).close()
    except ConnectionRefusedError:
        pass
    else:
        raise AssertionError("something still accepts on the port after the master and its workers died")


def test_aWorkerThatCannotStartIsThrottledAndTheMasterAcceptsMeanwhile(makeDaemon):
    """
    The configuration file is broken after the start (an edit not yet reloaded); workers killed
    then cannot start again: Postfix's throttling lines, and while no worker is ready the
    master takes the sessions itself.  Once the file is mended the workers come back.
    """
    d = makeDaemon(main="worker_processes = 2\nservice_throttle_time = 2s\n").start()
    master = d.process.pid
    workers = readyWorkers(d, 2)
    with open(d.config) as f:
        good = f.read()
    with open(d.config, "a") as f:
        f.write("this is not a parameter\n")

    for pid in workers.values():
        os.kill(pid, signal.SIGKILL)
    waitFor(lambda: maillogNow(d).count("bad command startup -- throttling") >= 2, timeout=30,
            what="two throttling lines")
    log = d.maillogText()
    for pid in workers.values():
        assert f"mta/master[{master}]: warning: process mta-worker pid {pid} killed by signal 9\n" in log
    assert re.search(rf"mta/master\[{master}\]: warning: process mta-worker pid \d+ exit status 1\n", log)
    assert f"mta/master[{master}]: warning: mta-worker: bad command startup -- throttling\n" in log
    assert "[mta/master#warn] warning: mta-worker: bad command startup -- throttling\n" in twistdLog(d)
    assert "expected 'name = value', found: this is not a parameter" in twistdLog(d)

    # No worker is ready: the master accepts.
    client, pid = openSession(d)
    assert pid == master
    assert client.command("QUIT")[0] == 221
    client.close()

    with open(d.config, "w") as f:
        f.write(good)
    again = readyWorkers(d, 2, exclude=set(workers.values()), timeout=30)
    client, pid = openSession(d)
    assert pid in again.values()
    assert client.command("QUIT")[0] == 221
    client.close()


def test_aWorkerWhoseListenerIsGoneFromTheFileSaysSoInOneLine(makeDaemon):
    """
    The file's listener renamed without a reload, then the worker killed: the new worker finds
    no configuration for the socket it inherits.  One fatal line and exit status 1 (this used to
    be a traceback and exit status 0), the throttling line, and the master takes the sessions.
    """
    d = makeDaemon(main="worker_processes = 1\nservice_throttle_time = 1s\n").start()
    master = d.process.pid
    (index, pid), = readyWorkers(d, 1).items()
    with open(d.config) as f:
        good = f.read()
    with open(d.config, "w") as f:
        f.write(good.replace("[listener:smtp]", "[listener:renamed]"))
    os.kill(pid, signal.SIGKILL)
    waitFor(lambda: "bad command startup -- throttling" in maillogNow(d), what="the throttling line")
    failed = re.search(rf"\] worker {index}\[(\d+)\]: fatal: listener smtp is not in the configuration$",
                       twistdLog(d), re.MULTILINE)
    assert failed, twistdLog(d)
    assert f"mta/master[{master}]: warning: process mta-worker pid {failed.group(1)} exit status 1\n" in d.maillogText()
    assert "Traceback" not in twistdLog(d)
    client, served = openSession(d)
    assert served == master
    client.close()
    with open(d.config, "w") as f:
        f.write(good)
    readyWorkers(d, 1, exclude={pid, int(failed.group(1))})


def test_noWorkerProcessesByDefault(makeDaemon):
    d = makeDaemon().start()
    client, pid = openSession(d)
    assert pid == d.process.pid
    assert client.command("QUIT")[0] == 221
    client.close()
    assert [p for p in children(d.process.pid) if isWorker(p)] == []
    assert not os.path.exists(os.path.join(d.queue, "tmp")) or not any(
        name.startswith("worker.") for name in os.listdir(os.path.join(d.queue, "tmp")))
    assert "worker 1[" not in twistdLog(d)


def test_aRefusedReloadAfterALogRotationReopensTheWorkersLog(makeDaemon):
    """logrotate renames maillog_file and sends SIGHUP; the reload is refused (a broken file): the workers reopen too."""
    d = makeDaemon(main="worker_processes = 2\n").start()
    workers = set(readyWorkers(d, 2).values())
    os.rename(d.maillog, d.maillog + ".1")
    with open(d.config, "a") as f:
        f.write("this is not a parameter\n")
    d.process.send_signal(signal.SIGHUP)
    waitFor(lambda: "reload refused" in maillogNow(d), what="the refused reload in the new file")
    assert set(readyWorkers(d, 2).values()) == workers  # refused: the same workers

    def served():
        client, pid = openSession(d)  # its connect line is in the new file
        assert client.command("QUIT")[0] == 221
        client.close()
        return pid

    pids = {served() for _ in range(6)}
    assert pids <= workers
    with open(d.maillog + ".1") as f:
        rotated = f.read()
    assert "reload refused" not in rotated
    assert not any(f"mta/smtpd[{pid}]: connect from" in rotated.split("reload --")[-1] for pid in workers)
