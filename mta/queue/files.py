"""mta.queue.files - the system calls the queue makes, the one queue-file writer, directories read in batches.

Kept apart from mta.queue.store (and free of Twisted) so that mta-sendmail,
a short-lived process that writes one file, starts quickly.

FileSystem is the seam through which the store (and the queue manager,
through the store) makes its system calls; tests substitute their own to
inject faults.  DirectoryScan reads one directory through it, a batch of
entries per job of the store's thread pool, as ScanBatch objects.

QueueFileWriter is the one writer of queue files (the format of
mta.queue.fileformat): the store drives it for incoming/ and hold/ (its
blocking steps in the thread pool, mta.queue.store), mta-sendmail calls it
directly for maildrop/ (mta.cli.sendmail.maildrop).  The steps, each made
through the FileSystem seam:

    writer = QueueFileWriter(fs, "DIR/tmp/QUEUEID")   # nothing on disk yet
    writer.create()           # O_CREAT|O_EXCL|O_NOFOLLOW, mode 0600 (or
                              # mode, set with fchmod whatever the umask)
    writer.write(bytes)       # buffered; past WRITE_BUFFER_SIZE written
                              # out (creating the file); never raises: the
                              # first failure is kept in writer.error
    writer.seal(envelope)     # the envelope record and the real content
                              # header (length, CRC-32); ValueError
    writer.store(path)        # [create], write the rest, the header over
                              # its placeholder, fsync, close, rename
                              # (sync=False: no fsync; the store's
                              # committer syncs the file system instead)
    fsyncDirectory(fs, directory, [path])   # the rename made durable
    writer.discard()          # on any other outcome; always safe

A failed step raises StepFailed (C{step}: create, write, fsync, close,
rename, or "fsync of DIR"), after which nothing of the file is left where
the queue manager or pickup would take it: store() removes the temporary
file, fsyncDirectory() unlinks the files just renamed into the directory
(their submitters are told the message was not stored) and fsyncs it once
more.  The directory fsync is the caller's, so the store can share one
between several commits (mta.queue.store, GROUP COMMIT).

SECURITY
    None beyond the callers'.  Files are created O_EXCL|O_NOFOLLOW: an
    existing name or a symbolic link is never written through.

CONFIGURATION
    None.
"""

import array
import ctypes
import ctypes.util
import errno
import os
import sys
import zlib

import attrs

from mta.model import QueueWriteError  # noqa: F401 (the store's error; re-exported)
from mta.queue import fileformat

WRITE_BUFFER_SIZE = 64 * 1024
CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


def _describe(e):
    if isinstance(e, OSError) and e.strerror:
        return e.strerror
    return str(e) or type(e).__name__


class StepFailed(Exception):
    """
    A step of writing a queue file failed: C{step} names it (create, write,
    fsync, close, rename, "fsync of DIR"), C{error} is what was raised,
    C{reason} its text; str() is "STEP failed: REASON".
    """

    def __init__(self, step, error):
        self.step = step
        self.error = error
        self.reason = _describe(error)
        super().__init__(f"{step} failed: {self.reason}")


def _writeAll(fs, fd, data):
    """Write all of C{data} (bytes or a memoryview); OSError on failure or a short write."""
    view = memoryview(data)
    while view:
        n = fs.write(fd, view)
        if not n or n < 0:
            raise OSError(errno.EIO, "short write")
        view = view[n:]


_syncfs = []  # [the C library's syncfs as a callable, or None], once looked up


def _syncfsFunction():
    """The C library's syncfs(2) as a callable of a descriptor (raises OSError), or None where there is none."""
    if _syncfs:
        return _syncfs[0]
    function = None
    if sys.platform.startswith("linux"):
        try:
            function = getattr(ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True), "syncfs", None)
        except OSError:
            function = None
    if function is None:
        _syncfs.append(None)
        return None
    function.argtypes = [ctypes.c_int]
    function.restype = ctypes.c_int

    def call(fd):
        if function(fd) != 0:
            code = ctypes.get_errno()
            raise OSError(code, os.strerror(code))

    _syncfs.append(call)
    return call


def syncfsAvailable():
    """True where syncfs(2) can be called."""
    return _syncfsFunction() is not None


def syncfs(fd):
    """syncfs(2) of the file system of descriptor C{fd}; OSError (ENOSYS where there is none)."""
    function = _syncfsFunction()
    if function is None:
        raise OSError(errno.ENOSYS, "syncfs is not available")
    function(fd)


