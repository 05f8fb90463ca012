"""mta.cli.sendmail.maildrop - where mta-sendmail deposits: maildrop/, never created; one file, by the one writer.

maildropDirectory() and findMaildrop() find $queue_directory/maildrop/,
which must exist (mta.cli.sendmail, DESCRIPTION): a missing one is exit
status 78 when the configuration in effect cannot be the right one (no
file found, a relative queue_directory) and 75 otherwise, and nothing is
ever created.  MaildropFile is one deposit: the queue's own writer
(mta.queue.files.QueueFileWriter, the code the store uses for incoming/)
writes it as maildrop/QUEUEID.tmp, fsyncs it, renames it to
maildrop/QUEUEID, and fsyncs maildrop/ (mta.queue.files.fsyncDirectory);
a failure at any step removes what was written, so pickup never sees a
half-written file.  depositMode() is 0600, or 0644 for root's files in a
queue that belongs to the daemon's user.

SECURITY
    Files are created O_EXCL|O_NOFOLLOW under a fresh queue id; maildrop/
    is lstat'ed (a symbolic link in its place is refused).

CONFIGURATION
    queue_directory (SendmailSettings: the path, and the text as written
    for the messages about a missing queue).
"""

import os
import stat

from mta.cli.sendmail.options import EX_CONFIG, EX_TEMPFAIL, Exit
from mta.config import loader as configLoader
from mta.queue import queueid
from mta.queue.files import FileSystem, QueueFileWriter, StepFailed, fsyncDirectory
from mta.queue.queueid import temporaryName


class DepositError(Exception):
    """The message could not be put in maildrop/; str() says why."""


def maildropDirectory(queueDirectory):
    """
    The path of maildrop/ in C{queueDirectory}, which must exist: it is
    never created here (see the module docstring).  Raises DepositError.
    """
    maildrop = os.path.join(queueDirectory, "maildrop")
    try:
        st = os.lstat(maildrop)
    except FileNotFoundError:
        raise DepositError(f"there is no queue: {maildrop} does not exist") from None
    except OSError as e:
        raise DepositError(f"cannot use {maildrop}: {e.strerror or e}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise DepositError(f"cannot use {maildrop}: it is not a directory")
    return maildrop


def findMaildrop(config):
    """
    maildrop/ of the queue of C{config} (its SendmailSettings), or Exit: 78
    (EX_CONFIG) when the configuration in effect cannot be the right one
    (no file found, or a relative queue_directory) and there is no queue,
    else 75.
    """
    settings = config.settings.sendmail
    queueDirectory = settings.queueDirectory
    try:
        return maildropDirectory(queueDirectory)
    except DepositError as e:
        problem = str(e)
        missing = not os.path.lexists(os.path.join(queueDirectory, "maildrop"))
    written = settings.queueDirectoryAsWritten
    if missing and config.path is None:
        raise Exit(EX_CONFIG, f"{problem}; no configuration file was found (no -C, ${configLoader.CONFIG_ENVIRONMENT} "
                              f"or {configLoader.DEFAULT_CONFIG}) and the embedded default queue_directory {written} "
                              f"is relative "
                              f"to the current directory {os.getcwd()}; the message was not queued")
    if missing and not os.path.isabs(written):
        raise Exit(EX_CONFIG, f"{problem}; queue_directory {written} in {config.describe()} is relative to the "
                              f"current directory {os.getcwd()}: set an absolute path; the message was not queued")
    if missing:
        raise Exit(EX_TEMPFAIL, f"{problem} (queue_directory of {config.describe()}): mta has not been started "
                                f"on this queue yet; the message was not queued")
    raise Exit(EX_TEMPFAIL, f"{problem}; the message was not queued")


def depositMode(directory, euid=None):
    """
    The mode of a new maildrop file in C{directory}: 0600, or 0644 when the
    submitter is root and maildrop/ belongs to another user (the daemon's),
    who must read the file: a 0600 file of root's would wait in maildrop/
    for ever (root's cron jobs submit this way).  0644 shows nothing to
    anyone else: maildrop/ is 0700, so no one but its owner and root can
    reach the file.
    """
    euid = os.geteuid() if euid is None else euid
    if euid != 0:
        return 0o600
    try:
        owner = os.stat(directory).st_uid
    except OSError:
        return 0o600
    return 0o644 if owner != 0 else 0o600


class MaildropFile:
    """
    One queue file being written into maildrop/ as QUEUEID.tmp, by the
    queue's one writer (C{writer}, a QueueFileWriter on C{fs}).  write()
    never raises: the first error is kept (C{error}, a DepositError), later
    data is dropped, and commit() raises it.  commit() makes the file
    durable under its queue id; abort() removes it.  Blocking I/O.
    """

    def __init__(self, directory, fs=None, newQueueId=None):
        self.fs = fs if fs is not None else FileSystem()
        self.queueId = (newQueueId or queueid.newQueueId)()
        self.directory = directory
        self.tmpPath = os.path.join(directory, temporaryName(self.queueId))
        self.path = os.path.join(directory, self.queueId)
        self.writer = QueueFileWriter(self.fs, self.tmpPath, mode=depositMode(directory))
        self._state = "open"  # -> committed | aborted

    @property
    def size(self):
        return self.writer.size

    @property
    def error(self):
        """The first failure to create or write the file, as a DepositError, or None."""
        failed = self.writer.error
        if failed is None:
            return None
        what = "create" if failed.step == "create" else "write"
        return DepositError(f"cannot {what} {self.tmpPath}: {failed.reason}")

    def open(self):
        """Create the temporary file now (it is created at the first write-out otherwise).  DepositError."""
        try:
            self.writer.create()
        except StepFailed as e:
            raise DepositError(f"cannot create {self.tmpPath}: {e.reason}") from None

    def write(self, data):
        if self._state == "open":
            self.writer.write(data)

    def commit(self, envelope):
        """Store C{envelope} and make the file durable in maildrop/; the queue id.  DepositError."""
        if self._state != "open":
            raise DepositError(f"{self.queueId}: commit() after {self._state}")
        writer = self.writer
        try:
            writer.seal(envelope)
        except (ValueError, TypeError) as e:
            self.abort()
            raise DepositError(f"cannot store the envelope: {e}") from None
        writer.flush()
        error = self.error
        if error is not None:
            self.abort()
            raise error
        try:
            writer.store(self.path)
            fsyncDirectory(self.fs, self.directory, [self.path], step="fsync of maildrop/")
        except StepFailed as e:
            self.abort()
            raise DepositError(f"cannot store the message: {e}") from None
        self._state = "committed"
        return self.queueId

    def abort(self):
        """Forget the message and remove the temporary file; safe at any time before commit."""
        if self._state != "open":
            return
        self._state = "aborted"
        self.writer.discard()
