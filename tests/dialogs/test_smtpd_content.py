"""
Scripted dialogs for message content: SMTP smuggling after earlier DATA errors, BDAT content
checks, BDAT 0, and what smtpd_forbid_bare_newline does with commands.
"""

import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mta.testing import FakeQueueStore, serverFactory
from tests.dialogs.harness import Dialog, MailLog, replyCodes

OUTSIDE = "198.51.100.7"  # not in $mynetworks: smtpd_forbid_bare_newline applies as set
INSIDE = "127.0.0.1"  # in $mynetworks = smtpd_forbid_bare_newline_exclusions: normalize
MODES = ["reject", "yes", "normalize", "no"]
BARE = re.compile(rb"(?<!\r)\n|\r(?!\n)")


def opened(mode, peer, store, main=""):
    """A session in DATA (after the 354), with smtpd_forbid_bare_newline = C{mode}."""
    d = Dialog(serverFactory(f"smtpd_forbid_bare_newline = {mode}\n" + main, store=store), peer=peer)
    d.send("EHLO client.example\r\n")
    assert replyCodes(d.send("MAIL FROM:<a@example.org>\r\nRCPT TO:<b@mx.test>\r\nDATA\r\n")) == [250, 250, 354]
    return d


def effectiveMode(mode, peer):
    return "normalize" if mode in ("reject", "yes") and peer == INSIDE else mode


# -- smuggling after an earlier DATA error -------------------------------------------------------

FIRST_ERRORS = {
    "line-too-long": (b"x" * 3000 + b"\r\n", "552 5.3.4 Error: message line longer than 2048 bytes", ""),
    "too-big": (b"y" * 300 + b"\r\n", "552 5.3.4 Error: message file too big", "message_size_limit = 200\n"),
}
TRICKS = {
    "LF.LF": b"\n.\n",
    "LF.CRLF": b"\n.\r\n",
    "CRLF.LF": b"\r\n.\n",
    "CR.CR": b"\r.\r",
    "CR.CRLF": b"\r.\r\n",
    "CRLF.CR": b"\r\n.\r",
    "NUL.CRLF": b"\r\n\x00.\r\n",
    "dot-NUL": b"\r\n.\x00\r\n",
}
SMUGGLED = b"MAIL FROM:<evil@example.org>\r\nRCPT TO:<victim@mx.test>\r\nDATA\r\nSubject: smuggled\r\n\r\nx\r\n"


@pytest.mark.parametrize("how", ["one-write", "error|trick", "trick|commands", "bytewise"])
@pytest.mark.parametrize("trick", TRICKS)
@pytest.mark.parametrize("first", FIRST_ERRORS)
@pytest.mark.parametrize("peer", [OUTSIDE, INSIDE], ids=["stranger", "excluded-client"])
@pytest.mark.parametrize("mode", MODES)
def test_regression_noSmugglingAfterAnEarlierDataError(mode, peer, first, trick, how):
    """
    The field defect: an over-long line or too much data, then a bare LF (or CR): the session
    answered 552, went back to command mode, and the smuggled transaction was queued.  Now
    DATA ends at the real CRLF.CRLF only, or the session rejects the bare newline and closes.
    """
    head, reply, main = FIRST_ERRORS[first]
    store = FakeQueueStore()
    d = opened(mode, peer, store, main)
    stream = b"Subject: outer\r\n\r\n" + head + TRICKS[trick] + SMUGGLED + b".\r\nQUIT\r\n"
    if how == "one-write":
        out = d.send(stream)
    elif how == "error|trick":  # the error is recorded in one read, the trick comes in the next
        cut = stream.index(TRICKS[trick])
        out = d.send(stream[:cut]) + d.send(stream[cut:])
    elif how == "trick|commands":  # the would-be commands come in a later read
        cut = stream.index(TRICKS[trick]) + len(TRICKS[trick])
        out = d.send(stream[:cut]) + d.send(stream[cut:])
    else:
        out = d.send(stream, bytewise=True)
    if effectiveMode(mode, peer) in ("reject", "yes") and BARE.search(TRICKS[trick]):
        assert out == "550 5.5.2 mx.test Error: bare <LF> received\r\n"
    else:
        assert out == f"{reply}\r\n221 2.0.0 Bye\r\n"
    assert d.closed
    assert store.committed == []
    assert all(m.envelope is None for m in store.messages)


