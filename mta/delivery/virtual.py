"""mta.delivery.virtual - virtual(8): deliver to Maildirs and mbox files named by lookup tables.

VirtualTransport delivers each recipient of a request, one at a time, as
Postfix's virtual(8) delivery agent:

MAILBOX LOCATION
    The recipient address, folded to lower case, is looked up in
    virtual_mailbox_maps in virtual(8)'s order: user+extension@domain (when
    recipient_delimiter is set and the address has an extension), then
    user@domain, then @domain (a catch-all).  Each key is tried in every
    table before the next key (Postfix's maps_find()); the extension is not
    carried into the result.  The mailbox is
    $virtual_mailbox_base/result: a Maildir when the result ends in "/",
    else an mbox file.  See mta.delivery.mailbox for what is written and
    how.  A recipient not found bounces with 5.1.1 'unknown user:
    "address"' (Postfix's text; smtpd's "User unknown in virtual mailbox
    table" is the SMTP-time form of the same refusal).

MAILBOX OWNERSHIP
    virtual_uid_maps and virtual_gid_maps, searched in the same order, give
    the numeric user and group that own the files and directories made for
    the recipient (mta chowns them; Postfix switches its effective ids).  A
    recipient missing from a map, a uid below virtual_minimum_uid or a gid
    of 0 defers with "4.3.5 mail system configuration error" and a warning.
    Deviation: Postfix requires both maps; here empty maps mean that files
    belong to mta's own user (a daemon that runs as the mail user needs no
    maps).  Without root privileges, the maps can only name mta's own
    user and groups; anything else defers with 4.3.5.

RESULTS
    Delivered: "sent", 2.0.0, "delivered to maildir" or "delivered to
    mailbox", relay "virtual" (the transport's name).  An address
    verification probe (mta.verify) is not delivered: a recipient whose
    mailbox and owner are found is "sent", "delivers to maildir" (or
    "delivers to mailbox"), as Postfix's virtual(8) answers a probe.  A mailbox path that
    would leave the base (absolute, "..", a symbolic link below the base)
    bounces with "5.3.5 mail system configuration error" and a warning.  A
    table that cannot answer now (TableTemporaryError) defers with "4.3.0
    table lookup failure" (Postfix: 4.3.5).  File system errors: see
    mta.delivery.mailbox, .maildir and .mbox.  No per-recipient failure, not even a bug, raises:
    a bug defers that recipient with 4.3.0 and is logged.  The same
    mailbox named for two recipients gets the message twice, as in Postfix.
    The queue manager logs each result; this module logs warnings only.

THREADS
    Table lookups run in the reactor thread (they return Deferreds); all
    file I/O, the reading of the queue file included, runs in the thread
    pool (the reactor's, or the one given), one job per recipient:
    mta.delivery.maildir and mta.delivery.mbox, on top of
    mta.delivery.mailbox.

SECURITY
    Recipient and sender addresses come from the network; they are used
    as lookup keys (compared only) and written into header lines (control
    characters replaced).  Mailbox paths come from the tables: they are
    checked so that no result can leave virtual_mailbox_base, and every
    directory below the base is opened with O_NOFOLLOW (see
    mta.delivery.mailbox).  The tables that name mailboxes and owners are
    as sensitive as the files they point into: protect them as Postfix's
    virtual(8) asks.

CONFIGURATION
    virtual_mailbox_base (empty: every delivery defers, with a warning),
    virtual_mailbox_maps, virtual_uid_maps, virtual_gid_maps (empty),
    virtual_minimum_uid (100), virtual_mailbox_limit (51200000; 0: none; it
    may not be smaller than message_size_limit, as in Postfix),
    virtual_mailbox_lock (fcntl, dotlock), deliver_lock_attempts (20),
    deliver_lock_delay (1s), stale_lock_time (500s),
    strict_mailbox_ownership (yes), virtual_mailbox_follow_symlinks (no;
    mta's own), recipient_delimiter, syslog_name: a
    mta.config.settings.delivery.VirtualSettings (``config.settings.virtual``),
    which load() checks (the limits, a relative base, the lock styles), so
    that a bad value stops the start and mta-config --check.
"""

import re
import socket

from twisted.internet.defer import Deferred, succeed
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger, LogLevel
from zope.interface import implementer

