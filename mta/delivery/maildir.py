"""mta.delivery.maildir - the Maildir half of virtual(8) (Postfix's maildir.c).

deliverMaildir(fs, job) writes one message for one recipient into the
Maildir job.path (blocking: call it in a worker thread).

    The path (ending in "/") and its tmp/ and new/ are created when
    missing (mode 0700, owned by the recipient's uid/gid), and cur/ with
    new/, as Postfix's make_dirs() does.  The message is written to a new
    file in tmp/ (O_EXCL, mode 0600), fsynced, hard-linked into new/ (a
    rename where the file system has no hard links), new/ is fsynced, and
    the tmp/ name removed.  A reader sees a file in new/ only when it is
    complete and durable; on any failure the tmp/ file (and a new/ entry
    whose directory could not be fsynced) is removed.

    File names follow the Maildir specification
    (https://cr.yp.to/proto/maildir.html):
    "seconds.MmicrosecondsPpidQcounter.host", with "/" and ":" in the host
    name written as \\057 and \\072; the counter is shared by the whole
    process.  Postfix names the new/ file after the tmp/ file's device and
    inode instead; either is unique.

SECURITY
    See mta.delivery.mailbox.

CONFIGURATION
    None of its own (see mta.delivery.virtual).
"""

import errno
import itertools
import os

from mta.delivery.mailbox import (
    LimitedWriter,
    MailboxFailure,
    Outcome,
    ReadError,
    closeQuietly,
    copyMessage,
    giveToRecipient,
    openDirectory,
    openPath,
    removeQuietly,
    strerror,
)
from mta.delivery.status import errnoStatus

_MAX_NAME_ATTEMPTS = 10

# One counter for the whole process: Maildir names stay unique across
# transports and threads (next() on itertools.count is atomic in CPython).
_deliveries = itertools.count(1)


def maildirHostname(hostname):
    """The host name part of Maildir file names, as the Maildir specification writes it."""
    return hostname.replace("/", "\\057").replace(":", "\\072") or "localhost"


def uniqueName(now, hostname):
    """A new Maildir file name: seconds.MmicrosecondsPpidQcounter.host."""
    seconds = int(now)
    micro = int((now - seconds) * 1_000_000)
    return f"{seconds}.M{micro}P{os.getpid()}Q{next(_deliveries)}.{maildirHostname(hostname)}"


def deliverMaildir(fs, job):
    """Deliver as C{job} says into its Maildir; an Outcome, or MailboxFailure."""

    def fail(e):
        return MailboxFailure(errnoStatus(e.errno, "4.2.0"),
                              f"maildir delivery failed: create maildir file {job.path}: {strerror(e)}")

    fds = []
    try:
        top = openPath(fs, job, job.components, True, fail)
        fds.append(top)
        tmp, _ = openDirectory(fs, job, top, "tmp", True, job.path + "tmp", fail)
        fds.append(tmp)
        new, createdNew = openDirectory(fs, job, top, "new", True, job.path + "new", fail)
        fds.append(new)
        if createdNew:  # as Postfix: cur/ is made together with new/
            fds.append(openDirectory(fs, job, top, "cur", True, job.path + "cur", fail)[0])
        return _writeMaildirFile(fs, job, tmp, new)
    finally:
        for fd in reversed(fds):
            closeQuietly(fs, fd)


def _createTmpFile(fs, job, tmp):
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    for _ in range(_MAX_NAME_ATTEMPTS):
        name = uniqueName(job.now, job.hostname)
        try:
            return name, fs.open(name, flags, 0o600, tmp)
        except FileExistsError:
            continue
        except OSError as e:
            raise MailboxFailure(errnoStatus(e.errno, "4.2.0"), "maildir delivery failed: create maildir file "
                                 f"{job.path}tmp/{name}: {strerror(e)}") from None
    raise MailboxFailure("4.2.0", f"maildir delivery failed: create maildir file {job.path}tmp/{name}: "
                         f"{os.strerror(errno.EEXIST)}")


def _linkIntoNew(fs, job, name, tmp, new):
    """
    Hard-link tmp/name into new/ under a name not in use there; return
    (that name, whether tmp/name was renamed away instead).
    """
    target = name
    for _ in range(_MAX_NAME_ATTEMPTS):
        try:
            fs.link(name, tmp, target, new)
            return target, False
        except FileExistsError:
            target = uniqueName(job.now, job.hostname)
        except OSError as e:
            if e.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS, errno.EMLINK):
                raise
            # No hard links here (some FUSE and network file systems): rename;
            # the name is unique, so nothing is overwritten.
            fs.rename(name, tmp, target, new)
            return target, True
    raise OSError(errno.EEXIST, os.strerror(errno.EEXIST))


def _writeMaildirFile(fs, job, tmp, new):
    name, fd = _createTmpFile(fs, job, tmp)
    inTmp, inNew = name, None
    try:
        try:
            giveToRecipient(fs, job, fd, f"{job.path}tmp/{name}")
            copyMessage(fs, job, LimitedWriter(fs, fd, job.limit or None), mbox=False)
            fs.fsync(fd)
        except BaseException:
            closeQuietly(fs, fd)
            raise
        fs.close(fd)
        try:
            inNew, renamed = _linkIntoNew(fs, job, name, tmp, new)
        except OSError as e:
            raise MailboxFailure(errnoStatus(e.errno, "4.2.0"), "maildir delivery failed: create maildir file "
                                 f"{job.path}new/{name}: {strerror(e)}") from None
        if renamed:
            inTmp = None
        fs.fsync(new)
    except ReadError as e:
        removeQuietly(fs, (inNew, new), (inTmp, tmp))
        raise MailboxFailure("4.3.0", f"maildir delivery failed: error reading message: {e}") from None
    except OSError as e:
        removeQuietly(fs, (inNew, new), (inTmp, tmp))
        raise MailboxFailure(errnoStatus(e.errno, "4.3.0"),
                             f"maildir delivery failed: error writing message: {strerror(e)}") from None
    except BaseException:
        removeQuietly(fs, (inNew, new), (inTmp, tmp))
        raise
    warning = None
    if inTmp is not None:
        try:
            fs.unlink(inTmp, tmp)
        except OSError as e:
            warning = f"remove {job.path}tmp/{inTmp}: {strerror(e)}"
    return Outcome("sent", "2.0.0", "delivered to maildir", warning)
