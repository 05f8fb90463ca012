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
operations); with maillog_file set, MailLogFileObserver also
writes the lines in syslog form (``Nov 21 07:48:25 host mta/smtpd[42]: ...``)
for tools such as pflogsumm.

SECURITY
    Addresses and replies come from the network: control characters are
    escaped before they reach a log line, so a client cannot forge lines.

CONFIGURATION
    syslog_name (mta), maillog_file (empty), myhostname.
"""

import os
import re
import time


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


def formatFields(pairs):
    """'name=value, name=value' from (name, value) pairs; values sanitized."""
    return ", ".join(f"{name}={sanitize(value)}" for name, value in pairs)


class MailLogger:
    """Emits mail-log events for one program (smtpd, qmgr, smtp, ...)."""

    def __init__(self, syslogName, program):
        # twisted.logger is imported here, not at module level, so that tools
        # that only need sanitize() (mta-sendmail) start faster.
        from twisted.logger import Logger

        self.program = program
        self.log = Logger(namespace=f"{syslogName}/{program}")

    def emit(self, text, queue_id=None, level=None, *, prefix=True, **fields):
        """
        Log C{text} (already shaped), prefixed by the queue id if any (not
        with C{prefix} false: the text places it); level: a LogLevel (info).
        """
        if level is None:
            from twisted.logger import LogLevel

            level = LogLevel.info
        line = f"{queue_id}: {text}" if queue_id and prefix else text
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


def MailLogFileObserver(path, hostname, syslogName, pid=None):
    """A log observer writing only mail-log events to C{path}, syslog-style."""
    from twisted.logger import FileLogObserver

    stream = open(path, "a", encoding="utf-8", buffering=1)
    observer = FileLogObserver(stream, syslogFormatter(hostname, syslogName, pid or os.getpid()))
    observer.stream = stream
    return observer
