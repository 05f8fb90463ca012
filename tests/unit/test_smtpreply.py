"""mta.delivery.smtpreply: the reply parser alone (bytes in, replies out), no sockets."""

import pytest

from mta.delivery.smtpreply import MalformedReply, ReplyParser, SMTPReply

MB = 1 << 20


def feedAll(parser, data, size=None):
    """Feed C{data} whole, or in pieces of C{size} bytes; every event."""
    if size is None:
        return parser.feed(data)
    events = []
    for i in range(0, len(data), size):
        events += parser.feed(data[i : i + size])
    return events


@pytest.mark.parametrize("size", [None, 1, 3, 7])
def test_replies_in_any_pieces(size):
    data = b"220 mx ESMTP\r\n250-mx.example\r\n250-PIPELINING\r\n250 SIZE 1000\r\n354 go\n550\r\n"
    events = feedAll(ReplyParser(), data, size)
    assert events == [
        SMTPReply(220, ("220 mx ESMTP",)),
        SMTPReply(250, ("250-mx.example", "250-PIPELINING", "250 SIZE 1000")),
        SMTPReply(354, ("354 go",)),
        SMTPReply(550, ("550",)),
    ]


def test_text_and_dsn():
    [reply] = ReplyParser().feed(b"550-5.1.1 <x@y>: no\r\n550 5.1.1 such user\r\n")
    assert reply.text == "550-5.1.1 <x@y>: no 550 5.1.1 such user"
    assert reply.dsn == "5.1.1" and not reply.positive


# -- mixed codes: a protocol error ---------------------------------------------------------


@pytest.mark.parametrize("data, line", [
    (b"250-a\r\n550 b\r\n", "550 b"),
    (b"250-a\r\n250-b\r\n251 c\r\n", "251 c"),
    (b"550-a\r\n250 ok\r\n", "250 ok"),
    (b"354-go\r\n250\r\n", "250"),
])
def test_a_multi_line_reply_with_different_codes_is_malformed(data, line):
    for size in (None, 1):
        parser = ReplyParser()
        events = feedAll(parser, data, size)
        assert len(events) == 1 and isinstance(events[0], MalformedReply), events
        assert events[0].what == "malformed multi-line response"
        assert events[0].line == line
        assert parser.dead
        assert parser.feed(b"250 later\r\n") == []  # nothing more is read


def test_replies_before_the_malformed_one_are_kept():
    events = ReplyParser().feed(b"250 first\r\n250-a\r\n550 b\r\n250 never\r\n")
    assert events[0] == SMTPReply(250, ("250 first",))
    assert isinstance(events[1], MalformedReply) and len(events) == 2


def test_mixed_codes_are_found_beyond_the_kept_text():
    data = b"250-" + b"x" * 3000 + b"\r\n" + b"250-y\r\n" * 100 + b"550 z\r\n"
    [event] = ReplyParser().feed(data)
    assert isinstance(event, MalformedReply) and event.detail == "reply code 550 after 250"


@pytest.mark.parametrize("line", [b"HTTP/1.0 400 Bad", b"099 x", b"600 x", b"25 short", b"2500 x", b"250_x", b""])
def test_garbage_is_malformed(line):
    [event] = ReplyParser().feed(line + b"\r\n")
    assert isinstance(event, MalformedReply) and event.what == "non-SMTP response"


# -- bounds ------------------------------------------------------------------------------------


def test_a_long_line_is_cut_and_the_rest_skipped():
    parser = ReplyParser(limit=100)
    [reply] = parser.feed(b"550 " + b"x" * 1000 + b"\r\n")
    assert reply.lines == ("550 " + "x" * 96,) and reply.longLines == 1
    assert parser.buffered == 0


def test_an_endless_line_without_lf_is_bounded():
    """100 MB of one line in 64 KiB pieces: at most line_length_limit bytes are held, and the line still ends."""
    parser = ReplyParser()
    assert parser.feed(b"250 ") == []
    chunk = b"y" * 65536
    peak = 0
    for _ in range(100 * MB // len(chunk)):
        assert parser.feed(chunk) == []
        peak = max(peak, parser.buffered)
    assert peak <= parser.limit + 1
    [reply] = parser.feed(b"\r\n250 next\r\n")[:1]
    assert reply.code == 250 and len(reply.lines[0]) == parser.limit and reply.longLines == 1


def test_an_endless_multi_line_reply_is_bounded():
    """100 MB of "250-..." lines: the kept text stops near the limit, and the reply is read to its end."""
    parser = ReplyParser()
    chunk = (b"250-" + b"x" * 1000 + b"\r\n") * 64
    peak = 0
    for _ in range(100 * MB // len(chunk)):
        assert parser.feed(chunk) == []
        peak = max(peak, parser.buffered)
    assert peak <= 2 * parser.limit
    [reply] = parser.feed(b"250 end\r\n")
    assert reply.code == 250
    assert sum(len(line) + 1 for line in reply.lines) <= 2 * parser.limit
    assert reply.skippedLines > 100000 and len(reply.text) <= parser.limit
    assert parser.buffered == 0


def test_many_short_lines_are_bounded_too():
    parser = ReplyParser()
    for _ in range(1000):
        parser.feed(b"250-\r\n" * 1000)
    [reply] = parser.feed(b"250 ok\r\n")
    assert len(reply.lines) <= parser.limit // 5 + 1


def test_lines_split_at_every_byte_near_the_limit():
    for extra in range(-3, 4):
        body = b"x" * (2048 - 4 + extra)
        [reply] = feedAll(ReplyParser(), b"250 " + body + b"\r\n", 1)
        assert reply.lines == (("250 " + "x" * len(body))[:2048],)
        assert reply.longLines == (1 if 4 + len(body) > 2048 else 0)


def test_control_characters_become_question_marks():
    [reply] = ReplyParser().feed(b"550 a\rb\x00c\x1bd \xff\r\n")
    assert reply.lines == ("550 a?b?c?d \ufffd",)


def test_reset_forgets_a_partial_reply():
    parser = ReplyParser()
    parser.feed(b"250-a\r\n250-b")
    parser.reset()
    assert parser.buffered == 0
    assert parser.feed(b"220 fresh\r\n") == [SMTPReply(220, ("220 fresh",))]


def test_the_limit_has_a_floor():
    with pytest.raises(ValueError):
        ReplyParser(limit=10)
