"""mta.cleanup.headers: hop count, dropped headers, missing headers, limits, any chunking."""

import calendar
import datetime
import email.utils
import random
import time

import pytest
from twisted.logger import LogLevel, capturedLogs

from mta.rewrite import RewriteContext
from mta.cleanup.headers import PIECE, TOO_MANY_HOPS, HeaderCleanup, mailDate, messageId

DROP = frozenset({"bcc", "content-length", "resent-bcc", "return-path"})
QID = "0aWfQ3Zk1r7Tb2"
HOST = "mx.example.com"
NOW = calendar.timegm((2026, 11, 21, 7, 58, 25))  # Sat, 21 Nov 2026 07:58:25 UTC


def make(out, **kw):
    args = dict(hopLimit=50, dropHeaders=DROP, addMissing=False, hostname=HOST, queueId=QID, now=NOW)
    args.update(kw)
    return HeaderCleanup(out.append, **args)


def whole(msg):
    return [msg] if msg else []


def bytewise(msg):
    return [msg[i:i + 1] for i in range(len(msg))]


def randomly(seed):
    def chunk(msg):
        rnd = random.Random(seed)
        chunks, i = [], 0
        while i < len(msg):
            n = rnd.choice((1, 2, 3, 7, 64, 2047, 2048, 2049, 5000))
            chunks.append(msg[i:i + n])
            i += n
        return chunks

    return chunk


def lineBlocks(seed):
    """DATA-style: blocks of whole lines (the last block may lack a line end only in tests)."""

    def chunk(msg):
        rnd = random.Random(seed)
        lines = msg.splitlines(keepends=True)
        chunks, i = [], 0
        while i < len(lines):
            n = rnd.randint(1, 4)
            chunks.append(b"".join(lines[i:i + n]))
            i += n
        return chunks

    return chunk


CHUNKINGS = [whole, bytewise, lineBlocks(1), lineBlocks(2)] + [randomly(s) for s in range(6)]


def run(msg, chunking=whole, **kw):
    out = []
    c = make(out, **kw)
    for chunk in chunking(msg):
        c.write(chunk)
    c.close()
    return b"".join(out), c


def runAll(msg, **kw):
    """Run every chunking; all must agree; give the output and one filter."""
    reference, ref = run(msg, **kw)
    for chunking in CHUNKINGS:
        got, c = run(msg, chunking, **kw)
        assert got == reference, chunking
        assert (c.hops, c.error, c.added, c.messageId, c.truncated) == (
            ref.hops, ref.error, ref.added, ref.messageId, ref.truncated), chunking
    return reference, ref


def added(resent=False, sender=None):
    p = "Resent-" if resent else ""
    text = f"{p}Message-Id: <{QID}@{HOST}>\r\n{p}Date: {mailDate(NOW)}\r\n"
    if sender is not None:
        text += f"{p}From: {sender or 'MAILER-DAEMON'}\r\n"
    return text.encode()


BODY = b"Received: from body\r\nBcc: body line\r\nMessage-ID: <body>\r\n\r\n.\r\nend\r\n"


@pytest.fixture
def tz(monkeypatch):
    def use(spec):
        monkeypatch.setenv("TZ", spec)
        time.tzset()

    yield use
    monkeypatch.undo()
    time.tzset()


# -- pass-through ----------------------------------------------------------------


def test_ordinary_message_passes_unchanged():
    msg = (
        b"From: a@example.org\r\nTo: b@example.com\r\nSubject: hi\r\n"
        b"Message-ID: <1@example.org>\r\nDate: Sat, 21 Nov 2026 08:00:00 +0000\r\n"
        b"X-Folded: one\r\n\ttwo\r\n  three\r\n\r\n" + BODY
    )
    out, c = runAll(msg, addMissing=True)
    assert out == msg
    assert c.added == () and c.error is None and c.hops == 1
    assert c.messageId == "<1@example.org>"


