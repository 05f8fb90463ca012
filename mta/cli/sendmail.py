"""mta.cli.sendmail - mta-sendmail, the sendmail(1) interface: local submission via maildrop/.

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

    The deposit is atomic: the file is written as maildrop/QUEUEID.tmp
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
    queue_directory, myorigin, message_size_limit; with -bs also the smtpd
    parameters (mta.smtpd.factory) of [main].

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
import email.charset
import errno
import io
import os
import pwd
import re
import signal
import stat
import sys
import time
import zlib

import attrs

from mta.address import PathError, formatAddress, parsePath
from mta.config import loader as configLoader
from mta.maillog import sanitize
from mta.model import NULL_SENDER, Address, Envelope, Recipient
from mta.queue import fileformat, queueid
from mta.queue.queueid import temporaryName
from mta.queue.files import FileSystem, QueueWriteError, _writeAll

PROG = "mta-sendmail"

EX_OK = 0
EX_USAGE = 64
EX_DATAERR = 65
EX_OSERR = 71
EX_TEMPFAIL = 75
EX_CONFIG = 78

READ_SIZE = 65536
PIECE = 65536  # the most of one unfinished line held in memory
WRITE_BUFFER_SIZE = 65536

USAGE = f"""\
usage: {PROG} [-C FILE] [-t] [-i | -oi] [-f SENDER] [-F FULLNAME] [-N DSN] [-V ENVID]
                    [-B 7BIT|8BITMIME] [RECIPIENT...] < message
       {PROG} [-C FILE] -bs | -bp | -q

The sendmail(1) interface of mta: the message on standard input is put in
$queue_directory/maildrop/, where the daemon's pickup service queues it (the
daemon need not be running).

