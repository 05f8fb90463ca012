"""mta.cli.queue - mta-queue: mailq, postqueue and postsuper for mta.

SYNOPSIS
    mta-queue [-c FILE] status
    mta-queue [-c FILE] list [--json]
    mta-queue [-c FILE] show ID
    mta-queue [-c FILE] flush
    mta-queue [-c FILE] delete|hold|release|requeue ID...|ALL|-

DESCRIPTION
    status      asks the running daemon, through its control socket
                ($queue_directory/private/control), for its pid, version,
                uptime, queue and listeners, and prints one line::

                    mta is running: pid 123, version 0.1.0, up 12s, queue /var/spool/mta,
                        listeners: smtp tcp:port=2525:interface=127.0.0.1

                (on one line).

    list        mailq(1), postqueue -p: reads the queue files itself, as
                Postfix's showq(8) does, so it works whether the daemon runs
                or not (it only reads).  The queues are listed in showq's
                order: maildrop (mail from mta-sendmail that pickup has not
                taken yet), active, incoming, deferred, hold.  The text is
                mailq's::

                    -Queue ID-  --Size-- ----Arrival Time---- -Sender/Recipient-------
                    8DmPKBcDdcVvyF*     1234 Sat Nov 21 07:48:25  alice@example.org
                                                                  bob@example.net

                    8DmPKCqk2aVvyF!      567 Sat Nov 21 07:50:00  MAILER-DAEMON
                    (connect to mx.example.com[192.0.2.1]:25: Connection refused)
                                                                  carol@example.com

                    -- 1 Kbytes in 2 Requests.

                ``*`` marks a message in the active queue, ``!`` one on hold;
                a ``(reason)`` line comes before the recipients deferred for
                it; recipients already delivered or bounced are not shown.
                An empty queue prints ``Mail queue is empty``.  A queue file
                that cannot be read is a line with the error.

                ``--json`` is postqueue -j: one JSON object per line and
                message, with Postfix's members in Postfix's order and
                spacing (src/postqueue/showq_json.c)::

                    {"queue_name": "deferred", "queue_id": "8DmPKCqk2aVvyF", "arrival_time": 1605944400, "message_size": 567, "forced_expire": false, "sender": "MAILER-DAEMON", "recipients": [{"orig_address": "carol@example.com", "address": "carol@example.com", "delay_reason": "connect to ...: Connection refused"}]}

                (on one line).  arrival_time is whole seconds, message_size
                the content bytes, forced_expire always false (mta has no
                postsuper -e), sender "MAILER-DAEMON" for the null sender
                (Postfix's empty_address_recipient), recipients the ones
                still to be delivered, delay_reason only where a delivery
                was deferred.  Strings are escaped as Postfix's
                quote_for_json(): \\b \\f \\n \\r \\t, other control
                characters (and DEL) as \\uXXXX, UTF-8 as it is, text that
                is not UTF-8 as '?'.  A queue file that cannot be read is
                left out with a warning on stderr (showq logs one).  An
                empty queue prints nothing.

    show ID     postcat -q: the envelope (queue, arrival time, size, sender,
                client, recipients with their status and reason) and then
                the content, its CRLF line ends shown as LF.  On a terminal,
                control characters in the content are shown as \\xNN.

    flush       postqueue -f: asks the daemon to try all deferred mail now.
                Like postqueue -f when the mail system is down, it fails
                (exit 1) when the daemon is not running.

    delete, hold, release, requeue
                postsuper -d, -h, -H and -r, on the named queue ids, on ALL
                messages, or (``-``) on the ids read from standard input,
                separated by white space.  delete looks in hold, incoming,
                active and deferred; hold in incoming, active and deferred;
                release in hold; requeue everywhere.  When the daemon runs
                the request goes through the control channel to the queue
                manager (the only writer of the queue; it defers the action
                on a message being delivered until its deliveries end).
                When it does not run (no control socket, or the socket
                refuses connections), mta-queue acts on the files itself
                (mta.queue.tools), holding the control socket's lock so that
                a daemon cannot start meanwhile, and appends the same
                mail-log lines as the daemon (mta/postsuper) to
                $maillog_file.  Either way it prints one line per message
                and a summary, in postsuper's words::

                    mta-queue: 8DmPKBcDdcVvyF: removed
                    mta-queue: Deleted: 1 message

                A named message that is not found is reported on stderr and
                makes the exit status 1.  ALL through the daemon is the ids
                found in the queue directories at that moment; ids go to the
                daemon in batches of BATCH, as an AMP value holds at most
                64 KiB.  A lock left by a daemon that was killed is broken
                (with its socket, which the next start could not bind over).

    Results go to stdout, errors to stderr, one line each; never a
    traceback.

DEVIATIONS
    list --json: mta expands aliases when it routes, not in cleanup, so a
    queue file holds the recipients as they were given: each recipient
    object has that address as both address and orig_address (Postfix
    3.11's orig_address), and the delay_reason of a deferred alias
    expansion.  Recipients that have bounced are left out (Postfix 3.11
    lists them with a bounce_reason until the bounce is written; earlier
    versions leave them out too).
    postsuper writes its per-message lines and summary to stderr and syslog;
    mta-queue prints them on stdout (the daemon, or mta-queue itself when
    the daemon is stopped, writes the mail log) and prints the summary even
    for 0 messages.  postsuper ignores ids that are not found; mta-queue
    names them and exits 1.  flush prints how many deferred messages it
    scheduled; postqueue -f prints nothing.

SECURITY
    The control socket is mode 0600 in a 0700 directory: only the MTA's own
    user (and root) can use the daemon's commands.  Queue ids from the
    command line and from stdin are validated (mta.queue.queueid) before any
    of them is used, and before anything is done; ALL is only accepted
    alone, on the command line.  Queue files are parsed as untrusted input
    (a damaged one is reported, never fatal to a listing), and everything
    printed from them or from the daemon has its control characters
    escaped, except message content written to a pipe or file by show.

CONFIGURATION
    queue_directory (and, when acting on the files, maillog_file,
    syslog_name and myhostname), read from the file that every mta program
    uses (mta.config.findConfig): --config FILE, else $MTA_CONFIG, else
    /etc/mta/mta.ini when it exists, else the embedded defaults.  A
    relative queue_directory is taken from the current directory.  When
    the queue directory does not exist, every command says so, naming the
    configuration in effect, and exits 1.

EXIT STATUS
    0 success; 1 the daemon is not reachable (status, flush), a message was
    not found, a queue file cannot be read or written, or the configuration
    is wrong; 2 usage error (bad options, bad queue ids).
"""