@pytest.mark.parametrize("chunking", CHUNKINGS)
def test_body_is_not_examined(chunking):
    msg = b"Subject: s\r\n\r\n" + BODY * 3
    out, c = run(msg, chunking, addMissing=True)
    assert out == b"Subject: s\r\n" + added() + b"\r\n" + BODY * 3
    assert c.hops == 1  # the Received: lines in the body do not count
    assert c.messageId == f"<{QID}@{HOST}>"  # nor does the body's Message-ID


def test_body_chunks_go_to_the_sink_as_they_are():
    out = []
    c = make(out)
    c.write(b"Subject: s\r\n\r\nfirst body line\r\n")
    body = b"Bcc: x\r\n" * 1000
    c.write(body)
    assert out[-1] is body  # not copied, not split
    c.close()
    assert b"".join(out) == b"Subject: s\r\n\r\nfirst body line\r\n" + body


def test_eight_bit_header_values_are_kept():
    msg = b"Subject: caf\xc3\xa9 \xff\xfe\r\nX-Raw: \x80\x81\r\n\r\nb\xe9\r\n"
    out, _ = runAll(msg)
    assert out == msg


def test_bare_lf_lines_from_bdat():
    out, c = runAll(b"Subject: a\nBcc: b\n c\nReceived: x\n\nBcc: body\n")
    assert out == b"Subject: a\nReceived: x\n\nBcc: body\n"
    assert c.hops == 2


# -- where the header section ends ---------------------------------------------------


def test_headers_only_message_gets_no_empty_line():
    out, c = runAll(b"Subject: only headers\r\nTo: x@example.com\r\n", addMissing=True)
    assert out == b"Subject: only headers\r\nTo: x@example.com\r\n" + added()
    assert c.added == ("Message-Id", "Date")


def test_unterminated_last_header_gets_a_line_end():
    out, _ = runAll(b"Subject: a\r\nX-Last: b", addMissing=True)
    assert out == b"Subject: a\r\nX-Last: b\r\n" + added()
    out, _ = runAll(b"Subject: a\r\nX-Last: b")
    assert out == b"Subject: a\r\nX-Last: b\r\n"


def test_a_header_ending_in_cr_at_the_end_gets_lf():
    out, _ = runAll(b"Subject: a\r\nX-Last: b\r")
    assert out == b"Subject: a\r\nX-Last: b\r\n"


def test_unterminated_body_is_left_alone():
    out, _ = runAll(b"Subject: a\r\n\r\nno line end")
    assert out == b"Subject: a\r\n\r\nno line end"


def test_empty_message():
    out, c = runAll(b"")
    assert out == b"" and c.added == ()
    out, c = runAll(b"", addMissing=True)
    assert out == added()
    out, c = runAll(b"\r\n", addMissing=True)
    assert out == added() + b"\r\n"


@pytest.mark.parametrize(
    "line",
    [
        b"this is not a header",
        b"Sub ject: space in the name",
        b": no name",
        b"S\xfcbject: 8-bit name",
        b"Sub\x7fject: DEL in the name",
        b"Subject",
        b"From someone in the middle",
    ],
)
def test_a_non_header_line_starts_the_body(line):
    msg = b"Subject: a\r\n" + line + b"\r\nBcc: hidden\r\nReceived: x\r\n\r\nmore\r\n"
    out, c = runAll(msg, addMissing=True)
    # Recent Postfix: an empty line goes in, so that every reader sees the same body.
    assert out == b"Subject: a\r\n" + added() + b"\r\n" + line + b"\r\nBcc: hidden\r\nReceived: x\r\n\r\nmore\r\n"
    assert c.hops == 1
    out, c = runAll(msg, addMissing=True, fixEndOfHeaders=False)  # Postfix 3.10 and older
    assert out == b"Subject: a\r\n" + added() + line + b"\r\nBcc: hidden\r\nReceived: x\r\n\r\nmore\r\n"


def test_first_line_with_white_space_is_body_not_our_received_header():
    msg = b"  indented\r\nSubject: x\r\n\r\n"
    out, _ = runAll(msg, addMissing=True)
    assert out == added() + b"\r\n" + msg
    out, _ = runAll(msg, fixEndOfHeaders=False)  # smtpd's own fix, always made
    assert out == b"\r\n" + msg


