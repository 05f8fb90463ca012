"""mta.queue.pickup with a fake clock, a synchronous thread pool and a real queue directory."""

import errno
import io
import os
import re
import time

import attrs
import pytest
from twisted.internet.defer import Deferred

from mta.cli import sendmail as S
from mta.cleanup import Cleanup
from mta.config import load
from mta.maillog import MailLogger
from mta.model import Envelope, Recipient
from mta.queue import fileformat, pickup
from mta.queue.fileformat import readContent, readQueueFile
from mta.queue.pickup import Pickup
from mta.queue.store import FileSystem, QueueStore
from mta.cleanup.headers import mailDate
from mta.testing import SyncPool, SyncReactor

NOW = time.time()  # the fake clock starts at the real time: maildrop files carry real mtimes


class ManualPool(SyncPool):
    """Jobs wait until the test runs them."""

    def __init__(self):
        super().__init__()
        self.waiting = []

    def callInThreadWithCallback(self, onResult, f, *args, **kwargs):
        self.waiting.append((onResult, f, args, kwargs))

    def runAll(self):
        while self.waiting:
            onResult, f, args, kwargs = self.waiting.pop(0)
            SyncPool.callInThreadWithCallback(self, onResult, f, *args, **kwargs)


class Harness:
    def __init__(self, tmp_path, main="", pool=None, fileSystem=None, syncMethod="syncfs", **kwargs):
        self.pool = pool or SyncPool()
        self.clock = SyncReactor(self.pool)
        self.clock.advance(NOW)
        self.config = load("<t>", "[main]\nmyhostname = mx.test\nmail_name = mta\n" + main)
        self.store = QueueStore(str(tmp_path / "queue"), self.clock, fileSystem=fileSystem, syncMethod=syncMethod)
        self.store.prepare()
        self.committed = []
        self.store.onCommit = self.committed.append
        self.lines = []
        self.cleanup = Cleanup(self.config.settings.cleanup, self.store, self.clock, self.maillog)
        self.pickup = Pickup(self.store, self.cleanup, self.clock, self.maillog, **kwargs)

    def maillog(self, program):
        lines = self.lines

        class Recorder(MailLogger):
            def emit(self, text, queue_id=None, level=None, **fields):
                lines.append(f"{program}: {queue_id}: {text}" if queue_id else f"{program}: {text}")

        return Recorder("mta", program)

    def drop(self, message=b"Subject: hi\n\nhello\n", argv=("bob@example.org",), name=None):
        """Deposit C{message} as mta-sendmail does; its maildrop name."""
        options = S.parseArguments(list(argv))
        params = load("<t>", f"[main]\nqueue_directory = {self.store.directory}\nmyorigin = origin.example\n")
        kwargs = {"newQueueId": lambda: name} if name else {}
        return S.submit(options, params, io.BytesIO(message), uid=os.getuid(), **kwargs)

    def dropRaw(self, name, data):
        path = os.path.join(self.store.queuePath("maildrop"), name)
        with open(path, "wb") as f:
            f.write(data)
        return path

    def queued(self, queue="incoming"):
        return self.store.listQueue(queue)

    def message(self, queueId, queue="incoming"):
        path = self.store.queuePath(queue, queueId)
        queueFile = readQueueFile(path, verifyContent=True)
        return queueFile.envelope, b"".join(readContent(path, queueFile.contentOffset, queueFile.contentLength))

    def maildrop(self):
        return sorted(os.listdir(self.store.queuePath("maildrop")))

    def corrupt(self):
        return sorted(os.listdir(self.store.queuePath("corrupt")))


@pytest.fixture(autouse=True)
def fixedUser(monkeypatch):
    monkeypatch.setattr(S.addresses, "loginName", lambda uid: "alice")
    monkeypatch.setattr(S.addresses, "defaultFullName", lambda uid: None)