class FileSystem:
    """
    The system calls that the store (and the queue manager, through the
    store) makes; tests substitute their own to inject faults.
    """

    def open(self, path, flags, mode):
        return os.open(path, flags, mode)

    def write(self, fd, data):
        return os.write(fd, data)

    def pwrite(self, fd, data, offset):
        return os.pwrite(fd, data, offset)

    def fsync(self, fd):
        os.fsync(fd)

    def close(self, fd):
        os.close(fd)

    def rename(self, src, dst):
        os.rename(src, dst)

    def unlink(self, path):
        os.unlink(path)

    def fdatasync(self, fd):
        os.fdatasync(fd)

    def ftruncate(self, fd, length):
        os.ftruncate(fd, length)

    def utime(self, path, times):
        os.utime(path, times, follow_symlinks=False)

    def lstat(self, path):
        return os.lstat(path)

    def scandir(self, path):
        """
        The entries of directory C{path}: an iterator of (name, stat) with
        stat from lstat(2) (a symbolic link is never followed; nothing is
        opened), or None when the entry vanished before it could be looked at.
        OSError if the directory cannot be read.
        """
        with os.scandir(path) as entries:
            for entry in entries:
                try:
                    st = entry.stat(follow_symlinks=False)
                except OSError:
                    st = None
                yield entry.name, st

    def fchmod(self, fd, mode):
        os.fchmod(fd, mode)

    def syncfs(self, fd):
        """syncfs(2) of the file system of C{fd} (mta.queue.committer); OSError."""
        syncfs(fd)

    def syncfsAvailable(self):
        return syncfsAvailable()

    def openDirectory(self, path):
        """A descriptor of directory C{path} (for syncfs); OSError."""
        return os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)

    def fsyncDirectory(self, path):
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _step(name, f, *args):
    try:
        return f(*args)
    except Exception as e:  # a bug in a FileSystem too: the message is not stored, never half-stored
        raise StepFailed(name, e) from None


class QueueFileWriter:
    """
    One queue file, written under C{tmpPath} and made durable under its
    final name by store() (see the module docstring).  C{fs}: the
    FileSystem; C{mode}: the file's mode (0600; mta-sendmail's root gives
    0644, see mta.cli.sendmail.maildrop.depositMode).

    Attributes: C{size} (content bytes given to write(), also after an
    error), C{error} (the first StepFailed of create() or a write-out, or
    None: later content is dropped, store() raises it), C{buffer} (bytes
    not yet written out: at most WRITE_BUFFER_SIZE plus one write), C{fd}
    (None until the file is created), C{created}.

    Nothing here is thread-safe: the store hands the writer to one worker
    thread at its commit and never touches it again.
    """

    def __init__(self, fs, tmpPath, *, mode=0o600, bufferSize=WRITE_BUFFER_SIZE):
        self.fs = fs
        self.tmpPath = tmpPath
        self.mode = mode
        self.bufferSize = bufferSize
        self.size = 0
        self.crc = 0
        self.error = None
        self.fd = None
        self.created = False
        # A placeholder header: the real one (length, CRC-32) is known at seal().
        self.buffer = bytearray(fileformat.fileHeader(0, 0))
        self._flushed = 0  # bytes written out so far
        self._header = None  # the real header, to be written over the placeholder by store()

    def create(self):
        """Blocking: create the temporary file now (write() does it when needed); StepFailed("create")."""
        if self.fd is not None:
            return
        self.fd = _step("create", self.fs.open, self.tmpPath, CREATE_FLAGS, 0o600)
        self.created = True
        if self.mode != 0o600:
            _step("create", self.fs.fchmod, self.fd, self.mode)  # explicitly: the umask may be 077

    def write(self, data):
        """Add C{data} (bytes) to the content; written out past the buffer size.  Never raises."""
        self.size += len(data)
        if self.error is not None:
            return
        self.crc = zlib.crc32(data, self.crc)
        self.buffer += data
        if len(self.buffer) >= self.bufferSize:
            self.flush()

    def flush(self):
        """Blocking: write the buffer out (creating the file first); a failure is kept in C{error}."""
        if self.error is not None:
            self.buffer = bytearray()
            return
        view = memoryview(self.buffer)
        try:
            self.create()
            _step("write", _writeAll, self.fs, self.fd, view)
            self._flushed += len(view)
        except StepFailed as e:
            self.error = e
        finally:
            view.release()
            self.buffer = bytearray()

    def seal(self, envelope):
        """
        End of content: append the record of C{envelope} (an
        mta.model.Envelope; its size is set to C{size}) and settle the real
        header.  ValueError (or TypeError) if the envelope cannot be stored.
        """
        record = fileformat.envelopeRecord(attrs.evolve(envelope, size=self.size))
        header = fileformat.fileHeader(self.size, self.crc)
        if self._flushed == 0:
            self.buffer[: len(header)] = header
        else:
            self._header = header
        self.buffer += record

    def _writeRest(self):
        view = memoryview(self.buffer)
        try:
            _writeAll(self.fs, self.fd, view)
            self._flushed += len(view)
        finally:
            view.release()
            self.buffer = bytearray()
        if self._header is not None:
            if self.fs.pwrite(self.fd, self._header, 0) != len(self._header):
                raise OSError(errno.EIO, "short write")
            self._header = None

    def store(self, path, sync=True):
        """
        Blocking, after seal(): create the file if it was never created,
        write what is left and the real header, fsync and close it, rename
        it to C{path}.  Durable once the directory of C{path} is fsynced
        (fsyncDirectory()).  C{sync} false: no fsync, the caller makes the
        file durable (a syncfs of its file system: mta.queue.committer).
        StepFailed, with the temporary file removed.
        """
        try:
            if self.error is not None:
                raise self.error
            self.create()
            _step("write", self._writeRest)
            if sync:
                _step("fsync", self.fs.fsync, self.fd)
            fd, self.fd = self.fd, None
            _step("close", self.fs.close, fd)
            _step("rename", self.fs.rename, self.tmpPath, path)
        except StepFailed:
            self.discard()
            raise
        self.created = False  # it has another name now: discard() must not touch it

    def discard(self):
        """
        Close the file and remove it from its temporary name; safe at any
        time, and a no-op after store().  Returns the OSError of a removal
        that failed for another reason than that the file is gone, or None.
        """
        self.buffer = bytearray()
        if self.fd is not None:
            fd, self.fd = self.fd, None
            try:
                self.fs.close(fd)
            except OSError:
                pass
        if not self.created:
            return None
        self.created = False
        try:
            self.fs.unlink(self.tmpPath)
        except OSError as e:
            if e.errno != errno.ENOENT:
                return e
        return None