import argparse
import errno
import os
import re
import stat
import sys
import time

from twisted.internet import error as netError

from mta import control
from mta.cli import Done, parseArguments
from mta.config import CONFIG_ENVIRONMENT, DEFAULT_CONFIG, ConfigError, loadConfig
from mta.maillog import sanitize, syslogFormatter
from mta.queue import tools
from mta.queue.fileformat import CorruptQueueFile, parseQueueFile
from mta.queue.queueid import isValidQueueId
from mta.queue.store import QueueStore

PROG = "mta-queue"

TIMEOUT = 10
BATCH = 1000  # queue ids per QueueAction: 16 KiB of the 64 KiB an AMP value may hold

ACTIONS = {
    # command: (log text, summary)
    "delete": ("removed", "Deleted"),
    "hold": ("placed on hold", "Placed on hold"),
    "release": ("released from hold", "Released from hold"),
    "requeue": ("requeued", "Requeued"),
}

ACTION_HELP = {
    "delete": ("delete messages from the queue (postsuper -d)",
               "Delete the named messages (from hold, incoming, active or deferred)."),
    "hold": ("put messages on hold (postsuper -h)",
             "Put the named messages (in incoming, active or deferred) on hold: the queue manager "
             "leaves them alone until they are released."),
    "release": ("release messages from hold (postsuper -H)",
                "Release the named messages from hold; they are tried at once."),
    "requeue": ("requeue messages (postsuper -r)",
                "Put the named messages (in hold, active or deferred) back into incoming, so that "
                "the queue manager routes them again."),
}

HEADER = "-Queue ID-  --Size-- ----Arrival Time---- -Sender/Recipient-------"
MARKS = {"active": "*", "hold": "!"}
LISTING = ("maildrop", "active", "incoming", "deferred", "hold")  # showq's order


class UsageError(Exception):
    """Bad arguments found after parsing (queue ids): exit status 2."""


class NotRunning(Exception):
    """No daemon answers on the control socket: str() says why."""


class Unreachable(Exception):
    """The daemon may be there but cannot be used: str() is the whole message."""


