"""mta.maillog: sanitizing, field formatting, events and the syslog-shaped file."""

import re
import time

import pytest
from twisted.logger import LogLevel, Logger

from mta.maillog import MailLogFileObserver, MailLogger, formatFields, sanitize, syslogFormatter


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


def test_MailLogFileObserver_writes_only_mail_lines(tmp_path):
    path = tmp_path / "maillog"
    observer = MailLogFileObserver(str(path), "mx.example.org", "mta", pid=7)
    try:
        logger = MailLogger("mta", "smtpd")
        logger.log = Logger(namespace=logger.log.namespace, observer=observer)
        logger.fields("3F1A", [("from", "<a@b>\nforged line")], detail="queue active")
        Logger(observer=observer).info("not a mail-log event")
        logger.emit("disconnect from c[192.0.2.1]")
    finally:
        observer.stream.close()
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    assert len(lines) == 2
    for line in lines:
        assert SYSLOG.match(line), line
    assert lines[0].endswith(" mx.example.org mta/smtpd[7]: 3F1A: from=<a@b>\\x0aforged line (queue active)\n")
    assert lines[1].endswith(" mx.example.org mta/smtpd[7]: disconnect from c[192.0.2.1]\n")


def test_MailLogFileObserver_appends(tmp_path):
    path = tmp_path / "maillog"
    path.write_text("old line\n")
    observer = MailLogFileObserver(str(path), "h", "mta", pid=1)
    observer({"mail_line": "new", "mail_program": "qmgr", "log_time": 0})
    observer.stream.close()
    text = path.read_text()
    assert text.startswith("old line\n")
    assert text.endswith(" h mta/qmgr[1]: new\n")
