"""mta.queue.fileformat - the queue file format, version 1: writer and strict parser.

A queue file holds one message: its content, exactly as received, then its
envelope, then any number of per-recipient state records that the queue
manager appends later.  Content and envelope never change after the file is
committed; state changes are appended.  So the manager records delivery
results cheaply (a small append and an fsync, never a copy of the body) and
atomically (a torn append is recognised and ignored), and a move between
queues is one rename.  See mta.queue for the life of a file.

LAYOUT
    offset 0     b"MTA-QUEUE 1\\n"                       magic and version
    offset 12    b"content %020d %08x\\n" % (N, crc)     content length, CRC-32
    offset 50    N bytes of content                     raw, CRLF line ends
    offset 50+N  record "envelope"                      exactly one, first
    ...          records "state"                         zero or more, appended

    A record is framed as
        b"%s %d %08x\\n" % (type, len(payload), crc32(payload)) + payload + b"\\n"
    and every payload is a JSON object in ASCII (ensure_ascii, so strings
    with any code point, even a lone surrogate, round-trip exactly).

    The content header has a fixed width: the writer streams the content
    into a temporary file with a placeholder header and writes the real
    length and CRC-32 over it before the file is fsynced and renamed into
    the queue.  The envelope record after the content is the completion
    mark: a file whose envelope record is missing, short or fails its
    checksum was never committed (or was damaged) and is corrupt.

    Example (a 30-byte message; the JSON is one line in the file):

        MTA-QUEUE 1
        content 00000000000000000030 97e50678
        Subject: hi\\r\\n\\r\\nHello, world.\\r\\n
        envelope 321 f61d1c2a
        {"arrival_time":1700000000.25,"body":"7BIT","client_address":"192.0.2.7",
         "client_name":"mail.example.org","client_port":40211,"envid":null,
         "helo":"mail.example.org","protocol":"ESMTP","recipients":[{"address":
         "bob@example.com","notify":[],"orcpt":null}],"ret":null,"sender":
         "alice@example.org","size":30,"smtputf8":false}
        state 61 ........
        {"recipients":{"0":{"dsn":"2.0.0","status":"sent"}},"time":...}

ENVELOPE
    The JSON object has exactly the fields of mta.model.Envelope, each with
    its Python type (tuples as arrays, None as null; recipients as objects
    with the fields of mta.model.Recipient).  "size" is the content length
    and must equal N.  Unknown or missing fields are errors: a change of
    fields is a new version, except for the optional fields sasl_method,
    sasl_username and sasl_sender (the AUTH login), written only when set
    and read as null when absent, and requiretls and tls_required_no (RFC
    8689: MAIL FROM's REQUIRETLS, a "TLS-Required: No" header) and probe
    (an address verification probe, mta.verify), written only when true
    and read as false when absent, so that older files still parse (and a
    file without them is byte for byte what it was).

STATE RECORDS
    Owned by the queue manager, which defines their JSON object; this module
    frames, checksums and bounds them and returns them in file order.  A
    crash during an append can leave a damaged last record: the parser
    stops at the first damaged state record, reports tornTail and
    validLength, and the manager truncates the file to validLength before
    it appends again.  Damage in the header, content or envelope is never
    excused: the file is corrupt.

READING
    openQueueFile opens a file (O_NOFOLLOW, fstat: regular files only);
    readOpenQueueFile reads one of at most SMALL_FILE bytes whole, in one
    read, and parses it from memory (with keepContent the QueueFile keeps
    its content, for the queue manager to hand to a transport); a bigger
    one is parsed through a buffered file in bounded reads, and its
    content is never held whole.  readContent streams the content in
    chunks.

SECURITY
    Queue files are untrusted input (a bug, a crash, a full disk, an
    administrator's editor can damage them).  parseQueueFile() raises
    CorruptQueueFile, with a message naming the problem, for every kind of
    damage: bad magic, other versions, truncation anywhere before the end
    of the envelope record, bad checksums, bad JSON, duplicate, missing,
    unknown or mistyped fields, out-of-range or oversized values, a size
    mismatch.  Sizes are checked before anything is read, so a damaged
    length cannot make the parser allocate more than the limits below.
    Strings in the envelope may not contain CR, LF or NUL, so a damaged or
    forged file cannot smuggle command lines into SMTP or log lines.  The
    content is never parsed here.  I/O errors (the file vanished, EIO)
    raise OSError: they are not proof that the file is bad.

CONFIGURATION
    None.  Limits: MAX_ENVELOPE_BYTES, MAX_STATE_RECORD_BYTES,
    MAX_STATE_TOTAL_BYTES, MAX_FIELD_CHARS; SMALL_FILE (read whole, in one read).
"""

