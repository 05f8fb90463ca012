"""mta.maillog: sanitizing, field formatting, events and the syslog-shaped file."""

import re
import time

import pytest
from twisted.logger import LogLevel, Logger

from mta.maillog import MailLogger, formatFields, sanitize, syslogFormatter


@pytest.mark.parametrize(
    "text, expected",
    [
        ("alice@example.org", "alice@example.org"),
        ("a\r\nb", "a\\x0d\\x0ab"),
        ("nul\x00", "nul\\x00"),
        ("tab\tdel\x7f", "tab\\x09del\\x7f"),
        ("esc\x1b[31m", "esc\\x1b[31m"),
        ("caf\u00e9", "caf\u00e9"),
        (42, "42"),
    ],
)
def test_sanitize(text, expected):
    assert sanitize(text) == expected


def test_sanitize_cannot_forge_a_line():
    forged = "<a@b>\nNov 21 07:48:25 host mta/smtpd[1]: 3F1A: to=<victim@x>, status=sent"
    text = sanitize(forged)
    assert "\n" not in text and "\r" not in text
    assert text.startswith("<a@b>\\x0aNov 21")


def test_formatFields():
    assert formatFields([("to", "<bob@example.net>"), ("relay", "mx[192.0.2.1]:25"), ("delay", 0.51)]) == (
        "to=<bob@example.net>, relay=mx[192.0.2.1]:25, delay=0.51"
    )
    assert formatFields([]) == ""


def test_formatFields_sanitizes_values():
    line = formatFields([("from", "<a@b>\r\nx: status=sent"), ("size", 12)])
    assert line == "from=<a@b>\\x0d\\x0ax: status=sent, size=12"
    assert "\n" not in line


@pytest.fixture
def events():
    return []


@pytest.fixture
def smtpd(events):
    logger = MailLogger("mta", "smtpd")
    logger.log = Logger(namespace=logger.log.namespace, observer=events.append)
    return logger


def test_namespace():
    assert MailLogger("postfix2", "qmgr").log.namespace == "postfix2/qmgr"


def test_emit(smtpd, events):
    smtpd.emit("from=<a@b>, size=1, nrcpt=1 (queue active)", queue_id="3F1A2B9C", client="c[192.0.2.1]")
    (event,) = events
    assert event["mail_line"] == "3F1A2B9C: from=<a@b>, size=1, nrcpt=1 (queue active)"
    assert event["mail_program"] == "smtpd"
    assert event["queue_id"] == "3F1A2B9C"
    assert event["client"] == "c[192.0.2.1]"
    assert event["log_level"] == LogLevel.info
    assert event["log_namespace"] == "mta/smtpd"
    assert event["log_format"] == "{mail_line}"


def test_emit_without_queue_id(smtpd, events):
    smtpd.emit("connect from c[192.0.2.1]", level=LogLevel.warn)
    (event,) = events
    assert event["mail_line"] == "connect from c[192.0.2.1]"
    assert event["queue_id"] is None
    assert event["log_level"] == LogLevel.warn


def test_fields_with_detail(smtpd, events):
    smtpd.fields(
        "3F1A",
        [("to", "<bob@example.net>"), ("status", "bounced")],
        detail="550 5.1.1 no such user\r\n3F1A: to=<x>, status=sent",
        recipient="bob@example.net",
    )
    (event,) = events
    assert event["mail_line"] == (
        "3F1A: to=<bob@example.net>, status=bounced (550 5.1.1 no such user\\x0d\\x0a3F1A: to=<x>, status=sent)"
    )
    assert event["recipient"] == "bob@example.net"


def test_fields_without_detail(smtpd, events):
    smtpd.fields("3F1A", [("removed", "")])
    assert events[0]["mail_line"] == "3F1A: removed="


# -- the syslog-shaped file -----------------------------------------------------------

SYSLOG = re.compile(r"^[A-Z][a-z]{2} [ 123][0-9] [0-2][0-9]:[0-5][0-9]:[0-6][0-9] (\S+) (\S+)\[(\d+)\]: (.*)\n$")


def test_syslogFormatter_shape():
    stamp = 1700552905.25  # a fixed moment; shown in local time, as syslog does
    line = syslogFormatter("mx.example.org", "mta", 42)(
        {"mail_line": "3F1A: removed", "mail_program": "qmgr", "log_time": stamp}
    )
    match = SYSLOG.match(line)
    assert match, line
    assert match.groups() == ("mx.example.org", "mta/qmgr", "42", "3F1A: removed")
    assert line.startswith(time.strftime("%b %e %H:%M:%S", time.localtime(stamp)) + " ")


def test_syslogFormatter_single_digit_day_is_space_padded():
    stamp = time.mktime((2024, 3, 5, 7, 8, 9, 0, 0, -1))
    line = syslogFormatter("h", "mta", 1)({"mail_line": "x", "mail_program": "smtpd", "log_time": stamp})
    assert line == "Mar  5 07:08:09 h mta/smtpd[1]: x\n"


