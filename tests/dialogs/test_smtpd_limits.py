"""Scripted dialogs for smtpd(8)'s own controls and limits."""

import pytest
from twisted.internet.task import Clock

from mta.testing import FakeQueueStore, serverFactory
from tests.dialogs.harness import Dialog, replyCodes

OUTSIDE = "198.51.100.7"


def dialog(main="", peer=OUTSIDE, clock=None, store=None):
    return Dialog(serverFactory(main, clock=clock, store=store or FakeQueueStore()), peer=peer)


def test_heloRequired():
    d = dialog("smtpd_helo_required = yes\n")
    assert d.send("MAIL FROM:<a@example.org>\r\n") == "503 5.5.1 Error: send HELO/EHLO first\r\n"
    d.send("HELO c\r\n")
    assert d.send("MAIL FROM:<a@example.org>\r\n") == "250 2.1.0 Ok\r\n"


def test_heloNotRequiredByDefault():
    d = dialog()
    assert d.send("MAIL FROM:<a@example.org>\r\n") == "250 2.1.0 Ok\r\n"


def test_strictEnvelopes():
    lax, strict = dialog(), dialog("strict_rfc821_envelopes = yes\n")
    assert lax.send("MAIL FROM:a@example.org\r\n") == "250 2.1.0 Ok\r\n"
    assert strict.send("MAIL FROM:a@example.org\r\n").startswith("501 5.1.7 ")


def test_disableVrfy():
    d = dialog("disable_vrfy_command = yes\n")
    assert "VRFY" not in d.send("EHLO c\r\n")
    assert d.send("VRFY bob\r\n") == "502 5.5.1 VRFY command is disabled\r\n"


def test_noopCommands():
    d = dialog("smtpd_noop_commands = XCLIENT, foo\n")
    assert d.send("XCLIENT NAME=x\r\n") == "250 2.0.0 Ok\r\n"
    assert d.send("FOO\r\n") == "250 2.0.0 Ok\r\n"


def test_forbiddenCommandsConfigurable():
    d = dialog("smtpd_forbidden_commands = CONNECT, GET, POST, USER\n")
    assert d.send("USER root\r\n") == "221 2.7.0 Error: I can break rules, too. Goodbye.\r\n"
    assert d.closed
    d = dialog()
    assert d.send("USER root\r\n") == "502 5.5.2 Error: command not recognized\r\n"
    d = dialog()
    assert d.send("\x16\x03\x01 binary junk\r\n").startswith("221 2.7.0 ")


def test_discardEhloKeywords():
    d = dialog("smtpd_discard_ehlo_keywords = pipelining, chunking, silent-discard\n")
    out = d.send("EHLO c\r\n")
    assert "PIPELINING" not in out and "CHUNKING" not in out and "BINARYMIME" not in out
    assert "250-8BITMIME" in out
    d.send("MAIL FROM:<a@example.org>\r\n")
    assert d.send("RCPT TO:<b@mx.test>\r\n") == "250 2.1.5 Ok\r\n"
    out = d.send("MAIL FROM:<a@example.org> BODY=BINARYMIME\r\n")
    assert out.startswith("503") or out.startswith("555")


@pytest.mark.parametrize("words, logged", [
    ("pipelining, dsn, chunking", "discarding EHLO keywords: PIPELINING DSN CHUNKING"),
    ("DSN Size 8bitmime etrn", "discarding EHLO keywords: 8BITMIME ETRN SIZE DSN"),  # Postfix's order
    ("pipelining, dsn, silent-discard", None),
    ("no-such-keyword", None),  # ignored, as in Postfix
    ("enhancedstatuscodes, dsn", None),  # Postfix's ehlo_cmd logs nothing then either
])
def test_discardEhloKeywordsLogUnlessSilent(words, logged):
    """smtpd_discard_ehlo_keywords: Postfix logs the discarded keywords at each EHLO unless silent-discard."""
    from tests.dialogs.harness import MailLog

    d = dialog(f"smtpd_discard_ehlo_keywords = {words}\n")
    with MailLog() as log:
        d.send("EHLO c\r\n")
        d.send("EHLO c\r\n")
        d.send("HELO c\r\n")
    found = log.matching("discarding EHLO keywords")
    assert found == ([logged, logged] if logged else [])


def test_rejectFooter():
    d = dialog("smtpd_reject_footer = For help see https://help.example\n")
    d.send("EHLO c\r\nMAIL FROM:<a@example.org>\r\n".split("\r\n", 1)[0] + "\r\n")
    d.send("MAIL FROM:<a@example.org>\r\n")
    assert d.send("RCPT TO:<x@elsewhere.example>\r\n") == (
        "454-4.7.1 <x@elsewhere.example>: Relay access denied\r\n454 4.7.1 For help see https://help.example\r\n"
    )
    assert d.send("NOOP\r\n") == "250 2.0.0 Ok\r\n"
    d = dialog("smtpd_reject_footer = \\c (see help.example)\n")
    assert d.send("XYZ\r\n") == "502 5.5.2 Error: command not recognized (see help.example)\r\n"