import errno
import io
import json
import math
import os
import re
import stat
import zlib

import attrs

from mta.model import CorruptQueueFile, Envelope, Recipient  # noqa: F401 (CorruptQueueFile: raised here)

MAGIC = b"MTA-QUEUE"
VERSION = 1
MAGIC_LINE = b"%s %d\n" % (MAGIC, VERSION)
_CONTENT_LINE = b"content %020d %08x\n"
HEADER_SIZE = len(MAGIC_LINE) + len(_CONTENT_LINE % (0, 0))
MAX_CONTENT_LENGTH = 10**20 - 1

MAX_ENVELOPE_BYTES = 16 * 1024 * 1024
MAX_STATE_RECORD_BYTES = 16 * 1024 * 1024
MAX_STATE_TOTAL_BYTES = 64 * 1024 * 1024
MAX_FIELD_CHARS = 4096
SMALL_FILE = 64 * 1024  # a queue file up to this size is read whole, in one read
_MAX_RECORD_HEADER = 64
_MAX_TIME = 1e11  # seconds since the epoch, year 5138

ENVELOPE_RECORD = "envelope"
STATE_RECORD = "state"
_RECORD_TYPES = (ENVELOPE_RECORD, STATE_RECORD)

_CONTENT_LINE_RE = re.compile(rb"content ([0-9]{20}) ([0-9a-f]{8})\n")
_RECORD_HEADER_RE = re.compile(rb"([a-z]{1,16}) (0|[1-9][0-9]{0,9}) ([0-9a-f]{8})\n")
_FORBIDDEN_CHARS = re.compile("[\r\n\0]")

_BODY_TYPES = ("7BIT", "8BITMIME", "BINARYMIME")
_RET_VALUES = ("FULL", "HDRS")
_NOTIFY_VALUES = ("NEVER", "SUCCESS", "FAILURE", "DELAY")


class _Invalid(Exception):
    """A value does not fit the format (raised inside; callers convert it)."""


class _Damaged(Exception):
    """A record is damaged (maybe a torn append)."""


# -- field checks, shared by writer and parser ------------------------------


def _string(name, value):
    if type(value) is not str:
        raise _Invalid(f"{name}: expected a string, got {_typeName(value)}")
    if len(value) > MAX_FIELD_CHARS:
        raise _Invalid(f"{name}: {len(value)} characters, more than {MAX_FIELD_CHARS}")
    if _FORBIDDEN_CHARS.search(value):
        raise _Invalid(f"{name}: contains CR, LF or NUL")
    return value


def _optionalString(name, value):
    return None if value is None else _string(name, value)


def _enum(values, optional=False):
    def check(name, value):
        if value is None and optional:
            return None
        if type(value) is not str or value not in values:
            raise _Invalid(f"{name}: expected one of {', '.join(values)}, got {_short(value)}")
        return value

    return check


def _boolean(name, value):
    if type(value) is not bool:
        raise _Invalid(f"{name}: expected true or false, got {_typeName(value)}")
    return value


def _integer(low, high):
    def check(name, value):
        if type(value) is not int:
            raise _Invalid(f"{name}: expected an integer, got {_typeName(value)}")
        if not low <= value <= high:
            raise _Invalid(f"{name}: {_short(value)} is out of range {low}..{high}")
        return value

    return check


def _time(name, value):
    if type(value) not in (int, float):
        raise _Invalid(f"{name}: expected a number, got {_typeName(value)}")
    if not (0 <= value <= _MAX_TIME and (type(value) is int or math.isfinite(value))):
        raise _Invalid(f"{name}: {_short(value)} is not a valid time")
    return value


