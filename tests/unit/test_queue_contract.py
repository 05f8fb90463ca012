"""
The queue's entrance, IQueueStore and IQueueMessage: one contract, run
against the real store (mta.queue.store.QueueStore on a temporary directory,
its thread-pool work run at once by mta.testing.SyncReactor) and against the
fake the server's and cleanup's tests use (mta.testing.FakeQueueStore).  A
behaviour the fake got wrong would make those tests pass for the wrong reason.
"""

import errno
import os

import attrs
import pytest
from twisted.python.failure import Failure

from mta.queue import fileformat
from mta.queue.queueid import isValidQueueId
from mta.queue.store import FileSystem, QueueStore, QueueWriteError
from mta.testing import FakeQueueStore, SyncReactor
from tests.unit.test_queue_store import CONTENT, ENVELOPE

class FullDisk(FileSystem):
    """Every fsync and syncfs fails with ENOSPC while C{full} is set."""

    full = False

    def fsync(self, fd):
        if self.full:
            raise OSError(errno.ENOSPC, "No space left on device")
        super().fsync(fd)

    def syncfs(self, fd):
        if self.full:
            raise OSError(errno.ENOSPC, "No space left on device")
        super().syncfs(fd)


class RealStore:
    """The real store, and how to see what it holds: the files in incoming/ and hold/."""

    def __init__(self, tmp_path):
        self.fs = FullDisk()
        self.store = QueueStore(str(tmp_path / "queue"), SyncReactor(), fileSystem=self.fs)
        self.store.prepare()

    def stored(self):
        """{queue id: (queue, envelope, content)} of every message in the queue."""
        found = {}
        for queue in ("incoming", "hold"):
            for queueId in os.listdir(self.store.queuePath(queue)):
                path = self.store.queuePath(queue, queueId)
                parsed = fileformat.readQueueFile(path, verifyContent=True)
                content = fileformat.readContent(path, parsed.contentOffset, parsed.contentLength)
                found[queueId] = (queue, parsed.envelope, b"".join(content))
        return found

    def leftovers(self):
        return os.listdir(self.store.queuePath("tmp"))

    def failCommits(self):
        self.fs.full = True


class FakeStore:
    """The fake, and the same view of it: its committed messages."""

    def __init__(self, tmp_path):
        self.store = FakeQueueStore()

    def stored(self):
        return {m.queueId: (m.queue, m.envelope, m.content) for m in self.store.committed}

    def leftovers(self):
        return []

    def failCommits(self):
        self.store.failCommits = True


@pytest.fixture(params=[RealStore, FakeStore], ids=["QueueStore", "FakeQueueStore"])
def q(request, tmp_path):
    return request.param(tmp_path)


def outcome(d):
    """('ok', value) or ('failed', exception) of a Deferred that has fired."""
    out = []
    d.addBoth(out.append)
    assert out, "the Deferred has not fired"
    if isinstance(out[0], Failure):
        return "failed", out[0].value
    return "ok", out[0]


def test_newMessagesHaveTheirOwnValidQueueIds(q):
    messages = [q.store.newMessage() for _ in range(20)]
    ids = [m.queueId for m in messages]
    assert all(isinstance(i, str) and isValidQueueId(i) for i in ids)
    assert len(set(ids)) == len(ids)
    for m in messages:
        m.abort()


def test_commitStoresTheContentAndTheEnvelopeWithItsSize(q):
    message = q.store.newMessage()
    for chunk in (CONTENT[:5], CONTENT[5:20], CONTENT[20:]):
        message.write(chunk)
    assert message.size == len(CONTENT)
    assert outcome(message.commit(attrs.evolve(ENVELOPE, size=12345))) == ("ok", message.queueId)
    assert q.stored() == {message.queueId: ("incoming", attrs.evolve(ENVELOPE, size=len(CONTENT)), CONTENT)}
    assert q.leftovers() == []


def test_writesMayBeAnyBytesLikeObject(q):
    message = q.store.newMessage()
    message.write(bytearray(b"Subject: x\r\n"))
    message.write(memoryview(b"\r\nbody\r\n"))
    assert outcome(message.commit(ENVELOPE))[0] == "ok"
    [(_, _, content)] = q.stored().values()
    assert content == b"Subject: x\r\n\r\nbody\r\n"


def test_anEmptyMessageCanBeCommitted(q):
    message = q.store.newMessage()
    assert outcome(message.commit(ENVELOPE)) == ("ok", message.queueId)
    assert q.stored() == {message.queueId: ("incoming", attrs.evolve(ENVELOPE, size=0), b"")}


def test_commitIntoHold(q):
    message = q.store.newMessage()
    message.write(CONTENT)
    assert outcome(message.commit(ENVELOPE, queue="hold")) == ("ok", message.queueId)
    assert q.stored()[message.queueId][0] == "hold"


def test_abortLeavesNothingAndIsSafeTwice(q):
    message = q.store.newMessage()
    message.write(CONTENT)
    message.abort()
    message.abort()
    message.write(b"ignored after abort")
    assert q.stored() == {} and q.leftovers() == []
    status, error = outcome(message.commit(ENVELOPE))
    assert status == "failed" and isinstance(error, QueueWriteError)
    assert q.stored() == {}


def test_abortAfterCommitKeepsTheMessage(q):
    message = q.store.newMessage()
    message.write(CONTENT)
    assert outcome(message.commit(ENVELOPE))[0] == "ok"
    message.abort()
    assert list(q.stored()) == [message.queueId]


def test_aSecondCommitFailsAndWritesAfterACommitAreAnError(q):
    message = q.store.newMessage()
    message.write(CONTENT)
    assert outcome(message.commit(ENVELOPE))[0] == "ok"
    status, error = outcome(message.commit(ENVELOPE))
    assert status == "failed" and isinstance(error, QueueWriteError)
    with pytest.raises(RuntimeError):
        message.write(b"more")
    assert q.stored()[message.queueId][2] == CONTENT


@pytest.mark.parametrize("envelope", [None, "MAIL FROM:<a@b>", {"sender": "a@b"}])
def test_anEnvelopeThatIsNotAnEnvelopeFailsTheCommit(q, envelope):
    message = q.store.newMessage()
    message.write(CONTENT)
    status, error = outcome(message.commit(envelope))
    assert status == "failed" and isinstance(error, QueueWriteError)
    assert q.stored() == {} and q.leftovers() == []


def test_aCommitThatCannotBeMadeDurableFailsWithQueueWriteErrorAndLeavesNothing(q):
    kept = q.store.newMessage()
    kept.write(CONTENT)
    assert outcome(kept.commit(ENVELOPE))[0] == "ok"
    q.failCommits()
    message = q.store.newMessage()
    message.write(CONTENT)
    status, error = outcome(message.commit(ENVELOPE))
    assert status == "failed" and isinstance(error, QueueWriteError)
    assert list(q.stored()) == [kept.queueId] and q.leftovers() == []


def test_freeSpaceIsANumberOfBytes(q):
    free = q.store.freeSpace()
    assert isinstance(free, int) and free >= 0
