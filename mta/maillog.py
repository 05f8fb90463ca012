"""mta.maillog - mail-log events in the shape Postfix administrators know.

Every decision about a message is one twisted.logger event with stable
fields (queue_id, client, sender, recipient, relay, delay, dsn, status) and
a ``mail_line`` that reads as Postfix's, e.g.::

    3F1A2B9C: from=<alice@example.org>, size=1234, nrcpt=1 (queue active)
    3F1A2B9C: to=<bob@example.net>, relay=mx.example.net[192.0.2.1]:25,
        delay=0.51, dsn=2.0.0, status=sent (250 2.0.0 Ok)

The logger namespace is ``$syslog_name/program`` (mta/smtpd, mta/qmgr), so
twistd's own log shows it.  The program is the one Postfix would name for
the line: smtpd (connect, client=, rejects), cleanup (message-id=), pickup
(uid= from=), qmgr (from=, size=, nrcpt= (queue active); removed;
expired; corrupt files), the delivery agent, named as the transport is
(smtp, relay, lmtp, virtual, error, discard, retry: master.cf's service
name) for each to= line, bounce (notification lines), postsuper (queue
operations); with maillog_file set, MailLogFile writes the lines in
syslog form (``Nov 21 07:48:25 host mta/smtpd[42]: ...``)
for tools such as pflogsumm.

With maillog_file set, the daemon installs a MailLogFile (installFile()):
then each line is formatted once, straight into the syslog shape, and
buffered; the buffer is written with one write(2) at most FLUSH_INTERVAL
(50 ms) after its first line, at once when it holds BUFFER_LIMIT bytes,
and when the file is closed (stop, reload, log rotation).  Informational
lines then go only to that file, not through twisted.logger (an event,
its time formatted and its text written and flushed per line cost a
fifth of the daemon's CPU per message); warnings and errors, and the
daemon's own lines (program master: started, reload, stopped), go to
both.
A crash (kill -9, power loss) can lose the last 50 ms of log lines, never
mail: the queue does not depend on the log.

SECURITY
    Addresses and replies come from the network: control characters are
    escaped before they reach a log line, so a client cannot forge lines.

CONFIGURATION
    syslog_name (mta), maillog_file (empty), myhostname.
"""

import os
import re
import time

FLUSH_INTERVAL = 0.05  # seconds from a buffered line to its write
BUFFER_LIMIT = 64 * 1024  # bytes buffered before an immediate write

_file = None  # the MailLogFile in force (installFile), or None: lines are twisted.logger events


_UNSAFE = re.compile(r"[\x00-\x1f\x7f]")


def sanitize(text):
    """Escape control characters (CR, LF, NUL, ...) as \\xNN."""
    text = str(text)
    return _UNSAFE.sub(lambda m: f"\\x{ord(m.group()):02x}", text) if _UNSAFE.search(text) else text


def _seconds(value):
    """A delay as Postfix logs it: 0.27, 3.1, 42 (never an exponent)."""
    if value >= 10:
        return f"{value:.0f}"
    if value >= 1:
        return f"{value:.1f}".rstrip("0").rstrip(".")
    text = f"{value:.2f}".rstrip("0").rstrip(".")
    return text or "0"


def deliveryFields(address, original, relay, connUse, dsn, status, arrival, activeSince, started, now):
    """
    The (name, value) pairs of a delivery line, as Postfix's log_adhoc():
    to=, orig_to= (when aliases changed the address), relay=, conn_use=
    (a reused connection), delay= (since arrival), delays=a/b/c/d (before
    the queue manager, in it, connection set-up, transmission), dsn=,
    status=.  C{started}: when the delivery began (None: decided by qmgr).
    """
    fields = [("to", f"<{address}>")]
    if address != original:
        fields.append(("orig_to", f"<{original}>"))
    fields.append(("relay", relay))
    if connUse > 1:
        fields.append(("conn_use", connUse))
    begun = started or now
    delays = (activeSince - arrival, begun - activeSince, 0, max(0.0, now - begun))
    fields += [
        ("delay", _seconds(now - arrival)),
        ("delays", "/".join(_seconds(x) for x in delays)),
        ("dsn", dsn),
        ("status", status),
    ]
    return fields


def note(maillog, text, warn=False, fallback=None):
    """
    One line of a component that may run without a mail log: into
    C{maillog} (a MailLogger; at level warn with "warning: " before it), or
    else through the twisted.logger Logger C{fallback}.
    """
    from twisted.logger import Logger, LogLevel

    if maillog is not None:
        maillog.emit(f"warning: {text}" if warn else text, None, LogLevel.warn if warn else LogLevel.info)
        return
    fallback = fallback or Logger()
    (fallback.warn if warn else fallback.info)("{text}", text=text)


def formatFields(pairs):
    """'name=value, name=value' from (name, value) pairs; values sanitized."""
    return ", ".join(f"{name}={sanitize(value)}" for name, value in pairs)


