"""mta.cli.sendmail - mta-sendmail, the sendmail(1) interface: local submission via maildrop/.

The package, one module a job (main() stays mta.cli.sendmail:main, the
console script):
    options.py      the command line: options, their checks, exit statuses
    addresses.py    RFC 5322 address lists (arguments, -t headers), the sender
    message.py      reading the message from standard input; the -t header reader
    maildrop.py     finding maildrop/; one deposit, by the queue's one writer
                    (mta.queue.files.QueueFileWriter)
    standalone.py   -bs, the SMTP server on standard input and output
    __init__.py     main() and the submission; imports neither Twisted nor
                    the logger (mta-sendmail starts in about the time Python
                    itself takes: only -bs loads Twisted)

SYNOPSIS
    mta-sendmail [-C FILE] [-t] [-i | -oi] [-f SENDER] [-F FULLNAME] [-N DSN] [-V ENVID]
                 [-B 7BIT|8BITMIME] [RECIPIENT...] < message
    mta-sendmail [-C FILE] -bs | -bp | -q

DESCRIPTION
    As Postfix's sendmail(1) with postdrop(1): the message is read from
    standard input and deposited as one complete queue file (the format of
    mta.queue.fileformat) in $queue_directory/maildrop/, where the daemon's
    pickup service (mta.queue.pickup) takes it into the queue.  This works
    while the daemon is down: the mail waits in maildrop/ until it starts.

    mta-sendmail never creates a queue: maildrop/ must exist (the daemon
    creates it at its first start, or the administrator does, see the
    README's Deployment section).  When it does not, mta-sendmail reads
    nothing and exits non-zero with one line naming the directory and the
    configuration in effect, so that cron, PHP or mailx report the failure
    instead of leaving mail in a directory nothing reads.  The configuration
    is found as every mta program finds it (mta.config.findConfig): -C,
    else $MTA_CONFIG, else /etc/mta/mta.ini when it exists, else the
    embedded defaults.  A relative queue_directory (the embedded default
    is var/spool/mta, for ``twistd -n mta`` in a scratch directory) is taken
    from the current directory, which for cron or a web server is not the
    daemon's: it only works when mta-sendmail runs where the daemon was
    started.

    The deposit is atomic, made by the queue's own writer (the code the
    store uses for incoming/): the file is written as maildrop/QUEUEID.tmp
    (O_EXCL, mode 0600; 0644 when root submits into a queue that belongs to
    another user, see depositMode()), fsynced, renamed to maildrop/QUEUEID (a fresh queue
    id, the only kind of name pickup looks at), and maildrop/ is fsynced;
    only then does mta-sendmail exit 0.  On any failure the temporary file
    is removed and nothing is left where pickup would see it.

    The input, as Postfix's sendmail reads it: leading "From " (and
    ">From ") lines are dropped; line ends are LF or CRLF (carriage returns
    before the LF are dropped, sendmail_fix_line_endings = always) and are
    stored as CRLF; a last line without a line end gets one; without -i a
    line holding a single "." ends the input (the rest is not read).
    Nothing is added to the message, except a From: header when -F (or
    the NAME environment variable, or the user's full name from the password
    file, as Postfix takes it) gives a full name, the sender is not null
    and the message has no From: header: "From: FULLNAME <sender>" (the name
    quoted when it needs quotes, RFC 2047-encoded when it is not ASCII).
    Postfix records the full name in the queue file and its cleanup adds the
    header; mta's queue file has no field for it, so sendmail adds it
    itself, at the end of the header section, where cleanup would.  Every
    other missing header (Message-Id:, Date:, From: without a full name),
    the Received: header and the removal of message_drop_headers are the
    pickup service's work, as in Postfix.

    Addresses (recipients on the command line, -f, and with -t the header
    addresses) are parsed as RFC 5322 address lists, as Postfix parses
    them: "Name <user@example.org>", comments, groups, several addresses in
    one argument.  A bare user name gets @$myorigin appended (Postfix's
    local rewriting).  Each address is then checked by mta.address as an
    SMTP path; a malformed one stops the submission with exit status 64
    (EX_USAGE) and one line on stderr.  The default sender is the invoking
    user's login name @$myorigin.  Duplicate recipients are dropped.

OPTIONS (Postfix's getopt list; option processing stops at the first argument
that is not an option, as Postfix's does)
    -t              extract recipients from To:, Cc: and Bcc: (or, when the
                    message has any Resent-To:/-Cc:/-Bcc:, from those only),
                    in addition to the recipients on the command line; the
                    Bcc: and Resent-Bcc: headers are removed
    -i, -oi         a line with a single "." does not end the input
    -f SENDER, -r SENDER
                    the envelope sender; "", "<>" give the null sender
    -F FULLNAME     the full name for an added From: header (see above)
    -C FILE, --config FILE
                    the configuration file (Postfix's -C; a directory means
                    DIR/mta.ini); default: $MTA_CONFIG, else /etc/mta/mta.ini
                    if it exists, else the embedded defaults, as twistd mta
    -N DSN          NOTIFY for every recipient: never, or a list of success,
                    failure, delay (a bad value is ignored with a warning)
    -V ENVID        the DSN envelope id (ignored with a warning when longer
                    than 100 characters or not printable ASCII)
    -B TYPE         7BIT or 8BITMIME (content with 8-bit bytes is always
                    queued as 8BITMIME)
    -bm             read a message and queue it (the default)
    -bs             speak SMTP on standard input and output (see below)
    -bp             list the queue: runs mta-queue list
    -q              flush the queue: runs mta-queue flush
    -bi, -I         (newaliases) nothing to do: mta reads its alias tables
                    itself; exit 0
    -bh, -bH, -qINTERVAL
                    ignored, exit 0 (as Postfix)
    -Am, -Ac, -c, -e X, -G, -h N, -L X, -m, -O X, -o* (-odb, -odi, -oem, -om,
    -o7, -o8, -oA...), -p X, -R X, -U, -v, -x
                    ignored, as Postfix ignores them
    -h, --help      this help (only as the sole argument: -h N is a hop count)
    Refused with status 64: -bd (start the daemon with twistd mta), -bv
    (mta has no address verification service), -n, -qR, -qI, -XV and
    -V with a two-character value (VERP), -X anything, unknown options.

STAND-ALONE MODE (-bs)
    Runs the SMTP server of mta.smtpd on standard input and output, as
    Postfix runs smtpd(8) stand-alone: each accepted message becomes a
    maildrop file (the same atomic deposit), and "250 ... queued as ID"
    names that file.  The session is that of a client localhost[127.0.0.1]
    with the access controls off, as in Postfix's stand-alone mode:
    smtpd_recipient_restrictions empty (permit everything),
    smtpd_reject_unlisted_recipient = no, smtpd_forbid_unauth_pipelining
    = no (a script may pipe the whole dialogue at once),
    smtpd_forbid_bare_newline = normalize, no connection limits and no
    greeting delay.  The server writes its own Received:
    header and pickup adds its own, as with Postfix; bare user names in
    MAIL FROM and RCPT TO get @$myorigin (mta.rewrite).  Not available in
    -bs: STARTTLS and AUTH (the server offers neither on this channel), and
    the HOLD action of access tables.  Failures and
    warnings of the session go to standard error; the mail log lines of
    the session are not written anywhere (the daemon writes maillog_file).

SECURITY
    Every command-line argument is checked before any of them is parsed:
    one holding a control character (C0, DEL or C1, e.g. CR, LF, NUL or
    TAB), a Unicode line or paragraph separator, or bytes that are not
    UTF-8 is refused with status 64, so that text an application passes
    through (a -f address, a recipient, -F, -V, -C) can never smuggle a
    header line or another envelope address.  (Postfix's sendmail leaves
    this to its cleanup daemon.)

    mta-sendmail is not set-uid or set-gid, so $MTA_CONFIG gives nobody
    more than they have.  The maildrop directory has
    mode 0700, so only the queue's owner and root can submit; Postfix lets
    every user submit through its set-gid postdrop(1), which mta does not
    have (yet).  Everything read is untrusted.  Memory is bounded: input is
    read 64 KiB at a time, a longer line is passed on in pieces of PIECE
    bytes, and only the recipient headers (with -t) are kept while they are
    parsed; the message is bounded by message_size_limit (a longer one exits
    75 and leaves nothing behind).  Addresses go through mta.address, and
    control characters never reach the envelope or an added header.  The
    pickup service parses the file again as untrusted input.

CONFIGURATION
    SendmailSettings (mta.config.settings.cleanup): queue_directory,
    myorigin, message_size_limit; with -bs also the smtpd and cleanup
    parameters of [main].

DEVIATIONS
    Postfix's sendmail exits 75 on every fatal error; mta-sendmail exits 78
    (EX_CONFIG) where retrying cannot help (see EXIT STATUS), and 64 for a
    control character in an argument, which Postfix passes on to cleanup.
    Postfix ignores MAIL_CONFIG in its set-gid postdrop unless the directory
    is listed in alternate_config_directories; mta-sendmail is not set-gid
    and honours $MTA_CONFIG as the invoking user's own choice.  Postfix's
    queue_directory must be absolute; mta's may be relative (see above).

EXIT STATUS
    0 the message is durable in maildrop/ (or the mode's work is done);
    64 (EX_USAGE) bad options or addresses, no recipients, a control
    character in an argument;
    65 (EX_DATAERR) standard input cannot be read;
    71 (EX_OSERR) the invoking user has no login name;
    75 (EX_TEMPFAIL) the right configuration was found but the message
    cannot be stored now: any failure to store it (disk full, I/O error,
    permissions), a message over message_size_limit, SIGHUP, SIGINT or
    SIGTERM before the message is durable (the temporary file is removed),
    a configuration file that cannot be read or has an error (it may be
    being edited), or an absolute queue_directory without maildrop/ (the
    daemon has not been started on it yet); the caller keeps the message
    and may retry, as with Postfix's sendmail, which exits 75 on its fatal
    errors;
    78 (EX_CONFIG) the configuration in effect cannot be the right one, and
    retrying will not help until someone changes it: no configuration file
    was found (no -C, $MTA_CONFIG or /etc/mta/mta.ini) and the embedded
    default queue (relative, var/spool/mta) does not exist in the current
    directory; a relative queue_directory from a file, without maildrop/
    in the current directory; a file named by -C or $MTA_CONFIG that does
    not exist.
    -bp and -q return mta-queue's status.
"""

