"""mta.delivery.mailbox - the blocking half of virtual(8): write one message into a Maildir or an mbox file.

deliverMailbox(job, fs) runs in a worker thread (never in the reactor)
and delivers one message to one recipient; it returns an Outcome
("sent", "deferred" or "bounced", a status code, Postfix's text and,
maybe, a warning for the log).  mta.delivery.virtual decides what to
deliver where; this module only writes.

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

MAILDIR
    The path (ending in "/") and its tmp/ and new/ are created when
    missing (mode 0700, owned by the recipient's uid/gid), and cur/ with
    new/, as Postfix's make_dirs() does.  The message is written to a new
    file in tmp/ (O_EXCL, mode 0600), fsynced, hard-linked into new/ (a
    rename where the file system has no hard links), new/ is fsynced, and
    the tmp/ name removed.  A reader sees a file in new/ only when it is
    complete and durable; on any failure the tmp/ file (and a new/ entry
    whose directory could not be fsynced) is removed.  File names follow
    the Maildir specification: "seconds.MmicrosecondsPpidQcounter.host",
    with "/" and ":" in the host name written as \\057 and \\072.

MBOX
    The directory must exist (as in Postfix, only the file is created, mode
    0600).  Locks, in Postfix's order: a "path.lock" dot-lock file (a lock
    older than stale_lock_time is removed), then fcntl() and/or flock() on
    the open file; each is tried deliver_lock_attempts times,
    deliver_lock_delay apart.  The mailbox is appended to, fsynced and
    unlocked; on a write or read error it is truncated back to its size
    before the delivery, so no partial message is left behind.

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
    error"); the base itself may be a symbolic link.  An mbox that is not a
    regular file bounces (5.3.5), one with more than one hard link defers,
    and with strict_mailbox_ownership one not owned by the recipient's uid
    defers (4.2.0), as in Postfix.

CONFIGURATION
    Given by mta.delivery.virtual in each MailboxJob (see there).
"""

import errno
import fcntl
import itertools
import os
import re
import stat
import time

import attrs

from mta.delivery.status import errnoStatus, statusClass
from mta.queue.fileformat import CorruptQueueFile, readContent

WRITE_BUFFER_SIZE = 65536
_MAX_NAME_ATTEMPTS = 10
_DIRECTORY_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_FROM_LINE = re.compile(rb"^From ", re.M)

# One counter for the whole process: Maildir names stay unique across
# transports and threads (next() on itertools.count is atomic in CPython).
_deliveries = itertools.count(1)


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


class _Failed(Exception):
    """Raised inside to end a delivery with an Outcome."""

    def __init__(self, dsn, text, warning=None):
        super().__init__(text)
        self.outcome = Outcome(statusClass(dsn), dsn, text, warning)


class _ReadError(Exception):
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


def maildirHostname(hostname):
    """The host name part of Maildir file names, as the Maildir specification writes it."""
    return hostname.replace("/", "\\057").replace(":", "\\072") or "localhost"


def uniqueName(now, hostname):
    """A new Maildir file name: seconds.MmicrosecondsPpidQcounter.host."""
    seconds = int(now)
    micro = int((now - seconds) * 1_000_000)
    return f"{seconds}.M{micro}P{os.getpid()}Q{next(_deliveries)}.{maildirHostname(hostname)}"


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


class _Writer:
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


def _copyMessage(fs, job, writer, mbox):
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
                raise _ReadError(str(e)) from e
            writer.write(text.feed(chunk))
        writer.write(text.finish())
    finally:
        close = getattr(chunks, "close", None)
        if close is not None:
            close()
    if mbox:
        writer.write(b"\n")
    writer.flush()


def _strerror(e):
    return e.strerror or str(e)


def _closeQuietly(fs, fd):
    try:
        fs.close(fd)
    except OSError:
        pass


def _chown(fs, job, fd, what):
    """Give a file or directory we created to the recipient's uid/gid."""
    if job.uid is None and job.gid is None:
        return
    uid = -1 if job.uid is None else job.uid
    gid = -1 if job.gid is None else job.gid
    try:
        fs.fchown(fd, uid, gid)
    except OSError as e:
        raise _Failed("4.3.5", CONFIGURATION_ERROR,
                      f"cannot give {what} to uid {uid} gid {gid}: {_strerror(e)} "
                      "(without root privileges, virtual_uid_maps and virtual_gid_maps must name mta's own "
                      "user and group)") from None


def _isSymlink(fs, name, dirFd):
    try:
        return stat.S_ISLNK(fs.lstat(name, dirFd).st_mode)
    except OSError:
        return False


