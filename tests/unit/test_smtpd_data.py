"""mta.smtpd.data: the end of DATA, and the content path shared by DATA and BDAT."""

import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mta.smtpd.data import BARE_NEWLINE, LINE_TOO_LONG, TOO_BIG, ContentReader, DataReader

MODES = ["reject", "yes", "normalize", "no"]
PROPERTY = settings(max_examples=400, deadline=None, database=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow])


def feedAll(reader, pieces):
    """Feed C{pieces} as the session does; (bytes consumed through the end or None, pieces fed)."""
    total = 0
    for i, piece in enumerate(pieces):
        consumed = reader.feed(piece)
        if reader.fatal is not None:
            return None, i + 1
        if consumed is not None:
            return total + consumed, i + 1
        total += len(piece)
    return None, len(pieces)


def splits(data, how):
    if how == "one-write":
        return [data]
    if how == "bytewise":
        return [data[i : i + 1] for i in range(len(data))]
    half = len(data) // 2
    return [data[:half], data[half:]]


# -- a slow reference: what the content of a DATA stream must be ---------------------------


def referenceEnd(stream):
    """Bytes through the end of data (the first CRLF.CRLF after the 354's CRLF), or None."""
    end = (b"\r\n" + stream).find(b"\r\n.\r\n")
    return None if end < 0 else end + 3


def referenceContent(raw, mode, lineLimit, sizeLimit):
    """(content, fatal, errors) for raw content (the stream before the final "." line)."""
    bare = re.search(rb"(?<!\r)\n|\r(?!\n)", raw)
    if mode in ("reject", "yes"):
        if bare:
            return None, BARE_NEWLINE, set()
    elif mode == "normalize":
        raw = re.sub(rb"(?<!\r)\n", b"\r\n", raw)
    errors = set()
    for line in raw.split(b"\n")[:-1]:
        if len(line) - line.endswith(b"\r") > lineLimit:
            errors.add(LINE_TOO_LONG)
    # Dot-unstuffing: every CRLF-delimited line loses one leading dot.
    content = b"\r\n".join(piece[1:] if piece[:1] == b"." else piece for piece in raw.split(b"\r\n"))
    if sizeLimit and len(content) > sizeLimit:
        errors.add(TOO_BIG)
    return content, None, errors


# -- the end of data ----------------------------------------------------------------------------

ENDINGS = [b"\n.\n", b"\r.\r\n", b"\n.\r\n", b"\r\n.\n", b"\r\n.\r", b"\r.\n", b"\r\n\x00.\r\n", b"\r\n.\x00\r\n",
           b"\r\n .\r\n", b"\r\n..\r\n"]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("ending", ENDINGS, ids=repr)
@pytest.mark.parametrize("how", ["one-write", "two-writes", "bytewise"])
def test_onlyCrlfDotCrlfEndsData(mode, ending, how):
    stream = b"Subject: x\r\n\r\nbody" + ending + b"MAIL FROM:<evil@example.org>\r\n" + b"tail\r\n.\r\nQUIT\r\n"
    out = []
    reader = DataReader(out.append, 2048, 0, mode)
    consumed, _ = feedAll(reader, splits(stream, how))
    if reader.fatal is not None:
        # The session disconnects on a fatal error, whether or not the end was in the same read.
        assert mode in ("reject", "yes") and re.search(rb"(?<!\r)\n|\r(?!\n)", ending)
        return
    assert reader.done and consumed == referenceEnd(stream) == len(stream) - len(b"QUIT\r\n")
    assert b"".join(out).endswith(b"MAIL FROM:<evil@example.org>\r\ntail\r\n")


@pytest.mark.parametrize("mode", MODES)
def test_loneDotFirstEndsAnEmptyMessage(mode):
    out = []
    reader = DataReader(out.append, 2048, 0, mode)
    assert reader.feed(b".\r\nQUIT\r\n") == 3
    assert reader.done and reader.error is None and out == []


FIRST_ERRORS = {
    "line-too-long": (b"x" * 3000 + b"\r\n", LINE_TOO_LONG),
    "endless-line": (b"y" * 5000, LINE_TOO_LONG),
    "too-big": (b"z" * 100 + b"\r\n", TOO_BIG),
}
TRICKS = {
    "LF.LF": b"\n.\n",
    "CR.CR": b"\r.\r",
    "LF.CRLF": b"\n.\r\n",
    "CRLF.LF": b"\r\n.\n",
    "CR.CRLF": b"\r.\r\n",
    "NUL.CRLF": b"\r\n\x00.\r\n",
    "dot-NUL": b"\r\n.\x00\r\n",
}
SMUGGLED = b"MAIL FROM:<evil@example.org>\r\nRCPT TO:<victim@example.net>\r\nDATA\r\nsmuggled\r\n"


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("first", FIRST_ERRORS)
@pytest.mark.parametrize("trick", TRICKS)
@pytest.mark.parametrize("how", ["one-write", "later-segment", "bytewise"])
def test_regression_noBareNewlineEndsDataAfterAnError(mode, first, trick, how):
    """
    The field defect: after an over-long line or too much data was recorded, a later bare
    LF (or CR) ended DATA and what followed ran as commands.  Now the reader either hits a
    fatal bare newline (reject: the session disconnects) or ends exactly at the real CRLF.CRLF.
    """
    head, expected = FIRST_ERRORS[first]
    stream = b"Subject: x\r\n\r\n" + head + TRICKS[trick] + SMUGGLED + b".\r\nQUIT\r\n"
    if how == "one-write":
        pieces = [stream]
    elif how == "later-segment":
        cut = stream.index(TRICKS[trick]) + len(TRICKS[trick])
        pieces = [stream[:cut], stream[cut:]]
    else:
        pieces = [stream[i : i + 1] for i in range(len(stream))]
    reader = DataReader([].append, 2048, 50 if first == "too-big" else 0, mode)
    consumed, fed = feedAll(reader, pieces)
    if mode in ("reject", "yes") and re.search(rb"(?<!\r)\n|\r(?!\n)", TRICKS[trick]):
        assert reader.fatal == BARE_NEWLINE
        return
    assert reader.fatal is None
    assert reader.done and consumed == len(stream) - len(b"QUIT\r\n"), (consumed, fed)
    assert reader.error == expected