from mta.config import ConfigError
from mta.delivery.mailbox import CONFIGURATION_ERROR, FileSystem, MailboxFailure, MailboxJob, splitMailboxPath
from mta.delivery.maildir import deliverMaildir
from mta.delivery.mbox import deliverMbox
from mta.interfaces import IDeliveryTransport
from mta.maillog import MailLogger, sanitize
from mta.model import RecipientResult
from mta.tables import TableTemporaryError, addressKeys

log = Logger()

_NUMBER = re.compile(r"[0-9]+")


def deliverMailbox(job, fs):
    """
    Deliver one recipient's message as C{job} says (blocking: this runs in
    the thread pool) and return its mta.delivery.mailbox.Outcome; a bug
    raises.
    """
    try:
        return (deliverMaildir if job.maildir else deliverMbox)(fs, job)
    except MailboxFailure as e:
        return e.outcome


class _Deferral(Exception):
    """A recipient's delivery ends before any file I/O."""

    def __init__(self, status, dsn, text, warning=None):
        super().__init__(text)
        self.status, self.dsn, self.text, self.warning = status, dsn, text, warning


async def findAddress(tables, address, delimiter):
    """
    The first value for C{address} in C{tables} (virtual(8)'s order: each
    key in every table before the next key), or None.
    TableTemporaryError propagates.
    """
    for key in addressKeys(address, delimiter, local=False):
        for table in tables:
            value = await table.lookup(key)
            if value is not None:
                return value
    return None