def test_picksUpADeposit(tmp_path):
    h = Harness(tmp_path)
    name = h.drop(b"Subject: hi\nBcc: secret@example.org\n\nhello\n")
    mtime = os.stat(h.store.queuePath("maildrop", name)).st_mtime
    h.pickup.start()
    h.clock.advance(0)
    [queueId] = h.queued()
    assert queueId != name and h.committed == [queueId]
    assert h.maildrop() == []
    envelope, content = h.message(queueId)
    assert envelope.sender == "alice@origin.example"
    assert [r.address for r in envelope.recipients] == ["bob@example.org"]
    assert (envelope.protocol, envelope.client_name, envelope.client_address, envelope.client_port, envelope.helo) == (
        "local", "localhost", "", 0, "")
    received = (f"Received: by mx.test (mta, from userid {os.getuid()})\r\n"
                f"\tid {queueId}; {mailDate(mtime)}\r\n").encode()
    assert content.startswith(received)
    headers, body = content[len(received):].split(b"\r\n\r\n", 1)
    assert body == b"hello\r\n"
    assert headers.split(b"\r\n") == [
        b"Subject: hi",  # Bcc: dropped (message_drop_headers)
        f"Message-Id: <{queueId}@mx.test>".encode(),
        f"Date: {mailDate(envelope.arrival_time)}".encode(),
        b"From: alice@origin.example",
    ]
    assert h.lines == [
        f"pickup: {queueId}: uid={os.getuid()} from=<alice@origin.example>",
        f"cleanup: {queueId}: message-id=<{queueId}@mx.test>",
    ]


def test_existingHeadersAreKept(tmp_path):
    h = Harness(tmp_path)
    h.drop(b"From: Al <al@x.example>\nDate: Mon, 1 Jan 2024 00:00:00 +0000\nMessage-Id: <m1@x>\n\nbody\n")
    h.pickup.start()
    h.clock.advance(0)
    [queueId] = h.queued()
    _, content = h.message(queueId)
    assert content.split(b"\r\n", 2)[2] == (
        b"From: Al <al@x.example>\r\nDate: Mon, 1 Jan 2024 00:00:00 +0000\r\nMessage-Id: <m1@x>\r\n\r\nbody\r\n")
    assert h.lines[1] == f"cleanup: {queueId}: message-id=<m1@x>"


def test_nullSenderGetsMailerDaemon(tmp_path):
    h = Harness(tmp_path)
    h.drop(argv=("-f", "<>", "bob@example.org"))
    h.pickup.start()
    h.clock.advance(0)
    envelope, content = h.message(h.queued()[0])
    assert envelope.sender == "" and b"\r\nFrom: MAILER-DAEMON\r\n" in content
    assert h.lines[0].endswith("from=<>")


def test_envelopeDetailsSurvive(tmp_path):
    h = Harness(tmp_path)
    h.drop(b"Subject: x\n\ncaf\xc3\xa9\n", argv=("-N", "success", "-V", "ENV1", "j\u00f6rg@example.org"))
    h.pickup.start()
    h.clock.advance(0)
    envelope, _ = h.message(h.queued()[0])
    assert envelope.recipients == (Recipient("j\u00f6rg@example.org", notify=("SUCCESS",)),)
    assert (envelope.envid, envelope.body, envelope.smtputf8) == ("ENV1", "8BITMIME", True)
    assert envelope.arrival_time <= h.clock.seconds()


def test_arrivalTimeIsNeverInTheFuture(tmp_path):
    h = Harness(tmp_path)
    envelope = Envelope(sender="a@x.example", recipients=(Recipient("b@y.example"),), arrival_time=NOW + 5000)
    h.dropRaw("0aWfQ3Zk1r7Tb2", fileformat.dumpQueueFile(envelope, b"Subject: x\r\n\r\nhi\r\n"))
    h.pickup.start()
    h.clock.advance(0)
    assert h.message(h.queued()[0])[0].arrival_time == NOW


def goodFile(content=b"Subject: x\r\n\r\nhello\r\n", **fields):
    envelope = Envelope(sender="a@x.example", recipients=(Recipient("b@y.example"),), arrival_time=NOW - 10)
    return fileformat.dumpQueueFile(attrs.evolve(envelope, **fields), content)


@pytest.mark.parametrize("kind", ["garbage", "truncated", "badcrc", "badaddress", "norecipients", "nullrecipient"])
def test_damagedFilesAreSetAside(tmp_path, kind):
    h = Harness(tmp_path)
    data = {
        "garbage": b"this is not a queue file\n",
        "truncated": goodFile()[:-20],
        "badcrc": goodFile().replace(b"hello", b"jello"),
        "badaddress": goodFile(recipients=(Recipient("not an address"),)),
        "norecipients": goodFile(recipients=()),
        "nullrecipient": goodFile(recipients=(Recipient(""),)),
    }[kind]
    h.dropRaw("0aWfQ3Zk1r7Tb2", data)
    good = h.drop()
    h.pickup.start()
    h.clock.advance(0)
    assert h.corrupt() == ["0aWfQ3Zk1r7Tb2"]
    assert len(h.queued()) == 1 and h.maildrop() == []
    assert os.listdir(h.store.queuePath("tmp")) == []
    warning = [line for line in h.lines if "0aWfQ3Zk1r7Tb2" in line]
    assert len(warning) == 1 and warning[0].startswith("pickup: warning: maildrop/0aWfQ3Zk1r7Tb2: ")
    assert warning[0].endswith("; moved to corrupt/")
    assert good not in h.maildrop()


