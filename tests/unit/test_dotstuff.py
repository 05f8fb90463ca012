"""mta.delivery.dotstuff: the client's streaming DATA encoder, checked against the server's DataReader."""

import random
import re

import pytest

from mta.delivery.dotstuff import DotStuffer, encode
from mta.smtpd.data import DataReader


def decode(wire, lineLimit=1 << 20):
    """Decode by the server's rules (bare CR/LF rejected): the content, or an assertion."""
    out = []
    reader = DataReader(out.append, lineLimit, 0, bareNewline="reject")
    consumed = reader.feed(wire)
    assert reader.done and reader.error is None, (reader.error, wire[:200])
    assert consumed == len(wire), "the end of data must be the very end of the stream"
    return b"".join(out)


def normalised(content):
    """The content with every line end as CRLF and a final CRLF (what a receiver must get)."""
    content = re.sub(rb"\r\n|\r|\n", b"\r\n", content)
    if content and not content.endswith(b"\r\n"):
        content += b"\r\n"
    return content


def encodeChunks(chunks, limit=0):
    encoder = DotStuffer(limit)
    return b"".join(encoder.feed(c) for c in chunks) + encoder.finish()


def randomChunks(rng, content):
    chunks = []
    i = 0
    while i < len(content):
        j = i + rng.choice((0, 1, 1, 2, 3, 5, 8, 64))
        chunks.append(content[i:j])
        i = j
    return chunks


def noBareNewlines(wire):
    rest = wire.replace(b"\r\n", b"")
    return b"\r" not in rest and b"\n" not in rest


ATOMS = [b".", b"..", b"\r", b"\n", b"\r\n", b"\r\n.\r\n", b"\n.\n", b"\r.\r", b".\r\n", b"a", b"xyz", b" ",
         b"\r\n.", b".\r", b"\n.", b"\x00", b"\xff", b"QUIT\r\n", b"MAIL FROM:<evil@example.com>\r\n"]


@pytest.mark.parametrize("seed", range(20))
def test_random_content_and_chunking_decode_to_the_original(seed):
    rng = random.Random(seed)
    for _ in range(200):
        content = b"".join(rng.choice(ATOMS) for _ in range(rng.randint(0, 60)))
        expected = normalised(content)
        for _ in range(5):
            wire = encodeChunks(randomChunks(rng, content))
            assert noBareNewlines(wire), wire
            assert wire.endswith(b"\r\n.\r\n") or wire == b".\r\n"
            assert decode(wire) == expected, (content, wire)


def test_every_split_point_of_an_adversarial_message():
    content = b"Subject: x\r\n\r\n.\r\nline\r\n..two\r\n\r\n.\r\nMAIL FROM:<x@y>\r\n.\n.\r.end"
    expected = normalised(content)
    for i in range(len(content) + 1):
        for j in range(i, len(content) + 1):
            wire = encodeChunks([content[:i], content[i:j], content[j:]])
            assert decode(wire) == expected, (i, j, wire)


def test_dot_after_a_crlf_at_a_chunk_boundary_is_stuffed():
    # twisted.mail stuffs chunks separately: ".\r\n" at the start of a chunk ends the message.
    assert encodeChunks([b"hello\r\n", b".\r\nsmuggled\r\n"]) == b"hello\r\n..\r\nsmuggled\r\n.\r\n"
    assert encodeChunks([b"hello\r", b"\n.x"]) == b"hello\r\n..x\r\n.\r\n"
    assert encodeChunks([b"hello\r\n", b"", b".", b"x"]) == b"hello\r\n..x\r\n.\r\n"
    assert encodeChunks([b".", b"\r\n"]) == b"..\r\n.\r\n"