def buildParser():
    parser = argparse.ArgumentParser(
        prog=PROG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Look at and manage the mta mail queue (mailq, postqueue and postsuper).",
        epilog=(
            "The queue commands list, show, flush, delete, hold, release and requeue are\n"
            "postqueue(1) and postsuper(1).  list and show read the queue files, and work\n"
            "whether the daemon runs or not; flush needs the running daemon; delete, hold,\n"
            "release and requeue go through the queue manager, over the control socket\n"
            "($queue_directory/private/control), when the daemon runs, and act on the queue\n"
            "files themselves when it does not.\n"
            "\n"
            "exit status: 0 success, 1 the daemon cannot be reached, a message was not found\n"
            "or the configuration is wrong, 2 usage error."
        ),
    )
    parser.add_argument(
        "-c", "--config", metavar="FILE",
        help=f"the daemon's configuration file, to find queue_directory; default: ${CONFIG_ENVIRONMENT}, "
             f"else {DEFAULT_CONFIG} if it exists, else the embedded defaults",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.add_parser(
        "status", help="is the daemon running? its pid, version, uptime, queue and listeners",
        description="Ask the running daemon for its status and print it on one line.",
    )
    listing = commands.add_parser(
        "list", help="list the queue, as mailq (postqueue -p)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=(
            "List every message in the maildrop, active, incoming, deferred and hold queues, as\n"
            "mailq does.\n"
            "Reads the queue files; works whether the daemon runs or not.\n"
            "'*' after the id: active; '!': on hold.  (reason) lines precede the recipients\n"
            "that were deferred for that reason."
        ),
    )
    listing.add_argument(
        "--json", action="store_true",
        help="print one JSON object per line and message, as postqueue -j: queue_name, queue_id, "
             "arrival_time, message_size, forced_expire, sender, recipients (orig_address, address, "
             "delay_reason)",
    )
    show = commands.add_parser(
        "show", help="print a message's envelope and content (postcat -q)",
        description="Print the envelope (queue, arrival, size, sender, recipients with their "
                    "status) and then the content of one queued message.",
    )
    show.add_argument("queue_id", metavar="ID", help="the queue id")
    commands.add_parser(
        "flush", help="try all deferred mail now (postqueue -f); needs the running daemon",
        description="Ask the running daemon to try all deferred mail now.  Fails (exit 1) "
                    "when the daemon is not running.",
    )
    for action, (summary, description) in ACTION_HELP.items():
        sub = commands.add_parser(
            action, help=summary,
            description=description + "  Through the daemon when it runs, on the queue files when "
                                      "it does not.",
        )
        sub.add_argument(
            "ids", nargs="+", metavar="ID",
            help="queue ids; ALL for every message; - to read ids from standard input",
        )
    return parser


# -- status -----------------------------------------------------------------------------


def formatDuration(seconds):
    """12s, 5m3s, 2h4m, 3d: the largest unit and the next one if not zero."""
    seconds = max(0, int(seconds))
    units = (("d", 86400), ("h", 3600), ("m", 60), ("s", 1))
    for index, (suffix, size) in enumerate(units):
        if seconds >= size or suffix == "s":
            count, rest = divmod(seconds, size)
            text = f"{count}{suffix}"
            if index + 1 < len(units):
                nextSuffix, nextSize = units[index + 1]
                if rest // nextSize:
                    text += f"{rest // nextSize}{nextSuffix}"
            return text


def formatStatus(status):
    """The one line 'mta is running: ...' for a Status response."""
    listeners = ", ".join(sanitize(item) for item in status["listeners"]) or "none"
    return (
        f"mta is running: pid {status['pid']}, version {sanitize(status['version'])}, "
        f"up {formatDuration(status['uptime'])}, queue {sanitize(status['queue_directory'])}, "
        f"listeners: {listeners}"
    )


def _checkSocket(path):
    """NotRunning if there is no control socket at C{path}; Unreachable if it cannot be seen."""
    try:
        os.stat(path)
    except FileNotFoundError:
        raise NotRunning(f"no control socket at {path}") from None
    except OSError as e:
        raise Unreachable(f"mta is not reachable at {path}: {sanitize(e.strerror or e)}") from None


async def connectDaemon(reactor, queueDirectory, connect=control.connect):
    """
    An AMP client connected to the daemon's control socket.  NotRunning when
    no daemon listens (no socket, or a stale one that refuses connections);
    Unreachable for any other failure.
    """
    path = control.socketPath(queueDirectory)
    _checkSocket(path)
    try:
        return await connect(reactor, queueDirectory, timeout=TIMEOUT)
    except netError.ConnectionRefusedError:
        raise NotRunning(f"stale control socket at {path}: connection refused") from None
    except Exception as e:
        _checkSocket(path)  # removed meanwhile: the daemon stopped
        raise Unreachable(f"mta is not reachable at {path}: {_reason(e)}") from None


async def ask(reactor, client, queueDirectory, command, what, **arguments):
    """Send C{command} and return the answer; Unreachable (naming C{what}) on any failure."""
    try:
        d = client.callRemote(command, **arguments)
        d.addTimeout(TIMEOUT, reactor)
        return await d
    except Exception as e:
        raise Unreachable(f"no {what} from mta at {control.socketPath(queueDirectory)}: {_reason(e)}") from None


def hangUp(client):
    if client.transport is not None:
        client.transport.loseConnection()