def _notify(name, value):
    if type(value) not in (list, tuple):
        raise _Invalid(f"{name}: expected a list, got {_typeName(value)}")
    if len(value) > len(_NOTIFY_VALUES):
        raise _Invalid(f"{name}: too many values")
    items = tuple(_enum(_NOTIFY_VALUES)(name, item) for item in value)
    if len(set(items)) != len(items):
        raise _Invalid(f"{name}: repeated value")
    if "NEVER" in items and len(items) > 1:
        raise _Invalid(f"{name}: NEVER combined with other values")
    return items


_RECIPIENT_FIELDS = {
    "address": _string,
    "orcpt": _optionalString,
    "notify": _notify,
}


def _recipients(name, value):
    if type(value) not in (list, tuple):
        raise _Invalid(f"{name}: expected a list, got {_typeName(value)}")
    return tuple(
        Recipient(**_fields(f"{name}[{i}]", item, _RECIPIENT_FIELDS)) for i, item in enumerate(value)
    )


_ENVELOPE_FIELDS = {
    "sender": _string,
    "recipients": _recipients,
    "arrival_time": _time,
    "client_name": _string,
    "client_address": _string,
    "client_port": _integer(0, 65535),
    "helo": _string,
    "protocol": _string,
    "body": _enum(_BODY_TYPES),
    "smtputf8": _boolean,
    "ret": _enum(_RET_VALUES, optional=True),
    "envid": _optionalString,
    "size": _integer(0, MAX_CONTENT_LENGTH),
    "sasl_method": _optionalString,
    "sasl_username": _optionalString,
    "sasl_sender": _optionalString,
    "requiretls": _boolean,
    "tls_required_no": _boolean,
    "probe": _boolean,
}
# Fields added after version 1 was defined: absent in older files (read as None), and not
# written when None, so a file without AUTH is what it always was.
OPTIONAL_ENVELOPE_FIELDS = frozenset({"sasl_method", "sasl_username", "sasl_sender", "requiretls", "tls_required_no",
                                      "probe"})
# The value of an optional field that is absent (and is not written): None, or False for the RFC 8689 flags.
OPTIONAL_DEFAULTS = {"requiretls": False, "tls_required_no": False, "probe": False}


def _fields(name, value, schema, optional=frozenset()):
    if type(value) is not dict:
        raise _Invalid(f"{name}: expected an object, got {_typeName(value)}")
    for key in value:
        if key not in schema:
            raise _Invalid(f"{name}: unknown field {_short(key)}")
    result = {}
    for key, check in schema.items():
        if key not in value:
            if key in optional:
                result[key] = OPTIONAL_DEFAULTS.get(key)
                continue
            raise _Invalid(f"{name}: missing field {key!r}")
        result[key] = check(f"{name}.{key}" if name else key, value[key])
    return result


def _typeName(value):
    return {dict: "an object", list: "a list", tuple: "a list", str: "a string", bool: "a boolean",
            int: "an integer", float: "a number", type(None): "null"}.get(type(value), type(value).__name__)


def _short(value):
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


# -- writing ----------------------------------------------------------------


def _jsonBytes(obj):
    return json.dumps(obj, ensure_ascii=True, allow_nan=False, sort_keys=True, separators=(",", ":")).encode("ascii")


def dumpEnvelope(envelope):
    """
    The envelope record's payload for C{envelope} (an mta.model.Envelope):
    JSON bytes.  Raises ValueError if the envelope cannot be stored (wrong
    types, oversized or forbidden values): what this writes, the parser
    accepts.
    """
    if not isinstance(envelope, Envelope):
        raise ValueError(f"not an Envelope: {_typeName(envelope)}")
    obj = {field.name: getattr(envelope, field.name) for field in attrs.fields(Envelope)}
    recipients = obj["recipients"]
    if type(recipients) in (list, tuple):
        converted = []
        for i, recipient in enumerate(recipients):
            if not isinstance(recipient, Recipient):
                raise ValueError(f"recipients[{i}]: not a Recipient: {_typeName(recipient)}")
            converted.append({field.name: getattr(recipient, field.name) for field in attrs.fields(Recipient)})
        obj["recipients"] = converted
    for key in OPTIONAL_ENVELOPE_FIELDS:
        if obj[key] is None or (key in OPTIONAL_DEFAULTS and obj[key] is OPTIONAL_DEFAULTS[key]):
            del obj[key]
    try:
        _fields("", obj, _ENVELOPE_FIELDS, OPTIONAL_ENVELOPE_FIELDS)
    except _Invalid as e:
        raise ValueError(f"envelope cannot be stored: {e}") from None
    payload = _jsonBytes(obj)
    if len(payload) > MAX_ENVELOPE_BYTES:
        raise ValueError(f"envelope cannot be stored: {len(payload)} bytes, more than {MAX_ENVELOPE_BYTES}")
    return payload


