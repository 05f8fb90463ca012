"""mta.delivery.mailbox - the blocking half of virtual(8): what Maildir and mbox delivery share.

mta.delivery.maildir and mta.delivery.mbox write one message for one
recipient, in a worker thread (never in the reactor), from a MailboxJob
that mta.delivery.virtual fills in; each returns an Outcome ("sent",
"deferred" or "bounced", a status code, Postfix's text and, maybe, a
warning for the log).  This module holds what both need: the job, the
header lines and text conversion, the size-limited writer, the walk down
the mailbox path and the system-call layer (FileSystem) that tests
replace.

WHAT IS WRITTEN
    As Postfix's mail_copy(): first, in mbox files only, the envelope line
    "From sender  asctime" (two spaces; MAILER-DAEMON for the null
    sender), then "Return-Path: <sender>", "X-Original-To: recipient as
    received" (when known) and "Delivered-To: recipient", then the message.
    Line ends become LF: the queue keeps the message as received (CRLF),
    Postfix keeps queued lines without their CRLF and writes mailboxes with
    LF, and so do we; a bare CR stays.  A message that does not end with a
    line end gets one.  In mbox files, a line that starts with "From " gets
    a ">" in front (Postfix's quoting, not mboxrd: ">From " lines are left
    alone) and a blank line follows the message.

SIZE LIMIT
    virtual_mailbox_limit bounds each Maildir file, and the whole mbox file,
    as Postfix's file size resource limit does: a write past it fails with
    EFBIG, "5.2.2 error writing message: File too large", and the message
    bounces (nothing is left behind).

ERRORS
    As Postfix's mbox_dsn(): ENOSPC defers with 4.3.1, EDQUOT and EFBIG
    bounce with 5.2.2, EAGAIN and ESTALE defer with 4.2.0; other errors
    creating or opening files defer with 4.2.0.  Deviations: other write
    errors (EIO, ...) defer with 4.3.0 where Postfix bounces with 5.3.0, and
    a queue file read error always defers (4.3.0): a failing disk must
    not turn into bounces.

SECURITY
    The mailbox path comes from virtual_mailbox_maps (configuration); the
    recipient and sender addresses come from the network and are only
    written into header lines (control characters replaced).  The path
    below virtual_mailbox_base is walked one directory at a time with
    openat() and O_NOFOLLOW, so that (unless followSymlinks) a symbolic
    link anywhere below the base, placed by a mailbox owner to redirect a
    root-privileged delivery, is refused ("5.3.5 mail system configuration
    error"); the base itself may be a symbolic link.

CONFIGURATION
    Given by mta.delivery.virtual in each MailboxJob (see there).
"""

import errno
import fcntl
import os
import re
import stat
import time

import attrs

from mta.delivery.status import statusClass
from mta.queue.fileformat import CorruptQueueFile, readContent

WRITE_BUFFER_SIZE = 65536
_DIRECTORY_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_FROM_LINE = re.compile(rb"^From ", re.M)


@attrs.frozen
class MailboxJob:
    """Everything the worker thread needs for one recipient; plain values only."""

    base: str  # virtual_mailbox_base, absolute
    components: tuple  # the mailbox path below base, split and checked (splitMailboxPath)
    maildir: bool
    sender: str  # RFC 5321 form, "" for the null sender
    recipient: str  # the final recipient: Delivered-To
    original: str  # the recipient as received: X-Original-To ("" = none)
    contentPath: str
    contentOffset: int
    contentLength: int
    now: float  # seconds since the epoch, for the From_ line and Maildir names
    uid: int | None = None  # owner of created files and directories; None: the daemon's
    gid: int | None = None
    limit: int = 0  # virtual_mailbox_limit; 0: none
    lockStyles: tuple = ("fcntl", "dotlock")
    lockAttempts: int = 20
    lockDelay: float = 1.0
    staleLockTime: float = 500.0
    strictOwnership: bool = True
    followSymlinks: bool = False
    hostname: str = "localhost"

    @property
    def path(self):
        """The mailbox as Postfix names it in texts: base/result."""
        return self.base.rstrip("/") + "/" + "/".join(self.components) + ("/" if self.maildir else "")


@attrs.frozen
class Outcome:
    """The result of one delivery: status is "sent", "deferred" or "bounced"."""

    status: str
    dsn: str
    text: str
    warning: str | None = None


class MailboxFailure(Exception):
    """Raised inside to end a delivery with an Outcome."""

    def __init__(self, dsn, text, warning=None):
        super().__init__(text)
        self.outcome = Outcome(statusClass(dsn), dsn, text, warning)


class ReadError(Exception):
    """Reading the queue file failed (wraps OSError or CorruptQueueFile)."""


CONFIGURATION_ERROR = "mail system configuration error"