async def callDaemon(reactor, queueDirectory, command, what, connect=control.connect, **arguments):
    """connectDaemon(), ask() once, hang up."""
    client = await connectDaemon(reactor, queueDirectory, connect)
    try:
        return await ask(reactor, client, queueDirectory, command, what, **arguments)
    finally:
        hangUp(client)


async def status(reactor, queueDirectory, out, err, connect=control.connect, prog=PROG):
    """Print the daemon's status on C{out}; return the exit status.  C{prog}: the name on error lines."""
    try:
        result = await callDaemon(reactor, queueDirectory, control.Status, "status", connect)
    except NotRunning as e:
        err.write(f"{prog}: mta is not running ({e})\n")
        return 1
    except Unreachable as e:
        err.write(f"{prog}: {e}\n")
        return 1
    out.write(formatStatus(result) + "\n")
    return 0


# -- list and show ------------------------------------------------------------------------


def _asctime(seconds, year=False):
    """'Sat Nov 21 07:48:25', local time (ctime(3) without the year unless C{year}), or '?'."""
    try:
        text = time.asctime(time.localtime(seconds))
        return text if year else text[:19]
    except (OverflowError, OSError, ValueError, TypeError):
        return "?"


def _plural(count, word):
    return f"{count} {word}{'' if count == 1 else 's'}"


def readQueue(queueDirectory, now=None):
    """The entries of mta.queue.tools.listMessages, without files that moved meanwhile."""
    store = QueueStore(queueDirectory, None)
    entries = tools.listMessages(store, time.time() if now is None else now, LISTING)
    # A file renamed or removed by the daemon between the directory scan and
    # its reading is not damaged: it is gone from this queue (showq's rule).
    return [e for e in entries if "error" not in e or os.path.lexists(store.queuePath(e["queue"], e["id"]))]


def formatListing(entries):
    """The text of mailq for C{entries} (from readQueue)."""
    if not entries:
        return "Mail queue is empty\n"
    lines = [HEADER]
    total = 0
    for index, entry in enumerate(entries):
        if index:
            lines.append("")
        mark = MARKS.get(entry["queue"], " ")
        if "error" in entry:
            lines.append(f"{entry['id']}{mark} {'?':>8} {'?':19}  (damaged queue file: {sanitize(entry['error'])})")
            continue
        total += entry["size"]
        sender = sanitize(entry["sender"]) if entry["sender"] else "MAILER-DAEMON"
        lines.append(f"{entry['id']}{mark} {entry['size']:>8} {_asctime(entry['arrival_time']):19}  {sender}")
        indent = " " * (len(entry["id"]) + 1 + 1 + 8 + 1 + 19 + 2)  # under the sender
        groups = {}  # reason (None first) -> addresses, in order of first appearance
        for recipient in entry["recipients"]:
            if recipient["status"] in ("sent", "bounced"):
                continue
            reason = recipient["reason"] if recipient["status"] == "deferred" else None
            groups.setdefault(reason, []).append(recipient["address"])
        for reason in sorted(groups, key=lambda r: r is not None):
            if reason is not None:
                lines.append(f"({sanitize(reason)})")
            lines.extend(indent + sanitize(address) for address in groups[reason])
    lines.append("")
    lines.append(f"-- {total // 1024} Kbytes in {_plural(len(entries), 'Request')}.")
    return "\n".join(lines) + "\n"


def listQueue(queueDirectory, out, err, asJson=False, now=None):
    """mta-queue list: print the queue on C{out}; return the exit status."""
    try:
        entries = readQueue(queueDirectory, now)
    except OSError as e:
        err.write(f"{PROG}: cannot read the queue in {sanitize(queueDirectory)}: {_oserror(e)}\n")
        return 1
    if asJson:
        for entry in entries:
            if "error" in entry:
                err.write(f"{PROG}: warning: {entry['queue']}/{entry['id']}: damaged queue file: "
                          f"{sanitize(entry['error'])} -- not listed\n")
        _writeText(out, "".join(formatJson(entry) + "\n" for entry in entries if "error" not in entry))
    else:
        out.write(formatListing(entries))
    return 0


_JSON_ESCAPES = {"\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t", '"': '\\"', "\\": "\\\\"}
_JSON_SPECIAL = re.compile(r'[\x00-\x1f\x7f"\\\ud800-\udfff]')


def _jsonChar(match):
    ch = match.group()
    if ch in _JSON_ESCAPES:
        return _JSON_ESCAPES[ch]
    if "\ud800" <= ch <= "\udfff":  # not UTF-8 (a surrogate escape): printable()'s '?'
        return "?"
    return f"\\u{ord(ch):04X}"