import contextlib
import io
import os
import signal
import sys
import time

from mta.cli.sendmail import addresses
from mta.cli.sendmail.addresses import (  # noqa: F401 (the package's interface)
    canonicalAddress,
    defaultFullName,
    extractAddresses,
    fromHeader,
    loginName,
    resolveSender,
)
from mta.cli.sendmail.maildrop import (  # noqa: F401
    DepositError,
    MaildropFile,
    depositMode,
    findMaildrop,
    maildropDirectory,
)
from mta.cli.sendmail.message import PIECE, MessageReader  # noqa: F401
from mta.cli.sendmail.options import (  # noqa: F401
    EX_CONFIG,
    EX_DATAERR,
    EX_OK,
    EX_OSERR,
    EX_TEMPFAIL,
    EX_USAGE,
    PROG,
    USAGE,
    Exit,
    Options,
    checkArguments,
    parseArguments,
    parseNotify,
)
from mta.cli.sendmail.standalone import (  # noqa: F401 (Twisted is imported only when -bs runs)
    STANDALONE_OVERRIDES,
    MaildropStore,
    runStandalone,
    standaloneParameters,
    standaloneServer,
)
from mta.maillog import sanitize
from mta.model import Envelope, Recipient

READ_SIZE = 65536


# -- submission -----------------------------------------------------------------------