def splitMailboxPath(result):
    """
    Check a virtual_mailbox_maps result and split it: (components,
    maildir).  Raise ValueError, saying why, for a path that could leave
    the base: absolute, with a ".." component, with a NUL, or empty.
    """
    if "\0" in result:
        raise ValueError("contains a NUL character")
    if not result.strip():
        raise ValueError("is empty")
    if result.startswith("/"):
        raise ValueError("is an absolute path (it must be relative to virtual_mailbox_base)")
    parts = tuple(part for part in result.split("/") if part not in ("", "."))
    if ".." in parts:
        raise ValueError("has a '..' component")
    if not parts:
        raise ValueError("names virtual_mailbox_base itself")
    return parts, result.endswith("/")


def _headerText(text):
    return _CONTROL.sub("?", text)


def _encode(text):
    try:
        return text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return text.encode("utf-8", "replace")


def envelopeHeaders(job, mbox):
    """The lines put in front of the message (bytes, LF line ends)."""
    sender = _headerText(job.sender)
    lines = []
    if mbox:
        lines.append(f"From {sender or 'MAILER-DAEMON'}  {time.asctime(time.localtime(job.now))}")
    lines.append(f"Return-Path: <{sender}>")
    if job.original:
        lines.append(f"X-Original-To: {_headerText(job.original)}")
    lines.append(f"Delivered-To: {_headerText(job.recipient)}")
    return _encode("".join(line + "\n" for line in lines))


class MailboxText:
    """
    Turns queued message content (CRLF line ends), fed in chunks of any
    size, into mailbox text: LF line ends, and with C{quoteFrom} a ">" in
    front of every line starting with "From ".  Call feed() for each chunk
    and finish() at the end; each returns the bytes to write.
    """

    def __init__(self, quoteFrom):
        self._quote = quoteFrom
        self._pending = b""  # a trailing CR, or the start of a line that might be "From "
        self._atLineStart = True
        self.wroteAnything = False
        self.endsWithNewline = True

    def feed(self, data):
        data = self._pending + data
        self._pending = b""
        cut = data.rfind(b"\n") + 1
        out = b""
        if cut:
            out = self._lines(data[:cut])
            self._atLineStart = True
            data = data[cut:]
        out += self._partial(data)
        return self._emitted(out)

    def finish(self):
        rest, self._pending = self._pending, b""
        out = b""
        if rest:
            if self._quote and self._atLineStart and rest.startswith(b"From "):
                out = b">"
            out += rest
            self._atLineStart = False
        out = self._emitted(out)
        if self.wroteAnything and not self.endsWithNewline:
            out += self._emitted(b"\n")
        return out

    def _emitted(self, out):
        if out:
            self.wroteAnything = True
            self.endsWithNewline = out.endswith(b"\n")
        return out

    def _lines(self, block):
        # Whole lines: CRLF -> LF, then quote "From " at each line start.
        block = block.replace(b"\r\n", b"\n")
        if not self._quote:
            return block
        if self._atLineStart:
            return _FROM_LINE.sub(b">From ", block)
        first = block.index(b"\n") + 1
        return block[:first] + _FROM_LINE.sub(b">From ", block[first:])

    def _partial(self, rest):
        # The start of a line whose end has not arrived yet.
        if not rest:
            return b""
        if self._quote and self._atLineStart and len(rest) < 5 and b"From ".startswith(rest):
            self._pending = rest  # cannot tell yet whether it is "From "
            return b""
        prefix = b">" if self._quote and self._atLineStart and rest.startswith(b"From ") else b""
        if rest.endswith(b"\r"):
            self._pending = b"\r"  # maybe the CR of a CRLF
            rest = rest[:-1]
        if rest:
            self._atLineStart = False
        return prefix + rest


class FileSystem:
    """The system calls deliverMailbox makes; tests substitute their own."""

    def open(self, name, flags, mode=0o600, dirFd=None):
        return os.open(name, flags, mode, dir_fd=dirFd)

    def mkdir(self, name, mode, dirFd):
        os.mkdir(name, mode, dir_fd=dirFd)

    def lstat(self, name, dirFd):
        return os.stat(name, dir_fd=dirFd, follow_symlinks=False)

    def fstat(self, fd):
        return os.fstat(fd)

    def fchown(self, fd, uid, gid):
        os.fchown(fd, uid, gid)

    def write(self, fd, data):
        return os.write(fd, data)

    def fsync(self, fd):
        os.fsync(fd)

    def ftruncate(self, fd, length):
        os.ftruncate(fd, length)

    def close(self, fd):
        os.close(fd)

    def link(self, src, srcDirFd, dst, dstDirFd):
        os.link(src, dst, src_dir_fd=srcDirFd, dst_dir_fd=dstDirFd, follow_symlinks=False)

    def rename(self, src, srcDirFd, dst, dstDirFd):
        os.rename(src, dst, src_dir_fd=srcDirFd, dst_dir_fd=dstDirFd)

    def unlink(self, name, dirFd):
        os.unlink(name, dir_fd=dirFd)

    def lock(self, fd, style):
        """Take an exclusive lock without waiting; OSError (EAGAIN, EACCES) if it is held."""
        if style == "fcntl":
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        elif style == "flock":
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        else:
            raise ValueError(f"unknown lock style {style!r}")

    def sleep(self, seconds):
        time.sleep(seconds)

    def time(self):
        return time.time()

    def readContent(self, path, offset, length):
        return readContent(path, offset, length)