def jsonString(text):
    """C{text} as a JSON string, escaped as Postfix's quote_for_json() and printable(, '?')."""
    return '"' + _JSON_SPECIAL.sub(_jsonChar, str(text)) + '"'


def formatJson(entry):
    """One line of postqueue -j (without the line end) for C{entry} (from readQueue, not damaged)."""
    recipients = []
    for recipient in entry["recipients"]:
        if recipient["status"] in ("sent", "bounced"):
            continue
        text = f'{{"orig_address": {jsonString(recipient["address"])}, "address": {jsonString(recipient["address"])}'
        if recipient["status"] == "deferred" and recipient["reason"]:
            text += f', "delay_reason": {jsonString(recipient["reason"])}'
        recipients.append(text + "}")
    return (
        f'{{"queue_name": {jsonString(entry["queue"])}, "queue_id": {jsonString(entry["id"])}, '
        f'"arrival_time": {int(entry["arrival_time"])}, "message_size": {int(entry["size"])}, '
        f'"forced_expire": false, "sender": {jsonString(entry["sender"] or "MAILER-DAEMON")}, '
        f'"recipients": [{", ".join(recipients)}]}}'
    )


def _writeText(out, text):
    """Write C{text} to C{out} as UTF-8 whatever the locale's encoding (JSON is UTF-8)."""
    binary = getattr(out, "buffer", None)
    if binary is None:
        out.write(text)
        return
    out.flush()
    binary.write(text.encode("utf-8", "surrogateescape"))
    binary.flush()


def _openMessage(store, queueId):
    """(queue, entry, open binary file) of C{queueId}, or None; follows moves by the daemon."""
    queues = LISTING + ("corrupt",)
    for _ in range(5):
        queue = tools.findMessage(store, queueId, queues)
        if queue is None:
            return None
        path = store.queuePath(queue, queueId)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except FileNotFoundError:
            continue  # moved to another queue meanwhile
        except OSError as e:
            if e.errno == errno.ELOOP:
                return queue, {"id": queueId, "queue": queue, "error": f"{path}: is a symbolic link"}, None
            raise
        f = os.fdopen(fd, "rb")
        entry = tools.describe(store, queue, queueId, time.time())
        if "error" in entry and not os.path.lexists(path):
            f.close()
            continue
        return queue, entry, f
    return None


def _showEnvelope(out, queue, queueId, entry, envelope):
    write = lambda name, value: out.write(f"{name}: {sanitize(value)}\n")  # noqa: E731
    out.write(f"*** ENVELOPE {queue}/{queueId} ***\n")
    write("queue_id", queueId)
    write("queue", queue)
    write("arrival_time", _asctime(envelope.arrival_time, year=True))
    write("size", envelope.size)
    write("sender", envelope.sender or "<>")
    client = f"{envelope.client_name}[{envelope.client_address}]" if envelope.client_address else envelope.client_name
    if envelope.client_port:
        client += f":{envelope.client_port}"
    write("client", client)
    if envelope.helo:
        write("helo", envelope.helo)
    write("protocol", envelope.protocol)
    write("body", envelope.body + (", SMTPUTF8" if envelope.smtputf8 else ""))
    if envelope.ret:
        write("ret", envelope.ret)
    if envelope.envid is not None:
        write("envid", envelope.envid)
    for state, recipient in zip(entry["recipients"], envelope.recipients):
        text = f"{state['address']} ({state['status']}{': ' + state['reason'] if state['reason'] else ''})"
        if recipient.notify:
            text += f" notify={','.join(recipient.notify)}"
        if recipient.orcpt:
            text += f" orcpt={recipient.orcpt}"
        write("recipient", text)
    if entry.get("next_attempt") is not None:
        write("next_attempt", _asctime(entry["next_attempt"], year=True))


_CONTROL_BYTES = re.compile(rb"[\x00-\x08\x0b-\x1f\x7f]")


def _writeContent(out, f, offset, length, escape):
    """
    Copy the C{length} content bytes at C{offset} of C{f} to C{out}, CRLF as
    LF; with C{escape}, control characters other than TAB and LF as \\xNN.
    """
    binary = getattr(out, "buffer", None)
    if binary is not None:
        out.flush()

    def emit(data):
        if escape:
            data = _CONTROL_BYTES.sub(lambda m: b"\\x%02x" % m.group()[0], data)
        if binary is not None:
            binary.write(data)
        else:
            out.write(data.decode("utf-8", "replace"))

    f.seek(offset)
    remaining, carry = length, b""
    while remaining:
        chunk = f.read(min(65536, remaining))
        if not chunk:
            raise CorruptQueueFile(f"content ends {remaining} bytes early")
        remaining -= len(chunk)
        chunk, carry = carry + chunk, b""
        if chunk.endswith(b"\r") and remaining:  # perhaps a CRLF split between reads
            chunk, carry = chunk[:-1], b"\r"
        emit(chunk.replace(b"\r\n", b"\n"))
    if binary is not None:
        binary.flush()