@pytest.mark.parametrize("mode", MODES)
def test_dataAfterAnErrorEndsAtTheRealEndAndTheSessionGoesOn(mode):
    """After the 552 at the real end, the session is in command mode and takes the next message."""
    store = FakeQueueStore()
    d = opened(mode, INSIDE, store)
    assert d.send(b"x" * 3000 + b"\n.\nMAIL FROM:<evil@example.org>\r\n") == ""
    assert d.send(b"more\r\n.\r\n") == "552 5.3.4 Error: message line longer than 2048 bytes\r\n"
    assert replyCodes(d.send("MAIL FROM:<a@example.org>\r\nRCPT TO:<b@mx.test>\r\nDATA\r\n")) == [250, 250, 354]
    assert d.send("ok\r\n.\r\n") == "250 2.0.0 Ok: queued as FAKE0000000002\r\n"
    assert [m.envelope.sender for m in store.committed] == ["a@example.org"]


TOKENS = [b"\r", b"\n", b".", b"\r\n", b"\n.\n", b"\r.\r", b"\n.\r\n", b"\x00", b"x" * 30, b"y" * 700,
          b"z" * 1200, b"MAIL FROM:<evil@example.org>\r\n", b"RCPT TO:<victim@mx.test>\r\n", b"DATA\r\n",
          b"QUIT\r\n"]


@settings(max_examples=300, deadline=None, database=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(st.lists(st.sampled_from(TOKENS), max_size=6), max_size=8),
    st.sampled_from(MODES),
    st.sampled_from([OUTSIDE, INSIDE]),
)
def test_property_hostileStreamsEndDataAtTheFirstCrlfDotCrlf(reads, mode, peer):
    """
    Random hostile content in random reads: the DATA reply comes out in the read that holds
    the first CRLF.CRLF after the 354 and not before (or the session rejects a bare newline
    and closes), the next command is the one right after it, and at most one message is
    committed, from the real sender.
    """
    store = FakeQueueStore()
    d = opened(mode, peer, store, "line_length_limit = 500\nmessage_size_limit = 2000\n")
    pieces = [b"".join(tokens) for tokens in reads] + [b"\r\n.\r\n"]
    stream = b"".join(pieces)
    end = (b"\r\n" + stream).find(b"\r\n.\r\n") + 3  # bytes through the end of data
    stream = stream[:end] + b"NOOP\r\n"
    cuts, position = [], 0
    for piece in pieces:
        position += len(piece)
        if position < end:
            cuts.append(position)
    cuts.append(len(stream))
    start = 0
    for cut in cuts:
        out = d.send(stream[start:cut])
        if d.closed:
            assert out.startswith("550 5.5.2 mx.test Error: bare <LF> received")
            assert effectiveMode(mode, peer) in ("reject", "yes") and BARE.search(stream[:end])
            assert store.committed == []
            return
        if cut < end:
            assert out == "", (start, cut, end)
        elif start < end:
            assert replyCodes(out)[0] in (250, 552), out  # the DATA reply, here and only here
        start = cut
    assert len(store.committed) <= 1 and all(m.envelope.sender == "a@example.org" for m in store.committed)
    assert d.send("NOOP\r\n") == "250 2.0.0 Ok\r\n"  # command mode, not DATA


# -- BDAT content: the same line-end rules ----------------------------------------------------------


def bdatSession(mode, peer, store, body="7BIT"):
    d = Dialog(serverFactory(f"smtpd_forbid_bare_newline = {mode}\n", store=store), peer=peer)
    d.send("EHLO client.example\r\n")
    assert replyCodes(d.send(f"MAIL FROM:<a@example.org> BODY={body}\r\nRCPT TO:<b@mx.test>\r\n")) == [250, 250]
    return d


def chunked(*chunks):
    return b"".join(b"BDAT %d%s\r\n" % (len(c), b" LAST" if i == len(chunks) - 1 else b"") + c
                    for i, c in enumerate(chunks))


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("peer", [OUTSIDE, INSIDE], ids=["stranger", "excluded-client"])
@pytest.mark.parametrize("chunks", [
    (b"Subject: x\r\n\r\nbare\nLF\r\n",),
    (b"Subject: x\r\n\r\nbare\rCR\r\n",),
    (b"Subject: x\r\n\r\nsplit\r", b"not an LF\r\n"),
    (b"Subject: x\r\n\r\nends in a bare CR\r",),
], ids=["LF", "CR", "CR|x", "CR-at-end"])
def test_regression_bdatContentGetsTheBareNewlineRules(mode, peer, chunks):
    """The same bytes that DATA refuses under reject were queued through BDAT; not any more."""
    store = FakeQueueStore()
    d = bdatSession(mode, peer, store)
    with MailLog() as log:
        out = d.send(chunked(*chunks))
    if effectiveMode(mode, peer) in ("reject", "yes"):
        assert out.splitlines()[-1] == "550 5.5.2 mx.test Error: bare <LF> received"
        assert d.closed and store.committed == []
        assert log.matching(f"reject: bare <LF> received in BDAT from unknown[{peer}]; disconnecting")
        return
    assert out.splitlines()[-1] == "250 2.0.0 Ok: queued as FAKE0000000001"
    content = store.committed[0].content
    sent = b"".join(chunks).split(b"\r\n\r\n", 1)[1]
    if effectiveMode(mode, peer) == "normalize":
        assert content.endswith(re.sub(rb"(?<!\r)\n", b"\r\n", sent))
    else:
        assert content.endswith(sent)