def test_syslogFormatter_skips_other_events():
    format = syslogFormatter("h", "mta", 1)
    assert format({"log_format": "Starting factory", "log_time": 0}) is None
    # no program: the plain syslog name
    assert format({"mail_line": "x", "log_time": 0}).endswith(" h mta/mta[1]: x\n")


class Clock:
    """task.Clock with the calls it was asked for (MailLogFile's flush timer)."""

    def __init__(self):
        from twisted.internet.task import Clock as C

        self.clock = C()
        self.callLater = self.clock.callLater
        self.advance = self.clock.advance


@pytest.fixture
def mailLogFile(tmp_path):
    from mta.maillog import MailLogFile, installFile

    clock = Clock()
    path = tmp_path / "maillog"
    f = MailLogFile(str(path), "mx.example.org", "mta", pid=7, clock=clock)
    f.clock, f.file = clock, path
    previous = installFile(f)
    yield f
    installFile(previous)
    f.close()


def test_mail_log_file_writes_syslog_lines_after_the_flush_interval(mailLogFile, events):
    logger = MailLogger("mta", "smtpd")
    logger.log = Logger(namespace=logger.log.namespace, observer=events.append)
    logger.fields("3F1A", [("from", "<a@b>\nforged line")], detail="queue active")
    logger.emit("disconnect from c[192.0.2.1]")
    assert mailLogFile.file.read_text() == "" and mailLogFile.writes == 0  # buffered
    mailLogFile.clock.advance(0.05)
    lines = mailLogFile.file.read_text(encoding="utf-8").splitlines(keepends=True)
    assert mailLogFile.writes == 1 and len(lines) == 2
    for line in lines:
        assert SYSLOG.match(line), line
    assert lines[0].endswith(" mx.example.org mta/smtpd[7]: 3F1A: from=<a@b>\\x0aforged line (queue active)\n")
    assert lines[1].endswith(" mx.example.org mta/smtpd[7]: disconnect from c[192.0.2.1]\n")
    assert events == []  # informational lines: the file only, no twisted.logger event


def test_mail_log_file_warnings_are_also_events(mailLogFile, events):
    logger = MailLogger("mta", "smtp")
    logger.log = Logger(namespace=logger.log.namespace, observer=events.append)
    logger.warning("TLS handshake failed", "3F1A")
    assert [e["mail_line"] for e in events] == ["warning: 3F1A: TLS handshake failed"]
    mailLogFile.flush()
    assert mailLogFile.file.read_text().endswith(" mta/smtp[7]: warning: 3F1A: TLS handshake failed\n")


def test_mail_log_file_writes_at_the_buffer_limit_and_on_close(mailLogFile):
    from mta.maillog import BUFFER_LIMIT

    logger = MailLogger("mta", "qmgr")
    line = "x" * 1000
    for _ in range(BUFFER_LIMIT // 1000 + 1):
        logger.emit(line)
    assert mailLogFile.writes == 1  # the limit, before any timer
    logger.emit("last")
    mailLogFile.close()
    text = mailLogFile.file.read_text()
    assert text.endswith(" mta/qmgr[7]: last\n") and text.count("\n") == BUFFER_LIMIT // 1000 + 2


def test_mail_log_file_appends(tmp_path):
    from mta.maillog import MailLogFile

    path = tmp_path / "maillog"
    path.write_text("old line\n")
    f = MailLogFile(str(path), "h", "mta", pid=1, clock=Clock())
    f.write("qmgr", "new", now=0)
    f.close()
    text = path.read_text()
    assert text.startswith("old line\n") and text.endswith(" h mta/qmgr[1]: new\n")
    f.write("qmgr", "after close")  # ignored, not a crash


def test_mail_log_file_write_failure_is_logged_once_and_mail_goes_on(tmp_path, monkeypatch):
    import os as _os

    from mta.maillog import MailLogFile

    f = MailLogFile(str(tmp_path / "maillog"), "h", "mta", pid=1, clock=Clock())
    errors = []
    from twisted.logger import globalLogPublisher

    globalLogPublisher.addObserver(errors.append)

    def full(fd, data):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(_os, "write", full)
    try:
        for _ in range(3):
            f.write("smtpd", "line")
            f.flush()
    finally:
        globalLogPublisher.removeObserver(errors.append)
        monkeypatch.undo()
    messages = [e for e in errors if "maillog_file" in e.get("log_format", "")]
    assert len(messages) == 1 and messages[0]["error"] == "No space left on device"
    f.write("smtpd", "later")
    f.close()
    assert (tmp_path / "maillog").read_text().endswith(" h mta/smtpd[1]: later\n")