options (as in Postfix's sendmail(1)):
  -t           take the recipients from the To:, Cc: and Bcc: headers too,
               and remove the Bcc: header
  -i, -oi      a line with a single '.' does not end the message
  -f SENDER    the envelope sender address (-f '<>': the null sender)
  -F FULLNAME  the sender's full name, for a From: header that is added
  -N DSN       never, or a list of success, failure, delay (DSN NOTIFY)
  -V ENVID     the DSN envelope id
  -B TYPE      7BIT or 8BITMIME
  -C FILE, --config FILE
               the configuration file (default: $MTA_CONFIG, else
               /etc/mta/mta.ini, else the embedded defaults)
  -bs          speak SMTP on standard input and output
  -bp          list the mail queue (as mta-queue list)
  -q           attempt delivery of the deferred mail now (as mta-queue flush)
  -h, --help   show this help and exit
Other Sendmail options are ignored where Postfix ignores them.

The configuration: -C FILE, else $MTA_CONFIG, else /etc/mta/mta.ini if it
exists, else the embedded defaults.  mta-sendmail never creates the queue.

exit status: 0 queued, 64 usage or address error, 75 temporary failure
(the message was not queued: try again later), 78 no usable configuration
(the message was not queued: the mail system is not set up for this program).
"""


class Exit(Exception):
    """Stop with C{status}; C{message} (one line) goes to stderr."""

    def __init__(self, status, message=None):
        super().__init__(message)
        self.status = status
        self.message = message


class DepositError(Exception):
    """The message could not be put in maildrop/; str() says why."""


# -- options --------------------------------------------------------------------------


@attrs.define
class Options:
    mode: str = "enqueue"  # enqueue, stand-alone, mailq, flush, newaliases, ignore, help
    config: str | None = None
    extract: bool = False
    dotEnds: bool = True  # Postfix's SM_FLAG_AEOF: a lone "." ends the input
    sender: str | None = None
    fullName: str | None = None
    body: str | None = None
    notify: tuple = ()
    envid: str | None = None
    recipients: list = attrs.Factory(list)
    warnings: list = attrs.Factory(list)


_WITH_ARGUMENT = frozenset("ABCFLNORVXbefhopqr")  # Postfix: "A:B:C:F:GIL:N:O:R:UV:X:b:ce:f:h:imno:p:r:q:tvx"
_WITHOUT_ARGUMENT = frozenset("GIUcimntvx")
_NOTIFY = ("SUCCESS", "FAILURE", "DELAY")


def parseNotify(value):
    """-N's value as a NOTIFY tuple, or None if it is not valid."""
    items = [item.strip().upper() for item in re.split(r"[\s,]+", value) if item.strip()]
    if items == ["NEVER"]:
        return ("NEVER",)
    if not items or any(item not in _NOTIFY for item in items):
        return None
    return tuple(dict.fromkeys(items))


def _isVerp(argv, i):
    arg = argv[i]
    if arg.startswith("-XV"):
        return True
    if arg.startswith("-V") and len(arg) == 4:
        return True
    return arg == "-V" and i + 1 < len(argv) and len(argv[i + 1]) == 2


# C0 controls, DEL, C1 controls, and the Unicode line and paragraph separators.
_BAD_ARGUMENT = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_NOT_UTF8 = re.compile("[\ud800-\udfff]")  # os.fsdecode()'s surrogate escapes of bytes that are not UTF-8


def checkArguments(argv):
    """
    Raise Exit(64) if any argument holds a control character or is not
    UTF-8; done on the whole of argv before any of it is parsed.
    """
    for number, arg in enumerate(argv, 1):
        bad = _BAD_ARGUMENT.search(arg) or _NOT_UTF8.search(arg)
        if bad is None:
            continue
        shown = arg[:60].encode("unicode_escape").decode("ascii") + ("..." if len(arg) > 60 else "")
        what = ("bytes that are not UTF-8" if _NOT_UTF8.match(bad.group()) else
                f"the control character {bad.group().encode('unicode_escape').decode('ascii')}")
        raise Exit(EX_USAGE, f"argument {number} ({shown}) contains {what}; refused, nothing was queued")


def parseArguments(argv):
    """Options from C{argv} (checked by checkArguments); raises Exit(64) for what is refused."""
    options = Options()
    if argv in (["-h"], ["--help"]):
        options.mode = "help"
        return options
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--":
            i += 1
            break
        if arg == "--help":
            options.mode = "help"
            return options
        if arg == "--config" or arg.startswith("--config="):
            if arg == "--config":
                if i + 1 >= len(argv):
                    raise Exit(EX_USAGE, "option --config requires an argument")
                options.config = argv[i + 1]
                i += 2
            else:
                options.config = arg.split("=", 1)[1]
                i += 1
            continue
        if not arg.startswith("-") or arg == "-":
            break
        if arg == "-q":  # not getopt-compatible: -q takes an optional argument
            options.mode = "flush"
            i += 1
            continue
        if _isVerp(argv, i):
            raise Exit(EX_USAGE, "VERP (-XV) is not supported")
        j = 1
        while j < len(arg):
            c = arg[j]
            if c in _WITH_ARGUMENT:
                if j + 1 < len(arg):
                    value = arg[j + 1:]
                elif i + 1 < len(argv):
                    i += 1
                    value = argv[i]
                else:
                    raise Exit(EX_USAGE, f"option -{c} requires an argument")
                _option(options, c, value)
                break
            if c in _WITHOUT_ARGUMENT:
                _flag(options, c)
                j += 1
                continue
            raise Exit(EX_USAGE, f"unknown option -{sanitize(c)} (see {PROG} --help)")
        i += 1
    options.recipients = list(argv[i:])
    if options.extract and options.mode != "enqueue":
        raise Exit(EX_USAGE, "-t can be used only in delivery mode")
    if options.recipients and options.mode in ("stand-alone", "mailq", "flush", "newaliases"):
        what = {"stand-alone": "stand-alone mode", "mailq": "display queue mode",
                "flush": "flush queue mode", "newaliases": "alias initialization mode"}[options.mode]
        raise Exit(EX_USAGE, f"{what} requires no recipient")
    return options


def _flag(options, c):
    if c == "I":
        options.mode = "newaliases"
    elif c == "i":
        options.dotEnds = False
    elif c == "t":
        options.extract = True
    elif c == "n":
        raise Exit(EX_USAGE, "-n option not supported")
    # G, U, c, m, v, x: ignored, as in Postfix


def _option(options, c, value):
    if c == "b":
        mode = value[:1]
        if mode == "m":
            options.mode = "enqueue"
        elif mode == "s":
            options.mode = "stand-alone"
        elif mode == "p":
            options.mode = "mailq"
        elif mode == "i":
            options.mode = "newaliases"
        elif mode in ("h", "H"):
            options.mode = "ignore"
        elif mode == "d":
            raise Exit(EX_USAGE, "-bd is not supported: start the daemon with twistd mta")
        elif mode == "v":
            raise Exit(EX_USAGE, "-bv is not supported: mta has no address verification service")
        else:
            raise Exit(EX_USAGE, f"unsupported: -b{sanitize(mode)}")
    elif c == "B":
        if value not in ("7BIT", "8BITMIME"):
            raise Exit(EX_USAGE, "-B option needs 8BITMIME or 7BIT")
        options.body = value
    elif c == "C":
        options.config = value
    elif c == "F":
        options.fullName = value
    elif c in ("f", "r"):
        options.sender = value
    elif c == "N":
        notify = parseNotify(value)
        if notify is None:
            options.warnings.append("bad -N option value -- ignored")
        else:
            options.notify = notify
    elif c == "V":
        if len(value) > 100:
            options.warnings.append("too long -V option value -- ignored")
        elif not value or not all(" " < ch < "\x7f" for ch in value):
            options.warnings.append("bad syntax in -V option value -- ignored")
        else:
            options.envid = value
    elif c == "X":
        raise Exit(EX_USAGE, f"unsupported: -X{sanitize(value[:1])}")
    elif c == "o":
        if value[:1] == "i":
            options.dotEnds = False
        # -oA, -o7, -o8, -om, -odb, -odi, -oem, ...: ignored
    elif c == "q":
        if value[:1].isdigit():
            options.mode = "ignore"  # a queue run interval: Postfix exits 0
        elif value[:1] in ("R", "I"):
            raise Exit(EX_USAGE, f"-q{value[:1]} is not supported (use {PROG} -q to flush the whole queue)")
        else:
            raise Exit(EX_USAGE, f"-q{sanitize(value[:1])} is not implemented")
    # A, L, O, R, e, h, p: ignored, as in Postfix


# -- addresses ------------------------------------------------------------------------

_SPECIALS = frozenset('()<>@,;:\\".[]')
_ATEXT = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!#$%&'*+-/=?^_`{|}~")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _tokens(text):
    """RFC 5322 tokens of C{text}: (kind, text); comments and white space are dropped."""
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c in " \t\r\n":
            i += 1
        elif c == "(":
            depth, i = 1, i + 1
            while i < n and depth:
                if text[i] == "\\":
                    i += 2
                    continue
                depth += {"(": 1, ")": -1}.get(text[i], 0)
                i += 1
        elif c == '"':
            j = i + 1
            while j < n and text[j] != '"':
                j += 2 if text[j] == "\\" else 1
            yield "word", text[i:j + 1]
            i = j + 1
        elif c == "[":
            j = text.find("]", i)
            j = n - 1 if j < 0 else j
            yield "word", text[i:j + 1]
            i = j + 1
        elif c in _SPECIALS:
            yield c, c
            i += 1
        else:
            j = i
            while j < n and text[j] not in _SPECIALS and text[j] not in " \t\r\n":
                j += 1
            yield "word", text[i:j]
            i = j


def extractAddresses(text):
    """
    The addr-specs in the RFC 5322 address list C{text}, in order: the
    part in angle brackets when there is one (a source route dropped),
    else the mailbox's own tokens; display names, comments and group names
    are dropped; empty results (``<>``, ``undisclosed-recipients:;``) too.
    """
    found = []
    phrase, addr, angle = [], None, None

    def flush():
        nonlocal phrase, addr
        spec = addr if addr is not None else phrase
        if spec and spec[0][0] == "@":  # a source route: @a,@b:user@c
            colon = next((k for k, (kind, _) in enumerate(spec) if kind == ":"), None)
            spec = spec[colon + 1:] if colon is not None else []
        # Adjacent words (a phrase, "exa mple") keep their space, so that parsePath refuses them.
        text = "".join((" " if k and spec[k - 1][0] == kind == "word" else "") + value
                       for k, (kind, value) in enumerate(spec))
        if text:
            found.append(text)
        phrase, addr = [], None

    for kind, value in _tokens(text):
        if angle is not None:
            if kind == ">":
                addr, angle = angle, None
            else:
                angle.append((kind, value))
        elif kind == "<":
            angle = []
        elif kind in (",", ";"):
            flush()
        elif kind == ":" and addr is None:
            phrase = []  # a group's display name
        elif kind != ">":
            phrase.append((kind, value))
    if angle is not None:
        addr = angle
    flush()
    return found


def _hasDomain(spec):
    quoted = escaped = False
    for c in spec:
        if escaped:
            escaped = False
        elif c == "\\":
            escaped = True
        elif c == '"':
            quoted = not quoted
        elif c == "@" and not quoted:
            return True
    return False


def canonicalAddress(spec, origin, what):
    """C{spec} (an addr-spec) as an Address, @C{origin} appended to a bare name; Exit(64) if bad."""
    if not _hasDomain(spec):
        spec = f"{spec}@{origin}"
    try:
        return parsePath(f"<{spec}>", allowNull=False, smtputf8=not spec.isascii(), allowPostmaster=False)
    except PathError as e:
        raise Exit(EX_USAGE, f"bad {what} address {sanitize(spec)!r}: {e}") from None


def loginName(uid):
    """The login name of C{uid}; Exit(71) if there is none."""
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        raise Exit(EX_OSERR, f"no login name found for user ID {uid}") from None


def defaultFullName(uid):
    """As Postfix's fullname(): $NAME, else the password file's GECOS name ('&' = login name)."""
    name = os.environ.get("NAME")
    if name is not None:
        return name
    try:
        entry = pwd.getpwuid(uid)
    except KeyError:
        return None
    gecos = entry.pw_gecos.split(",", 1)[0]
    if "&" in gecos:
        gecos = gecos.replace("&", entry.pw_name[:1].upper() + entry.pw_name[1:])
    return gecos


def resolveSender(value, origin, uid):
    """The envelope sender: -f C{value}, or the login name of C{uid}; @C{origin} for bare names."""
    if value is None:
        name = loginName(uid)
        try:
            spec = formatAddress(Address(name, origin))
        except ValueError:
            raise Exit(EX_USAGE, f"bad login name {sanitize(name)!r}") from None
        return canonicalAddress(spec, origin, "sender")
    found = extractAddresses(value)
    if not found:  # "", "<>", "< >"
        return NULL_SENDER
    if len(found) > 1:
        raise Exit(EX_USAGE, f"-f option specified malformed sender: {sanitize(value)!r}")
    return canonicalAddress(found[0], origin, "sender")


def fromHeader(fullName, sender):
    """The From: header for C{fullName} and C{sender}, or None when there is nothing to add."""
    if fullName is None or sender.isNull:
        return None
    name = " ".join(_CONTROL.sub(" ", fullName).split())
    if not name:
        return None
    if not name.isascii():
        phrase = email.charset.Charset("utf-8").header_encode(name)
    elif all(c in _ATEXT or c == " " for c in name):
        phrase = name
    else:
        phrase = '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return f"From: {phrase} <{sender}>\r\n".encode("ascii")


# -- the message ----------------------------------------------------------------------

_HEADER = re.compile(rb"([\x21-\x39\x3b-\x7e]+)[ \t]*:")
_FROM_LINE = re.compile(rb">*From ")
_RECIPIENT_HEADERS = {b"to": False, b"cc": False, b"bcc": False,
                      b"resent-to": True, b"resent-cc": True, b"resent-bcc": True}
_DROPPED_WITH_T = frozenset({b"bcc", b"resent-bcc"})


class MessageReader:
    """
    Turns standard input into queue file content, as Postfix's sendmail
    reads it (see the module docstring).  feed() blocks of input, then
    finish(); C{sink(bytes)} gets the content.  C{done}: a lone "." ended
    the input; C{tooBig}: the content passed C{sizeLimit} (0: no limit) and
    nothing more is written.  With C{extract}, C{recipients} and
    C{resentRecipients} are the values of the recipient headers (str).
    C{addFrom}: a From: header (bytes) to add when the message has none.
    """

    def __init__(self, sink, *, extract=False, dotEnds=True, addFrom=None, sizeLimit=0):
        self._sink = sink
        self.extract = extract
        self.dotEnds = dotEnds
        self.addFrom = addFrom
        self.sizeLimit = sizeLimit
        self.size = 0
        self.eightBit = False
        self.done = False
        self.tooBig = False
        self.sawFrom = False
        self.recipients = []
        self.resentRecipients = []
        self._buffer = bytearray()
        self._out = bytearray()
        self._midLine = False  # the last piece did not end its line
        self._skipFrom = True
        self._inHeaders = True
        self._header = None  # lower-case name of the header being read
        self._keep = True
        self._collect = None  # bytearray: a recipient header being read, with extract
        self._resent = False

    def feed(self, data):
        if self.done or self.tooBig:
            return
        buffer = self._buffer
        buffer += data
        start = 0
        while not self.done and not self.tooBig:
            nl = buffer.find(b"\n", start)
            if nl < 0:
                break
            end = nl
            while end > start and buffer[end - 1] == 0x0D:
                end -= 1
            self._piece(bytes(buffer[start:end]), True)
            start = nl + 1
        del buffer[:start]
        if len(buffer) > PIECE and not self.done and not self.tooBig:
            # A long line: pass on what we have, but keep trailing CRs (a CRLF may be split).
            cut = len(buffer.rstrip(b"\r")) or len(buffer) - 1
            piece = bytes(buffer[:cut])
            del buffer[:cut]
            self._piece(piece, False)
        self._drain()

    def finish(self):
        if not self.done and not self.tooBig:
            if self._buffer:
                line = bytes(self._buffer).rstrip(b"\r")
                self._buffer.clear()
                self._piece(line, True)
            elif self._midLine:
                self._piece(b"", True)
        if self._inHeaders and not self.tooBig:
            self._endHeader()
            self._endHeaders(None)
        self._drain()

    def _drain(self):
        if self._out:
            self._sink(bytes(self._out))
            self._out.clear()

    def _emit(self, data):
        if self.tooBig:
            return
        self.size += len(data)
        if self.sizeLimit and self.size > self.sizeLimit:
            self.tooBig = True
            self._out.clear()
            return
        if not self.eightBit and not data.isascii():
            self.eightBit = True
        self._out += data

    def _piece(self, content, complete):
        first = not self._midLine
        self._midLine = not complete
        if self._skipFrom:
            if first and complete and _FROM_LINE.match(content):
                return
            self._skipFrom = False
        if first and complete and self.dotEnds and content == b".":
            self.done = True
            return
        if self._inHeaders:
            if first and not (content[:1] in (b" ", b"\t") and self._header is not None):
                match = _HEADER.match(content)
                self._endHeader()
                if match:
                    self._startHeader(match.group(1).lower())
                else:
                    self._endHeaders(content)
            if self._inHeaders:
                if self._collect is not None:
                    self._collect += content
                if self._keep:
                    self._emit(content + b"\r\n" if complete else content)
                return
        self._emit(content + b"\r\n" if complete else content)

    def _startHeader(self, name):
        self._header = name
        if name == b"from":
            self.sawFrom = True
        self._keep = not (self.extract and name in _DROPPED_WITH_T)
        if self.extract and name in _RECIPIENT_HEADERS:
            self._collect = bytearray()
            self._resent = _RECIPIENT_HEADERS[name]

    def _endHeader(self):
        if self._collect is not None:
            value = bytes(self._collect).split(b":", 1)[1].decode("utf-8", "replace")
            (self.resentRecipients if self._resent else self.recipients).append(value)
            self._collect = None
        self._header = None
        self._keep = True

    def _endHeaders(self, bodyLine):
        self._inHeaders = False
        if self.addFrom is not None and not self.sawFrom:
            self._emit(self.addFrom)
            if bodyLine:  # a non-empty first body line: keep it out of the header section
                self._emit(b"\r\n")

    def headerRecipients(self):
        """With extract: the addr-specs of Resent-To/Cc/Bcc if there are any, else of To/Cc/Bcc."""
        values = self.resentRecipients or self.recipients
        return [spec for value in values for spec in extractAddresses(value)]


# -- the maildrop file ----------------------------------------------------------------


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
    maildrop/ of the queue of C{config}, or Exit: 78 (EX_CONFIG) when the
    configuration in effect cannot be the right one (no file found, or a
    relative queue_directory) and there is no queue, else 75.
    """
    queueDirectory = config["queue_directory"]
    try:
        return maildropDirectory(queueDirectory)
    except DepositError as e:
        problem = str(e)
        missing = not os.path.lexists(os.path.join(queueDirectory, "maildrop"))
    written = config.main.expanded("queue_directory")
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
    One queue file being written into maildrop/ as QUEUEID.tmp.  write()
    never raises: the first error is kept in C{error} (a DepositError),
    later data is dropped, and commit() raises it.  commit() makes the file
    durable under its queue id; abort() removes it.  Blocking I/O.
    """

    def __init__(self, directory, fs=None, newQueueId=None):
        self.fs = fs if fs is not None else FileSystem()
        self.queueId = (newQueueId or queueid.newQueueId)()
        self.directory = directory
        self.tmpPath = os.path.join(directory, temporaryName(self.queueId))
        self.path = os.path.join(directory, self.queueId)
        self.size = 0
        self.error = None
        self._fd = None
        self._crc = 0
        self._buffer = bytearray(fileformat.fileHeader(0, 0))  # the real header is written at commit
        self._flushed = 0
        self._state = "open"  # -> committed | aborted

    def open(self):
        """Create the temporary file now (it is created at the first flush otherwise)."""
        if self._fd is None:
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
            try:
                self._fd = self.fs.open(self.tmpPath, flags, 0o600)
                mode = depositMode(self.directory)
                if mode != 0o600:
                    os.fchmod(self._fd, mode)  # explicitly: the umask of a cron job may be 077
            except OSError as e:
                raise DepositError(f"cannot create {self.tmpPath}: {e.strerror or e}") from None

    def write(self, data):
        if self._state != "open" or self.error is not None:
            return
        self.size += len(data)
        self._crc = zlib.crc32(data, self._crc)
        self._buffer += data
        if len(self._buffer) >= WRITE_BUFFER_SIZE:
            self._flush()

    def _flush(self):
        try:
            self.open()
            _writeAll(self.fs, self._fd, self._buffer)
            self._flushed += len(self._buffer)
        except DepositError as e:
            self.error = e
        except OSError as e:
            self.error = DepositError(f"cannot write {self.tmpPath}: {e.strerror or e}")
        finally:
            self._buffer = bytearray()

    def commit(self, envelope):
        """Store C{envelope} and make the file durable in maildrop/; the queue id.  DepositError."""
        if self._state != "open":
            raise DepositError(f"{self.queueId}: commit() after {self._state}")
        try:
            record = fileformat.envelopeRecord(attrs.evolve(envelope, size=self.size))
            header = fileformat.fileHeader(self.size, self._crc)
        except ValueError as e:
            self.abort()
            raise DepositError(f"cannot store the envelope: {e}") from None
        headerWritten = self._flushed == 0
        if headerWritten:
            self._buffer[: len(header)] = header
        self._buffer += record
        self._flush()
        if self.error is not None:
            self.abort()
            raise self.error
        fs = self.fs
        renamed = False
        step = "write"
        try:
            if not headerWritten and fs.pwrite(self._fd, header, 0) != len(header):
                raise OSError(errno.EIO, "short write")
            step = "fsync"
            fs.fsync(self._fd)
            step = "close"
            fd, self._fd = self._fd, None
            fs.close(fd)
            step = "rename"
            fs.rename(self.tmpPath, self.path)
            renamed = True
            step = "fsync of maildrop/"
            fs.fsyncDirectory(self.directory)
        except OSError as e:
            self.abort()
            if renamed:
                try:
                    fs.unlink(self.path)
                except OSError:
                    pass
            raise DepositError(f"cannot store the message: {step} failed: {e.strerror or e}") from None
        self._state = "committed"
        return self.queueId

    def abort(self):
        """Forget the message and remove the temporary file; safe at any time before commit."""
        if self._state != "open":
            return
        self._state = "aborted"
        self._buffer = bytearray()
        if self._fd is not None:
            fd, self._fd = self._fd, None
            try:
                self.fs.close(fd)
            except OSError:
                pass
        try:
            self.fs.unlink(self.tmpPath)
        except OSError:
            pass


# -- submission -----------------------------------------------------------------------


def _read(stream):
    read1 = getattr(stream, "read1", None)
    return read1(READ_SIZE) if read1 is not None else stream.read(READ_SIZE)


def submit(options, config, stdin, *, uid=None, fs=None, clock=time.time, newQueueId=None):
    """Read the message from C{stdin} and deposit it; the queue id.  Raises Exit."""
    uid = os.getuid() if uid is None else uid
    origin = config["myorigin"]
    sender = resolveSender(options.sender, origin, uid)
    recipients = [canonicalAddress(spec, origin, "recipient")
                  for arg in options.recipients for spec in _argumentAddresses(arg)]
    if not recipients and not options.extract:
        raise Exit(EX_USAGE, "Recipient addresses must be specified on the command line or via the -t option")
    fullName = options.fullName if options.fullName is not None else defaultFullName(uid)
    maildrop = findMaildrop(config)
    try:
        drop = MaildropFile(maildrop, fs, newQueueId)
        drop.open()
    except DepositError as e:
        raise Exit(EX_TEMPFAIL, f"{e}; the message was not queued") from None
    try:
        reader = MessageReader(drop.write, extract=options.extract, dotEnds=options.dotEnds,
                               addFrom=fromHeader(fullName, sender), sizeLimit=config["message_size_limit"])
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
                                    f"({config['message_size_limit']} bytes); the message was not queued")
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