def show(queueDirectory, queueId, out, err):
    """mta-queue show: print the envelope and content of C{queueId}; return the exit status."""
    if not isValidQueueId(queueId):
        err.write(f"{PROG}: not a queue id: {_quote(queueId)}\n")
        return 2
    store = QueueStore(queueDirectory, None)
    try:
        found = _openMessage(store, queueId)
    except OSError as e:
        err.write(f"{PROG}: {queueId}: cannot read the queue file: {_oserror(e)}\n")
        return 1
    if found is None:
        err.write(f"{PROG}: {queueId}: no such message in the queue\n")
        return 1
    queue, entry, f = found
    if "error" in entry:
        if f is not None:
            f.close()
        err.write(f"{PROG}: {queueId}: damaged queue file in {queue}: {sanitize(entry['error'])}\n")
        return 1
    with f:
        try:
            parsed = parseQueueFile(f)
        except (CorruptQueueFile, OSError) as e:
            err.write(f"{PROG}: {queueId}: damaged queue file in {queue}: {sanitize(_oserror(e))}\n")
            return 1
        _showEnvelope(out, queue, queueId, entry, parsed.envelope)
        out.write(f"*** MESSAGE CONTENT {queue}/{queueId} ***\n")
        try:
            _writeContent(out, f, parsed.contentOffset, parsed.contentLength, escape=_isatty(out))
        except (CorruptQueueFile, OSError) as e:
            out.flush()
            err.write(f"{PROG}: {queueId}: cannot read the content: {sanitize(_oserror(e))}\n")
            return 1
    out.write(f"*** END OF MESSAGE {queue}/{queueId} ***\n")
    return 0


# -- flush --------------------------------------------------------------------------------


async def flush(reactor, queueDirectory, out, err, connect=control.connect, prog=PROG):
    """mta-queue flush: ask the daemon to try all deferred mail; return the exit status."""
    try:
        result = await callDaemon(reactor, queueDirectory, control.Flush, "answer", connect)
    except NotRunning as e:
        err.write(f"{prog}: cannot flush the queue: mta is not running ({e}); "
                  "deferred mail will be tried when it starts\n")
        return 1
    except Unreachable as e:
        err.write(f"{prog}: cannot flush the queue: {e}\n")
        return 1
    out.write(f"{prog}: Flushed: {_plural(result['count'], 'deferred message')}\n")
    return 0


# -- delete, hold, release, requeue -------------------------------------------------------


def _quote(text):
    """A queue id argument, quoted and with control characters escaped, for an error line."""
    return sanitize(repr(text[:100] + ("..." if len(text) > 100 else "")))


