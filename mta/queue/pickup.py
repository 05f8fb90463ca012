"""mta.queue.pickup - pickup(8): local submissions from maildrop/ into the queue.

NAME
    Pickup - takes the files that mta-sendmail deposits in
    $queue_directory/maildrop/ and queues them as new messages

SYNOPSIS
    pickup = Pickup(store, cleanup, reactor, maillogs)  # cleanup: mta.cleanup.Cleanup ([main]);
                                                        # maillogs: program -> MailLogger
    pickup.start()              # after the queue manager (it takes store.onCommit)
    d = pickup.stop()           # fires when the file in hand is finished

DESCRIPTION
    mta-sendmail (mta.cli.sendmail) writes a complete queue file (the
    format of mta.queue.fileformat) under a temporary name, QUEUEID.tmp, in
    maildrop/, fsyncs it and renames it to QUEUEID; only names that are
    queue ids are picked up, so a file is never seen half-written.

    Postfix's pickup is woken through a fifo by postdrop; mta has no such
    wake-up channel (the control socket belongs to the daemon's user and
    sendmail must work while the daemon is down), so pickup polls: it
    scans maildrop/ at start and then every POLL_INTERVAL (1 s) on the
    reactor's clock.  One tick takes at most BATCH_SIZE files (oldest queue
    id first); when more are waiting the next tick follows at once, so a
    flood of submissions is worked off in bounded slices with the reactor
    free in between.  The directory is listed again only when the names
    from the last listing are used up.

    Each file is parsed as untrusted input: the header and envelope by
    mta.queue.fileformat (a symbolic link or anything but a regular file is
    refused), the addresses again by mta.address (after mta.rewrite has
    completed them in the local context, as Postfix's cleanup does: a bare
    "root" becomes root@$myorigin, and with append_dot_mydomain = yes
    user@host becomes user@host.$mydomain), and the content's length
    and CRC-32 are checked while it is copied (one pass instead of
    readQueueFile's verifyContent pass and a second read).  The content is
    read in CHUNK_SIZE slices in the store's thread pool, so a big message is
    never held in memory whole and the reactor never waits on the disk for
    long.  A damaged file is moved to corrupt/ with a log line (Postfix
    deletes it; mta keeps it for a human, as the queue manager does with
    damaged queue files) and the other files go on.

    The message is injected as new mail through the one cleanup
    (mta.cleanup, with Origin.localSubmission), as Postfix's pickup hands
    it to cleanup(8):
      - a Received: header in Postfix's shape for local mail,
            Received: by $myhostname ($mail_name, from userid UID)
                    id QUEUEID; DATE
        with the uid that owns the maildrop file (the kernel's record of
        the submitter, not anything the file says) and the date of its
        last change, as Postfix does;
      - the content through cleanup's header cleanup
        (mta.cleanup.headers) in the local rewriting context: local submissions
        get Message-Id:, Date: and From: when they lack them, their header
        addresses are completed ("To: root" becomes "To: root@$myorigin";
        local_header_rewrite_clients and remote_header_rewrite_domain do
        not apply: sendmail's mail is always local, as in Postfix),
        message_drop_headers are removed (Bcc: by default), and
        hopcount_limit applies;
      - the envelope: sender and recipients (completed as above), the
        recipients' DSN parameters, body type, SMTPUTF8, RET and ENVID as
        sendmail recorded them; arrival
        time the submission time (at most now); protocol "local",
        client_name "localhost", no client address, port or HELO;
      - committed by cleanup into the store, so the queue manager takes
        it at once (store.onCommit).
    Only after the commit is durable is the maildrop file removed (and
    maildrop/ fsynced once per tick).  If the daemon stops or crashes
    between the commit and that removal, the file is picked up again at
    the next start: a duplicate, never a loss.

    Mail-log lines, in Postfix's shape:
        mta/pickup: QUEUEID: uid=1000 from=<alice@example.org>
        mta/cleanup: QUEUEID: message-id=<QUEUEID@mx.example.org>

    A message with too many Received: headers (a loop through a local
    script) is moved to corrupt/ with a log line; Postfix would return it
    to the sender.  Failures that may pass (the queue cannot be written, a
    read error) leave the file in maildrop/ and it is tried again after
    RETRY_DELAY; one that would repeat every tick (the file cannot be
    removed after it was queued) is logged and the file is left alone
    until the daemon restarts, so it is never queued twice by this process.

    Temporary files (QUEUEID.tmp) older than STALE_TEMPORARY (a day) are
    left by a sendmail that was killed or crashed; they are removed.

SECURITY
    The maildrop directory has mode 0700: only the queue's owner (and
    root) can submit.  Files in it are still untrusted: every field is
    checked, a file that does not parse or whose addresses are malformed
    is set aside, a symbolic link is never followed, and the content is
    copied, never interpreted beyond the header cleanup.  The size of a
    submission is bounded by mta-sendmail (message_size_limit); pickup takes
    what the queue's owner put in maildrop/, within the format's own limits.

CONFIGURATION
    None of its own: the cleanup's settings (mta.config.settings.cleanup,
    [main]) give myhostname, mail_name (the Received: header);
    hopcount_limit, message_drop_headers, header_size_limit (the header
    cleanup); append_at_myorigin, append_dot_mydomain, myorigin, mydomain
    (address rewriting, mta.rewrite).
    Constants: POLL_INTERVAL, BATCH_SIZE, CHUNK_SIZE, RETRY_DELAY,
    STALE_TEMPORARY.
"""

