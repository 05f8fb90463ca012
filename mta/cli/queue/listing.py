"""
mta.cli.queue.listing - mta-queue list (mailq, postqueue -p and -j) and show (postcat -q).

Both read the queue files themselves (mta.queue.tools), as Postfix's showq
does, so they work whether the daemon runs or not; a file the daemon moves
or removes meanwhile is followed or left out, never reported as damaged.
"""

import errno
import os
import re
import time

from mta.cli.queue.common import PROG, _isatty, _oserror, _plural, _quote
from mta.maillog import sanitize
from mta.queue import tools
from mta.queue.fileformat import CorruptQueueFile, parseQueueFile
from mta.queue.queueid import isValidQueueId
from mta.queue.store import QueueStore

HEADER = "-Queue ID-  --Size-- ----Arrival Time---- -Sender/Recipient-------"
MARKS = {"active": "*", "hold": "!"}
LISTING = ("maildrop", "active", "incoming", "deferred", "hold")  # showq's order


class UsageError(Exception):
    """Bad arguments found after parsing (queue ids): exit status 2."""


def _asctime(seconds, year=False):
    """'Sat Nov 21 07:48:25', local time (ctime(3) without the year unless C{year}), or '?'."""
    try:
        text = time.asctime(time.localtime(seconds))
        return text if year else text[:19]
    except (OverflowError, OSError, ValueError, TypeError):
        return "?"


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
    for name in ("sasl_method", "sasl_username", "sasl_sender"):  # the AUTH login (postcat's named attributes)
        if getattr(envelope, name, None):
            write(name, getattr(envelope, name))
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
