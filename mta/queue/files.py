"""mta.queue.files - the system calls the queue makes, and their errors; directories read in batches.

Kept apart from mta.queue.store (and free of Twisted) so that mta-sendmail,
a short-lived process that writes one file, starts quickly.

FileSystem is the seam through which the store (and the queue manager,
through the store) makes its system calls; tests substitute their own to
inject faults.  DirectoryScan reads one directory through it, a batch of
entries per job of the store's thread pool, as ScanBatch objects.

SECURITY
    None beyond the callers'.

CONFIGURATION
    None.
"""

import array
import errno
import os


class QueueWriteError(Exception):
    """A message could not be stored; str() says why (for the log, not the client)."""


def _describe(e):
    if isinstance(e, OSError) and e.strerror:
        return e.strerror
    return str(e) or type(e).__name__


def _writeAll(fs, fd, data):
    """Write all of C{data} (bytes or a memoryview); OSError on failure or a short write."""
    view = memoryview(data)
    while view:
        n = fs.write(fd, view)
        if not n or n < 0:
            raise OSError(errno.EIO, "short write")
        view = view[n:]


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

    def fsyncDirectory(self, path):
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


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