@PROPERTY
@given(
    st.lists(
        st.sampled_from([b"\r", b"\n", b".", b"\r\n", b"\r\n.\r\n", b"\n.\n", b"\r.\r", b"x", b"\x00", b"..",
                         b"x" * 40, b"MAIL FROM:<e@x>\r\n", b"\r\n.", b".\r\n"]),
        max_size=40,
    ),
    st.sampled_from(MODES),
    st.lists(st.integers(min_value=0, max_value=200), max_size=8),
    st.sampled_from([0, 60, 200]),
)
def test_property_dataEndsAtTheFirstCrlfDotCrlf(tokens, mode, cuts, sizeLimit):
    """
    For any stream and any split into reads: DATA ends exactly at the first CRLF.CRLF after
    the 354 (or the reader reports a fatal bare newline first, under reject only), and the
    content and errors are those of a slow line-by-line reference.
    """
    stream = b"".join(tokens) + b"\r\n.\r\nQUIT\r\n"
    cuts = sorted({min(c, len(stream)) for c in cuts})
    pieces = [stream[a:b] for a, b in zip([0] + cuts, cuts + [len(stream)]) if b > a]
    out = []
    lineLimit = 30
    reader = DataReader(out.append, lineLimit, sizeLimit, mode)
    consumed, _ = feedAll(reader, pieces)
    end = referenceEnd(stream)
    content, fatal, errors = referenceContent(stream[: end - 3], mode, lineLimit, sizeLimit)
    if fatal is not None:
        assert reader.fatal == fatal
        return
    assert reader.fatal is None and reader.done and consumed == end
    if errors:
        assert reader.error in errors
    else:
        assert reader.error is None and b"".join(out) == content


# -- the content path of BDAT ---------------------------------------------------------------------


def bdat(chunks, mode="reject", binary=False, lineLimit=2048, sizeLimit=0):
    out = []
    content = ContentReader(out.append, lineLimit, sizeLimit, mode, binary=binary)
    for chunk in chunks:
        content.write(chunk)
        if content.fatal:
            return content, None
    content.close()
    return content, b"".join(out)


def test_bdatCrlfSplitAcrossChunks():
    content, out = bdat([b"line one\r", b"\nline two\r\n.\r", b"\n"])
    assert content.fatal is None and content.error is None
    assert out == b"line one\r\nline two\r\n.\r\n"  # BDAT content is not dot-stuffed


@pytest.mark.parametrize("mode", ["reject", "yes"])
@pytest.mark.parametrize("chunks", [
    [b"a\nb\r\n"], [b"a\rb\r\n"], [b"a\r", b"b\r\n"], [b"a\r\n\n"], [b"ab", b"\n"], [b"a\r\n", b"\n"], [b"end\r"],
], ids=["LF", "CR", "CR|b", "CRLF-LF", "ab|LF", "CRLF|LF", "CR-at-end"])
def test_bdatBareNewlineRejected(mode, chunks):
    content, out = bdat(chunks, mode)
    assert content.fatal == BARE_NEWLINE


def test_bdatNormalizeAndNo():
    assert bdat([b"a\nb\r", b"\n.c\n"], "normalize")[1] == b"a\r\nb\r\n.c\r\n"
    assert bdat([b"a\nb\r", b"\n.c\n"], "no")[1] == b"a\nb\r\n.c\n"
    assert bdat([b"last line without CRLF"], "reject")[1] == b"last line without CRLF"


def test_bdatBinaryIsExempt():
    body = bytes(range(256)) * 40 + b"\n.\n\r.\r"
    content, out = bdat([body[:1000], body[1000:]], binary=True, lineLimit=100)
    assert content.fatal is None and content.error is None and out == body


def test_bdatLimits():
    content, _ = bdat([b"x" * 50, b"y" * 60 + b"\r\n"], lineLimit=100)
    assert content.error == LINE_TOO_LONG
    content, _ = bdat([b"x" * 50, b"y" * 60], lineLimit=1000, sizeLimit=100)
    assert content.error == TOO_BIG
    content, out = bdat([b"x" * 100, b"\r\n"], lineLimit=100, sizeLimit=102)
    assert content.error is None and out == b"x" * 100 + b"\r\n"


@pytest.mark.parametrize("line", [b"x" * 2048 + b"\r\n", b"x" * 2047 + b"\r\r\n"])
def test_lineLimitExact(line):
    """line_length_limit octets before the CRLF are fine, one more is too long."""
    reader = DataReader([].append, 2048, 0, "reject" if b"\r\r" not in line else "no")
    assert reader.feed(line + b".\r\n") is not None and reader.error is None
    reader = DataReader([].append, 2048, 0, "no")
    assert reader.feed(b"y" + line + b".\r\n") is not None and reader.error == LINE_TOO_LONG
