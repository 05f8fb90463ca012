"""mta.queue.store: durable entry, commit ordering, group commit, failures, housekeeping."""

import errno
import os
import queue
import re
import stat
import tracemalloc
import zlib

import attrs
import pytest
from twisted.python.failure import Failure

from mta.model import Envelope, Recipient
from mta.queue import fileformat
from mta.queue.queueid import QueueIdGenerator, isValidQueueId
from mta.queue.store import QUEUE_NAMES, WRITE_BUFFER_SIZE, FileSystem, QueueStore, QueueWriteError
from mta.testing import resultOf

ENVELOPE = Envelope(
    sender="alice@example.org",
    recipients=(Recipient("bob@example.com"), Recipient("carol@example.net", notify=("FAILURE",))),
    arrival_time=1700000000.5,
    client_name="mail.example.org",
    client_address="192.0.2.7",
    client_port=40211,
    helo="mail.example.org",
    protocol="ESMTP",
)
CONTENT = b"Subject: hello\r\n\r\nHello, world.\r\n"


# -- fakes: no threads, no real reactor ------------------------------------------------


class SyncPool:
    """A thread pool that runs each job at once, in the calling thread."""

    def callInThreadWithCallback(self, onResult, f, *args, **kwargs):
        try:
            result = f(*args, **kwargs)
        except BaseException:
            onResult(False, Failure())
        else:
            onResult(True, result)


class ManualPool:
    """A thread pool whose jobs wait until the test runs them, in order."""

    def __init__(self):
        self.jobs = []

    def callInThreadWithCallback(self, onResult, f, *args, **kwargs):
        self.jobs.append((onResult, f, args, kwargs))

    def names(self):
        return [f.__name__ for _, f, _, _ in self.jobs]

    def runNext(self):
        onResult, f, args, kwargs = self.jobs.pop(0)
        SyncPool().callInThreadWithCallback(onResult, f, *args, **kwargs)

    def runAll(self):
        while self.jobs:
            self.runNext()


class FakeReactor:
    """callFromThread runs at once (our pools call back in the 'reactor' thread anyway)."""

    def __init__(self, pool=None, now=0.0):
        self.pool = pool if pool is not None else SyncPool()
        self.now = now
        self.poolRequests = 0

    def callFromThread(self, f, *args, **kwargs):
        f(*args, **kwargs)

    def getThreadPool(self):
        self.poolRequests += 1
        return self.pool

    def seconds(self):
        return self.now


class RecordingFileSystem(FileSystem):
    """Records every call in C{log}; C{failures} maps an operation name to an OSError to raise."""

    def __init__(self, log=None):
        self.log = log if log is not None else []
        self.paths = {}
        self.failures = {}
        self.bytesWritten = 0
        self.onSync = None  # called at each directory fsync and syncfs, before it is made

    def _maybeFail(self, op, *args):
        error = self.failures.get(op)
        if callable(error) and not isinstance(error, OSError):
            error = error(*args)
        if error is not None:
            self.log.append((op + " FAILED", *args))
            raise error

    def open(self, path, flags, mode):
        self._maybeFail("open", path)
        fd = super().open(path, flags, mode)
        self.paths[fd] = path
        self.log.append(("open", os.path.basename(path)))
        return fd

    def write(self, fd, data):
        self._maybeFail("write", len(data))
        n = super().write(fd, data)
        self.bytesWritten += n
        self.log.append(("write", n))
        return n

    def pwrite(self, fd, data, offset):
        self._maybeFail("pwrite", offset)
        self.log.append(("pwrite", offset))
        return super().pwrite(fd, data, offset)

    def fsync(self, fd):
        self._maybeFail("fsync")
        self.log.append(("fsync", os.path.basename(self.paths[fd])))
        super().fsync(fd)

    def close(self, fd):
        self.log.append(("close", os.path.basename(self.paths.get(fd, "?"))))
        super().close(fd)
        self._maybeFail("close")

    def rename(self, src, dst):
        self._maybeFail("rename")
        self.log.append(("rename", _rel(src), _rel(dst)))
        super().rename(src, dst)

    def unlink(self, path):
        self.log.append(("unlink", _rel(path)))
        super().unlink(path)

    def fsyncDirectory(self, path):
        if self.onSync is not None:
            self.onSync()
        self._maybeFail("fsyncDirectory")
        self.log.append(("fsyncDirectory", os.path.basename(path)))
        super().fsyncDirectory(path)

    def syncfs(self, fd):
        if self.onSync is not None:
            self.onSync()
        self._maybeFail("syncfs")
        self.log.append(("syncfs",))
        super().syncfs(fd)


def _rel(path):
    return "/".join(path.split(os.sep)[-2:])