import collections
import errno
import os
import re
import stat
import zlib

import attrs
from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger

from mta.address import PathError
from mta.cleanup import Origin
from mta.maillog import sanitize
from mta.queue import fileformat
from mta.queue.fileformat import CorruptQueueFile
from mta.queue.queueid import isValidQueueId
from mta.queue.store import QueueWriteError

log = Logger()

POLL_INTERVAL = 1.0  # seconds between scans of an idle maildrop/
BATCH_SIZE = 100  # files per tick
CHUNK_SIZE = 256 * 1024  # bytes read per thread job
RETRY_DELAY = 60.0  # seconds before a file that failed for a passing reason is tried again
STALE_TEMPORARY = 86400.0  # age after which a QUEUEID.tmp file is garbage

TEMPORARY_NAME = re.compile(r"[0-9A-Za-z]{14}\.tmp")


def listMaildrop(directory, now, staleAge=STALE_TEMPORARY):
    """
    Blocking: (queue ids in C{directory}, sorted; names of temporary files
    last changed more than C{staleAge} seconds before C{now}).
    """
    ready, stale = [], []
    with os.scandir(directory) as entries:
        for entry in entries:
            name = entry.name
            if isValidQueueId(name):
                ready.append(name)
            elif TEMPORARY_NAME.fullmatch(name):
                try:
                    if now - entry.stat(follow_symlinks=False).st_mtime > staleAge:
                        stale.append(name)
                except OSError:
                    pass
    ready.sort()
    stale.sort()
    return ready, stale