class LimitedWriter:
    """Buffered writes to C{fd}; more than C{room} bytes (None: no limit) fail with EFBIG."""

    def __init__(self, fs, fd, room):
        self._fs = fs
        self._fd = fd
        self._room = room
        self._buffer = bytearray()
        self.total = 0

    def write(self, data):
        if not data:
            return
        self.total += len(data)
        if self._room is not None and self.total > self._room:
            raise OSError(errno.EFBIG, os.strerror(errno.EFBIG))
        self._buffer += data
        if len(self._buffer) >= WRITE_BUFFER_SIZE:
            self.flush()

    def flush(self):
        data, self._buffer = bytes(self._buffer), bytearray()
        view = memoryview(data)
        while view:
            written = self._fs.write(self._fd, view)
            view = view[written:]


def copyMessage(fs, job, writer, mbox):
    """Write the headers, the converted content and, for mbox, the blank line."""
    writer.write(envelopeHeaders(job, mbox))
    text = MailboxText(quoteFrom=mbox)
    chunks = fs.readContent(job.contentPath, job.contentOffset, job.contentLength)
    try:
        while True:
            try:
                chunk = next(chunks)
            except StopIteration:
                break
            except (OSError, CorruptQueueFile) as e:
                raise ReadError(str(e)) from e
            writer.write(text.feed(chunk))
        writer.write(text.finish())
    finally:
        close = getattr(chunks, "close", None)
        if close is not None:
            close()
    if mbox:
        writer.write(b"\n")
    writer.flush()


def strerror(e):
    return e.strerror or str(e)


def closeQuietly(fs, fd):
    try:
        fs.close(fd)
    except OSError:
        pass


def giveToRecipient(fs, job, fd, what):
    """Give a file or directory we created to the recipient's uid/gid."""
    if job.uid is None and job.gid is None:
        return
    uid = -1 if job.uid is None else job.uid
    gid = -1 if job.gid is None else job.gid
    try:
        fs.fchown(fd, uid, gid)
    except OSError as e:
        raise MailboxFailure("4.3.5", CONFIGURATION_ERROR,
                             f"cannot give {what} to uid {uid} gid {gid}: {strerror(e)} (without root "
                             "privileges, virtual_uid_maps and virtual_gid_maps may only name mta's own user "
                             "and groups)") from None


def isSymlink(fs, name, dirFd):
    try:
        return stat.S_ISLNK(fs.lstat(name, dirFd).st_mode)
    except OSError:
        return False


def symlinkRefused(job, shown):
    return MailboxFailure("5.3.5", CONFIGURATION_ERROR,
                          f"mailbox {job.path}: {shown} is a symbolic link (refused below "
                          "virtual_mailbox_base; see virtual_mailbox_follow_symlinks)")


def openDirectory(fs, job, dirFd, name, create, shown, fail):
    """
    Open the directory C{name} in C{dirFd}; if it is missing and
    C{create}, make it (mode 0700), give it to the recipient and fsync
    C{dirFd}.  Return (fd, created).  C{fail}(OSError) builds the
    MailboxFailure for errors other than a refused symbolic link.
    """
    flags = _DIRECTORY_FLAGS | (0 if job.followSymlinks else os.O_NOFOLLOW)
    created = False
    for _ in range(3):
        try:
            fd = fs.open(name, flags, 0, dirFd)
            break
        except FileNotFoundError as e:
            if not create or created:
                raise fail(e) from None
        except OSError as e:
            if e.errno in (errno.ENOTDIR, errno.ELOOP) and not job.followSymlinks and isSymlink(fs, name, dirFd):
                raise symlinkRefused(job, shown) from None
            raise fail(e) from None
        try:
            fs.mkdir(name, 0o700, dirFd)
            created = True
        except FileExistsError:
            pass  # made by someone else meanwhile: open it
        except OSError as e:
            raise fail(e) from None
    else:
        raise fail(OSError(errno.ENOENT, os.strerror(errno.ENOENT)))
    if created:
        try:
            giveToRecipient(fs, job, fd, shown)
            fs.fsync(dirFd)
        except OSError as e:
            closeQuietly(fs, fd)
            raise fail(e) from None
        except BaseException:
            closeQuietly(fs, fd)
            raise
    return fd, created


def openPath(fs, job, components, create, fail):
    """
    Open base/components... one directory at a time and return the last
    one's fd; with C{create}, make missing directories.
    """
    try:
        fd = fs.open(job.base, _DIRECTORY_FLAGS, 0)
    except OSError as e:
        raise fail(e) from None
    shown = job.base.rstrip("/")
    try:
        for name in components:
            shown = f"{shown}/{name}"
            child, _ = openDirectory(fs, job, fd, name, create, shown, fail)
            fs.close(fd)
            fd = child
    except BaseException:
        closeQuietly(fs, fd)
        raise
    return fd


def removeQuietly(fs, *entries):
    for name, dirFd in entries:
        if name is not None:
            try:
                fs.unlink(name, dirFd)
            except OSError:
                pass