def test_symbolicLinksAreNeverFollowed(tmp_path):
    h = Harness(tmp_path)
    target = tmp_path / "elsewhere"
    target.write_bytes(goodFile())
    os.symlink(target, os.path.join(h.store.queuePath("maildrop"), "0aWfQ3Zk1r7Tb2"))
    h.pickup.start()
    h.clock.advance(0)
    assert h.queued() == [] and h.corrupt() == ["0aWfQ3Zk1r7Tb2"]
    assert os.path.islink(h.store.queuePath("corrupt", "0aWfQ3Zk1r7Tb2"))
    assert "is a symbolic link" in h.lines[0]


def test_tooManyHopsIsSetAside(tmp_path):
    h = Harness(tmp_path, main="hopcount_limit = 3\n")
    h.dropRaw("0aWfQ3Zk1r7Tb2", goodFile(b"Received: a\r\nReceived: b\r\n\r\nloop\r\n"))
    h.pickup.start()
    h.clock.advance(0)
    assert h.queued() == [] and h.corrupt() == ["0aWfQ3Zk1r7Tb2"]
    assert "too many hops" in h.lines[0]
    assert os.listdir(h.store.queuePath("tmp")) == []


def test_onlyQueueIdNamesArePickedUp(tmp_path):
    h = Harness(tmp_path)
    for name in ("0aWfQ3Zk1r7Tb2.tmp", "README", ".hidden", "0aWfQ3Zk1r7Tb"):
        h.dropRaw(name, goodFile())
    h.pickup.start()
    h.clock.advance(0)
    assert h.queued() == [] and h.corrupt() == []
    assert h.maildrop() == sorted(["0aWfQ3Zk1r7Tb2.tmp", "README", ".hidden", "0aWfQ3Zk1r7Tb"])


def test_staleTemporaryFilesAreRemoved(tmp_path):
    h = Harness(tmp_path)
    old = h.dropRaw("0aWfQ3Zk1r7Tb2.tmp", b"half")
    h.dropRaw("0aWfQ3Zk1r7Tb3.tmp", b"being written")
    os.utime(old, (NOW - pickup.STALE_TEMPORARY - 10,) * 2)
    os.utime(h.store.queuePath("maildrop") + "/0aWfQ3Zk1r7Tb3.tmp", (NOW - 10,) * 2)
    h.pickup.start()
    h.clock.advance(0)
    assert h.maildrop() == ["0aWfQ3Zk1r7Tb3.tmp"]
    assert h.lines == ["pickup: warning: removed stale temporary file maildrop/0aWfQ3Zk1r7Tb2.tmp"]


def scan(h):
    """One tick's work, run to its end (the pool is synchronous): True if more files are waiting."""
    d = Deferred.fromCoroutine(h.pickup.scan())
    assert d.called
    return d.result


def test_batchSizeBoundsEachTick(tmp_path):
    h = Harness(tmp_path, batchSize=2)
    names = [h.drop() for _ in range(5)]
    assert h.maildrop() == sorted(names)
    h.pickup._running = True
    assert scan(h) is True
    assert len(h.queued()) == 2 and h.maildrop() == sorted(names)[2:]  # oldest first
    assert scan(h) is True
    assert len(h.queued()) == 4
    assert scan(h) is False
    assert len(h.queued()) == 5 and h.maildrop() == []


def test_aFullTickIsFollowedAtOnce(tmp_path):
    h = Harness(tmp_path, batchSize=2)
    for _ in range(3):
        h.drop()
    h.pickup._running = True
    h.pickup._tick()
    assert len(h.queued()) == 2
    assert [c.getTime() - h.clock.seconds() for c in h.clock.getDelayedCalls()] == [0]  # the reactor runs between
    h.clock.advance(0)
    assert len(h.queued()) == 3
    assert [c.getTime() - h.clock.seconds() for c in h.clock.getDelayedCalls()] == [pickup.POLL_INTERVAL]


def test_pollsEverySecond(tmp_path):
    h = Harness(tmp_path)
    h.pickup.start()
    h.clock.advance(0)
    h.drop()
    h.clock.advance(0.5)
    assert h.queued() == []
    h.clock.advance(0.5)
    assert len(h.queued()) == 1