def queueIds(arguments, stdin):
    """
    The ids to act on, from the command-line C{arguments}: a list of valid
    queue ids without duplicates, or ["ALL"].  "-" reads ids from C{stdin}.
    UsageError names the bad ones; nothing has been done then.
    """
    if "ALL" in arguments:
        if arguments != ["ALL"]:
            raise UsageError("ALL cannot be combined with queue ids")
        return ["ALL"]
    ids = []
    for argument in arguments:
        if argument == "-":
            ids.extend(stdin.read().split())
        else:
            ids.append(argument)
    bad = [i for i in ids if not isValidQueueId(i)]
    if bad:
        shown = ", ".join(_quote(i) for i in bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
        raise UsageError(f"not a queue id: {shown}")
    return list(dict.fromkeys(ids))


def _report(action, done, missing, out, err, texts=None):
    """Print postsuper's lines for C{done} ids, the summary, and the missing ones; the exit status."""
    text, summary = ACTIONS[action]
    for queueId in done:
        out.write(f"{PROG}: {queueId}: {texts.get(queueId, text) if texts else text}\n")
    out.write(f"{PROG}: {summary}: {_plural(len(done), 'message')}\n")
    if missing:
        where = ", ".join(tools.SOURCES[action])
        shown = ", ".join(sanitize(i) for i in missing[:20]) + (f" and {len(missing) - 20} more" if len(missing) > 20 else "")
        err.write(f"{PROG}: not found in {where}: {shown}\n")
        return 1
    return 0


class MailLog:
    """Appends mail-log lines, in the daemon's syslog form, to $maillog_file (if set)."""

    def __init__(self, path, hostname, syslogName, err):
        self.path = path
        self.format = syslogFormatter(hostname, syslogName, os.getpid())
        self.err = err
        self.failed = False

    def emit(self, text, queueId, program="postsuper"):
        if not self.path or self.failed:
            return
        line = self.format({"mail_line": f"{queueId}: {text}", "mail_program": program, "log_time": time.time()})
        try:
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(line)
        except OSError as e:
            self.failed = True
            self.err.write(f"{PROG}: warning: cannot write {sanitize(self.path)}: {_oserror(e)}\n")


class _ControlLock:
    """
    The control socket's lock ($queue_directory/private/control.lock), which
    the daemon holds while it runs: taken while mta-queue acts on the files.
    """

    def __init__(self, queueDirectory):
        from twisted.python.lockfile import FilesystemLock

        self.socket = control.socketPath(queueDirectory)
        self.lock = FilesystemLock(self.socket + ".lock")

    def __enter__(self):
        if not os.path.isdir(os.path.dirname(self.socket)):
            return self  # the daemon never ran on this queue: nothing to lock
        try:
            acquired = self.lock.lock()
        except (OSError, ValueError) as e:
            raise Unreachable(f"cannot take the lock {self.lock.name}: {_oserror(e)}") from None
        if not acquired:
            try:
                pid = os.readlink(self.lock.name)
            except OSError:
                pid = "?"
            raise Unreachable(
                f"mta is running (pid {sanitize(pid)} holds {self.lock.name}) but does not answer on "
                f"its control socket; nothing done"
            )
        if not self.lock.clean:
            # The daemon died without cleaning up: remove its socket too, or
            # the next start could not bind (it only removes a stale socket
            # when it finds a stale lock, which we are about to remove).
            try:
                if stat.S_ISSOCK(os.lstat(self.socket).st_mode):
                    os.unlink(self.socket)
            except OSError:
                pass
        return self

    def __exit__(self, *exc):
        if self.lock.locked:
            self.lock.unlock()
        return False


def actOnFiles(queueDirectory, action, ids, out, err, now=None, maillog=None):
    """
    delete, hold, release or requeue C{ids} (valid ids, or ["ALL"]) on the
    queue files, with the daemon stopped; return the exit status.
    C{maillog}: a MailLog, or None.
    """
    store = QueueStore(queueDirectory, None)
    queues = tools.SOURCES[action]
    now = time.time() if now is None else now
    done, missing, texts, failed = [], [], {}, False
    try:
        with _ControlLock(queueDirectory):
            try:
                if ids == ["ALL"]:
                    ids = tools.allIds(store, queues)
            except OSError as e:
                err.write(f"{PROG}: cannot read the queue in {sanitize(queueDirectory)}: {_oserror(e)}\n")
                return 1
            for queueId in ids:
                queue = tools.findMessage(store, queueId, queues)
                if queue is None:
                    missing.append(queueId)
                    continue
                try:
                    text = tools.apply(store, action, queueId, queue, now)
                except OSError as e:
                    err.write(f"{PROG}: {queueId}: cannot {action}: {_oserror(e)}\n")
                    failed = True
                    continue
                if text is None:  # nothing to do (requeue of a message in incoming)
                    continue
                done.append(queueId)
                texts[queueId] = text
                if maillog is not None:
                    maillog.emit(text, queueId)
    except Unreachable as e:
        err.write(f"{PROG}: {e}\n")
        return 1
    code = _report(action, done, missing, out, err, texts)
    return 1 if failed else code


async def queueAction(reactor, queueDirectory, action, ids, out, err, connect=control.connect, now=None, maillog=None):
    """
    delete, hold, release or requeue C{ids} (valid ids, or ["ALL"]):
    through the daemon when it runs, else on the files; return the exit status.

    The ids go to the daemon in batches of BATCH (an AMP value holds at most
    64 KiB); ALL is the ids found in the queue directories now (and the
    daemon also finds a message that moved meanwhile).
    """
    if not ids:
        return _report(action, [], [], out, err)
    try:
        client = await connectDaemon(reactor, queueDirectory, connect)
    except NotRunning:
        return actOnFiles(queueDirectory, action, ids, out, err, now, maillog)
    except Unreachable as e:
        err.write(f"{PROG}: {e}; nothing done\n")
        return 1
    done, missing = [], []
    try:
        if ids == ["ALL"]:
            try:
                ids = tools.allIds(QueueStore(queueDirectory, None), tools.SOURCES[action])
            except OSError as e:
                err.write(f"{PROG}: cannot read the queue in {sanitize(queueDirectory)}: {_oserror(e)}\n")
                return 1
        for start in range(0, len(ids), BATCH):
            result = await ask(reactor, client, queueDirectory, control.QueueAction, "answer",
                               action=action, ids=ids[start:start + BATCH])
            done.extend(i for i in result["done"] if isValidQueueId(i))
            missing.extend(i for i in result["missing"] if isValidQueueId(i))
    except Unreachable as e:
        _report(action, done, missing, out, err)
        err.write(f"{PROG}: {e}; {len(ids) - len(done) - len(missing)} of {len(ids)} messages not done\n")
        return 1
    finally:
        hangUp(client)
    return _report(action, done, missing, out, err)


# -- running ------------------------------------------------------------------------------


def _isatty(stream):
    try:
        return stream.isatty()
    except (AttributeError, ValueError, OSError):
        return False


def _oserror(exception):
    if isinstance(exception, OSError) and exception.strerror:
        return sanitize(exception.strerror)
    return _reason(exception)


def _reason(exception):
    text = str(exception).strip() or type(exception).__name__
    return sanitize(text)


def _react(function, *args):
    """Run C{function(reactor, *args)} (a coroutine function returning the exit status) in the reactor."""
    from twisted.internet import defer, task

    async def run(reactor):
        raise SystemExit(await function(reactor, *args))

    try:
        task.react(lambda reactor: defer.ensureDeferred(run(reactor)))
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else 1
    return 0  # not reached: react() always exits


def _socketMissing(queueDirectory):
    try:
        _checkSocket(control.socketPath(queueDirectory))
    except NotRunning:
        return True
    except Unreachable:
        return False  # let the reactor path report it
    return False


def main(argv=None):
    """Run mta-queue with C{argv} (default: sys.argv[1:]); return the exit status."""
    try:
        args = parseArguments(buildParser(), argv, needCommand=True)
    except Done as e:
        return e.status
    out, err = sys.stdout, sys.stderr
    try:
        try:
            config = loadConfig(args.config)
            queueDirectory = config.settings.service.queueDirectory
        except ConfigError as e:
            err.write(f"{PROG}: error: {e}\n")
            return 1
        problem = _queueProblem(queueDirectory, config)
        if problem:
            err.write(f"{PROG}: mta is not running ({problem})\n" if args.command == "status" else f"{PROG}: {problem}\n")
            return 1
        return _dispatch(args, config, queueDirectory, out, err)
    except KeyboardInterrupt:
        err.write(f"{PROG}: interrupted\n")
        return 1
    except BrokenPipeError:  # mta-queue list | head
        try:  # nothing more can be written there: keep the exit-time flush quiet
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError, AttributeError):
            pass
        return 1
    except Exception as e:  # a bug: still one line, never a traceback
        err.write(f"{PROG}: internal error: {type(e).__name__}: {_reason(e)}\n")
        return 1