def frameRecord(kind, payload):
    """A record of type C{kind} (str) holding C{payload} (bytes), framed."""
    if kind not in _RECORD_TYPES:
        raise ValueError(f"unknown record type {kind!r}")
    return b"%s %d %08x\n%s\n" % (kind.encode("ascii"), len(payload), zlib.crc32(payload), payload)


def envelopeRecord(envelope):
    """The framed envelope record for C{envelope}."""
    return frameRecord(ENVELOPE_RECORD, dumpEnvelope(envelope))


def dumpState(state):
    """
    A framed state record holding C{state}, a dict that JSON can encode (no
    NaN).  For the queue manager.  Raises ValueError if it cannot be stored.
    """
    if type(state) is not dict:
        raise ValueError(f"a state record is a dict, not {_typeName(state)}")
    try:
        payload = json.dumps(state, ensure_ascii=True, allow_nan=False, separators=(",", ":")).encode("ascii")
    except (TypeError, ValueError, RecursionError) as e:
        raise ValueError(f"state cannot be stored: {e}") from None
    if len(payload) > MAX_STATE_RECORD_BYTES:
        raise ValueError(f"state cannot be stored: {len(payload)} bytes, more than {MAX_STATE_RECORD_BYTES}")
    try:
        _loadJSON(payload, "state")  # what is written must read back (e.g. no keys 1 and "1")
    except CorruptQueueFile as e:
        raise ValueError(f"state cannot be stored: {e}") from None
    return frameRecord(STATE_RECORD, payload)


def fileHeader(contentLength, contentCrc32):
    """The fixed-size (HEADER_SIZE) header for content of this length and CRC-32."""
    if not 0 <= contentLength <= MAX_CONTENT_LENGTH:
        raise ValueError(f"content length {contentLength} out of range")
    return MAGIC_LINE + _CONTENT_LINE % (contentLength, contentCrc32 & 0xFFFFFFFF)


def dumpQueueFile(envelope, content):
    """
    A whole queue file (bytes) for small messages and tests: C{content} is
    the message; the stored envelope's size is set to len(content).
    """
    envelope = attrs.evolve(envelope, size=len(content))
    return fileHeader(len(content), zlib.crc32(content)) + content + envelopeRecord(envelope)


# -- parsing ----------------------------------------------------------------


@attrs.frozen(eq=False)
class QueueFile:
    """
    A parsed queue file.  The content is not read: it is the
    C{contentLength} bytes at C{contentOffset}.  C{states} are the state
    records' objects in file order.  C{validLength} is where the last good
    record ends; when C{tornTail} is true the bytes after it are a damaged
    append, to be truncated before the next one.
    """

    envelope: Envelope
    contentOffset: int
    contentLength: int
    contentCrc32: int
    states: tuple
    validLength: int
    tornTail: bool
    content: bytes | None = attrs.field(default=None, repr=False)  # the content, when read whole (small files)


def _rejectConstant(name):
    raise ValueError(f"{name} is not allowed")


def _noDuplicates(pairs):
    result = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"duplicate key {_short(key)}")
        result[key] = value
    return result


def _loadJSON(payload, what):
    try:
        obj = json.loads(payload.decode("ascii"), object_pairs_hook=_noDuplicates, parse_constant=_rejectConstant)
    except (ValueError, RecursionError) as e:
        raise CorruptQueueFile(f"{what}: bad JSON: {str(e)[:200]}") from None
    if type(obj) is not dict:
        raise CorruptQueueFile(f"{what}: expected a JSON object, got {_typeName(obj)}")
    return obj


