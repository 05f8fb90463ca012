"""mta.queue.files.QueueFileWriter: the one queue-file writer, the same for the store (incoming/) and mta-sendmail (maildrop/)."""

import errno
import os

import pytest

from mta.cli.sendmail import maildrop as M
from mta.model import Envelope, Recipient
from mta.queue import fileformat
from mta.queue.files import WRITE_BUFFER_SIZE, FileSystem, QueueFileWriter, StepFailed, fsyncDirectory
from mta.queue.store import QueueStore, QueueWriteError
from mta.testing import SyncReactor

ENVELOPE = Envelope(sender="alice@example.org", recipients=(Recipient("bob@example.com"),), arrival_time=1700000000.0,
                    client_name="localhost", protocol="local")
SMALL = b"Subject: one writer\r\n\r\nbody\r\n"
BIG = b"Subject: big\r\n\r\n" + b"x" * (3 * WRITE_BUFFER_SIZE) + b"\r\n"
QID = "0aWfQ3Zk1r7Tb2"


class Faults(FileSystem):
    """Records the system calls by name; fails the one named C{failOn} with C{error}."""

    def __init__(self, failOn=None, error=errno.ENOSPC):
        self.failOn = failOn
        self.error = error
        self.calls = []

    def _call(self, name):
        self.calls.append(name)
        if name == self.failOn:
            raise OSError(self.error, os.strerror(self.error))

    def open(self, path, flags, mode):
        self._call("open")
        return super().open(path, flags, mode)

    def write(self, fd, data):
        self._call("write")
        return super().write(fd, data)

    def pwrite(self, fd, data, offset):
        self._call("pwrite")
        return super().pwrite(fd, data, offset)

    def fsync(self, fd):
        self._call("fsync")
        super().fsync(fd)

    def close(self, fd):
        self._call("close")
        super().close(fd)

    def rename(self, src, dst):
        self._call("rename")
        super().rename(src, dst)

    def unlink(self, path):
        self.calls.append("unlink")
        super().unlink(path)

    def fsyncDirectory(self, path):
        if os.path.basename(path) in ("incoming", "maildrop"):
            self._call("fsyncDirectory")
        super().fsyncDirectory(path)


def viaTheStore(tmp_path, fs, content):
    """Commit C{content} through the store (SMTP server, pickup, notices); (outcome, calls, files left, path)."""
    # mta-sendmail fsyncs its file and directory: compared with the store's fsync method
    store = QueueStore(str(tmp_path / "queue"), SyncReactor(), fileSystem=fs, newQueueId=lambda: QID, syncMethod="fsync")
    store.prepare()
    del fs.calls[:]
    message = store.newMessage()
    message.write(content)
    out = []
    message.commit(ENVELOPE).addBoth(out.append)
    left = sorted(os.listdir(store.queuePath("incoming")) + os.listdir(store.queuePath("tmp")))
    outcome = out[0] if isinstance(out[0], str) else out[0].value
    return outcome, list(fs.calls), left, store.queuePath("incoming", QID)


def viaSendmail(tmp_path, fs, content):
    """Deposit C{content} as mta-sendmail does (MaildropFile); (outcome, calls, files left, path)."""
    directory = tmp_path / "sendmail" / "maildrop"
    directory.mkdir(parents=True, mode=0o700)
    del fs.calls[:]
    drop = M.MaildropFile(str(directory), fs, lambda: QID)
    try:
        drop.open()
        drop.write(content)
        outcome = drop.commit(ENVELOPE)
    except M.DepositError as e:
        outcome = e
    finally:
        drop.abort()
    return outcome, list(fs.calls), sorted(os.listdir(directory)), str(directory / QID)


def test_both_are_the_one_writer(tmp_path):
    store = QueueStore(str(tmp_path / "queue"), SyncReactor())
    store.prepare()
    (tmp_path / "maildrop").mkdir()
    assert type(store.newMessage()._writer) is QueueFileWriter
    assert type(M.MaildropFile(str(tmp_path / "maildrop")).writer) is QueueFileWriter