def _queueProblem(queueDirectory, config):
    """Why C{queueDirectory} cannot be a queue (it does not exist, ...), naming the configuration; or None."""
    try:
        st = os.stat(queueDirectory)
    except FileNotFoundError:
        return f"no queue directory {sanitize(queueDirectory)} (configuration: {sanitize(config.describe())})"
    except OSError as e:
        return f"cannot use the queue directory {sanitize(queueDirectory)}: {_oserror(e)}"
    if not stat.S_ISDIR(st.st_mode):
        return f"the queue directory {sanitize(queueDirectory)} is not a directory"
    return None


def _dispatch(args, config, queueDirectory, out, err):
    command = args.command
    if command == "list":
        return listQueue(queueDirectory, out, err, asJson=args.json)
    if command == "show":
        return show(queueDirectory, args.queue_id, out, err)
    if command == "status":
        if _socketMissing(queueDirectory):  # the common case, answered without a reactor
            err.write(f"{PROG}: mta is not running (no control socket at {control.socketPath(queueDirectory)})\n")
            return 1
        return _react(status, queueDirectory, out, err)
    if command == "flush":
        if _socketMissing(queueDirectory):
            err.write(f"{PROG}: cannot flush the queue: mta is not running (no control socket at "
                      f"{control.socketPath(queueDirectory)}); deferred mail will be tried when it starts\n")
            return 1
        return _react(flush, queueDirectory, out, err)
    # delete, hold, release, requeue
    try:
        ids = queueIds(args.ids, sys.stdin)
    except UsageError as e:
        err.write(f"{PROG}: {command}: {e}; nothing done\n")
        return 2
    except (OSError, UnicodeDecodeError) as e:
        err.write(f"{PROG}: {command}: cannot read queue ids from standard input: {_oserror(e)}\n")
        return 1
    service = config.settings.service
    maillog = MailLog(service.maillogFile, service.hostname, service.syslogName, err)
    if _socketMissing(queueDirectory):
        return actOnFiles(queueDirectory, command, ids, out, err, maillog=maillog)
    return _react(queueAction, queueDirectory, command, ids, out, err, control.connect, None, maillog)


if __name__ == "__main__":
    raise SystemExit(main())