# -- stand-alone SMTP (-bs) -----------------------------------------------------------


class _SessionMessage:
    """A MaildropFile as the SMTP server's queue message (mta.queue.store.IncomingMessage)."""

    def __init__(self, drop):
        self._drop = drop
        self.queueId = drop.queueId

    @property
    def size(self):
        return self._drop.size

    def write(self, data):
        self._drop.write(data)

    def commit(self, envelope, queue="incoming"):
        from twisted.internet.defer import fail, succeed

        try:
            return succeed(self._drop.commit(envelope))
        except DepositError as e:
            return fail(QueueWriteError(str(e)))

    def abort(self):
        self._drop.abort()


class MaildropStore:
    """What the SMTP server needs of a QueueStore, for -bs: every message becomes a maildrop file."""

    def __init__(self, queueDirectory, fs=None, newQueueId=None):
        self.directory = queueDirectory
        self.fs = fs
        self._newQueueId = newQueueId

    def newMessage(self):
        try:
            return _SessionMessage(MaildropFile(maildropDirectory(self.directory), self.fs, self._newQueueId))
        except DepositError as e:
            raise QueueWriteError(str(e)) from None

    def freeSpace(self):
        st = os.statvfs(self.directory)
        return st.f_bavail * st.f_frsize


STANDALONE_OVERRIDES = {
    "smtpd_recipient_restrictions": "",  # an empty list permits
    "smtpd_reject_unlisted_recipient": "no",
    "smtpd_forbid_unauth_pipelining": "no",
    "smtpd_forbid_bare_newline": "normalize",
    "smtpd_client_connection_count_limit": "0",
    "postscreen_greet_wait": "0s",
}


