"""mta.queue.files - the system calls the queue makes, and their errors.

Kept apart from mta.queue.store (and free of Twisted) so that mta-sendmail,
a short-lived process that writes one file, starts quickly.

SECURITY
    None beyond the callers'.

CONFIGURATION
    None.
"""

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