def fsyncDirectory(fs, directory, renamed=(), step=None):
    """
    Blocking: fsync C{directory}, which makes the renames into it durable.
    When that fails, the files just renamed into it (the paths C{renamed})
    are unlinked again and the directory fsynced once more (best effort):
    their submitters are told that nothing was stored, so nothing may be
    delivered.  StepFailed(C{step}, default "fsync of DIRECTORY").
    """
    try:
        fs.fsyncDirectory(directory)
    except Exception as e:
        for path in renamed:
            try:
                fs.unlink(path)
            except OSError:
                pass
        try:
            fs.fsyncDirectory(directory)
        except Exception:
            pass
        raise StepFailed(step or f"fsync of {directory}", e) from None


class ScanBatch:
    """
    Directory entries as (name, st_mode, st_mtime), kept in flat arrays: a
    batch of a big queue is a few objects, not thousands, so that it adds
    nothing to the garbage collector's work (a full collection of a large
    heap stalls the reactor for 0.1 s).
    """

    __slots__ = ("names", "modes", "mtimes")

    def __init__(self):
        self.names = []
        self.modes = array.array("L")
        self.mtimes = array.array("d")

    def append(self, name, st):
        self.add(name, st.st_mode, st.st_mtime)

    def add(self, name, mode, mtime):
        self.names.append(name)
        self.modes.append(mode)
        self.mtimes.append(mtime)

    def __len__(self):
        return len(self.names)

    def __iter__(self):
        return zip(self.names, self.modes, self.mtimes)


class DirectoryScan:
    """
    The entries of one directory, read in the store's thread pool a batch
    at a time (lstat'ed, never followed or opened: see FileSystem.scandir).
    next() is a Deferred of the next ScanBatch (entries that vanished before
    they could be looked at are left out), empty at the end; C{done} is true
    once the last batch was read (no need to ask again); close() stops
    early.  OSError fails the Deferred.
    """

    def __init__(self, store, path, batchSize):
        self._store = store
        self._path = path
        self._batchSize = batchSize
        self._entries = None
        self._done = False

    @property
    def done(self):
        return self._done

    def next(self):
        return self._store.inPool(self._read)

    def _read(self):
        batch = ScanBatch()
        if self._done:
            return batch
        if self._entries is None:
            self._entries = self._store.fs.scandir(self._path)
        seen = 0
        for name, st in self._entries:
            seen += 1
            if st is not None:
                batch.append(name, st)
            if seen == self._batchSize:
                return batch
        self._finish()
        return batch

    def _finish(self):
        self._done = True
        entries, self._entries = self._entries, None
        close = getattr(entries, "close", None)
        if close is not None:
            close()

    def close(self):
        """Stop reading (closedir: cheap); safe at any time but during a next(); the next next() gives nothing."""
        if not self._done:
            self._finish()