def _read(stream):
    read1 = getattr(stream, "read1", None)
    return read1(READ_SIZE) if read1 is not None else stream.read(READ_SIZE)


def submit(options, config, stdin, *, uid=None, fs=None, clock=time.time, newQueueId=None):
    """Read the message from C{stdin} and deposit it; the queue id.  Raises Exit."""
    uid = os.getuid() if uid is None else uid
    settings = config.settings.sendmail
    origin = settings.myorigin
    sender = resolveSender(options.sender, origin, uid)
    recipients = [canonicalAddress(spec, origin, "recipient")
                  for arg in options.recipients for spec in _argumentAddresses(arg)]
    if not recipients and not options.extract:
        raise Exit(EX_USAGE, "Recipient addresses must be specified on the command line or via the -t option")
    fullName = options.fullName if options.fullName is not None else addresses.defaultFullName(uid)
    maildrop = findMaildrop(config)
    try:
        drop = MaildropFile(maildrop, fs, newQueueId)
        drop.open()
    except DepositError as e:
        raise Exit(EX_TEMPFAIL, f"{e}; the message was not queued") from None
    try:
        reader = MessageReader(drop.write, extract=options.extract, dotEnds=options.dotEnds,
                               addFrom=fromHeader(fullName, sender), sizeLimit=settings.messageSizeLimit)
        while not reader.done:
            try:
                chunk = _read(stdin)
            except OSError as e:
                raise Exit(EX_DATAERR, f"error reading input: {e.strerror or e}") from None
            if not chunk:
                break
            reader.feed(chunk)
            if reader.tooBig:
                break
            if drop.error is not None:
                raise Exit(EX_TEMPFAIL, f"{drop.error}; the message was not queued")
        reader.finish()
        if reader.tooBig:
            raise Exit(EX_TEMPFAIL, f"message file too big: more than message_size_limit "
                                    f"({settings.messageSizeLimit} bytes); the message was not queued")
        if options.extract:
            recipients += [canonicalAddress(spec, origin, "recipient") for spec in reader.headerRecipients()]
            if not recipients:
                raise Exit(EX_USAGE, "No recipient addresses found in message header")
        unique = list(dict.fromkeys(str(address) for address in recipients))
        smtputf8 = not str(sender).isascii() or not all(address.isascii() for address in unique)
        envelope = Envelope(
            sender=str(sender),
            recipients=tuple(Recipient(address, notify=options.notify) for address in unique),
            arrival_time=clock(),
            client_name="localhost",
            client_address="",
            client_port=0,
            helo="",
            protocol="local",
            body="8BITMIME" if reader.eightBit or options.body == "8BITMIME" else "7BIT",
            smtputf8=smtputf8,
            envid=options.envid,
        )
        try:
            return drop.commit(envelope)
        except DepositError as e:
            raise Exit(EX_TEMPFAIL, f"{e}; the message was not queued") from None
    finally:
        drop.abort()  # does nothing once committed


