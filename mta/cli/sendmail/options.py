"""mta.cli.sendmail.options - mta-sendmail's command line: the options, their checks, the exit statuses.

checkArguments(argv) refuses, before anything is parsed, an argument that
holds a control character or is not UTF-8 (see mta.cli.sendmail,
SECURITY); parseArguments(argv) reads Postfix's sendmail options into an
Options value, refusing what mta does not do (exit status 64, Exit).  The
option list and what each option does are in mta.cli.sendmail (OPTIONS).

SECURITY
    Command-line arguments are untrusted: every one is checked before any
    is parsed, and the messages that quote one escape it.

CONFIGURATION
    None.
"""

import re

import attrs

from mta.maillog import sanitize

PROG = "mta-sendmail"

EX_OK = 0
EX_USAGE = 64
EX_DATAERR = 65
EX_OSERR = 71
EX_TEMPFAIL = 75
EX_CONFIG = 78

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