@implementer(IDeliveryTransport)
class VirtualTransport:
    """
    virtual(8).  C{settings} is a mta.config.settings.delivery.VirtualSettings
    (``config.settings.virtual``: the base, limits, locks, ownership rules
    and delimiter, checked at load); C{mailboxMaps}, C{uidMaps},
    C{gidMaps} are the opened tables, sequences of ILookupTable;
    C{clock} is the reactor (seconds() and callFromThread();
    getThreadPool() unless C{threadpool} is given); C{fileSystem} replaces
    the system calls (mta.delivery.mailbox.FileSystem).

    @ivar settings: the VirtualSettings; base, minimumUid, mailboxLimit,
        delimiter, lockStyles, lockAttempts, lockDelay, staleLockTime,
        strictOwnership and followSymlinks are its values.
    """

    def __init__(self, settings, *, mailboxMaps, clock, uidMaps=(), gidMaps=(), name="virtual", threadpool=None,
                 fileSystem=None, hostname=None, maillog=None):
        problem = settings.mailboxLimitProblem()
        if problem is not None:  # reachable only through transport_maps: refused at start, as virtual(8)
            raise ConfigError(problem)
        self.settings = settings
        self.base = settings.base
        self.mailboxMaps = tuple(mailboxMaps)
        self.uidMaps = tuple(uidMaps)
        self.gidMaps = tuple(gidMaps)
        self.minimumUid = settings.minimumUid
        self.mailboxLimit = settings.mailboxLimit
        self.delimiter = settings.delimiter
        self.lockStyles = tuple(settings.lockStyles)
        self.lockAttempts = settings.lockAttempts
        self.lockDelay = settings.lockDelay
        self.staleLockTime = settings.staleLockTime
        self.strictOwnership = settings.strictOwnership
        self.followSymlinks = settings.followSymlinks
        self.name = name
        self.clock = clock
        self._threadpool = threadpool
        self.fileSystem = fileSystem if fileSystem is not None else FileSystem()
        self.hostname = hostname if hostname is not None else socket.gethostname()
        self.maillog = maillog if maillog is not None else MailLogger(settings.syslogName, name)

    # -- IDeliveryTransport ------------------------------------------------------

    def deliver(self, request):
        return Deferred.fromCoroutine(self._deliver(request))

    def stop(self):
        return succeed(None)

    # -- inside ----------------------------------------------------------------

    def _pool(self):
        if self._threadpool is None:
            self._threadpool = self.clock.getThreadPool()
        return self._threadpool

    def _warn(self, request, text):
        self.maillog.emit(f"warning: {sanitize(text)}", request.queue_id, LogLevel.warn)

    def _result(self, recipient, status, dsn, text):
        return RecipientResult(recipient.index, status, dsn, text, relay=self.name)

    async def _deliver(self, request):
        results = []
        for recipient in request.recipients:
            try:
                results.append(await self._deliverOne(request, recipient))
            except _Deferral as e:
                if e.warning:
                    self._warn(request, e.warning)
                results.append(self._result(recipient, e.status, e.dsn, e.text))
            except Exception:
                log.failure("{queue_id}: virtual delivery to {recipient} failed", queue_id=request.queue_id,
                            recipient=sanitize(recipient.address))
                results.append(self._result(recipient, "deferred", "4.3.0", "mail system error (see the log)"))
        return results

    async def _deliverOne(self, request, recipient):
        address = recipient.address
        if not self.base.startswith("/"):
            raise _Deferral("deferred", "4.3.5", CONFIGURATION_ERROR,
                            f"virtual_mailbox_base must be an absolute path, not {self.base!r}")
        result = await self._lookup(self.mailboxMaps, address, "virtual_mailbox_maps")
        if result is None:
            raise _Deferral("bounced", "5.1.1", f'unknown user: "{address.lower()}"')
        try:
            components, maildir = splitMailboxPath(result)
        except ValueError as e:
            raise _Deferral("bounced", "5.3.5", CONFIGURATION_ERROR,
                            f"recipient {address}: mailbox path {result!r} in virtual_mailbox_maps {e}") from None
        uid = await self._owner(self.uidMaps, address, "virtual_uid_maps", "uid", self.minimumUid)
        gid = await self._owner(self.gidMaps, address, "virtual_gid_maps", "gid", 1)
        if request.envelope.probe:  # address verification (mta.verify): the mailbox is known; nothing is written
            return self._result(recipient, "sent", "2.0.0", "delivers to maildir" if maildir else "delivers to mailbox")
        job = MailboxJob(
            base=self.base,
            components=components,
            maildir=maildir,
            sender=request.envelope.sender,
            recipient=address,
            original=recipient.original or "",
            contentPath=request.path,
            contentOffset=request.content_offset,
            contentLength=request.content_length,
            now=self.clock.seconds(),
            uid=uid,
            gid=gid,
            limit=self.mailboxLimit,
            lockStyles=self.lockStyles,
            lockAttempts=self.lockAttempts,
            lockDelay=self.lockDelay,
            staleLockTime=self.staleLockTime,
            strictOwnership=self.strictOwnership,
            followSymlinks=self.followSymlinks,
            hostname=self.hostname,
        )
        outcome = await deferToThreadPool(self.clock, self._pool(), deliverMailbox, job, self.fileSystem)
        if outcome.warning:
            self._warn(request, f"recipient {address}: {outcome.warning}")
        return self._result(recipient, outcome.status, outcome.dsn, outcome.text)

    async def _lookup(self, tables, address, parameter):
        try:
            return await findAddress(tables, address, self.delimiter)
        except TableTemporaryError as e:
            raise _Deferral("deferred", "4.3.0", "table lookup failure",
                            f"recipient {address}: {parameter} lookup failed: {e}") from None

    async def _owner(self, tables, address, parameter, what, minimum):
        """The uid or gid for C{address}, or None when the maps are empty."""
        if not tables:
            return None
        value = await self._lookup(tables, address, parameter)
        if value is None:
            raise _Deferral("deferred", "4.3.5", CONFIGURATION_ERROR,
                            f"recipient {address}: not found in {parameter}")
        text = value.strip()
        if not _NUMBER.fullmatch(text) or int(text) < minimum:
            raise _Deferral("deferred", "4.3.5", CONFIGURATION_ERROR,
                            f"recipient {address}: bad {what} {value!r} in {parameter}"
                            + (f" (below virtual_minimum_uid {minimum})" if what == "uid" else ""))
        return int(text)


def makeVirtualTransport(name, settings, context):
    """
    The plugin's makeTransport: a VirtualTransport from C{settings} (a
    VirtualSettings, checked at load: mta.config.settings.delivery), its
    tables opened with the context's Tables registry.  An empty
    virtual_mailbox_base is not an error (Postfix's default is empty and
    the transport may go unused): each delivery then defers.
    """
    tables = context.tables
    return VirtualTransport(
        settings,
        mailboxMaps=[tables.open(spec) for spec in settings.mailboxMaps],
        uidMaps=[tables.open(spec) for spec in settings.uidMaps],
        gidMaps=[tables.open(spec) for spec in settings.gidMaps],
        name=name,
        clock=context.clock,
        maillog=MailLogger(settings.syslogName, name),
    )