def _symlinkRefused(job, shown):
    return _Failed("5.3.5", CONFIGURATION_ERROR,
                   f"mailbox {job.path}: {shown} is a symbolic link (refused below virtual_mailbox_base; see "
                   "virtual_mailbox_follow_symlinks)")


def _openDirectory(fs, job, dirFd, name, create, shown, fail):
    """
    Open the directory C{name} in C{dirFd}; if it is missing and
    C{create}, make it (mode 0700), give it to the recipient and fsync
    C{dirFd}.  Return (fd, created).  C{fail}(OSError) builds the _Failed
    for errors other than a refused symbolic link.
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
            if e.errno in (errno.ENOTDIR, errno.ELOOP) and not job.followSymlinks and _isSymlink(fs, name, dirFd):
                raise _symlinkRefused(job, shown) from None
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
            _chown(fs, job, fd, shown)
            fs.fsync(dirFd)
        except OSError as e:
            _closeQuietly(fs, fd)
            raise fail(e) from None
        except BaseException:
            _closeQuietly(fs, fd)
            raise
    return fd, created


def _walk(fs, job, components, create, fail):
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
            child, _ = _openDirectory(fs, job, fd, name, create, shown, fail)
            fs.close(fd)
            fd = child
    except BaseException:
        _closeQuietly(fs, fd)
        raise
    return fd


# -- Maildir ---------------------------------------------------------------------


def _deliverMaildir(fs, job):
    def fail(e):
        return _Failed(errnoStatus(e.errno, "4.2.0"),
                       f"maildir delivery failed: create maildir file {job.path}: {_strerror(e)}")

    fds = []
    try:
        top = _walk(fs, job, job.components, True, fail)
        fds.append(top)
        tmp, _ = _openDirectory(fs, job, top, "tmp", True, job.path + "tmp", fail)
        fds.append(tmp)
        new, createdNew = _openDirectory(fs, job, top, "new", True, job.path + "new", fail)
        fds.append(new)
        if createdNew:  # as Postfix: cur/ is made together with new/
            fds.append(_openDirectory(fs, job, top, "cur", True, job.path + "cur", fail)[0])
        return _writeMaildirFile(fs, job, tmp, new)
    finally:
        for fd in reversed(fds):
            _closeQuietly(fs, fd)


def _createTmpFile(fs, job, tmp):
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    for _ in range(_MAX_NAME_ATTEMPTS):
        name = uniqueName(job.now, job.hostname)
        try:
            return name, fs.open(name, flags, 0o600, tmp)
        except FileExistsError:
            continue
        except OSError as e:
            raise _Failed(errnoStatus(e.errno, "4.2.0"),
                          f"maildir delivery failed: create maildir file {job.path}tmp/{name}: {_strerror(e)}") from None
    raise _Failed("4.2.0", f"maildir delivery failed: create maildir file {job.path}tmp/{name}: "
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
            _chown(fs, job, fd, f"{job.path}tmp/{name}")
            _copyMessage(fs, job, _Writer(fs, fd, job.limit or None), mbox=False)
            fs.fsync(fd)
        except BaseException:
            _closeQuietly(fs, fd)
            raise
        fs.close(fd)
        try:
            inNew, renamed = _linkIntoNew(fs, job, name, tmp, new)
        except OSError as e:
            raise _Failed(errnoStatus(e.errno, "4.2.0"),
                          f"maildir delivery failed: create maildir file {job.path}new/{name}: {_strerror(e)}") from None
        if renamed:
            inTmp = None
        fs.fsync(new)
    except _ReadError as e:
        _removeQuietly(fs, (inNew, new), (inTmp, tmp))
        raise _Failed("4.3.0", f"maildir delivery failed: error reading message: {e}") from None
    except OSError as e:
        _removeQuietly(fs, (inNew, new), (inTmp, tmp))
        raise _Failed(errnoStatus(e.errno, "4.3.0"),
                      f"maildir delivery failed: error writing message: {_strerror(e)}") from None
    except BaseException:
        _removeQuietly(fs, (inNew, new), (inTmp, tmp))
        raise
    warning = None
    if inTmp is not None:
        try:
            fs.unlink(inTmp, tmp)
        except OSError as e:
            warning = f"remove {job.path}tmp/{inTmp}: {_strerror(e)}"
    return Outcome("sent", "2.0.0", "delivered to maildir", warning)


def _removeQuietly(fs, *entries):
    for name, dirFd in entries:
        if name is not None:
            try:
                fs.unlink(name, dirFd)
            except OSError:
                pass


# -- mbox ------------------------------------------------------------------------


def _deliverMbox(fs, job):
    prefix = f"delivery failed to mailbox {job.path}: "

    def fail(e, default="4.2.0"):
        return _Failed(errnoStatus(e.errno, default), f"{prefix}cannot open file: {_strerror(e)}")

    name = job.components[-1]
    directory = _walk(fs, job, job.components[:-1], False, fail)
    dotlocked = False
    try:
        if "dotlock" in job.lockStyles:
            _dotlock(fs, job, directory, name, prefix)
            dotlocked = True
        fd, created = _openMbox(fs, job, directory, name, fail)
        try:
            return _appendMbox(fs, job, directory, fd, created, prefix, fail)
        finally:
            _closeQuietly(fs, fd)  # also releases fcntl() and flock() locks
    finally:
        if dotlocked:
            try:
                fs.unlink(name + ".lock", directory)
            except OSError:
                pass
        _closeQuietly(fs, directory)


def _openMbox(fs, job, directory, name, fail):
    flags = os.O_WRONLY | os.O_APPEND | os.O_NONBLOCK | os.O_CLOEXEC | (0 if job.followSymlinks else os.O_NOFOLLOW)
    for _ in range(2):
        try:
            return fs.open(name, flags, 0, directory), False
        except FileNotFoundError:
            pass
        except OSError as e:
            if e.errno == errno.ELOOP and not job.followSymlinks:
                raise _symlinkRefused(job, job.path) from None
            raise fail(e) from None
        try:
            return fs.open(name, flags | os.O_CREAT | os.O_EXCL, 0o600, directory), True
        except FileExistsError:
            continue  # created meanwhile (or a dangling symbolic link): open it
        except OSError as e:
            raise fail(e) from None
    raise fail(OSError(errno.EEXIST, os.strerror(errno.EEXIST)))


def _appendMbox(fs, job, directory, fd, created, prefix, fail):
    try:
        st = fs.fstat(fd)
    except OSError as e:
        raise fail(e) from None
    if not stat.S_ISREG(st.st_mode):
        raise _Failed("5.3.5", f"{prefix}{CONFIGURATION_ERROR}",
                      f"mailbox {job.path}: destination is not a regular file")
    if st.st_nlink != 1:
        raise _Failed("4.2.0", f"{prefix}cannot open file: file has {st.st_nlink} hard links")
    if created:
        _chown(fs, job, fd, job.path)
        try:
            fs.fsync(directory)
        except OSError as e:
            raise fail(e) from None
    elif job.strictOwnership and job.uid is not None and st.st_uid != job.uid:
        raise _Failed("4.2.0", f"{prefix}destination {job.path} is not owned by recipient",
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
        _copyMessage(fs, job, _Writer(fs, fd, room), mbox=True)
        fs.fsync(fd)
    except _ReadError as e:
        _truncate(fs, fd, original)
        raise _Failed("4.3.0", f"{prefix}error reading message: {e}") from None
    except OSError as e:
        _truncate(fs, fd, original)
        raise _Failed(errnoStatus(e.errno, "4.3.0"), f"{prefix}error writing message: {_strerror(e)}") from None
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


def _kernelLock(fs, job, fd, style, prefix):
    for attempt in range(job.lockAttempts):
        try:
            fs.lock(fd, style)
            return
        except OSError as e:
            if e.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise _Failed(errnoStatus(e.errno, "4.2.0"),
                              f"{prefix}unable to lock for exclusive access: {_strerror(e)}") from None
            if attempt + 1 < job.lockAttempts:
                fs.sleep(job.lockDelay)
    raise _Failed("4.2.0", f"{prefix}unable to lock for exclusive access: {os.strerror(errno.EAGAIN)}")


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
            raise _Failed(errnoStatus(e.errno, "4.2.0"),
                          f"{prefix}cannot create lock file {job.path}.lock: {_strerror(e)}") from None
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
    raise _Failed("4.2.0", f"{prefix}cannot create lock file {job.path}.lock: {os.strerror(errno.EEXIST)}")


def deliverMailbox(job, fs=None):
    """
    Deliver one message for one recipient as C{job} says (blocking: call it
    in a thread).  Return an Outcome; an unexpected exception (a bug)
    propagates.
    """
    fs = fs if fs is not None else FileSystem()
    try:
        return _deliverMaildir(fs, job) if job.maildir else _deliverMbox(fs, job)
    except _Failed as e:
        return e.outcome
