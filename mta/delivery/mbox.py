"""mta.delivery.mbox - the mbox half of virtual(8) (Postfix's mailbox.c and mbox_open.c).

deliverMbox(fs, job) appends one message for one recipient to the mbox
file job.path (blocking: call it in a worker thread).

    The directory must exist (as in Postfix, only the file is created, mode
    0600, owned by the recipient's uid/gid).  Locks, in Postfix's order: a
    "path.lock" dot-lock file (one older than stale_lock_time is removed),
    then fcntl() and/or flock() on the open file, as virtual_mailbox_lock
    says; before those, always, a lock between the threads of this process
    (fcntl() locks belong to a process, so threads do not exclude each
    other with them).  Each is tried deliver_lock_attempts times,
    deliver_lock_delay apart.  The mailbox is appended to, fsynced and
    unlocked; on a write or read error it is truncated back to its size
    before the delivery, so no partial message is left behind.

SECURITY
    As Postfix's safe_open(): the file is opened with O_NOFOLLOW (a
    symbolic link is refused with 5.3.5 unless followSymlinks); one that is
    not a regular file bounces ("5.3.5 mail system configuration error"),
    one with more than one hard link defers, and with
    strict_mailbox_ownership one not owned by the recipient's uid defers
    (4.2.0).  See also mta.delivery.mailbox.

CONFIGURATION
    None of its own (see mta.delivery.virtual).
"""

import errno
import os
import stat
import threading

from mta.delivery.mailbox import (
    CONFIGURATION_ERROR,
    LimitedWriter,
    MailboxFailure,
    Outcome,
    ReadError,
    closeQuietly,
    copyMessage,
    giveToRecipient,
    openPath,
    removeQuietly,
    strerror,
    symlinkRefused,
)
from mta.delivery.status import errnoStatus


def deliverMbox(fs, job):
    """Deliver as C{job} says into its mbox file; an Outcome, or MailboxFailure."""
    prefix = f"delivery failed to mailbox {job.path}: "

    def fail(e, default="4.2.0"):
        return MailboxFailure(errnoStatus(e.errno, default), f"{prefix}cannot open file: {strerror(e)}")

    name = job.components[-1]
    directory = openPath(fs, job, job.components[:-1], False, fail)
    dotlocked = False
    try:
        if "dotlock" in job.lockStyles:
            _dotlock(fs, job, directory, name, prefix)
            dotlocked = True
        fd, created = _openMbox(fs, job, directory, name, fail)
        try:
            try:
                st = fs.fstat(fd)
            except OSError as e:
                raise fail(e) from None
            with _ProcessLock(fs, job, (st.st_dev, st.st_ino), prefix):
                try:
                    return _appendMbox(fs, job, directory, name, fd, st, created, prefix, fail)
                finally:
                    fd, closing = None, fd
                    closeQuietly(fs, closing)  # releases fcntl() and flock() locks: before the process lock
        finally:
            if fd is not None:
                closeQuietly(fs, fd)
    finally:
        if dotlocked:
            try:
                fs.unlink(name + ".lock", directory)
            except OSError:
                pass
        closeQuietly(fs, directory)


def _openMbox(fs, job, directory, name, fail):
    flags = os.O_WRONLY | os.O_APPEND | os.O_NONBLOCK | os.O_CLOEXEC | (0 if job.followSymlinks else os.O_NOFOLLOW)
    for _ in range(2):
        try:
            return fs.open(name, flags, 0, directory), False
        except FileNotFoundError:
            pass
        except OSError as e:
            if e.errno == errno.ELOOP and not job.followSymlinks:
                raise symlinkRefused(job, job.path) from None
            raise fail(e) from None
        try:
            return fs.open(name, flags | os.O_CREAT | os.O_EXCL, 0o600, directory), True
        except FileExistsError:
            continue  # created meanwhile (or a dangling symbolic link): open it
        except OSError as e:
            raise fail(e) from None
    raise fail(OSError(errno.EEXIST, os.strerror(errno.EEXIST)))