def test_leading_from_lines_become_x_mailbox_line():
    msg = b"From a@example.org Sat Nov 21 08:00:00 2026\r\n>From b\r\nSubject: s\r\n\r\nFrom body\r\n"
    out, _ = runAll(msg)
    assert out == (
        b"X-Mailbox-Line: From a@example.org Sat Nov 21 08:00:00 2026\r\n"
        b"X-Mailbox-Line: >From b\r\nSubject: s\r\n\r\nFrom body\r\n"
    )


def test_obsolete_space_before_colon_is_normalized():
    out, c = runAll(b"Subject :  hi\r\nMessage-ID\t: <m@x>\r\nBCC : x\r\n\r\n", addMissing=True)
    assert out == b"Subject:  hi\r\nMessage-ID: <m@x>\r\nDate: " + mailDate(NOW).encode() + b"\r\n\r\n"
    assert c.messageId == "<m@x>"


# -- message_drop_headers -----------------------------------------------------------


def test_dropped_headers_go_with_their_continuation_lines():
    msg = (
        b"Return-Path: <x@example.org>\r\n"
        b"Subject: keep\r\n"
        b"Bcc: one@example.org,\r\n\ttwo@example.org,\r\n    three@example.org\r\n"
        b"X-Keep: folded\r\n\tstill here\r\n"
        b"BCC: upper\r\n"
        b"bcc:lower\r\n"
        b"Content-Length: 12\r\n"
        b"Resent-Bcc: r@example.org\r\n \r\n"
        b"X-Bcc: not dropped\r\n"
        b"\r\nBcc: body\r\n"
    )
    out, _ = runAll(msg)
    assert out == b"Subject: keep\r\nX-Keep: folded\r\n\tstill here\r\nX-Bcc: not dropped\r\n\r\nBcc: body\r\n"


def test_drop_list_is_configurable():
    out, _ = runAll(b"Bcc: b\r\nX-Spam: yes\r\n more\r\n\r\n", dropHeaders=frozenset({"X-Spam "}))
    assert out == b"Bcc: b\r\n\r\n"
    out, _ = runAll(b"Bcc: b\r\n\r\n", dropHeaders=frozenset())
    assert out == b"Bcc: b\r\n\r\n"


# -- hopcount_limit -------------------------------------------------------------------


def received(n, name=b"Received"):
    return b"".join(name + b": from h%d by h%d;\r\n\tSat, 21 Nov 2026 08:00:00 +0000\r\n" % (i, i) for i in range(n))


@pytest.mark.parametrize("chunking", CHUNKINGS)
def test_hop_count_with_our_own_received_header(chunking):
    # Postfix counts smtpd's own Received: header: 48 arriving ones pass, 49 do not.
    _, c = run(received(48) + b"\r\nbody\r\n", chunking)
    assert (c.hops, c.error) == (49, None)
    out, c = run(received(49) + b"\r\nbody\r\n", chunking)
    assert (c.hops, c.error) == (50, TOO_MANY_HOPS)
    assert out == received(49) + b"\r\nbody\r\n"  # keeps consuming; the server rejects at the end


def test_hop_count_at_the_limit_and_one_over():
    _, c = runAll(received(2) + b"\r\n", hopLimit=3, priorHops=0)
    assert (c.hops, c.error) == (2, None)
    _, c = runAll(received(3) + b"\r\n", hopLimit=3, priorHops=0)  # reaching the limit is a loop
    assert (c.hops, c.error) == (3, TOO_MANY_HOPS)
    _, c = runAll(received(4) + b"\r\n", hopLimit=3, priorHops=0)
    assert (c.hops, c.error) == (4, TOO_MANY_HOPS)


def test_hop_count_ignores_case_and_other_trace_headers():
    msg = received(1, b"RECEIVED") + received(1, b"received ") + received(1, b"rEcEiVeD")
    msg += b"Delivered-To: a@example.org\r\n" * 10 + b"X-Received: x\r\nReceived-SPF: pass\r\n\r\n"
    _, c = runAll(msg, hopLimit=5)
    assert (c.hops, c.error) == (4, None)
    _, c = runAll(msg, hopLimit=4)
    assert c.error == TOO_MANY_HOPS