_ALSO_AS_EVENTS = frozenset({"warn", "error", "critical"})  # with a MailLogFile: also in twistd's log


class MailLogger:
    """Emits mail-log events for one program (smtpd, qmgr, smtp, ...)."""

    def __init__(self, syslogName, program):
        # twisted.logger is imported here, not at module level, so that tools
        # that only need sanitize() (mta-sendmail) start faster.
        from twisted.logger import Logger

        self.program = program
        self.log = Logger(namespace=f"{syslogName}/{program}")
        self._alwaysEvents = program == "master"  # the daemon's few lifecycle lines: twistd's log too

    def emit(self, text, queue_id=None, level=None, *, prefix=True, **fields):
        """
        Log C{text} (already shaped), prefixed by the queue id if any (not
        with C{prefix} false: the text places it); level: a LogLevel (info).
        """
        if level is None:
            from twisted.logger import LogLevel

            level = LogLevel.info
        line = f"{queue_id}: {text}" if queue_id and prefix else text
        if _file is not None:
            _file.write(self.program, line)
            if not self._alwaysEvents and level.name not in _ALSO_AS_EVENTS:
                return
        self.log.emit(level, "{mail_line}", mail_line=line, mail_program=self.program, queue_id=queue_id, **fields)

    def warning(self, text, queue_id=None, **fields):
        """Postfix's msg_warn shape: 'warning: QUEUEID: text' (or 'warning: text'), at level warn."""
        from twisted.logger import LogLevel

        line = f"warning: {queue_id}: {text}" if queue_id else f"warning: {text}"
        self.emit(line, queue_id, LogLevel.warn, prefix=False, **fields)

    def fields(self, queue_id, pairs, detail=None, level=None, **fields):
        """Log 'name=value, ...' with an optional '(detail)' after it."""
        text = formatFields(pairs)
        if detail is not None:
            text += f" ({sanitize(detail)})"
        self.emit(text, queue_id, level, **fields)


def syslogFormatter(hostname, syslogName, pid):
    def format(event):
        line = event.get("mail_line")
        if line is None:
            return None
        stamp = time.strftime("%b %e %H:%M:%S", time.localtime(event.get("log_time", time.time())))
        return f"{stamp} {hostname} {syslogName}/{event.get('mail_program', 'mta')}[{pid}]: {line}\n"

    return format


class MailLogFile:
    """
    maillog_file, written by the daemon (see the module docstring): lines
    pre-formatted in syslog form, buffered, written by one write(2) per
    FLUSH_INTERVAL through C{clock} (the reactor), at BUFFER_LIMIT bytes,
    and by flush() and close().  Opening raises OSError.  A failed write
    drops the buffered lines with one error in twistd's log (mail goes on).
    """

    def __init__(self, path, hostname, syslogName, pid=None, clock=None, interval=FLUSH_INTERVAL):
        self.path = path
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
        self._prefix = f" {hostname} {syslogName}/"
        self._pid = pid or os.getpid()
        if clock is None:
            from twisted.internet import reactor as clock
        self._clock = clock
        self._interval = interval
        self._parts = []
        self._size = 0
        self._timer = None
        self._second = None
        self._stamp = ""
        self._failed = False
        self.writes = 0  # write(2) calls made (statistics, tests)

    def _stampFor(self, now):
        second = int(now)
        if second != self._second:
            self._second = second
            self._stamp = time.strftime("%b %e %H:%M:%S", time.localtime(now))
        return self._stamp

    def write(self, program, line, now=None):
        """Buffer one line of C{program} (text already shaped and sanitized)."""
        if self._fd is None:
            return
        data = f"{self._stampFor(time.time() if now is None else now)}{self._prefix}{program}[{self._pid}]: {line}\n"
        data = data.encode("utf-8", "backslashreplace")
        self._parts.append(data)
        self._size += len(data)
        if self._size >= BUFFER_LIMIT:
            self.flush()
        elif self._timer is None:
            self._timer = self._clock.callLater(self._interval, self._due)

    def _due(self):
        self._timer = None
        self.flush()

    def flush(self):
        """Write what is buffered now."""
        if self._timer is not None:
            if self._timer.active():
                self._timer.cancel()
            self._timer = None
        if not self._parts or self._fd is None:
            return
        data = b"".join(self._parts)
        self._parts.clear()
        self._size = 0
        try:
            view = memoryview(data)
            while view:
                written = os.write(self._fd, view)
                self.writes += 1
                view = view[written:]
            self._failed = False
        except OSError as e:
            if not self._failed:  # once per failure spell, not per flush
                from twisted.logger import Logger

                Logger().error("maillog_file {path}: write failed, log lines lost: {error}", path=self.path,
                               error=e.strerror)
            self._failed = True

    def close(self):
        """Write what is buffered and close the file."""
        self.flush()
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def installFile(mailLogFile):
    """Send every MailLogger's lines to C{mailLogFile} (None: as twisted.logger events only); the previous one."""
    global _file
    previous, _file = _file, mailLogFile
    return previous