@pytest.mark.parametrize("content", [SMALL, BIG], ids=["small", "big"])
def test_the_same_bytes_and_the_same_system_calls(tmp_path, content):
    stored, storeCalls, _, storePath = viaTheStore(tmp_path, Faults(), content)
    deposited, dropCalls, _, dropPath = viaSendmail(tmp_path, Faults(), content)
    assert stored == deposited == QID
    with open(storePath, "rb") as a, open(dropPath, "rb") as b:
        assert a.read() == b.read() == fileformat.dumpQueueFile(ENVELOPE, content)
    assert storeCalls == dropCalls
    assert storeCalls[-4:] == ["fsync", "close", "rename", "fsyncDirectory"]
    assert ("pwrite" in storeCalls) == (content is BIG)  # the real header over its placeholder


STEPS = [(step, content) for step in ("open", "write", "pwrite", "fsync", "close", "rename", "fsyncDirectory")
         for content in (SMALL, BIG) if not (step == "pwrite" and content is SMALL)]


@pytest.mark.parametrize("step, content", STEPS, ids=[f"{s}-{'big' if c is BIG else 'small'}" for s, c in STEPS])
def test_the_same_fault_gives_the_same_outcome(tmp_path, step, content):
    """A failure at any step: no file left where the queue manager or pickup would take it, in either."""
    stored, storeCalls, storeLeft, _ = viaTheStore(tmp_path, Faults(step), content)
    deposited, dropCalls, dropLeft, _ = viaSendmail(tmp_path, Faults(step), content)
    assert isinstance(stored, QueueWriteError) and isinstance(deposited, M.DepositError)
    assert storeLeft == [] and dropLeft == []
    reason = os.strerror(errno.ENOSPC)
    assert reason in str(stored) and reason in str(deposited)
    # Up to the failure, the one writer made the same calls for both (the store creates a
    # small file at its commit, sendmail at the start: the same call, at another time).
    failed = storeCalls.index(step)
    assert dropCalls[:dropCalls.index(step) + 1] == storeCalls[:failed + 1]
    if step == "fsyncDirectory":  # the renamed file is taken out again
        assert storeCalls[failed + 1] == dropCalls[dropCalls.index(step) + 1] == "unlink"


def test_a_failed_step_is_named_and_the_temporary_file_removed(tmp_path):
    fs = Faults("fsync", errno.EIO)
    writer = QueueFileWriter(fs, str(tmp_path / "x.tmp"))
    writer.write(SMALL)
    writer.seal(ENVELOPE)
    with pytest.raises(StepFailed) as info:
        writer.store(str(tmp_path / "x"))
    assert (info.value.step, info.value.reason, str(info.value)) == (
        "fsync", "Input/output error", "fsync failed: Input/output error")
    assert os.listdir(tmp_path) == []
    assert writer.discard() is None  # safe again


def test_a_write_error_is_kept_and_later_content_dropped(tmp_path):
    fs = Faults("write")
    writer = QueueFileWriter(fs, str(tmp_path / "x.tmp"))
    writer.write(b"a" * WRITE_BUFFER_SIZE)
    assert writer.error.step == "write" and writer.buffer == b""
    writer.write(b"b" * WRITE_BUFFER_SIZE)
    assert writer.buffer == b"" and writer.size == 2 * WRITE_BUFFER_SIZE
    writer.seal(ENVELOPE)
    with pytest.raises(StepFailed, match="write failed"):
        writer.store(str(tmp_path / "x"))
    assert os.listdir(tmp_path) == []


def test_the_mode_is_set_whatever_the_umask(tmp_path):
    old = os.umask(0o077)
    try:
        writer = QueueFileWriter(FileSystem(), str(tmp_path / "x.tmp"), mode=0o644)
        writer.create()
    finally:
        os.umask(old)
    assert os.stat(tmp_path / "x.tmp").st_mode & 0o777 == 0o644
    writer.discard()
    assert os.listdir(tmp_path) == []


def test_fsyncDirectory_undoes_the_renames_when_it_fails(tmp_path):
    (tmp_path / "incoming").mkdir()
    paths = [str(tmp_path / "incoming" / name) for name in ("a", "b")]
    for path in paths:
        open(path, "w").close()
    fs = Faults("fsyncDirectory", errno.EIO)
    with pytest.raises(StepFailed, match=r"^fsync of .*/incoming failed: Input/output error$"):
        fsyncDirectory(fs, str(tmp_path / "incoming"), paths)
    assert os.listdir(tmp_path / "incoming") == []
    assert fs.calls == ["fsyncDirectory", "unlink", "unlink", "fsyncDirectory"]
