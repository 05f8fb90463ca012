"""mta.queue.queueid - queue ids: unique, time-ordered, cheap to make.

A queue id names a message everywhere: its queue file, every mail-log line
about it, the mta-queue tool.  Like Postfix's long queue ids
(enable_long_queue_ids = yes) it is built from the time of arrival, so that
ids sort in arrival order, and it uses only [0-9A-Za-z], so that it is safe
as a file name and in logs:

    0aWfQ3Zk1 r7Tb2
    |-------| |---|
    time      salt

time (9 characters)
    Microseconds since the epoch in base 62 with the digits "0-9A-Za-z"
    (ASCII order, so byte-wise comparison of ids is numeric comparison of
    times).  Nine digits last until the year 2398.  Within one generator the
    value is strictly increasing: when the clock has not advanced since the
    last id (many ids in one microsecond) or has gone backwards (a clock
    step), the generator uses the previous value plus one microsecond, and so
    "borrows" from the future for as long as ids are made faster than one per
    microsecond; it falls back to the real clock as soon as that catches up.
salt (5 characters)
    Random, chosen once per generator (62**5, about 9.2e8 values).  Two ids
    from different generators (a restart, or two processes on one queue,
    which the control lock normally forbids) can only be equal when both the
    microsecond and the salt coincide; the salt is what keeps ids unique
    across a restart during which the clock was stepped back or the previous
    process had borrowed time ahead.

Ids from one generator sort in the order they were made; ids from different
generators sort by time (to the microsecond), ties broken by salt.

SECURITY
    isValidQueueId() is the check for names read back from directories and
    from tools: a valid id has no "/" or "." and is never "." or "..".

CONFIGURATION
    None (Postfix's enable_long_queue_ids is always on).
"""

import re
import secrets
import threading
import time

ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
TIME_DIGITS = 9
SALT_DIGITS = 5
QUEUE_ID_LENGTH = TIME_DIGITS + SALT_DIGITS
_MAX_TIME = 62**TIME_DIGITS - 1

_VALID = re.compile(r"[0-9A-Za-z]{%d}" % QUEUE_ID_LENGTH)
_DIGIT = {c: i for i, c in enumerate(ALPHABET)}


def _encode(value, width):
    digits = []
    for _ in range(width):
        value, rest = divmod(value, 62)
        digits.append(ALPHABET[rest])
    if value:
        raise ValueError("value too large for %d base-62 digits" % width)
    return "".join(reversed(digits))


def _decode(text):
    value = 0
    for c in text:
        value = value * 62 + _DIGIT[c]
    return value


def isValidQueueId(name):
    """Is C{name} (a str) shaped like a queue id?"""
    return isinstance(name, str) and _VALID.fullmatch(name) is not None


def queueIdTime(queueId):
    """The time (seconds since the epoch, float) encoded in C{queueId}."""
    if not isValidQueueId(queueId):
        raise ValueError(f"not a queue id: {queueId!r}")
    return _decode(queueId[:TIME_DIGITS]) / 1e6


class QueueIdGenerator:
    """
    Makes queue ids.  C{clock} returns nanoseconds since the epoch (default
    time.time_ns); C{salt} (tests only) fixes the random part.  Thread-safe.
    """

    def __init__(self, clock=time.time_ns, salt=None):
        if salt is None:
            salt = "".join(secrets.choice(ALPHABET) for _ in range(SALT_DIGITS))
        if len(salt) != SALT_DIGITS or any(c not in _DIGIT for c in salt):
            raise ValueError(f"bad queue id salt {salt!r}")
        self._clock = clock
        self.salt = salt
        self._last = -1
        self._lock = threading.Lock()

    def __call__(self):
        """A new queue id (str)."""
        now = self._clock() // 1000
        with self._lock:
            if now <= self._last:
                now = self._last + 1
            self._last = now
        if not 0 <= now <= _MAX_TIME:
            raise ValueError("clock out of range for queue ids")
        return _encode(now, TIME_DIGITS) + self.salt


newQueueId = QueueIdGenerator()
"""The process's default queue id generator."""


def temporaryName(queueId):
    """The name under which mta-sendmail writes C{queueId} in maildrop/ before renaming it."""
    return f"{queueId}.tmp"