def test_dropped_received_headers_still_count():
    _, c = runAll(received(3) + b"\r\n", hopLimit=4, dropHeaders=frozenset({"received"}))
    assert c.error == TOO_MANY_HOPS


def test_nothing_is_added_to_a_looping_message():
    _, c = runAll(received(3) + b"\r\n", hopLimit=4, addMissing=True)
    assert c.error == TOO_MANY_HOPS and c.added == ()


def test_a_limit_our_own_header_reaches():
    _, c = runAll(b"Subject: s\r\n\r\n", hopLimit=1)
    assert c.error == TOO_MANY_HOPS


# -- missing headers ------------------------------------------------------------------------


def test_missing_headers_are_added_only_when_asked():
    msg = b"Subject: s\r\n\r\nbody\r\n"
    out, c = runAll(msg)
    assert out == msg and c.added == () and c.messageId is None
    out, c = runAll(msg, addMissing=True)
    assert out == b"Subject: s\r\n" + added() + b"\r\nbody\r\n"
    assert c.added == ("Message-Id", "Date")
    assert c.messageId == f"<{QID}@{HOST}>"


@pytest.mark.parametrize(
    "present, wanted",
    [
        (b"Message-ID: <x@y>\r\n", ["Date"]),
        (b"MESSAGE-ID: <x@y>\r\n", ["Date"]),
        (b"message-id :<x@y>\r\n", ["Date"]),
        (b"Date: Sat, 21 Nov 2026 08:00:00 +0000\r\n", ["Message-Id"]),
        (b"DATE: whatever\r\n", ["Message-Id"]),
        (b"date:\r\n", ["Message-Id"]),
        (b"Message-Id: <x@y>\r\nDate: d\r\n", []),
        (b"X-Message-ID: <x@y>\r\nX-Date: d\r\n", ["Message-Id", "Date"]),
    ],
)
def test_only_missing_headers_are_added(present, wanted):
    out, c = runAll(b"Subject: s\r\n" + present + b"\r\nbody\r\n", addMissing=True)
    assert list(c.added) == wanted
    lines = out.split(b"\r\n\r\n", 1)[0].split(b"\r\n")
    names = [l.split(b":")[0].strip().lower() for l in lines]
    assert names.count(b"message-id") == 1 and names.count(b"date") == 1
    expected = {"Message-Id": f"Message-Id: <{QID}@{HOST}>".encode(), "Date": f"Date: {mailDate(NOW)}".encode()}
    assert lines[len(lines) - len(wanted):] == [expected[name] for name in wanted]  # at the end, in order


def test_added_headers_follow_the_existing_ones():
    out, _ = runAll(b"A: 1\r\nB: 2\r\n folded\r\nBcc: dropped\r\n\r\nbody\r\n", addMissing=True)
    assert out == b"A: 1\r\nB: 2\r\n folded\r\n" + added() + b"\r\nbody\r\n"


def test_resent_headers_select_resent_variants():
    msg = b"Message-Id: <m@x>\r\nDate: d\r\nFrom: f@x\r\nResent-From: r@x\r\n\r\n"
    out, c = runAll(msg, addMissing=True, sender="s@example.org")
    assert out == msg[:-2] + added(resent=True) + b"\r\n"
    assert c.added == ("Resent-Message-Id", "Resent-Date")
    assert c.messageId == "<m@x>"
    # A dropped Resent-Bcc: still counts as a Resent- header.
    out, c = runAll(b"Resent-Bcc: x\r\n\r\n", addMissing=True, sender="s@example.org")
    assert out == added(resent=True, sender="s@example.org") + b"\r\n"
    assert c.added == ("Resent-Message-Id", "Resent-Date", "Resent-From")
    assert c.messageId is None
    out, c = runAll(b"Resent-Message-ID: <r@x>\r\nresent-date: d\r\n\r\n", addMissing=True)
    assert c.added == ()


