"""8-bit MIME to 7-bit for servers without 8BITMIME (smtp(8)'s MIME output conversion)."""

import email
import email.policy

from mta.delivery.mime7bit import to7bit

MULTIPART = (
    b"MIME-Version: 1.0\r\nSubject: x\r\nContent-Type: multipart/mixed; boundary=\"b\"\r\n"
    b"Content-Transfer-Encoding: 8bit\r\n\r\n"
    b"--b\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
    b"Gr\xc3\xbc\xc3\x9fe, caf\xc3\xa9\r\n"
    b"--b\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nno encoding header: \xc3\xa9\r\n"
    b"--b\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n\r\naGVsbG8=\r\n"
    b"--b--\r\n"
)


def test_multipartIsConvertedAndDecodesTheSame():
    out = to7bit(MULTIPART)
    assert out.isascii()
    assert b"\r\n" in out and b"\n" not in out.replace(b"\r\n", b"")
    message = email.message_from_bytes(out, policy=email.policy.default)
    assert message["Content-Transfer-Encoding"] == "7bit"
    parts = list(message.iter_parts())
    assert [p["Content-Transfer-Encoding"] for p in parts] == ["quoted-printable", "quoted-printable", "base64"]
    assert parts[0].get_content() == "Grüße, café"  # the CRLF before a boundary belongs to it
    assert parts[1].get_content() == "no encoding header: é"
    assert parts[2].get_content() == b"hello"


def test_unchangedWhenNothingToDo():
    ascii = b"MIME-Version: 1.0\r\nContent-Type: text/plain\r\n\r\nhello\r\n"
    assert to7bit(ascii) is ascii
    notMime = b"Subject: x\r\n\r\ncaf\xc3\xa9\r\n"  # no MIME-Version: charset unknown, sent as is (Postfix)
    assert to7bit(notMime) is notMime
    qp = b"MIME-Version: 1.0\r\nContent-Transfer-Encoding: quoted-printable\r\nX-8bit-header: \xc3\xa9\r\n\r\ncaf=C3=A9\r\n"
    assert to7bit(qp) is qp  # only bodies are converted; headers are left as they are