def _argumentAddresses(arg):
    found = extractAddresses(arg)
    if not found:
        raise Exit(EX_USAGE, f"bad recipient address {sanitize(arg)!r}: no address in it")
    return found


# -- main -----------------------------------------------------------------------------


def loadConfig(path):
    """
    The configuration in effect (mta.config.loadConfig: C{path} from -C,
    else $MTA_CONFIG, ...); Exit(78) when a named file does not exist,
    Exit(75) on any other error.
    """
    from mta.config import ConfigError, ConfigNotFound, loadConfig as load

    try:
        return load(path, checkEndpoints=False)  # listeners are the daemon's business
    except ConfigNotFound as e:
        raise Exit(EX_CONFIG, f"{e}; the message was not queued") from None
    except ConfigError as e:
        raise Exit(EX_TEMPFAIL, str(e)) from None


@contextlib.contextmanager
def _interruptible():
    """SIGHUP, SIGINT and SIGTERM end the submission cleanly: the temporary file is removed, exit 75."""

    def interrupted(signum, frame):
        raise Exit(EX_TEMPFAIL, f"interrupted by signal {signum}; the message was not queued")

    signals = [signal.SIGHUP, signal.SIGINT, signal.SIGTERM]
    try:
        previous = [signal.signal(signum, interrupted) for signum in signals]
    except ValueError:  # not the main thread: leave the signals alone
        yield
        return
    try:
        yield
    finally:
        for signum, handler in zip(signals, previous):
            signal.signal(signum, handler)


def _queueTool(options, command):
    from mta.cli import queue as cliQueue

    return cliQueue.main((["-c", options.config] if options.config else []) + [command])


# Invoked under these names (a link named mailq or newaliases), as Postfix's sendmail.
PROGRAM_NAMES = {"mailq": "-bp", "newaliases": "-I"}


def main(argv=None, *, stdin=None, stdout=None, stderr=None, program=None):
    """
    Run mta-sendmail with C{argv} (default: sys.argv[1:]); return the exit
    status.  C{program} (default: the name it was run as, sys.argv[0]) as
    mailq or newaliases means -bp or -I.
    """
    if program is None:
        program = sys.argv[0] if argv is None and sys.argv else ""
    argv = sys.argv[1:] if argv is None else list(argv)
    stdout = sys.stdout if stdout is None else stdout
    stderr = sys.stderr if stderr is None else stderr
    try:
        checkArguments(argv)
        mode = PROGRAM_NAMES.get(os.path.basename(program))
        options = parseArguments([mode, *argv] if mode else argv)
        for warning in options.warnings:
            stderr.write(f"{PROG}: warning: {warning}\n")
        if options.mode == "help":
            stdout.write(USAGE)
            return EX_OK
        if options.mode in ("ignore", "newaliases"):
            return EX_OK
        if options.mode == "mailq":
            return _queueTool(options, "list")
        if options.mode == "flush":
            return _queueTool(options, "flush")
        config = loadConfig(options.config)
        if options.mode == "stand-alone":
            return runStandalone(config, stderr)
        if stdin is None:
            stdin = sys.stdin.buffer if sys.stdin is not None else io.BytesIO()
        with _interruptible():
            submit(options, config, stdin)
        return EX_OK
    except Exit as e:
        if e.message:
            stderr.write(f"{PROG}: fatal: {e.message}\n")
        return e.status