def test_from_is_added_from_the_envelope_sender():
    out, c = runAll(b"Subject: s\r\n\r\n", addMissing=True, sender="a@example.org")
    assert out == b"Subject: s\r\n" + added(sender="a@example.org") + b"\r\n"
    assert c.added == ("Message-Id", "Date", "From")
    out, _ = runAll(b"Subject: s\r\n\r\n", addMissing=True, sender="")
    assert out == b"Subject: s\r\n" + added(sender="") + b"\r\n"  # From: MAILER-DAEMON
    out, c = runAll(b"from: x\r\n\r\n", addMissing=True, sender="a@example.org")
    assert c.added == ("Message-Id", "Date")
    out, _ = runAll(b"\r\n", addMissing=True, sender='"a b"@example.org\r\nBcc: injected')
    assert b'From: "a b"@example.orgBcc: injected\r\n' in out


def test_undisclosed_recipients_header():
    kw = dict(addMissing=True, undisclosedRecipients="To: undisclosed-recipients:;")
    out, c = runAll(b"Subject: s\r\n\r\n", **kw)
    assert out == b"Subject: s\r\n" + added() + b"To: undisclosed-recipients:;\r\n\r\n"
    assert c.added == ("Message-Id", "Date", "To")
    for present in (b"To: a\r\n", b"cc: a\r\n", b"Resent-To: a\r\n", b"RESENT-CC: a\r\n"):
        _, c = runAll(present + b"\r\n", **kw)
        assert "To" not in c.added
    _, c = runAll(b"\r\n", addMissing=True, undisclosedRecipients="not a header")
    assert c.added == ("Message-Id", "Date")
    _, c = runAll(b"\r\n", undisclosedRecipients="To: x:;")  # only with addMissing
    assert c.added == ()


def test_message_id_forms():
    assert messageId(QID, HOST, NOW) == f"{QID}@{HOST}"  # enable_long_queue_ids = yes
    assert messageId("3F2A1B4C5D", HOST, NOW, longQueueIds=False) == f"20261121075825.3F2A1B4C5D@{HOST}"
    out, _ = runAll(b"\r\n", addMissing=True, longQueueIds=False, queueId="3F2A1B4C5D")
    assert out.startswith(b"Message-Id: <20261121075825.3F2A1B4C5D@mx.example.com>\r\n")


def test_date_is_postfix_mail_date(tz):
    tz("CET-1CEST,M3.5.0,M10.5.0/3")
    assert mailDate(NOW) == "Sat, 21 Nov 2026 08:58:25 +0100 (CET)"
    assert mailDate(calendar.timegm((2026, 11, 1, 23, 5, 9))) == "Mon,  2 Nov 2026 00:05:09 +0100 (CET)"
    assert mailDate(calendar.timegm((2026, 7, 4, 12, 0, 0))) == "Sat,  4 Jul 2026 14:00:00 +0200 (CEST)"
    tz("NST+3:30")
    assert mailDate(NOW) == "Sat, 21 Nov 2026 04:28:25 -0330 (NST)"
    tz("UTC0")
    assert mailDate(NOW) == "Sat, 21 Nov 2026 07:58:25 +0000 (UTC)"
    for when in (NOW, NOW + 12345678, 0):
        parsed = email.utils.parsedate_to_datetime(mailDate(when))
        assert parsed == datetime.datetime.fromtimestamp(when, datetime.timezone.utc)
    out, _ = runAll(b"\r\n", addMissing=True)
    assert b"\r\nDate: Sat, 21 Nov 2026 07:58:25 +0000 (UTC)\r\n" in out


# -- header_size_limit -----------------------------------------------------------------


def test_a_header_over_the_limit_is_cut_and_headers_go_on():
    cont = b"\t" + b"c" * 29 + b"\r\n"  # 30 bytes, 31 as Postfix counts with the joining newline
    msg = b"X-Long: aaaa\r\n" + cont * 10 + b"Subject: after\r\nBcc: still dropped\r\nReceived: x\r\n\r\nbody\r\n"
    out, c = runAll(msg, headerSizeLimit=100)
    # 12, 43, 74, 105: the third continuation starts below the limit and is kept whole.
    assert out == b"X-Long: aaaa\r\n" + cont * 3 + b"Subject: after\r\nReceived: x\r\n\r\nbody\r\n"
    assert c.truncated and c.hops == 2