def standaloneParameters(main):
    """The [main] scope with the access controls of stand-alone mode turned off."""
    from mta.config.loader import Entry, Location, Scope

    where = f"{PROG} -bs"
    entries = [Entry(name, value, Location(where, 0, "stand-alone", name)) for name, value in STANDALONE_OVERRIDES.items()]
    scope = Scope(entries, parent=main, origin=where)
    scope.check()
    return scope


def standaloneServer(config, reactor, tables, store):
    """An SMTP server protocol for one stand-alone session (-bs); connect it to stdio."""
    from twisted.internet.address import IPv4Address

    from mta.smtpd.factory import SMTPServerFactory
    from mta.smtpd.protocol import SMTPServer

    local = IPv4Address("TCP", "127.0.0.1", 0)

    class LocalTransport:
        """Standard input and output, as seen from a client at 127.0.0.1."""

        def __init__(self, transport):
            self._transport = transport

        def __getattr__(self, name):
            return getattr(self._transport, name)

        def getPeer(self):
            return local

        def getHost(self):
            return local

    class StandaloneServer(SMTPServer):
        lost = None  # a Deferred fired when the session ends

        def connectionMade(self):
            self.transport = LocalTransport(self.transport)
            super().connectionMade()
            self.clientName = "localhost"  # as Postfix's smtpd names a client that is not on a socket
            self.client = "localhost[127.0.0.1]"

        def connectionLost(self, reason):
            super().connectionLost(reason)
            if self.lost is not None and not self.lost.called:
                self.lost.callback(None)

    factory = SMTPServerFactory.fromScope(standaloneParameters(config.main), reactor, store, tables, "sendmail")
    server = StandaloneServer(factory)
    factory.sessions.add(server)
    return server