def test_directoryIsListedOnlyWhenTheLastListingIsUsedUp(tmp_path, monkeypatch):
    h = Harness(tmp_path, batchSize=1)
    listings = []
    real = pickup.listMaildrop
    monkeypatch.setattr(pickup, "listMaildrop", lambda *a: listings.append(1) or real(*a))
    h.drop(), h.drop(), h.drop()
    h.pickup.start()
    h.clock.advance(0)  # three ticks of one file each
    assert len(h.queued()) == 3 and len(listings) == 1


def test_aVanishedFileIsSkipped(tmp_path, monkeypatch):
    h = Harness(tmp_path)
    h.drop()
    second = h.drop()
    real = pickup.listMaildrop

    def listAndLose(*args):
        result = real(*args)
        os.unlink(h.store.queuePath("maildrop", second))  # mta-queue or an administrator took it
        return result

    monkeypatch.setattr(pickup, "listMaildrop", listAndLose)
    h.pickup.start()
    h.clock.advance(0)
    assert len(h.queued()) == 1 and h.corrupt() == [] and len(h.lines) == 2


class FailingFS(FileSystem):
    def __init__(self):
        self.failFsync = False
        self.failUnlink = None  # a path prefix

    def fsync(self, fd):
        if self.failFsync:
            raise OSError(errno.EIO, "Input/output error")
        super().fsync(fd)

    def syncfs(self, fd):
        if self.failFsync:
            raise OSError(errno.EIO, "Input/output error")
        super().syncfs(fd)

    def unlink(self, path):
        if self.failUnlink and path.startswith(self.failUnlink):
            raise OSError(errno.EACCES, "Permission denied")
        super().unlink(path)


@pytest.mark.parametrize("syncMethod", ["syncfs", "fsync"])
def test_queueWriteFailureLeavesTheFileForLater(tmp_path, syncMethod):
    fs = FailingFS()
    h = Harness(tmp_path, fileSystem=fs, syncMethod=syncMethod)
    name = h.drop()
    fs.failFsync = True
    h.pickup.start()
    h.clock.advance(0)
    assert h.queued() == [] and h.maildrop() == [name]
    assert os.listdir(h.store.queuePath("tmp")) == []
    [line] = h.lines
    failed = "fsync failed" if syncMethod == "fsync" else r"syncfs of \S+ failed"
    assert re.fullmatch(rf"pickup: warning: maildrop/{name}: cannot queue: cannot store message \w+: "
                        rf"{failed}: Input/output error; trying again in 60s", line), line
    fs.failFsync = False
    h.clock.advance(pickup.POLL_INTERVAL)
    assert h.queued() == []  # not before RETRY_DELAY
    h.clock.pump([pickup.POLL_INTERVAL] * int(pickup.RETRY_DELAY))
    assert len(h.queued()) == 1 and h.maildrop() == []


def test_aFileThatCannotBeRemovedIsNotQueuedTwice(tmp_path):
    fs = FailingFS()
    h = Harness(tmp_path, fileSystem=fs)
    name = h.drop()
    fs.failUnlink = h.store.queuePath("maildrop")
    h.pickup.start()
    h.clock.advance(0)
    [queueId] = h.queued()
    assert h.maildrop() == [name]
    assert f"warning: {name}: queued as {queueId} but cannot remove maildrop/{name}: Permission denied" in h.lines[-1]
    h.clock.pump([pickup.POLL_INTERVAL] * 100)
    assert h.queued() == [queueId]


def test_bigMessagesAreCopiedInChunks(tmp_path, monkeypatch):
    monkeypatch.setattr(pickup, "CHUNK_SIZE", 4096)
    h = Harness(tmp_path)
    body = b"".join(b"line %06d of a big message\n" % i for i in range(20000))
    h.drop(b"Subject: big\n\n" + body)
    h.pickup.start()
    jobs = h.pool.jobs
    h.clock.advance(0)
    envelope, content = h.message(h.queued()[0])
    assert content.endswith(b"\r\n\r\n" + body.replace(b"\n", b"\r\n"))
    assert h.pool.jobs - jobs > len(body) // 4096  # one read job per chunk


def test_stopWaitsForTheFileInHand(tmp_path):
    pool = ManualPool()
    h = Harness(tmp_path, pool=pool)
    h.drop()
    h.pickup.start()
    h.clock.advance(0)
    assert pool.waiting  # listing the directory
    stopped = h.pickup.stop()
    assert not stopped.called
    pool.runAll()
    while pool.waiting:
        pool.runAll()
    assert stopped.called
    assert h.clock.getDelayedCalls() == []