def openSubmission(path):
    """
    Blocking: open and parse the maildrop file C{path}; (file object at
    the start of the content, its stat, the QueueFile).  CorruptQueueFile
    for a damaged file, a symbolic link or anything but a regular file;
    OSError if it cannot be read (FileNotFoundError: it is gone).
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise CorruptQueueFile("is a symbolic link") from None
        raise
    f = open(fd, "rb")
    try:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise CorruptQueueFile("not a regular file")
        queueFile = fileformat.parseQueueFile(f)
        f.seek(queueFile.contentOffset)
    except BaseException:
        f.close()
        raise
    return f, st, queueFile


def rewriteEnvelope(envelope, rewriting):
    """
    (sender, recipients) of C{envelope} from a maildrop file, rewritten in
    the local context of C{rewriting} (an mta.rewrite.AddressRewriting), or
    (None, why it cannot be queued).
    """
    if not envelope.recipients:
        return None, "no recipients"
    try:
        sender = rewriting.envelopeAddress(envelope.sender, allowNull=True, smtputf8=envelope.smtputf8)
    except PathError as e:
        return None, f"bad sender address: {e}"
    recipients = []
    for recipient in envelope.recipients:
        try:
            address = rewriting.envelopeAddress(recipient.address, allowNull=False, smtputf8=envelope.smtputf8)
        except PathError as e:
            return None, f"bad recipient address: {e}"
        recipients.append(recipient if address == recipient.address else attrs.evolve(recipient, address=address))
    return sender, tuple(recipients)


class Pickup:
    """
    The pickup service of C{store} (a QueueStore, whose thread pool does
    the file work), queueing through C{cleanup} (an mta.cleanup.Cleanup,
    [main]'s: it has the settings of the Received: header, the header
    cleanup and the rewriting); C{reactor}: the clock (callLater,
    seconds); C{maillogs}: program -> MailLogger.
    """

    def __init__(self, store, cleanup, reactor, maillogs, *, interval=POLL_INTERVAL, batchSize=BATCH_SIZE):
        self.store = store
        self.cleanup = cleanup
        self.reactor = reactor
        self.maillog = maillogs("pickup")
        self.interval = interval
        self.batchSize = batchSize
        self.rewrite = cleanup.rewriting  # local submissions: always the local context
        # What the Received: header names (the cleanup's settings): "by $myhostname ($mail_name, ...)".
        self.hostname = cleanup.settings.hostname
        self.mailName = cleanup.settings.mailName
        self._running = False
        self._call = None
        self._busy = None  # the Deferred of the scan in progress
        self._pending = collections.deque()  # names from the last listing, not yet taken
        self._retryAt = {}  # name -> clock time before which it is not tried again
        self._skip = set()  # names queued but not removable: never taken again by this process
        self.picked = 0  # messages queued (statistics, tests)

    # -- life cycle ---------------------------------------------------------------

    def start(self):
        """Scan now, then every C{interval} seconds."""
        self._running = True
        self._schedule(0)

    def stop(self):
        """Stop scanning; a Deferred that fires when the file in hand is done."""
        self._running = False
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
        if self._busy is None:
            return succeed(None)
        done = Deferred()
        self._busy.addBoth(lambda result: (done.callback(None), result)[1])
        return done

    def _schedule(self, delay):
        if self._running and self._call is None and self._busy is None:
            self._call = self.reactor.callLater(delay, self._tick)

    def _tick(self):
        self._call = None
        d = self._busy = Deferred.fromCoroutine(self.scan())

        def failed(failure):
            log.failure("pickup: scan of maildrop failed", failure)
            return False

        def done(more):
            self._busy = None
            self._schedule(0 if more else self.interval)

        d.addErrback(failed).addCallback(done)

    # -- scanning -----------------------------------------------------------------

    def _inThread(self, f, *args):
        return self.store.inPool(f, *args)

    async def scan(self):
        """One tick: pick up at most C{batchSize} files; True if more are waiting."""
        directory = self.store.queuePath("maildrop")
        if not self._pending:
            now = self.reactor.seconds()
            try:
                ready, stale = await self._inThread(listMaildrop, directory, now)
            except OSError as e:
                log.error("pickup: cannot list {path}: {error}", path=directory, error=e.strerror or str(e))
                return False
            for name in stale:
                await self._removeStale(name)
            present = set(ready)
            self._retryAt = {n: t for n, t in self._retryAt.items() if n in present}
            self._skip &= present
            self._pending.extend(n for n in ready if n not in self._skip and self._retryAt.get(n, 0) <= now)
        removed = 0
        taken = 0
        while self._pending and taken < self.batchSize and self._running:
            name = self._pending.popleft()
            taken += 1
            if await self._pickUp(name):
                removed += 1
        if removed:
            try:
                await self._inThread(self.store.fs.fsyncDirectory, directory)
            except OSError as e:
                log.error("pickup: cannot fsync {path}: {error}", path=directory, error=e.strerror or str(e))
        return bool(self._pending)

    async def _removeStale(self, name):
        path = os.path.join(self.store.queuePath("maildrop"), name)
        try:
            await self._inThread(os.unlink, path)
        except FileNotFoundError:
            return
        except OSError as e:
            log.error("pickup: cannot remove {path}: {error}", path=path, error=e.strerror or str(e))
            return
        self.maillog.emit(f"warning: removed stale temporary file maildrop/{name}")

    # -- one file -----------------------------------------------------------------

    async def _pickUp(self, name):
        """Queue the maildrop file C{name}; True if it was removed from maildrop/."""
        path = self.store.queuePath("maildrop", name)
        try:
            f, st, queueFile = await self._inThread(openSubmission, path)
        except FileNotFoundError:
            self._retryAt.pop(name, None)
            return False
        except CorruptQueueFile as e:
            await self._setAside(name, str(e))
            return False
        except OSError as e:
            self._later(name, f"cannot read maildrop file: {e.strerror or e}")
            return False
        try:
            return await self._inject(name, path, f, st, queueFile)
        finally:
            f.close()

    async def _inject(self, name, path, f, st, queueFile):
        envelope = queueFile.envelope
        sender, recipients = rewriteEnvelope(envelope, self.rewrite)
        if sender is None:
            await self._setAside(name, recipients)
            return False
        now = self.reactor.seconds()
        arrival = min(envelope.arrival_time, now)
        try:
            message = self.cleanup.open(Origin.localSubmission(st.st_uid, st.st_mtime), sender, recipients,
                                        arrival=arrival)
        except QueueWriteError as e:
            self._later(name, str(e))
            return False
        queueId = message.queueId
        crc, remaining = 0, queueFile.contentLength
        try:
            while remaining:
                chunk = await self._inThread(f.read, min(CHUNK_SIZE, remaining))
                if not chunk:
                    raise CorruptQueueFile("truncated in the content")
                crc = zlib.crc32(chunk, crc)
                remaining -= len(chunk)
                message.write(chunk)
            if crc != queueFile.contentCrc32:
                raise CorruptQueueFile("content checksum mismatch")
            refusal = message.finish()
        except CorruptQueueFile as e:
            message.abort()
            await self._setAside(name, str(e))
            return False
        except OSError as e:
            message.abort()
            self._later(name, f"cannot read maildrop file: {e.strerror or e}")
            return False
        except BaseException:
            message.abort()
            raise
        if refusal is not None:  # too many hops
            message.abort()
            await self._setAside(name, "too many hops (Received: headers), a mail loop")
            return False

        def announce(queueId):
            self.maillog.emit(f"uid={st.st_uid} from=<{sanitize(envelope.sender)}>", queue_id=queueId,
                              sender=envelope.sender)

        try:
            await message.commit(body=envelope.body, smtputf8=envelope.smtputf8, ret=envelope.ret,
                                 envid=envelope.envid, announce=announce)
        except QueueWriteError as e:
            self._later(name, f"cannot queue: {e}")
            return False
        self.picked += 1
        self._retryAt.pop(name, None)
        try:
            await self._inThread(self.store.fs.unlink, path)
        except FileNotFoundError:
            return True
        except OSError as e:
            self._skip.add(name)
            self.maillog.emit(
                f"warning: {name}: queued as {queueId} but cannot remove maildrop/{name}: "
                f"{sanitize(e.strerror or e)}; remove it by hand, or it is queued again at the next start"
            )
            return False
        return True

    def _later(self, name, reason):
        self._retryAt[name] = self.reactor.seconds() + RETRY_DELAY
        self.maillog.emit(f"warning: maildrop/{name}: {sanitize(reason)}; trying again in {RETRY_DELAY:g}s")

    async def _setAside(self, name, reason):
        self._retryAt.pop(name, None)
        src = self.store.queuePath("maildrop", name)
        dst = self.store.queuePath("corrupt", name)
        try:
            await self._inThread(os.rename, src, dst)
        except FileNotFoundError:
            return
        except OSError as e:
            self._skip.add(name)
            self.maillog.emit(
                f"warning: maildrop/{name}: {sanitize(reason)}; cannot move it to corrupt/: {sanitize(e.strerror or e)}"
            )
            return
        self.maillog.emit(f"warning: maildrop/{name}: {sanitize(reason)}; moved to corrupt/")