def runStandalone(config, stderr):
    """-bs: an SMTP session on standard input and output; the exit status."""
    from twisted.internet import defer, stdio, task
    from twisted.logger import (
        FilteringLogObserver,
        LogLevel,
        LogLevelFilterPredicate,
        globalLogBeginner,
        textFileLogObserver,
    )

    from mta.config import ConfigError, openTables
    from mta.tables import Tables

    globalLogBeginner.beginLoggingTo(
        [FilteringLogObserver(textFileLogObserver(stderr), [LogLevelFilterPredicate(LogLevel.warn)])],
        redirectStandardIO=False,
    )

    def run(reactor):
        findMaildrop(config)  # before the greeting: a session with no queue would only answer 451s
        tables = Tables(reactor)
        try:
            openTables(config, tables)
        except ConfigError as e:
            raise Exit(EX_TEMPFAIL, str(e)) from None
        server = standaloneServer(config, reactor, tables, MaildropStore(config["queue_directory"]))
        server.lost = defer.Deferred()
        stdio.StandardIO(server, reactor=reactor)
        return server.lost

    status = [EX_OK]

    def react(reactor):
        d = defer.maybeDeferred(run, reactor)

        def failed(failure):
            if failure.check(Exit):
                status[0] = failure.value.status
                stderr.write(f"{PROG}: fatal: {failure.value.message}\n")
                return None
            return failure

        return d.addErrback(failed)

    try:
        task.react(react)
    except SystemExit as e:
        return status[0] if e.code in (0, None) else (e.code if isinstance(e.code, int) else 1)
    return status[0]


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


if __name__ == "__main__":
    raise SystemExit(main())