def test_stopWhenIdle(tmp_path):
    h = Harness(tmp_path)
    h.pickup.start()
    h.clock.advance(0)
    assert h.pickup.stop().called
    assert h.clock.getDelayedCalls() == []
    h.drop()
    h.clock.advance(10)
    assert h.queued() == []


def test_realClockTimesAreUsedForTheReceivedHeader(tmp_path):
    h = Harness(tmp_path)
    name = h.drop()
    stamp = time.time() - 3600
    os.utime(h.store.queuePath("maildrop", name), (stamp, stamp))
    h.pickup.start()
    h.clock.advance(0)
    _, content = h.message(h.queued()[0])
    assert mailDate(stamp).encode() in content.split(b"\r\n")[1]


# -- address rewriting: local submissions are always rewritten in the local context ------------


def headerSection(content):
    return content.split(b"\r\n\r\n")[0].split(b"\r\n")[2:]  # after the two lines of our Received:


def test_headerAddressesAreQualifiedWithMyorigin(tmp_path):
    h = Harness(tmp_path, main="myorigin = origin.test\n")
    h.drop(b"From: Root <root>\nTo: alice, bob@example.org\nCc: (ops) carol\nSubject: root\n\nTo: root\n")
    h.pickup.start()
    h.clock.advance(0)
    [queueId] = h.queued()
    _, content = h.message(queueId)
    assert headerSection(content)[:4] == [
        b"From: Root <root@origin.test>", b"To: alice@origin.test, bob@example.org",
        b"Cc: (ops) carol@origin.test", b"Subject: root"]
    assert content.endswith(b"\r\n\r\nTo: root\r\n")


def test_remoteSettingsDoNotApplyToLocalSubmissions(tmp_path):
    h = Harness(tmp_path, main="local_header_rewrite_clients =\nremote_header_rewrite_domain = domain.invalid\n")
    h.drop(b"To: alice\n\nhi\n")
    h.pickup.start()
    h.clock.advance(0)
    _, content = h.message(h.queued()[0])
    assert headerSection(content)[0] == b"To: alice@mx.test"


def test_unqualifiedEnvelopeAddressesAreQualified(tmp_path):
    """A maildrop file from another writer may hold bare names: cleanup completes them (cleanup_addr.c)."""
    h = Harness(tmp_path)
    h.dropRaw("0aWfQ3Zk1r7Tb2", goodFile(b"To: root\r\n\r\nhi\r\n", sender="alice",
                                          recipients=(Recipient("root", notify=("FAILURE",)), Recipient("b@y.example"))))
    h.pickup.start()
    h.clock.advance(0)
    [queueId] = h.queued()
    envelope, content = h.message(queueId)
    assert envelope.sender == "alice@mx.test"
    assert envelope.recipients == (Recipient("root@mx.test", notify=("FAILURE",)), Recipient("b@y.example"))
    assert headerSection(content) == [
        b"To: root@mx.test", f"Message-Id: <{queueId}@mx.test>".encode(),
        f"Date: {mailDate(envelope.arrival_time)}".encode(), b"From: alice@mx.test"]
    assert h.lines[0] == f"pickup: {queueId}: uid={os.getuid()} from=<alice>"  # as the file has it, as Postfix logs


def test_appendDotMydomainInPickup(tmp_path):
    h = Harness(tmp_path, main="append_dot_mydomain = yes\nmydomain = example.net\n")
    h.dropRaw("0aWfQ3Zk1r7Tb2", goodFile(b"To: u@host, v@host.example\r\n\r\nhi\r\n",
                                          recipients=(Recipient("u@host"),)))
    h.pickup.start()
    h.clock.advance(0)
    envelope, content = h.message(h.queued()[0])
    assert envelope.recipients == (Recipient("u@host.example.net"),)
    assert headerSection(content)[0] == b"To: u@host.example.net, v@host.example"


def test_appendAtMyoriginNoInPickup(tmp_path):
    h = Harness(tmp_path, main="append_at_myorigin = no\n")
    h.dropRaw("0aWfQ3Zk1r7Tb2", goodFile(recipients=(Recipient("root"),)))
    name = h.drop(b"To: root\n\nhi\n")  # mta-sendmail qualifies the envelope itself
    h.pickup.start()
    h.clock.advance(0)
    assert h.corrupt() == ["0aWfQ3Zk1r7Tb2"]
    assert "bad recipient address: address has no domain; moved to corrupt/" in h.lines[0]
    [queueId] = h.queued()
    assert name not in h.maildrop()
    assert headerSection(h.message(queueId)[1])[0] == b"To: root"