def test_bdatCrlfSplitAcrossChunksIsFine():
    store = FakeQueueStore()
    d = bdatSession("reject", OUTSIDE, store)
    out = d.send(chunked(b"Subject: x\r", b"\n\r\nbody\r", b"\n"))
    assert out.splitlines() == ["250 2.0.0 Ok: 11 bytes", "250 2.0.0 Ok: 19 bytes", "250 2.0.0 Ok: queued as FAKE0000000001"]
    assert store.committed[0].content.endswith(b"Subject: x\r\n\r\nbody\r\n")


def test_bdatBinarymimeIsExemptFromLineChecks():
    store = FakeQueueStore()
    d = bdatSession("reject", OUTSIDE, store, body="BINARYMIME")
    body = b"Subject: x\r\n\r\n" + bytes(range(256)) * 20 + b"\n.\n\r" + b"z" * 5000
    assert d.send(chunked(body[:100], body[100:])).splitlines()[-1] == "250 2.0.0 Ok: queued as FAKE0000000001"
    assert store.committed[0].content.endswith(body)


def test_bdatOverlongLineIsRefusedAndTheRestDiscarded():
    store = FakeQueueStore()
    d = bdatSession("reject", OUTSIDE, store)
    out = d.send(chunked(b"Subject: x\r\n\r\n" + b"x" * 3000 + b"\r\n", b"more\r\n"))
    assert out.splitlines() == [
        "552 5.3.4 Error: message line longer than 2048 bytes",
        "551 5.0.0 Discarded 6 bytes after earlier error",
    ]
    assert store.committed == [] and not d.closed


# -- BDAT 0 --------------------------------------------------------------------------------------


def test_regression_nullBdatRequest():
    """BDAT 0 without LAST got 250; Postfix answers 551 5.7.1 and skips the transaction."""
    store = FakeQueueStore()
    d = bdatSession("reject", OUTSIDE, store)
    with MailLog() as log:
        assert d.send("BDAT 0\r\n") == "551 5.7.1 Null BDAT request\r\n"
    assert log.matching(f"warning: NOQUEUE: null BDAT request from unknown[{OUTSIDE}]")
    assert not d.closed
    assert d.send(b"BDAT 3\r\nabc") == "551 5.0.0 Discarded 3 bytes after earlier error\r\n"
    assert d.send(b"BDAT 2 LAST\r\nde") == "551 5.0.0 Discarded 2 bytes after earlier error\r\n"
    assert store.committed == []
    # The transaction is over: a new one works.
    assert replyCodes(d.send("MAIL FROM:<a@example.org>\r\nRCPT TO:<b@mx.test>\r\n")) == [250, 250]
    assert d.send(b"BDAT 4 LAST\r\nok\r\n") == "250 2.0.0 Ok: queued as FAKE0000000001\r\n"


def test_nullBdatInsideATransaction():
    store = FakeQueueStore()
    d = bdatSession("reject", OUTSIDE, store)
    assert d.send(b"BDAT 4\r\nab\r\nBDAT 0\r\n").splitlines() == ["250 2.0.0 Ok: 4 bytes", "551 5.7.1 Null BDAT request"]
    assert store.messages[0].aborted
    assert d.send(b"BDAT 0 LAST\r\n") == "551 5.0.0 Discarded 0 bytes after earlier error\r\n"
    assert store.committed == []


# -- smtpd_forbid_bare_newline and command lines ------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_bareNewlineInCommands(mode):
    """reject/yes: reply and close.  normalize/no: a bare LF ends the line, as in Postfix; bare CRs go."""
    d = Dialog(serverFactory(f"smtpd_forbid_bare_newline = {mode}\n"), peer=OUTSIDE)
    out = d.send(b"RSET\nNOOP\r\n")
    if mode in ("reject", "yes"):
        assert out == "550 5.5.2 mx.test Error: bare <LF> received\r\n" and d.closed
        return
    assert out == "250 2.0.0 Ok\r\n250 2.0.0 Ok\r\n"  # two commands
    assert d.send(b"NO\rOP\r\n") == "250 2.0.0 Ok\r\n"