SYNC_METHODS = pytest.mark.parametrize("method", ["syncfs", "fsync"])


def makeStore(tmp_path, pool=None, fs=None, method="syncfs", **kw):
    store = QueueStore(str(tmp_path / "queue"), FakeReactor(pool), fileSystem=fs or RecordingFileSystem(),
                       syncMethod=method, **kw)
    store.prepare()
    return store


result = resultOf


def failure(d, kind=QueueWriteError):
    out = []
    d.addBoth(out.append)
    assert out, "the Deferred has not fired"
    assert isinstance(out[0], Failure), f"expected a failure, got {out[0]!r}"
    assert out[0].check(kind), out[0]
    return out[0].value


def hasFired(d):
    out = []
    d.addBoth(lambda r: out.append(r) or r)
    return bool(out)


def files(store, name):
    return sorted(os.listdir(store.queuePath(name)))


def nothingLeft(store):
    return files(store, "incoming") == [] and files(store, "tmp") == []


# -- directories ---------------------------------------------------------------------------


def test_prepare_creates_the_queue_directories(tmp_path):
    store = QueueStore(str(tmp_path / "queue"), FakeReactor())
    store.prepare()
    for name in QUEUE_NAMES:
        st = os.lstat(tmp_path / "queue" / name)
        assert stat.S_ISDIR(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o700, name
    assert set(QUEUE_NAMES) == {"incoming", "active", "deferred", "hold", "corrupt", "maildrop", "tmp"}


def test_prepare_is_idempotent_and_repairs_modes(tmp_path):
    store = QueueStore(str(tmp_path / "queue"), FakeReactor())
    store.prepare()
    (tmp_path / "queue" / "incoming" / "keep").write_bytes(b"x")
    os.chmod(tmp_path / "queue" / "deferred", 0o755)
    store.prepare()
    assert (tmp_path / "queue" / "incoming" / "keep").read_bytes() == b"x"
    assert stat.S_IMODE(os.stat(tmp_path / "queue" / "deferred").st_mode) == 0o700


def test_prepare_refuses_a_file_or_link_in_place_of_a_directory(tmp_path):
    (tmp_path / "queue").mkdir()
    (tmp_path / "queue" / "hold").write_bytes(b"")
    with pytest.raises(NotADirectoryError):
        QueueStore(str(tmp_path / "queue"), FakeReactor()).prepare()
    os.unlink(tmp_path / "queue" / "hold")
    (tmp_path / "elsewhere").mkdir()
    os.symlink(tmp_path / "elsewhere", tmp_path / "queue" / "hold")
    with pytest.raises(NotADirectoryError):
        QueueStore(str(tmp_path / "queue"), FakeReactor()).prepare()


def test_freeSpace(tmp_path):
    store = makeStore(tmp_path)
    st = os.statvfs(store.directory)
    free = store.freeSpace()
    assert free > 0
    assert abs(free - st.f_bavail * st.f_frsize) < 64 * 1024 * 1024  # the disk is in use meanwhile


def test_listQueue_ignores_junk(tmp_path):
    store = makeStore(tmp_path)
    deferred = tmp_path / "queue" / "deferred"
    good = ["0aWfQ3Zk1r7Tb2", "0aWfQ3Zk0AAAAA", "zzzzzzzzzzzzzz"]
    for name in good:
        (deferred / name).write_bytes(b"")
    for junk in [".hidden", "0aWfQ3Zk1r7Tb2.tmp", "0aWfQ3Zk1r7T-2", "0aWfQ3Zk1r7Tb", "0aWfQ3Zk1r7Tb22",
                 "core", "0aWfQ3Zk1r7T\u00e92"]:
        (deferred / junk).write_bytes(b"")
    (deferred / "0aWfQ3Zk1DIR00").mkdir()
    os.symlink(deferred / good[0], deferred / "0aWfQ3Zk1LINK0")
    assert store.listQueue("deferred") == sorted(good)
    assert store.listQueue("incoming") == []
    with pytest.raises(ValueError):
        store.listQueue("../etc")


def test_cleanTemporary_removes_old_leftovers_only(tmp_path):
    store = makeStore(tmp_path)
    store.reactor.now = 1_000_000.0
    tmp = tmp_path / "queue" / "tmp"
    for name, age in [("0aWfQ3Zk1OLD00", 7200), ("junk-old", 7200), ("0aWfQ3Zk1NEW00", 60)]:
        (tmp / name).write_bytes(b"partial")
        os.utime(tmp / name, (store.reactor.now - age, store.reactor.now - age))
    (tmp / "somedir").mkdir()
    os.utime(tmp / "somedir", (0, 0))
    receiving = store.newMessage()  # a slow client: its file is old but in use
    receiving.write(b"x" * (WRITE_BUFFER_SIZE + 1))
    os.utime(receiving.path, (0, 0))

    assert store.cleanTemporary(olderThan=3600) == ["0aWfQ3Zk1OLD00", "junk-old"]
    assert sorted(os.listdir(tmp)) == sorted(["0aWfQ3Zk1NEW00", "somedir", receiving.queueId])
    assert store.cleanTemporary(olderThan=3600) == []
    assert result(receiving.commit(ENVELOPE)) == receiving.queueId


# -- the normal path ---------------------------------------------------------------------------


def test_newMessage_creates_its_private_file_lazily(tmp_path):
    """A small message's file is made at commit (in the pool); a big one's at the first flush."""
    store = makeStore(tmp_path)
    message = store.newMessage()
    assert isValidQueueId(message.queueId)
    assert message.path == os.path.join(store.directory, "tmp", message.queueId)
    assert not os.path.exists(message.path)
    assert message.size == 0
    other = store.newMessage()
    assert other.queueId != message.queueId
    message.write(CONTENT)
    assert not os.path.exists(message.path)
    result(message.commit(ENVELOPE))
    st = os.lstat(store.queuePath("incoming", message.queueId))
    assert stat.S_ISREG(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600
    other.write(b"x" * (WRITE_BUFFER_SIZE + 1))
    st = os.lstat(other.path)
    assert stat.S_ISREG(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600


def test_commit_stores_content_and_envelope(tmp_path):
    store = makeStore(tmp_path)
    message = store.newMessage()
    for chunk in [CONTENT[:5], CONTENT[5:20], CONTENT[20:]]:
        message.write(chunk)
    assert message.size == len(CONTENT)
    queueId = result(message.commit(ENVELOPE))
    assert queueId == message.queueId
    assert files(store, "incoming") == [queueId] and files(store, "tmp") == []
    path = store.queuePath("incoming", queueId)
    q = fileformat.readQueueFile(path, verifyContent=True)
    assert q.envelope == attrs.evolve(ENVELOPE, size=len(CONTENT))
    with open(path, "rb") as f:
        data = f.read()
    assert data[q.contentOffset : q.contentOffset + q.contentLength] == CONTENT
    assert data == fileformat.dumpQueueFile(ENVELOPE, CONTENT)
    assert store.listQueue("incoming") == [queueId]


def test_commit_sets_the_envelope_size(tmp_path):
    store = makeStore(tmp_path)
    message = store.newMessage()
    message.write(CONTENT)
    queueId = result(message.commit(attrs.evolve(ENVELOPE, size=12345)))
    assert fileformat.readEnvelope(store.queuePath("incoming", queueId)).size == len(CONTENT)


def test_empty_message(tmp_path):
    store = makeStore(tmp_path)
    queueId = result(store.newMessage().commit(ENVELOPE))
    assert fileformat.readQueueFile(store.queuePath("incoming", queueId), verifyContent=True).contentLength == 0


@SYNC_METHODS
def test_commit_order(tmp_path, method):
    """Data written, [file fsynced,] renamed, made durable, and only then the Deferred fires."""
    log = []
    store = makeStore(tmp_path, fs=RecordingFileSystem(log), method=method)
    message = store.newMessage()
    qid = message.queueId
    message.write(b"x" * (3 * WRITE_BUFFER_SIZE))  # some content is flushed before commit
    message.write(CONTENT)
    del log[:]
    d = message.commit(ENVELOPE)
    d.addCallback(lambda queueId: log.append(("fired", queueId)) or queueId)
    events = [e for e in log if e[0] != "write"]
    if method == "fsync":
        assert events == [
            ("pwrite", 0),  # the real header over the placeholder
            ("fsync", qid),
            ("close", qid),
            ("rename", f"tmp/{qid}", f"incoming/{qid}"),
            ("fsyncDirectory", "incoming"),
            ("fired", qid),
        ]
    else:  # one syncfs of the file system: the file's data and the rename
        assert events == [
            ("pwrite", 0),
            ("close", qid),
            ("rename", f"tmp/{qid}", f"incoming/{qid}"),
            ("syncfs",),
            ("fired", qid),
        ]
    assert log.index(("pwrite", 0)) > max(i for i, e in enumerate(log) if e[0] == "write")


def test_commit_order_with_a_real_thread_pool_shape(tmp_path):
    """With the committer's job held back, nothing is renamed or fires; one job then serves every commit made."""
    pool = ManualPool()
    store = makeStore(tmp_path, pool=pool)
    message = store.newMessage()
    message.write(CONTENT)
    d = message.commit(ENVELOPE)
    other = store.newMessage()
    other.write(CONTENT)
    d2 = other.commit(ENVELOPE)
    assert not hasFired(d) and pool.names() == ["_drain"]  # one hand-off to the committer, not one per commit
    assert files(store, "incoming") == []
    pool.runNext()
    assert result(d) == message.queueId and result(d2) == other.queueId and pool.jobs == []
    assert store.syncs == 1 and store.committer().batches == 1


@SYNC_METHODS
def test_fsync_and_rename_run_in_the_thread_pool(tmp_path, method):
    """The reactor thread only writes; [fsync,] rename and the sync happen in the committer's job."""
    log = []
    pool = ManualPool()
    store = makeStore(tmp_path, pool=pool, fs=RecordingFileSystem(log), method=method)
    message = store.newMessage()
    message.write(CONTENT)
    del log[:]
    message.commit(ENVELOPE)
    assert log == []  # a small message: the reactor thread makes no system call at all
    pool.runAll()
    assert [e[0] for e in log] == (["open", "write", "fsync", "close", "rename", "fsyncDirectory"] if method == "fsync"
                                   else ["open", "write", "close", "rename", "syncfs"])


def test_default_thread_pool_is_the_reactors(tmp_path):
    reactor = FakeReactor()
    store = QueueStore(str(tmp_path / "queue"), reactor)
    store.prepare()
    assert reactor.poolRequests == 0  # not looked up before it is needed
    message = store.newMessage()
    assert result(message.commit(ENVELOPE)) == message.queueId
    assert reactor.poolRequests == 1


def test_given_thread_pool_is_used(tmp_path):
    reactor = FakeReactor(pool=object())  # would fail if used
    pool = ManualPool()
    store = QueueStore(str(tmp_path / "queue"), reactor, pool)
    store.prepare()
    d = store.newMessage().commit(ENVELOPE)
    pool.runAll()
    assert isValidQueueId(result(d)) and reactor.poolRequests == 0


def test_write_buffer_is_flushed_every_64k(tmp_path):
    fs = RecordingFileSystem()
    store = makeStore(tmp_path, fs=fs)
    message = store.newMessage()
    message.write(b"a" * (WRITE_BUFFER_SIZE - 100))
    assert fs.bytesWritten == 0
    message.write(b"a" * 200)
    assert fs.bytesWritten == fileformat.HEADER_SIZE + WRITE_BUFFER_SIZE + 100
    assert len(message._buffer) == 0


def test_big_message_streams_to_disk(tmp_path):
    store = makeStore(tmp_path, fs=FileSystem())
    message = store.newMessage()
    chunk = bytes(range(256)) * 256  # 64 KiB
    count = 50 * 1024 * 1024 // len(chunk)
    crc = 0
    tracemalloc.start()
    try:
        baseline = tracemalloc.get_traced_memory()[0]
        for i in range(count):
            message.write(chunk)
            assert len(message._buffer) < 2 * WRITE_BUFFER_SIZE
        peak = tracemalloc.get_traced_memory()[1] - baseline
    finally:
        tracemalloc.stop()
    assert peak < 1024 * 1024, peak  # 50 MB went through; well under 1 MB was ever held
    for _ in range(count):
        crc = zlib.crc32(chunk, crc)
    assert message.size == count * len(chunk) == 50 * 1024 * 1024
    queueId = result(message.commit(ENVELOPE))
    q = fileformat.readQueueFile(store.queuePath("incoming", queueId), verifyContent=True)
    assert (q.contentLength, q.contentCrc32, q.envelope.size) == (message.size, crc, message.size)


# -- failures ---------------------------------------------------------------------------------


def enospc(*_):
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


@pytest.mark.parametrize(
    "op, error, big, reason, method",
    [
        ("write", OSError(errno.ENOSPC, "No space left on device"), False, "No space left on device", "syncfs"),
        ("write", OSError(errno.ENOSPC, "No space left on device"), True, "No space left on device", "syncfs"),
        ("pwrite", OSError(errno.EIO, "Input/output error"), True, "Input/output error", "syncfs"),
        ("close", OSError(errno.EIO, "Input/output error"), False, "close failed: Input/output error", "syncfs"),
        ("rename", OSError(errno.EACCES, "Permission denied"), False, "rename failed: Permission denied", "syncfs"),
        ("syncfs", OSError(errno.EIO, "Input/output error"), False, "syncfs of .* failed: Input/output error",
         "syncfs"),
        ("syncfs", OSError(errno.ENOSPC, "No space left on device"), True, "syncfs of .* failed: No space", "syncfs"),
        ("write", OSError(errno.ENOSPC, "No space left on device"), True, "No space left on device", "fsync"),
        ("fsync", OSError(errno.EIO, "Input/output error"), False, "fsync failed: Input/output error", "fsync"),
        ("close", OSError(errno.EIO, "Input/output error"), False, "close failed: Input/output error", "fsync"),
        ("rename", OSError(errno.EACCES, "Permission denied"), False, "rename failed: Permission denied", "fsync"),
        ("fsyncDirectory", OSError(errno.EIO, "Input/output error"), False, "fsync of .*incoming failed", "fsync"),
    ],
)
def test_storage_failures_give_QueueWriteError_and_leave_nothing(tmp_path, op, error, big, reason, method):
    fs = RecordingFileSystem()
    store = makeStore(tmp_path, fs=fs, method=method)
    message = store.newMessage()
    fs.failures[op] = error
    for _ in range(4 if big else 1):
        message.write(b"y" * WRITE_BUFFER_SIZE if big else CONTENT)  # the server reads on to the end
    e = failure(message.commit(ENVELOPE))
    assert message.queueId in str(e)
    assert re.search(reason, str(e)), str(e)
    assert nothingLeft(store)
    message.abort()  # safe after a failed commit
    assert nothingLeft(store)


def test_write_error_mid_stream_drops_later_data(tmp_path):
    fs = RecordingFileSystem()
    store = makeStore(tmp_path, fs=fs)
    message = store.newMessage()
    message.write(b"a" * WRITE_BUFFER_SIZE)
    fs.failures["write"] = enospc
    message.write(b"b" * WRITE_BUFFER_SIZE)
    writes = fs.bytesWritten
    for _ in range(100):
        message.write(b"c" * WRITE_BUFFER_SIZE)
        assert len(message._buffer) == 0  # nothing piles up in memory
    assert fs.bytesWritten == writes
    assert message.size == 102 * WRITE_BUFFER_SIZE
    assert "No space left on device" in str(failure(message.commit(ENVELOPE)))
    assert nothingLeft(store)


def test_create_failure(tmp_path):
    fs = RecordingFileSystem()
    store = makeStore(tmp_path, fs=fs)
    fs.failures["open"] = OSError(errno.EACCES, "Permission denied")
    message = store.newMessage()
    message.write(CONTENT)
    assert "create failed: Permission denied" in str(failure(message.commit(ENVELOPE)))
    assert nothingLeft(store)
    big = store.newMessage()
    big.write(b"x" * (WRITE_BUFFER_SIZE + 1))  # the reactor-thread create fails: reported at commit
    assert "Permission denied" in str(failure(big.commit(ENVELOPE)))
    assert nothingLeft(store)


def test_newMessage_retries_an_existing_name(tmp_path):
    ids = iter(["0aWfQ3Zk1AAAAA", "0aWfQ3Zk1AAAAA", "0aWfQ3Zk1BBBBB"])
    store = makeStore(tmp_path, newQueueId=lambda: next(ids))
    assert store.newMessage().queueId == "0aWfQ3Zk1AAAAA"
    assert store.newMessage().queueId == "0aWfQ3Zk1BBBBB"


def test_real_rename_failure(tmp_path):
    """A real failure from the OS (root ignores permissions, so break the directory instead)."""
    store = makeStore(tmp_path, fs=FileSystem())
    message = store.newMessage()
    message.write(CONTENT)
    incoming = store.queuePath("incoming")
    os.rmdir(incoming)
    with open(incoming, "w"):
        pass  # a file where the directory should be: rename() fails with ENOTDIR
    try:
        assert "Not a directory" in str(failure(message.commit(ENVELOPE)))
    finally:
        os.unlink(incoming)
        os.mkdir(incoming, 0o700)
    assert nothingLeft(store)


def test_envelope_that_cannot_be_stored(tmp_path):
    store = makeStore(tmp_path)
    message = store.newMessage()
    message.write(CONTENT)
    e = failure(message.commit(attrs.evolve(ENVELOPE, helo="evil\r\nDATA")))
    assert "CR, LF or NUL" in str(e)
    assert nothingLeft(store)
    assert "not an Envelope" in str(failure(store.newMessage().commit({"sender": ""})))
    assert nothingLeft(store)


def test_unexpected_exception_in_the_pool_still_fails_cleanly(tmp_path):
    fs = RecordingFileSystem()
    store = makeStore(tmp_path, fs=fs)
    message = store.newMessage()
    fs.failures["rename"] = lambda: ValueError("a bug")  # not an OSError
    assert "rename failed: a bug" in str(failure(message.commit(ENVELOPE)))
    assert nothingLeft(store)


# -- abort and misuse ---------------------------------------------------------------------------


def test_abort_removes_the_temporary_file(tmp_path):
    store = makeStore(tmp_path)
    message = store.newMessage()
    message.write(b"z" * (WRITE_BUFFER_SIZE * 2))
    message.abort()
    assert nothingLeft(store)
    message.abort()  # twice
    message.write(b"late data is ignored")
    assert nothingLeft(store)
    assert isinstance(failure(message.commit(ENVELOPE)), QueueWriteError)
    assert nothingLeft(store)


def test_abort_after_commit_keeps_the_message(tmp_path):
    store = makeStore(tmp_path)
    message = store.newMessage()
    message.write(CONTENT)
    queueId = result(message.commit(ENVELOPE))
    message.abort()
    assert files(store, "incoming") == [queueId]


def test_abort_during_commit_does_not_interfere(tmp_path):
    pool = ManualPool()
    store = makeStore(tmp_path, pool=pool)
    message = store.newMessage()
    message.write(CONTENT)
    d = message.commit(ENVELOPE)
    message.abort()
    pool.runAll()
    assert result(d) == message.queueId
    assert files(store, "incoming") == [message.queueId]


def test_commit_twice_and_write_after_commit(tmp_path):
    store = makeStore(tmp_path)
    message = store.newMessage()
    queueId = result(message.commit(ENVELOPE))
    assert "commit() when committed" in str(failure(message.commit(ENVELOPE)))
    with pytest.raises(RuntimeError):
        message.write(b"more")
    assert files(store, "incoming") == [queueId]


# -- group commit -------------------------------------------------------------------------------


def startCommits(store, n):
    messages = [store.newMessage() for _ in range(n)]
    deferreds = []
    for message in messages:
        message.write(CONTENT)
        deferreds.append(message.commit(ENVELOPE))
    return messages, deferreds


@SYNC_METHODS
def test_one_sync_serves_several_commits(tmp_path, method):
    log = []
    pool = ManualPool()
    store = makeStore(tmp_path, pool=pool, fs=RecordingFileSystem(log), method=method)
    messages, deferreds = startCommits(store, 3)
    for m, d in zip(messages, deferreds):
        d.addCallback(lambda queueId: log.append(("fired", queueId)) or queueId)
    del log[:]
    assert pool.names() == ["_drain"]
    assert not any(hasFired(d) for d in deferreds)
    pool.runNext()
    assert [result(d) for d in deferreds] == [m.queueId for m in messages]
    assert store.syncs == 1
    sync = "syncfs" if method == "syncfs" else "fsyncDirectory"
    renames = [i for i, e in enumerate(log) if e[0] == "rename"]
    syncs = [i for i, e in enumerate(log) if e[0] == sync]
    fired = [i for i, e in enumerate(log) if e[0] == "fired"]
    assert len(renames) == 3 and len(syncs) == 1 and len(fired) == 3
    assert max(renames) < syncs[0] < min(fired)
    assert [e[1] for e in log if e[0] == "fired"] == [m.queueId for m in messages]  # in the order of commit()
    assert pool.jobs == []  # the committer stopped: nothing left to do


@SYNC_METHODS
def test_a_commit_made_while_a_batch_syncs_waits_for_the_next_sync(tmp_path, method):
    log = []
    pool = ManualPool()
    fs = RecordingFileSystem(log)
    store = makeStore(tmp_path, pool=pool, fs=fs, method=method)
    del log[:]
    (a,), (da,) = startCommits(store, 1)
    da.addCallback(lambda queueId: log.append(("fired A",)) or queueId)
    later = []

    def commitB():  # "concurrently", from the reactor thread, while A's batch is syncing
        fs.onSync = None
        later.extend(startCommits(store, 1))
        later[1][0].addCallback(lambda queueId: log.append(("fired B",)) or queueId)
        assert pool.names() == []  # no second hand-off: the running committer takes it

    fs.onSync = commitB
    pool.runNext()
    (b,), (db,) = later
    assert result(da) == a.queueId and result(db) == b.queueId
    sync = "syncfs" if method == "syncfs" else "fsyncDirectory"
    events = [e[0] for e in log if e[0] in ("rename", sync, "fired A", "fired B")]
    assert events == ["rename", sync, "fired A", "rename", sync, "fired B"]
    assert store.syncs == 2 and store.committer().batches == 2 and pool.jobs == []


@SYNC_METHODS
def test_commit_started_after_a_batch_is_not_served_by_it(tmp_path, method):
    pool = ManualPool()
    store = makeStore(tmp_path, pool=pool, method=method)
    (a,), (da,) = startCommits(store, 1)
    pool.runNext()
    assert hasFired(da)
    (b,), (db,) = startCommits(store, 1)
    assert not hasFired(db) and pool.names() == ["_drain"]
    pool.runAll()
    assert result(db) == b.queueId and store.syncs == 2


@SYNC_METHODS
def test_failed_sync_fails_its_whole_batch(tmp_path, method):
    pool = ManualPool()
    fs = RecordingFileSystem()
    store = makeStore(tmp_path, pool=pool, fs=fs, method=method)
    messages, deferreds = startCommits(store, 3)
    op = "syncfs" if method == "syncfs" else "fsyncDirectory"
    fs.failures[op] = OSError(errno.EIO, "Input/output error")
    pool.runNext()
    for m, d in zip(messages, deferreds):
        e = str(failure(d))
        assert "Input/output error" in e and m.queueId in e
    assert nothingLeft(store)
    # the store keeps working once the disk does
    del fs.failures[op]
    (m,), (d,) = startCommits(store, 1)
    pool.runAll()
    assert result(d) == m.queueId and files(store, "incoming") == [m.queueId]


@SYNC_METHODS
def test_a_failed_rename_does_not_disturb_others_in_the_group(tmp_path, method):
    pool = ManualPool()
    fs = RecordingFileSystem()
    store = makeStore(tmp_path, pool=pool, fs=fs, method=method)
    (a, b, c), (da, db, dc) = startCommits(store, 3)
    renames = []

    def secondRenameFails():
        renames.append(1)
        return OSError(errno.EXDEV, "Invalid cross-device link") if len(renames) == 2 else None

    fs.failures["rename"] = secondRenameFails
    pool.runAll()
    assert result(da) == a.queueId and result(dc) == c.queueId
    assert "rename failed" in str(failure(db))
    assert files(store, "incoming") == sorted([a.queueId, c.queueId]) and files(store, "tmp") == []
    assert store.syncs == 1


def test_a_bug_in_a_sync_fails_the_batch_and_leaves_nothing(tmp_path):
    fs = RecordingFileSystem()
    store = makeStore(tmp_path, fs=fs)
    fs.failures["syncfs"] = lambda: ValueError("a bug")  # not an OSError
    messages, deferreds = startCommits(store, 2)
    for d in deferreds:
        assert "a bug" in str(failure(d))
    assert nothingLeft(store)


def test_state_records_share_the_batch_of_commits(tmp_path):
    pool = ManualPool()
    log = []
    store = makeStore(tmp_path, pool=pool, fs=RecordingFileSystem(log))
    (a,), (da,) = startCommits(store, 1)
    pool.runAll()
    path = store.queuePath("incoming", result(da))
    size = os.path.getsize(path)
    del log[:]
    (b,), (db,) = startCommits(store, 1)
    appended = store.appendState(path, {"r": {"status": "sent"}})
    assert pool.names() == ["_drain"]
    pool.runNext()
    assert result(db) == b.queueId and result(appended) is None
    assert os.path.getsize(path) > size
    assert [e[0] for e in log].count("syncfs") == 1 and "fsync" not in [e[0] for e in log]


def test_a_stopped_pool_fails_commits_instead_of_dropping_them(tmp_path):
    from twisted.python.threadpool import ThreadPool

    pool = ThreadPool(1, 1)
    pool.start()
    pool.stop()
    store = makeStore(tmp_path, pool=pool)
    (m,), (d,) = startCommits(store, 1)
    assert "stopped" in str(failure(d))
    assert nothingLeft(store)


def test_many_commits_with_a_synchronous_pool(tmp_path):
    store = makeStore(tmp_path, fs=FileSystem(), newQueueId=QueueIdGenerator())
    ids = []
    for i in range(200):
        message = store.newMessage()
        message.write(b"%d\r\n" % i)
        ids.append(result(message.commit(ENVELOPE)))
    assert store.listQueue("incoming") == sorted(ids) == ids
    assert files(store, "tmp") == []


def test_commit_into_hold(tmp_path):
    store = makeStore(tmp_path)
    seen = []
    store.onCommit = seen.append
    message = store.newMessage()
    message.write(CONTENT)
    assert result(message.commit(ENVELOPE, queue="hold")) == message.queueId
    assert store.listQueue("hold") == [message.queueId] and store.listQueue("incoming") == []
    assert seen == []  # the queue manager is not told about held mail
    other = store.newMessage()
    other.write(CONTENT)
    assert result(other.commit(ENVELOPE)) == other.queueId
    assert seen == [other.queueId]


@SYNC_METHODS
def test_commit_into_hold_sync_failure(tmp_path, method):
    fs = RecordingFileSystem()
    store = makeStore(tmp_path, fs=fs, method=method)
    fs.failures["fsyncDirectory" if method == "fsync" else "syncfs"] = OSError(errno.EIO, "Input/output error")
    message = store.newMessage()
    message.write(CONTENT)
    e = str(failure(message.commit(ENVELOPE, queue="hold")))
    assert ("/hold failed: Input/output error" if method == "fsync" else "failed: Input/output error") in e
    assert store.listQueue("hold") == []
    assert nothingLeft(store)


# -- the queue manager's file work ------------------------------------------------------------


def test_setAside_moves_anything_into_corrupt_without_overwriting(tmp_path):
    store = makeStore(tmp_path)
    deferred = tmp_path / "queue" / "deferred"
    (deferred / "core").write_bytes(b"first")
    os.mkfifo(deferred / "0aWfQ3Zk1FIFO0")
    assert store.setAside("deferred", "core") == "core"
    (deferred / "core").write_bytes(b"second")
    assert store.setAside("deferred", "core") == "core.1"
    assert store.setAside("deferred", "0aWfQ3Zk1FIFO0") == "0aWfQ3Zk1FIFO0"
    assert files(store, "deferred") == []
    assert (tmp_path / "queue" / "corrupt" / "core").read_bytes() == b"first"
    assert stat.S_ISFIFO(os.lstat(tmp_path / "queue" / "corrupt" / "0aWfQ3Zk1FIFO0").st_mode)
    for name in ("..", ".", "", "a/b", "../corrupt/x"):
        with pytest.raises(ValueError):
            store.setAside("deferred", name)
    with pytest.raises(FileNotFoundError):
        store.setAside("deferred", "gone")


def test_scan_reads_in_batches_and_reports_errors(tmp_path):
    store = makeStore(tmp_path)
    deferred = tmp_path / "queue" / "deferred"
    for i in range(5):
        (deferred / f"0aWfQ3Zk1AAAA{i}").write_bytes(b"x")
    os.symlink("/nonexistent", deferred / "link")
    scan = store.scan("deferred", batchSize=4)
    first = result(scan.next())
    assert len(first) == 4 and not scan.done
    second = result(scan.next())
    assert len(second) == 2 and scan.done
    entries = {name: (mode, mtime) for name, mode, mtime in list(first) + list(second)}
    assert stat.S_ISLNK(entries["link"][0]) and stat.S_ISREG(entries["0aWfQ3Zk1AAAA0"][0])
    assert len(result(scan.next())) == 0

    store.fs.failures["scandir"] = OSError(errno.EIO, "Input/output error")
    store.fs.scandir = lambda path: store.fs._maybeFail("scandir", path) or FileSystem.scandir(store.fs, path)
    failure(store.scan("deferred").next(), OSError)


def test_a_real_committer_thread_batches_commits_made_while_it_works(tmp_path):
    """Commits from the 'reactor' thread while the committer thread works: every one fires, durable, in fewer batches."""
    from twisted.python.threadpool import ThreadPool

    class QueuedReactor(FakeReactor):  # callFromThread as a real reactor does it: later, in the reactor thread
        def __init__(self):
            super().__init__()
            self.calls = queue.Queue()

        def callFromThread(self, f, *args, **kwargs):
            self.calls.put((f, args, kwargs))

    reactor = QueuedReactor()
    pool = ThreadPool(1, 1, "test-commit")
    store = QueueStore(str(tmp_path / "queue"), reactor, commitPool=pool, fileSystem=FileSystem(),
                       newQueueId=QueueIdGenerator())
    store.prepare()
    pool.start()
    try:
        messages, deferreds = startCommits(store, 300)
        fired = []
        for d in deferreds:
            d.addBoth(fired.append)
        while len(fired) < len(deferreds):
            f, args, kwargs = reactor.calls.get(timeout=30)
            f(*args, **kwargs)
    finally:
        pool.stop()
        store.close()
    assert fired == [m.queueId for m in messages]  # all stored, in the order of commit()
    assert store.listQueue("incoming") == sorted(m.queueId for m in messages) and files(store, "tmp") == []
    committer = store.committer()
    assert committer.jobs == 300 and committer.syncs == committer.batches < 300


def test_when_the_queue_directory_cannot_be_opened_for_syncfs_the_batch_is_fsynced(tmp_path):
    log = []
    fs = RecordingFileSystem(log)
    pool = ManualPool()
    store = makeStore(tmp_path, pool=pool, fs=fs)
    opened = []

    def openDirectory(path):
        opened.append(path)
        raise OSError(errno.EMFILE, "Too many open files")

    fs.openDirectory = openDirectory
    del log[:]
    (m,), (d,) = startCommits(store, 1)  # newMessage() could not open it either: the commit still works
    pool.runAll()
    assert result(d) == m.queueId and files(store, "incoming") == [m.queueId]
    assert [e[0] for e in log if e[0] in ("fsync", "fsyncDirectory", "syncfs")] == ["fsync", "fsyncDirectory"]
    assert len(opened) == 2