def test_queueMinfree():
    store = FakeQueueStore(freeSpace=5_000_000)
    d = dialog("queue_minfree = 1000000\n", store=store)
    d.send("EHLO c\r\n")
    assert d.send("MAIL FROM:<a@example.org> SIZE=2000000\r\n") == "250 2.1.0 Ok\r\n"
    d.send("RSET\r\n")
    assert d.send("MAIL FROM:<a@example.org> SIZE=3000000\r\n") == "452 4.3.1 Insufficient system storage\r\n"
    store.free = 500_000
    clock = d.factory.clock
    clock.advance(2)  # past the one-second cache
    assert d.send("MAIL FROM:<a@example.org>\r\n") == "452 4.3.1 Insufficient system storage\r\n"


def test_connectionCountLimit():
    factory = serverFactory("smtpd_client_connection_count_limit = 2\n", store=FakeQueueStore())
    first, second = Dialog(factory, peer=OUTSIDE), Dialog(factory, peer=OUTSIDE)
    assert first.banner.startswith("220 ") and second.banner.startswith("220 ")
    third = Dialog(factory, peer=OUTSIDE)
    assert third.banner == f"421 4.7.0 mx.test Error: too many connections from {OUTSIDE}\r\n"
    assert third.closed
    third.protocol.connectionLost(None)
    assert Dialog(factory, peer="192.0.2.9").banner.startswith("220 ")  # another client
    first.protocol.connectionLost(None)
    assert Dialog(factory, peer=OUTSIDE).banner.startswith("220 ")  # a slot came free
    for _ in range(5):  # mynetworks is exempt (smtpd_client_event_limit_exceptions)
        assert Dialog(factory, peer="127.0.0.1").banner.startswith("220 ")


def test_tarpitThenHardLimit():
    clock = Clock()
    d = dialog("smtpd_soft_error_limit = 2\nsmtpd_hard_error_limit = 4\nsmtpd_error_sleep_time = 5s\n", clock=clock)
    assert d.codes("XA\r\n") == [502]
    assert d.codes("XB\r\n") == [502]
    assert d.send("XC\r\n") == ""  # third error: over the soft limit, delayed
    clock.advance(4.9)
    assert d.read() == ""
    clock.advance(0.2)
    assert replyCodes(d.read()) == [502]
    assert d.send("NOOP\r\n") == ""  # every reply is delayed now
    clock.advance(5)
    assert d.read() == "250 2.0.0 Ok\r\n"
    d.send("XD\r\n")
    clock.advance(5)
    assert d.read() == "502 5.5.2 Error: command not recognized\r\n421 4.7.0 mx.test Error: too many errors\r\n"
    assert d.closed


def test_tarpitKeepsPipelinedOrder():
    clock = Clock()
    d = dialog("smtpd_soft_error_limit = 0\nsmtpd_error_sleep_time = 1s\n", clock=clock)
    d.send("EHLO c\r\n")
    # MAIL comes at once (no errors yet); each reply after the relay error waits a second.
    out = d.send("MAIL FROM:<a@example.org>\r\nRCPT TO:<x@elsewhere.example>\r\nRCPT TO:<b@mx.test>\r\n")
    assert out == "250 2.1.0 Ok\r\n"
    clock.advance(1)
    out += d.read()
    clock.advance(1)
    out += d.read()
    assert replyCodes(out) == [250, 454, 250]


def test_deliveringMailForgivesErrors():
    d = dialog("smtpd_hard_error_limit = 3\n")
    d.send("EHLO c\r\n")
    d.send("XA\r\n")
    d.send("XB\r\n")
    d.send("MAIL FROM:<a@example.org>\r\nRCPT TO:<b@mx.test>\r\nDATA\r\n")
    assert d.codes("hi\r\n.\r\n") == [250]
    assert d.codes("XC\r\n") == [502]
    assert d.codes("XD\r\n") == [502]
    assert not d.closed


def test_junkCommandLimit():
    d = dialog("smtpd_junk_command_limit = 3\nsmtpd_hard_error_limit = 2\n")
    for _ in range(3):
        assert d.codes("NOOP\r\n") == [250]
    assert d.codes("RSET\r\n") == [250]  # fourth junk command: one error
    assert d.send("NOOP\r\n") == "250 2.0.0 Ok\r\n421 4.7.0 mx.test Error: too many errors\r\n"
    assert d.closed


def test_recipientOvershoot():
    d = dialog("smtpd_recipient_limit = 1\nsmtpd_recipient_overshoot_limit = 2\nsmtpd_hard_error_limit = 1\n")
    d.send("EHLO c\r\n")
    d.send("MAIL FROM:<a@example.org>\r\n")
    assert d.codes("RCPT TO:<a@mx.test>\r\n") == [250]
    assert d.codes("RCPT TO:<b@mx.test>\r\n") == [452]
    assert d.codes("RCPT TO:<c@mx.test>\r\n") == [452]
    assert not d.closed
    assert d.send("RCPT TO:<d@mx.test>\r\n").endswith("421 4.7.0 mx.test Error: too many errors\r\n")