def test_the_limit_is_per_header_not_per_section():
    msg = b"".join(b"X-H%03d: %s\r\n" % (i, b"v" * 40) for i in range(100)) + b"\r\nbody\r\n"
    out, c = runAll(msg, headerSizeLimit=100)
    assert out == msg and not c.truncated


def test_a_long_line_is_judged_in_pieces():
    line = b"X-Big: " + b"a" * 20000
    out, c = runAll(line + b"\r\nSubject: s\r\n\r\n", headerSizeLimit=5000)
    assert out == line[: 3 * PIECE] + b"\r\nSubject: s\r\n\r\n"
    assert c.truncated
    out, c = runAll(b"X-Big: " + b"a" * 3000 + b"\r\n\r\n", headerSizeLimit=100)
    assert out == b"X-Big: " + b"a" * (PIECE - 7) + b"\r\n\r\n"  # the first piece is always kept


def test_a_long_line_cut_before_its_cr_still_ends_in_crlf():
    line = b"X-Big: " + b"a" * (2 * PIECE - 8) + b"\r\n"  # the CR is the last byte of piece 2
    out, _ = runAll(line + b"\r\n", headerSizeLimit=10)
    assert out == line[:PIECE] + b"\r\n\r\n"


def test_a_long_non_header_line_starts_the_body():
    junk = b"x" * (3 * PIECE)  # no colon within the first piece
    out, _ = runAll(b"Subject: s\r\n" + junk + b"\r\nBcc: b\r\n", fixEndOfHeaders=False)
    assert out == b"Subject: s\r\n" + junk + b"\r\nBcc: b\r\n"


# -- untrusted input: bounded memory, linear work ----------------------------------------


def feed(c, msg, size):
    """Feed C{msg} in C{size}-byte chunks, watching the held state stay small."""
    most = 0
    for i in range(0, len(msg), size):
        c.write(msg[i:i + size])
        most = max(most, len(c._partial) + len(c._hdr or b""))
    c.close()
    return most


@pytest.mark.parametrize(
    "header",
    [
        b"".join(b"X-Filler-%05d: %s\r\n" % (i, b"f" * 40) for i in range(2000)),  # many headers
        b"X-Folded: start\r\n" + b"\tcontinued line of text\r\n" * 4000,  # one huge header
        b"X-Line: " + b"z" * 100000 + b"\r\n",  # one huge line
    ],
)
def test_a_big_header_section_byte_by_byte_is_linear_and_bounded(header):
    assert len(header) >= 100000
    out = []
    c = make(out, headerSizeLimit=10000)
    most = feed(c, header + b"\r\nbody\r\n", 1)
    assert c.work <= len(header) + 2  # each byte searched once for its line end
    assert most <= 10000 + 2 * PIECE + 100


def test_a_header_section_that_never_ends():
    out = []
    c = make(out, headerSizeLimit=1000)
    for i in range(5000):
        c.write(b"X-H: " + b"v" * 100 + b"\r\n\t" + b"w" * 50 + b"\r\n")
        assert len(c._hdr or b"") <= 1000 + PIECE
    c.close()
    assert len(b"".join(out)) == 5000 * 160


def test_a_line_without_end_in_big_chunks():
    out = []
    c = make(out, headerSizeLimit=10000)
    most = feed(c, b"X-Endless: " + b"e" * 1000000, 65536)
    assert most <= 10000 + 2 * PIECE + 65536  # the chunk itself, briefly
    assert len(b"".join(out)) <= 10000 + PIECE + 2


def test_write_after_close_is_a_bug():
    out = []
    c = make(out)
    c.close()
    with pytest.raises(RuntimeError):
        c.write(b"x")


# -- address rewriting (mta.rewrite) ------------------------------------------------------

LOCAL = RewriteContext("local", "origin.example", "")