def test_line_ends_are_normalised():
    assert encode(b"a\nb\rc\r\nd") == b"a\r\nb\r\nc\r\nd\r\n.\r\n"
    assert encode(b"a\r\r\nb") == b"a\r\n\r\nb\r\n.\r\n"
    assert encode(b"a\n\rb") == b"a\r\n\r\nb\r\n.\r\n"
    # A CR at the end of a chunk waits to see whether an LF follows.
    assert encodeChunks([b"a\r", b"\nb"]) == b"a\r\nb\r\n.\r\n"
    assert encodeChunks([b"a\r", b"b"]) == b"a\r\nb\r\n.\r\n"
    assert encodeChunks([b"a\r", b"\r", b"\n"]) == b"a\r\n\r\n.\r\n"
    assert encodeChunks([b"a\r"]) == b"a\r\n.\r\n"
    encoder = DotStuffer()
    encoder.feed(b"a\nb")
    assert encoder.normalized


def test_the_end_of_data():
    assert encode(b"") == b".\r\n"
    assert encode(b".") == b"..\r\n.\r\n"
    assert encode(b"x") == b"x\r\n.\r\n"
    assert encode(b"x\r\n") == b"x\r\n.\r\n"
    assert encode(b"\r\n") == b"\r\n.\r\n"
    assert decode(encode(b"")) == b""


def test_misuse_is_refused():
    encoder = DotStuffer()
    encoder.finish()
    with pytest.raises(ValueError):
        encoder.feed(b"x")
    with pytest.raises(ValueError):
        encoder.finish()
    with pytest.raises(ValueError):
        DotStuffer(1)
    with pytest.raises(ValueError):
        DotStuffer(-1)


# -- smtp_line_length_limit -------------------------------------------------------------


def test_a_line_of_exactly_the_limit_is_kept():
    line = b"x" * 998
    assert encode(line + b"\r\n") == line + b"\r\n.\r\n"


def test_longer_lines_are_broken_with_crlf_space():
    line = bytes(range(65, 91)) * 100  # 2600 bytes
    wire = encode(line + b"\r\nnext\r\n")
    lines = wire.split(b"\r\n")
    assert lines[0] == line[:998]
    assert lines[1] == b" " + line[998:1995]
    assert lines[2] == b" " + line[1995:]
    assert lines[3] == b"next"
    assert all(len(x) <= 998 for x in lines)
    encoder = DotStuffer()
    encoder.feed(line)
    assert encoder.brokenLines == 2


def test_line_breaking_does_not_depend_on_chunking():
    rng = random.Random(7)
    content = b"".join(rng.choice([b"a" * 7, b"b" * 300, b"\r\n", b".", b"\n"]) for _ in range(400))
    whole = encode(content, 50)
    for _ in range(50):
        assert encodeChunks(randomChunks(rng, content), 50) == whole
    for line in whole.split(b"\r\n"):
        assert len(line.lstrip(b".")) <= 50 or line.startswith(b"..")


def test_a_stuffed_dot_is_not_counted_but_the_inserted_space_is():
    # As Postfix's smtp_text_out(): the limit counts content bytes.
    assert encode(b"." + b"y" * 9, 10) == b".." + b"y" * 9 + b"\r\n.\r\n"
    assert encode(b"." + b"y" * 10, 10) == b".." + b"y" * 9 + b"\r\n y\r\n.\r\n"
    # A continuation line starts with a space, never with a dot to stuff.
    assert encode(b"x" * 10 + b".rest", 10) == b"x" * 10 + b"\r\n .rest\r\n.\r\n"


def test_a_line_continuing_across_chunks_at_the_limit():
    assert encodeChunks([b"x" * 10, b"y"], 10) == b"x" * 10 + b"\r\n y\r\n.\r\n"
    assert encodeChunks([b"x" * 10, b"\r\n"], 10) == b"x" * 10 + b"\r\n.\r\n"
    assert encodeChunks([b"x" * 10, b"\r", b"\n.z"], 10) == b"x" * 10 + b"\r\n..z\r\n.\r\n"


def test_limit_zero_disables_breaking():
    line = b"z" * 5000
    assert encode(line, 0) == line + b"\r\n.\r\n"


def test_long_lines_still_decode_to_the_broken_text():
    content = b"H: " + b"v" * 3000 + b"\r\n\r\n." + b"w" * 2000
    wire = encode(content)
    decoded = decode(wire, lineLimit=1000)
    assert decoded.replace(b"\r\n ", b"") == normalised(content)