def test_unauthPipeliningCanBeAllowed():
    d = dialog("smtpd_forbid_unauth_pipelining = no\n")
    assert replyCodes(d.send("EHLO c\r\nNOOP\r\n")) == [250, 250]
    d = dialog()
    assert d.send("EHLO c\r\nNOOP\r\n") == "554 5.5.0 Error: SMTP protocol synchronization\r\n"
    assert d.closed


@pytest.mark.parametrize("action", ["ignore", "enforce", "drop"])
def test_earlyTalker(action):
    clock = Clock()
    d = dialog(f"postscreen_greet_wait = 3s\npostscreen_greet_action = {action}\n", clock=clock)
    assert d.banner == ""
    d.send("EHLO early\r\n")
    clock.advance(3)
    out = d.read()
    if action == "drop":
        assert out == "521 5.5.1 Protocol error\r\n" and d.closed
        return
    assert out.startswith("220 mx.test ESMTP mta\r\n250-mx.test")
    d.send("MAIL FROM:<a@example.org>\r\n")
    out = d.send("RCPT TO:<b@mx.test>\r\n")
    assert out == ("550 5.5.1 Protocol error\r\n" if action == "enforce" else "250 2.1.5 Ok\r\n")


def test_patientClientAfterGreetWait():
    clock = Clock()
    d = dialog("postscreen_greet_wait = 3s\npostscreen_greet_action = drop\n", clock=clock)
    clock.advance(3)
    assert d.read() == "220 mx.test ESMTP mta\r\n"
    assert replyCodes(d.send("EHLO c\r\n")) == [250]


def test_binaryMimeNeedsBdat():
    store = FakeQueueStore()
    d = dialog(store=store)
    d.send("EHLO c\r\n")
    d.send("MAIL FROM:<a@example.org> BODY=BINARYMIME\r\nRCPT TO:<b@mx.test>\r\n")
    assert d.send("DATA\r\n") == "503 5.5.1 Error: BODY=BINARYMIME requires BDAT\r\n"
    body = b"\x00\x01binary\r\n.\r\n"
    assert d.send(b"BDAT %d LAST\r\n" % len(body) + body) == "250 2.0.0 Ok: queued as FAKE0000000001\r\n"
    assert store.committed[0].content.endswith(body)
    assert store.committed[0].envelope.body == "BINARYMIME"


def test_bdatSizeLimit():
    store = FakeQueueStore()
    d = dialog("message_size_limit = 1000\n", store=store)
    d.send("EHLO c\r\n")
    d.send("MAIL FROM:<a@example.org>\r\nRCPT TO:<b@mx.test>\r\n")
    out = d.send(b"BDAT 600\r\n" + b"x" * 600 + b"BDAT 600\r\n" + b"y" * 600 + b"BDAT 10 LAST\r\n" + b"z" * 10)
    assert out.splitlines() == [
        "250 2.0.0 Ok: 600 bytes",
        "552 5.3.4 Error: message file too big",
        "551 5.0.0 Discarded 10 bytes after earlier error",  # Postfix's skip_bdat()
    ]
    assert store.committed == []
    assert d.send("MAIL FROM:<a@example.org>\r\n") == "250 2.1.0 Ok\r\n"


def test_mailRejectsAreLogged():
    from twisted.logger import globalLogPublisher

    events = []
    globalLogPublisher.addObserver(events.append)
    try:
        store = FakeQueueStore(freeSpace=0)
        d = dialog("message_size_limit = 1000\nqueue_minfree = 1\n", store=store)
        d.send("EHLO c\r\n")
        assert d.send("MAIL FROM:<a@example.org> SIZE=2000\r\n").startswith("552 ")
        assert d.send("MAIL FROM:<a@example.org>\r\n").startswith("452 ")
    finally:
        globalLogPublisher.removeObserver(events.append)
    lines = [e["mail_line"] for e in events if "mail_line" in e]
    assert (
        f"NOQUEUE: reject: MAIL from unknown[{OUTSIDE}]: 552 5.3.4 Message size exceeds fixed limit; "
        "proto=ESMTP helo=<c>"
    ) in lines
    assert f"NOQUEUE: reject: MAIL from unknown[{OUTSIDE}]: 452 4.3.1 Insufficient system storage; proto=ESMTP helo=<c>" in lines


def test_a_client_gone_while_the_exceptions_table_answers_is_neither_counted_nor_greeted(tmp_path):
    from twisted.internet.defer import Deferred

    table = tmp_path / "exceptions"
    table.write_text("192.0.2.1 OK\n")
    factory = serverFactory("smtpd_client_connection_count_limit = 1\n"
                            f"smtpd_client_event_limit_exceptions = texthash:{table}\n", store=FakeQueueStore())
    lookups = factory.eventLimitExceptions._tables[0]
    answer, pending = lookups.lookup, Deferred()
    lookups.lookup = lambda key: pending
    first = Dialog(factory, peer=OUTSIDE)
    first.protocol.connectionLost(None)
    pending.callback(None)  # the table answers after the client left
    assert first.read() == ""  # no banner into a closed session
    lookups.lookup = answer
    assert Dialog(factory, peer=OUTSIDE).banner.startswith("220 ")  # and no count left behind