def _appendMbox(fs, job, directory, name, fd, st, created, prefix, fail):
    if not stat.S_ISREG(st.st_mode):
        raise MailboxFailure("5.3.5", f"{prefix}{CONFIGURATION_ERROR}",
                             f"mailbox {job.path}: destination is not a regular file")
    if st.st_nlink != 1:
        raise MailboxFailure("4.2.0", f"{prefix}cannot open file: file has {st.st_nlink} hard links")
    if created:
        try:
            giveToRecipient(fs, job, fd, job.path)
        except MailboxFailure:
            removeQuietly(fs, (name, directory))  # do not leave an empty mailbox with the wrong owner
            raise
        try:
            fs.fsync(directory)
        except OSError as e:
            raise fail(e) from None
    elif job.strictOwnership and job.uid is not None and st.st_uid != job.uid:
        raise MailboxFailure("4.2.0", f"{prefix}destination {job.path} is not owned by recipient",
                             'specify "strict_mailbox_ownership = no" to ignore mailbox ownership mismatch')
    for style in ("fcntl", "flock"):
        if style in job.lockStyles:
            _kernelLock(fs, job, fd, style, prefix)
    try:
        original = fs.fstat(fd).st_size
    except OSError as e:
        raise fail(e) from None
    room = None
    if job.limit:
        room = max(job.limit - original, 0)
    try:
        copyMessage(fs, job, LimitedWriter(fs, fd, room), mbox=True)
        fs.fsync(fd)
    except ReadError as e:
        _truncate(fs, fd, original)
        raise MailboxFailure("4.3.0", f"{prefix}error reading message: {e}") from None
    except OSError as e:
        _truncate(fs, fd, original)
        raise MailboxFailure(errnoStatus(e.errno, "4.3.0"), f"{prefix}error writing message: {strerror(e)}") from None
    except BaseException:
        _truncate(fs, fd, original)
        raise
    return Outcome("sent", "2.0.0", "delivered to mailbox")


def _truncate(fs, fd, length):
    try:
        fs.ftruncate(fd, length)
        fs.fsync(fd)
    except OSError:
        pass


class _ProcessLock:
    """
    Mutual exclusion between the threads of this process for one file
    (C{key}: device and inode).  fcntl() locks belong to the process, so two
    threads would both get one; worse, closing any descriptor of a file
    drops all of the process's fcntl() locks on it.  Tried like the other
    locks: lockAttempts times, lockDelay apart.
    """

    _guard = threading.Lock()
    _locks = {}  # key -> [threading.Lock, users]

    def __init__(self, fs, job, key, prefix):
        self._fs, self._job, self._key, self._prefix = fs, job, key, prefix

    def __enter__(self):
        with self._guard:
            self._entry = self._locks.setdefault(self._key, [threading.Lock(), 0])
            self._entry[1] += 1
        for attempt in range(self._job.lockAttempts):
            if self._entry[0].acquire(blocking=False):
                return self
            if attempt + 1 < self._job.lockAttempts:
                self._fs.sleep(self._job.lockDelay)
        self._forget()
        raise MailboxFailure("4.2.0", f"{self._prefix}unable to lock for exclusive access: "
                             f"{os.strerror(errno.EAGAIN)}")

    def __exit__(self, *exc):
        self._entry[0].release()
        self._forget()
        return False

    def _forget(self):
        with self._guard:
            self._entry[1] -= 1
            if not self._entry[1]:
                del self._locks[self._key]


def _kernelLock(fs, job, fd, style, prefix):
    for attempt in range(job.lockAttempts):
        try:
            fs.lock(fd, style)
            return
        except OSError as e:
            if e.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise MailboxFailure(errnoStatus(e.errno, "4.2.0"),
                                     f"{prefix}unable to lock for exclusive access: {strerror(e)}") from None
            if attempt + 1 < job.lockAttempts:
                fs.sleep(job.lockDelay)
    raise MailboxFailure("4.2.0", f"{prefix}unable to lock for exclusive access: {os.strerror(errno.EAGAIN)}")


def _dotlock(fs, job, directory, name, prefix):
    lockName = name + ".lock"
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    for attempt in range(job.lockAttempts):
        try:
            fs.close(fs.open(lockName, flags, 0, directory))
            return
        except FileExistsError:
            pass
        except OSError as e:
            raise MailboxFailure(errnoStatus(e.errno, "4.2.0"),
                                 f"{prefix}cannot create lock file {job.path}.lock: {strerror(e)}") from None
        try:
            if fs.time() > fs.lstat(lockName, directory).st_mtime + job.staleLockTime:
                fs.unlink(lockName, directory)
                continue
        except FileNotFoundError:
            continue
        except OSError:
            pass
        if attempt + 1 < job.lockAttempts:
            fs.sleep(job.lockDelay)
    raise MailboxFailure("4.2.0", f"{prefix}cannot create lock file {job.path}.lock: {os.strerror(errno.EEXIST)}")