def test_address_headers_are_rewritten_in_any_chunking():
    msg = (
        b"From: Charlie Root <root>\r\nTo: alice, bob@example.org,\r\n\tcarol\r\nCc: (team) dave\r\n"
        b"Subject: root\r\nX-To: root\r\nReply-To: \"r\xc3\xb6ot\"\r\n\r\nTo: root\r\n"
    )
    out, c = runAll(msg, rewrite=LOCAL)
    assert out == (
        b"From: Charlie Root <root@origin.example>\r\n"
        b"To: alice@origin.example, bob@example.org,\r\n\tcarol@origin.example\r\n"
        b"Cc: (team) dave@origin.example\r\nSubject: root\r\nX-To: root\r\n"
        b"Reply-To: r\xc3\xb6ot@origin.example\r\n"  # needless quotes go, as in Postfix
        b"\r\nTo: root\r\n"  # the body is not examined
    )
    assert c.rewritten == 4 and c.notRewritten == 0


def test_without_a_context_headers_stay_bare():
    msg = b"From: root\r\nTo: alice\r\n\r\nbody\r\n"
    out, c = runAll(msg)
    assert out == msg and c.rewritten == 0


def test_dropped_headers_are_dropped_not_rewritten():
    out, _ = runAll(b"To: a\r\nBcc: secret\r\nResent-Bcc: s2\r\nReturn-Path: <x>\r\n\r\n", rewrite=LOCAL)
    assert out == b"To: a@origin.example\r\n\r\n"


def test_only_the_primary_header_section_is_rewritten():
    msg = b"To: a\r\nnot a header\r\nCc: b\r\n\r\n"
    out, _ = runAll(msg, rewrite=LOCAL)
    assert out == b"To: a@origin.example\r\n\r\nnot a header\r\nCc: b\r\n\r\n"


def test_obsolete_header_form_is_rewritten():
    out, _ = runAll(b"To : a\r\n\r\n", rewrite=LOCAL)
    assert out == b"To: a@origin.example\r\n\r\n"


def test_added_from_is_the_envelope_sender():
    out, c = runAll(b"To: bob\r\n\r\n", rewrite=LOCAL, addMissing=True, sender="alice@origin.example")
    assert out == b"To: bob@origin.example\r\n" + added(sender="alice@origin.example") + b"\r\n"


def test_a_malformed_address_header_passes_unchanged():
    msg = b"To: \"unterminated root\r\nFrom: root (unclosed\r\nCc: a\x01b\r\n\r\n"
    out, c = runAll(msg, rewrite=LOCAL)
    assert out == msg and c.rewritten == 0


def test_a_failing_rewrite_keeps_the_header():
    class Broken:
        def header(self, header):
            raise ZeroDivisionError("bug")

    with capturedLogs() as events:
        out, _ = run(b"To: root\r\n\r\nbody\r\n", rewrite=Broken())
    assert out == b"To: root\r\n\r\nbody\r\n"
    [event] = [e for e in events if e["log_level"] == LogLevel.critical]
    assert event["log_failure"].check(ZeroDivisionError)


def test_a_header_cut_at_the_size_limit_is_rewritten():
    value = b", ".join(b"a-long-user-name-%d" % i for i in range(200))  # about 4.4 kB
    out, c = run(b"To: " + value + b"\r\n\r\n", rewrite=LOCAL, headerSizeLimit=1024)
    header = out.split(b"\r\n\r\n")[0]
    assert c.truncated and c.rewritten == 1
    assert header.startswith(b"To: a-long-user-name-0@origin.example, a-long-user-name-1@origin.example,")
    assert all(len(line) <= 78 for line in header.split(b"\r\n"))


def test_rewriting_adds_a_bounded_number_of_bytes():
    line = b"To: " + b", ".join(b"u%d" % i for i in range(100)) + b"\r\n"  # grows by 100 * 15 bytes
    out, c = run(line * 3 + b"\r\n", rewrite=LOCAL, rewriteLimit=4000)
    headers = out.split(b"\r\n\r\n")[0] + b"\r\n"
    assert c.rewritten == 2 and c.notRewritten == 1
    assert headers.endswith(line)  # the third is left as it came
    assert len(out) - len(line * 3 + b"\r\n") <= 4000
    # by default: ten times header_size_limit
    out, c = run(line * 8 + b"\r\n", rewrite=LOCAL, headerSizeLimit=1024)
    assert (c.rewritten, c.notRewritten) == (6, 2)