def parseEnvelope(payload):
    """The Envelope in an envelope record's C{payload} (bytes); CorruptQueueFile if bad."""
    obj = _loadJSON(payload, "envelope")
    try:
        return Envelope(**_fields("", obj, _ENVELOPE_FIELDS, OPTIONAL_ENVELOPE_FIELDS))
    except _Invalid as e:
        raise CorruptQueueFile(f"envelope: {e}") from None


def _read(f, n):
    chunks = []
    while n > 0:
        chunk = f.read(min(n, 1 << 20))
        if not chunk:
            break
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


def _readRecord(f, offset, fileSize, limits):
    """Read the record at C{offset}: (kind, payload, end); _Damaged if it is not whole."""
    f.seek(offset)
    line = f.readline(_MAX_RECORD_HEADER)
    if not line.endswith(b"\n"):
        raise _Damaged("record header truncated" if offset + len(line) >= fileSize else "bad record header")
    match = _RECORD_HEADER_RE.fullmatch(line)
    if match is None:
        raise _Damaged(f"bad record header {_short(line)}")
    kind = match.group(1).decode("ascii")
    length, crc = int(match.group(2)), int(match.group(3), 16)
    limit = limits.get(kind)
    if limit is None:
        raise _Damaged(f"unknown record type {kind!r}")
    if length > limit:
        raise _Damaged(f"{kind} record of {length} bytes, more than {limit}")
    start = offset + len(line)
    if start + length + 1 > fileSize:
        raise _Damaged(f"{kind} record truncated ({length} bytes declared, {max(fileSize - start - 1, 0)} present)")
    data = _read(f, length + 1)
    if len(data) != length + 1:
        raise _Damaged(f"{kind} record truncated")
    if data[-1:] != b"\n":
        raise _Damaged(f"{kind} record not terminated")
    payload = data[:-1]
    if zlib.crc32(payload) != crc:
        raise _Damaged(f"{kind} record checksum mismatch")
    return kind, payload, start + length + 1


def parseQueueFile(f, *, verifyContent=False):
    """
    Parse the queue file open in C{f} (a seekable binary file object) and
    return a QueueFile.  With C{verifyContent}, also read the content and
    check its length and CRC-32.  Raises CorruptQueueFile for any damage;
    OSError only if reading fails.
    """
    f.seek(0, os.SEEK_END)
    fileSize = f.tell()
    f.seek(0)
    header = _read(f, HEADER_SIZE)
    if not header:
        raise CorruptQueueFile("empty file")
    if header[: len(MAGIC_LINE)] != MAGIC_LINE:
        if header.startswith(MAGIC + b" ") and b"\n" in header:
            version = header.split(b"\n", 1)[0][len(MAGIC) + 1:]
            raise CorruptQueueFile(f"unsupported queue file version {_short(version.decode('ascii', 'replace'))}")
        if MAGIC_LINE.startswith(header):
            raise CorruptQueueFile("truncated in the header")
        raise CorruptQueueFile("not a queue file (bad magic)")
    if len(header) < HEADER_SIZE:
        raise CorruptQueueFile("truncated in the header")
    match = _CONTENT_LINE_RE.fullmatch(header[len(MAGIC_LINE):])
    if match is None:
        raise CorruptQueueFile("bad content header")
    contentLength, contentCrc = int(match.group(1)), int(match.group(2), 16)
    contentEnd = HEADER_SIZE + contentLength
    if contentEnd > fileSize:
        raise CorruptQueueFile(
            f"truncated in the content ({contentLength} bytes declared, {fileSize - HEADER_SIZE} present)"
        )
    if verifyContent:
        _verifyContent(f, contentLength, contentCrc)

    limits = {ENVELOPE_RECORD: MAX_ENVELOPE_BYTES}
    if contentEnd == fileSize:
        raise CorruptQueueFile("incomplete: no envelope record after the content")
    try:
        kind, payload, offset = _readRecord(f, contentEnd, fileSize, limits)
    except _Damaged as e:
        raise CorruptQueueFile(f"envelope record: {e}") from None
    envelope = parseEnvelope(payload)
    if envelope.size != contentLength:
        raise CorruptQueueFile(
            f"size mismatch: the envelope says {envelope.size} bytes, the content has {contentLength}"
        )

    limits = {ENVELOPE_RECORD: MAX_ENVELOPE_BYTES, STATE_RECORD: MAX_STATE_RECORD_BYTES}
    states, total, torn = [], 0, False
    while offset < fileSize:
        try:
            kind, payload, end = _readRecord(f, offset, fileSize, limits)
        except _Damaged:
            torn = True
            break
        if kind != STATE_RECORD:
            raise CorruptQueueFile(f"unexpected {kind} record at offset {offset}")
        total += len(payload)
        if total > MAX_STATE_TOTAL_BYTES:
            raise CorruptQueueFile(f"state records exceed {MAX_STATE_TOTAL_BYTES} bytes")
        states.append(_loadJSON(payload, f"state record at offset {offset}"))
        offset = end
    return QueueFile(envelope, HEADER_SIZE, contentLength, contentCrc, tuple(states), offset, torn)


def _verifyContent(f, length, expected):
    f.seek(HEADER_SIZE)
    crc, remaining = 0, length
    while remaining:
        chunk = f.read(min(remaining, 1 << 16))
        if not chunk:
            raise CorruptQueueFile("truncated in the content")
        crc = zlib.crc32(chunk, crc)
        remaining -= len(chunk)
    if crc != expected:
        raise CorruptQueueFile("content checksum mismatch")


def openQueueFile(path):
    """
    Open the queue file at C{path} for reading: (fd, size).  A symbolic
    link or anything but a regular file is corrupt; OSError if it cannot be
    opened.  Pass the fd to readOpenQueueFile, which closes it.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise CorruptQueueFile(f"{path}: is a symbolic link") from None
        raise
    try:
        st = os.fstat(fd)
    except BaseException:
        os.close(fd)
        raise
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise CorruptQueueFile(f"{path}: not a regular file")
    return fd, st.st_size


def _readAll(fd, size):
    """The whole file open at C{fd}: one read when it is C{size} bytes, as fstat said, more if it grew."""
    chunks = []
    while True:
        chunk = os.read(fd, size + 1)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


def readOpenQueueFile(fd, size, path, *, verifyContent=False, keepContent=False):
    """
    Parse the queue file open at C{fd} (from openQueueFile, C{size} bytes)
    and close it.  A file of at most SMALL_FILE bytes is read whole in one
    read and parsed from memory; with C{keepContent}, its content is kept
    in the QueueFile (C{content}).  A bigger one is read in bounded chunks
    and its content is never held.
    """
    try:
        if size <= SMALL_FILE:
            data = _readAll(fd, size)
            f = io.BytesIO(data)
        else:
            data = None
            f = open(fd, "rb", closefd=False)
        try:
            queueFile = parseQueueFile(f, verifyContent=verifyContent)
        except CorruptQueueFile as e:
            raise CorruptQueueFile(f"{path}: {e}") from None
        finally:
            f.close()
    finally:
        os.close(fd)
    if keepContent and data is not None:
        start = queueFile.contentOffset
        queueFile = attrs.evolve(queueFile, content=data[start : start + queueFile.contentLength])
    return queueFile


def readQueueFile(path, *, verifyContent=False, keepContent=False):
    """
    Open and parse the queue file at C{path} (openQueueFile, then
    readOpenQueueFile).  A symbolic link or anything but a regular file is
    corrupt; OSError if it cannot be opened or read.
    """
    fd, size = openQueueFile(path)
    return readOpenQueueFile(fd, size, path, verifyContent=verifyContent, keepContent=keepContent)


def readEnvelope(path):
    """The Envelope of the queue file at C{path} (see readQueueFile)."""
    return readQueueFile(path).envelope


def readContent(path, offset, length, chunkSize=65536):
    """
    Yield the message content of the queue file C{path} in chunks (blocking
    I/O: call it in a thread).  C{offset} and C{length} come from the
    queue manager's parse of the file.  Raises OSError, or CorruptQueueFile
    if the file is shorter than it said.
    """
    with open(path, "rb") as f:
        f.seek(offset)
        remaining = length
        while remaining:
            chunk = f.read(min(chunkSize, remaining))
            if not chunk:
                raise CorruptQueueFile(f"{path}: content ends {remaining} bytes early")
            remaining -= len(chunk)
            yield chunk
