"""mta.bounce: DSNs parsed back with the email package and checked field by field."""

import email
import email.parser
import email.policy
import email.utils

import attrs
import pytest

from mta import bounce
from mta.address import parseMailParameters, parseRcptParameters
from mta.bounce import buildNotice, doubleBounceAddress, isBounce, isDoubleBounce, shouldNotify
from mta.model import DeliveryRecipient, Envelope, Recipient, RecipientResult
from mta.queue.fileformat import CorruptQueueFile

HOST = "mail.example.org"
ARRIVAL = 1700000000.0
NOW = ARRIVAL + 3600 * 5
QID = "4Tb3x5Qz1Abc"

HEADERS = (
    b"Received: from client.example.org (client.example.org [192.0.2.7])\r\n"
    b"\tby mail.example.org (mta) with ESMTP id 4Tb3x5Qz1Abc\r\n"
    b"From: Alice <alice@example.org>\r\n"
    b"To: bob@example.net\r\n"
    b"Subject: hello\r\n"
    b"Message-Id: <orig.1@example.org>\r\n"
)
BODY = b"first body line\r\n..dot-stuffed? no: queue content is unstuffed\r\n\r\nlast line\r\n"
CONTENT = HEADERS + b"\r\n" + BODY

BOB = Recipient("bob@example.net")
REJECTED = RecipientResult(
    0,
    "bounced",
    "5.1.1",
    "host mx.example.net[192.0.2.1] said: 550 5.1.1 <bob@example.net>: Recipient address rejected: "
    "User unknown in virtual mailbox table (in reply to RCPT TO command)",
    relay="mx.example.net[192.0.2.1]:25",
    diagnostic="smtp; 550 5.1.1 <bob@example.net>: Recipient address rejected: User unknown in virtual "
    "mailbox table",
    remote_mta="dns; mx.example.net",
)
DEFERRED = RecipientResult(
    0,
    "deferred",
    "4.4.1",
    "connect to mx.example.net[192.0.2.1]:25: Connection timed out",
    relay="none",
)
DELIVERED = RecipientResult(0, "sent", "2.0.0", "delivered to maildir", relay="virtual")
RELAYED = RecipientResult(
    0,
    "sent",
    "2.0.0",
    "250 2.0.0 Ok: queued as 4Tc0000001",
    relay="mx.example.net[192.0.2.1]:25",
    diagnostic="smtp; 250 2.0.0 Ok: queued as 4Tc0000001",
    remote_mta="dns; mx.example.net",
)


def envelope(**kw):
    fields = dict(sender="alice@example.org", recipients=(BOB,), arrival_time=ARRIVAL, size=len(CONTENT))
    fields.update(kw)
    return Envelope(**fields)


def reader(content=CONTENT, chunk=7):
    """An C{original} callable yielding C{content} in small chunks."""

    def read():
        for i in range(0, len(content), chunk):
            yield content[i : i + chunk]

    return read


def notice(kind="failure", env=None, items=None, **kw):
    args = dict(
        queueId=QID,
        reportingMTA=HOST,
        arrivalTime=ARRIVAL,
        now=NOW,
        original=reader(),
        myhostname=HOST,
    )
    args.update(kw)
    if env is None:
        env = envelope()
    if items is None:
        items = [(BOB, REJECTED)]
    result = buildNotice(kind, env, items, **args)
    if result is not None:
        checkWellFormed(result.message)
    return result


def checkWellFormed(message):
    """CRLF line ends only, no line over 998 octets, a header/body split."""
    assert b"\r\n\r\n" in message
    lines = message.split(b"\r\n")
    assert lines[-1] == b""
    for line in lines:
        assert b"\r" not in line and b"\n" not in line
        assert len(line) <= 998


def parse(message):
    return email.message_from_bytes(message, policy=email.policy.default)


def rawParts(message):
    """The top-level multipart's parts as (header bytes, body bytes)."""
    top = parse(message)
    boundary = top.get_boundary().encode("ascii")
    body = message.split(b"\r\n\r\n", 1)[1]
    pieces = body.split(b"\r\n--" + boundary)
    assert pieces[-1] == b"--\r\n"
    parts = []
    for piece in pieces[1:-1]:
        assert piece.startswith(b"\r\n")
        head, _, payload = piece[2:].partition(b"\r\n\r\n")
        parts.append((head, payload))
    return parts


def blocksOf(part):
    """The field blocks of a message/delivery-status part (email's own parse)."""
    assert part.get_content_type() == "message/delivery-status"
    blocks = part.get_payload()
    assert all(isinstance(b, email.message.Message) for b in blocks)
    return [list(b.items()) for b in blocks]


def rawBlocks(body):
    """Field blocks of a delivery-status body given as bytes (header parser per block)."""
    parser = email.parser.BytesHeaderParser(policy=email.policy.default)
    return [list(parser.parsebytes(block + b"\r\n").items()) for block in body.rstrip(b"\r\n").split(b"\r\n\r\n")]


def dsn(message):
    top = parse(message)
    return blocksOf(top.get_payload()[1])


def textOf(top):
    """The human-readable part's text, with \\n line ends."""
    return top.get_payload()[0].get_content().replace("\r\n", "\n")


def field(block, name):
    values = [v for k, v in block if k.lower() == name.lower()]
    assert len(values) <= 1, (name, values)
    return str(values[0]) if values else None


# -- structure ---------------------------------------------------------------


def test_failure_notice_headers_and_structure():
    n = notice()
    assert n.sender == ""
    assert n.to == "alice@example.org"
    sender, to, message = n
    assert (sender, to, message) == (n.sender, n.to, n.message)
    assert n.body == "7BIT" and n.smtputf8 is False
    assert message.isascii()

    top = parse(message)
    assert top.defects == []
    assert top["From"].addresses[0].addr_spec == "MAILER-DAEMON@mail.example.org"
    assert b"\r\nFrom: MAILER-DAEMON@mail.example.org (Mail Delivery System)\r\n" in b"\r\n" + message
    assert top["To"].addresses[0].addr_spec == "alice@example.org"
    assert top["Subject"] == "Undelivered Mail Returned to Sender"
    assert top["Auto-Submitted"] == "auto-replied"
    assert top["MIME-Version"] == "1.0"
    assert top["Date"].datetime.timestamp() == NOW
    assert top["Message-Id"].startswith("<") and top["Message-Id"].endswith("@mail.example.org>")
    assert top.get_content_type() == "multipart/report"
    assert top.get_param("report-type") == "delivery-status"
    assert top["Content-Transfer-Encoding"] is None

    parts = top.get_payload()
    assert [p.get_content_type() for p in parts] == ["text/plain", "message/delivery-status", "message/rfc822"]
    assert [p["Content-Description"] for p in parts] == ["Notification", "Delivery report", "Undelivered Message"]
    assert parts[0].get_content_charset() == "us-ascii"


def test_failure_text_is_postfix_wording():
    text = textOf(parse(notice().message))
    assert text.startswith("This is the mail system at host mail.example.org.\n\n")
    assert "I'm sorry to have to inform you that your message could not\n" in text
    assert "be delivered to one or more recipients. It's attached below.\n" in text
    assert "For further assistance, please send mail to postmaster.\n" in text
    assert "                   The mail system\n" in text
    # The recipient line, wrapped at 79 columns with 4-space continuations.
    tail = text.split("The mail system\n", 1)[1]
    lines = tail.strip("\n").split("\n")
    assert lines[0].startswith("<bob@example.net>: host mx.example.net[192.0.2.1] said: 550 5.1.1")
    assert all(len(line) <= 79 for line in lines)
    assert all(line.startswith("    ") for line in lines[1:])
    assert " ".join(line.strip() for line in lines) == "<bob@example.net>: " + REJECTED.text


def test_failure_delivery_status_fields():
    blocks = dsn(notice(env=envelope(envid="QQ314159")).message)
    assert len(blocks) == 2
    assert blocks[0] == [
        ("Reporting-MTA", "dns; mail.example.org"),
        ("Original-Envelope-Id", "QQ314159"),
        ("X-Mta-Queue-ID", QID),
        ("X-Mta-Sender", "rfc822; alice@example.org"),
        ("Arrival-Date", email.utils.format_datetime(bounce._utc(ARRIVAL))),
    ]
    assert [(k, str(v)) for k, v in blocks[1]] == [
        ("Final-Recipient", "rfc822; bob@example.net"),
        ("Action", "failed"),
        ("Status", "5.1.1"),
        ("Remote-MTA", "dns; mx.example.net"),
        ("Diagnostic-Code", REJECTED.diagnostic),
        ("Last-Attempt-Date", email.utils.format_datetime(bounce._utc(NOW))),
    ]
    assert email.utils.parsedate_to_datetime(field(blocks[0], "Arrival-Date")).timestamp() == ARRIVAL
    # No ORCPT: no Original-Recipient (RFC 3461 6.3); no Will-Retry-Until outside delay notices.
    assert field(blocks[1], "Original-Recipient") is None
    assert field(blocks[1], "Will-Retry-Until") is None


def test_local_error_gets_x_mta_diagnostic_and_no_remote_mta():
    local = RecipientResult(0, "bounced", "5.1.1", "unknown user: \"bob\"", relay="virtual")
    blocks = dsn(notice(items=[(BOB, local)]).message)
    assert field(blocks[1], "Diagnostic-Code") == 'X-Mta; unknown user: "bob"'
    assert field(blocks[1], "Remote-MTA") is None


def test_mail_name_makes_the_field_prefix():
    blocks = dsn(notice(mailName="Postfix").message)
    assert field(blocks[0], "X-Postfix-Queue-ID") == QID
    assert field(blocks[0], "X-Postfix-Sender") == "rfc822; alice@example.org"
    local = RecipientResult(0, "bounced", "5.0.0", "oops")
    blocks = dsn(notice(items=[(BOB, local)], mailName="my mail (x)").message)
    assert field(blocks[0], "X-My-mail--x--Queue-ID") == QID
    assert field(blocks[1], "Diagnostic-Code") == "X-My-mail--x-; oops"


def test_bad_status_falls_back_to_a_class_default():
    odd = attrs.evolve(REJECTED, dsn="5.1.1\r\nX: y")
    assert field(dsn(notice(items=[(BOB, odd)]).message)[1], "Status") == "5.0.0"


# -- the returned original -----------------------------------------------------


def test_full_message_returned_byte_for_byte_when_ret_absent_or_full():
    for ret in (None, "FULL"):
        n = notice(env=envelope(ret=ret))
        head, body = rawParts(n.message)[2]
        assert b"Content-Type: message/rfc822" in head
        assert body == b"Return-Path: <alice@example.org>\r\n" + CONTENT
        inner = parse(n.message).get_payload()[2].get_payload()[0]
        assert inner["Subject"] == "hello"
        assert inner["Return-Path"] == "<alice@example.org>"


def test_ret_hdrs_returns_headers_only():
    n = notice(env=envelope(ret="HDRS"))
    top = parse(n.message)
    part = top.get_payload()[2]
    assert part.get_content_type() == "text/rfc822-headers"
    assert part["Content-Description"] == "Undelivered Message Headers"
    head, body = rawParts(n.message)[2]
    assert body == b"Return-Path: <alice@example.org>\r\n" + HEADERS
    assert b"first body line" not in n.message


def test_bounce_size_limit_switches_to_headers():
    big = HEADERS + b"\r\n" + b"x" * 70 + b"\r\n" + (b"y" * 78 + b"\r\n") * 1000
    n = notice(original=reader(big, chunk=4096))
    part = parse(n.message).get_payload()[2]
    assert part.get_content_type() == "text/rfc822-headers"
    assert rawParts(n.message)[2][1] == b"Return-Path: <alice@example.org>\r\n" + HEADERS
    assert len(n.message) < 10000
    # A limit above the size, or no limit (0), returns it whole.
    for limit in (len(big), 0):
        n = notice(original=reader(big, chunk=4096), bounceSizeLimit=limit)
        assert rawParts(n.message)[2][1] == b"Return-Path: <alice@example.org>\r\n" + big
    n = notice(original=reader(big, chunk=4096), bounceSizeLimit=len(big) - 1)
    assert parse(n.message).get_payload()[2].get_content_type() == "text/rfc822-headers"


def test_reading_stops_early_and_closes_the_reader():
    state = {"chunks": 0, "closed": False}

    def original():
        try:
            for _ in range(1000):
                state["chunks"] += 1
                yield (HEADERS if state["chunks"] == 1 else b"") + b"\r\n" + b"z" * 9998
        finally:
            state["closed"] = True

    n = notice(original=original)
    assert parse(n.message).get_payload()[2].get_content_type() == "text/rfc822-headers"
    assert state["chunks"] <= 6 and state["closed"]
    # Headers only (delay notice): reading stops at the end of the headers.
    state.update(chunks=0, closed=False)
    notice("delay", items=[(BOB, DEFERRED)], original=original, bounceSizeLimit=0)
    assert state["chunks"] == 1 and state["closed"]


def test_returned_headers_cut_at_a_field_boundary_at_the_limit():
    many = b"".join(b"X-Filler-%04d: %s\r\n" % (i, b"f" * 40) for i in range(400))
    content = HEADERS + many + b"\r\nbody\r\n"
    n = notice(env=envelope(ret="HDRS"), original=reader(content, chunk=1000), bounceSizeLimit=5000)
    body = rawParts(n.message)[2][1]
    returned = body[len(b"Return-Path: <alice@example.org>\r\n"):]
    assert len(returned) <= 5000
    assert content.startswith(returned) and returned.endswith(b"\r\n")
    assert len(returned) > 4000  # cut near the limit ...
    assert content[len(returned) : len(returned) + 1] not in (b" ", b"\t")  # ... between two fields
    # The continuation line of Received: stays with its field.
    assert returned.startswith(HEADERS)


def test_long_line_or_binarymime_returns_headers_only():
    content = HEADERS + b"\r\n" + b"a" * 1500 + b"\r\n"
    n = notice(original=reader(content), bounceSizeLimit=0)
    assert parse(n.message).get_payload()[2].get_content_type() == "text/rfc822-headers"
    n = notice(env=envelope(body="BINARYMIME"))
    assert parse(n.message).get_payload()[2].get_content_type() == "text/rfc822-headers"


def test_header_field_with_an_overlong_line_is_left_out():
    content = b"Subject: ok\r\nX-Long: " + b"b" * 1200 + b"\r\nTo: bob@example.net\r\n\r\nbody\r\n"
    n = notice(env=envelope(ret="HDRS"), original=reader(content), bounceSizeLimit=0)
    body = rawParts(n.message)[2][1]
    assert body == b"Return-Path: <alice@example.org>\r\nSubject: ok\r\nTo: bob@example.net\r\n"


def test_original_unavailable_leaves_part_three_out():
    def broken():
        yield HEADERS
        raise OSError("disk on fire")

    def corrupt():
        raise CorruptQueueFile("short")

    for original in (None, broken, corrupt):
        n = notice(original=original)
        parts = parse(n.message).get_payload()
        assert [p.get_content_type() for p in parts] == ["text/plain", "message/delivery-status"]


def test_eight_bit_original_makes_an_8bit_notice():
    content = HEADERS + b"\r\ncaf\xc3\xa9 cr\xe8me\r\n"
    n = notice(env=envelope(body="8BITMIME"), original=reader(content))
    assert n.body == "8BITMIME" and n.smtputf8 is False
    top = parse(n.message)
    assert top["Content-Transfer-Encoding"] == "8bit"
    head, body = rawParts(n.message)[2]
    assert b"Content-Transfer-Encoding: 8bit" in head
    assert body == b"Return-Path: <alice@example.org>\r\n" + content
    # Only the returned part is 8-bit: the text and the DSN stay ASCII.
    assert rawParts(n.message)[0][1].isascii() and rawParts(n.message)[1][1].isascii()


def test_bare_line_ends_in_the_original_become_crlf():
    content = b"Subject: x\nTo: y\r\n\r\nbody\rmore\n"
    n = notice(original=reader(content))
    body = rawParts(n.message)[2][1]
    assert body == b"Return-Path: <alice@example.org>\r\nSubject: x\r\nTo: y\r\n\r\nbody\r\nmore\r\n"


# -- delay and success ------------------------------------------------------------


def test_delay_notice():
    n = notice("delay", env=envelope(ret="FULL"), items=[(BOB, DEFERRED)], delayWarningTime=4 * 3600)
    top = parse(n.message)
    assert top["Subject"] == "Delayed Mail (still being retried)"
    assert top["Auto-Submitted"] == "auto-replied"
    text = textOf(top)
    assert "# THIS IS A WARNING ONLY.  YOU DO NOT NEED TO RESEND YOUR MESSAGE. #" in text
    assert "Your message could not be delivered for more than 4 hour(s).\n" in text
    assert "It will be retried until it is 5 day(s) old.\n" in text
    assert "\n<bob@example.net>: connect to mx.example.net[192.0.2.1]:25: Connection timed\n    out\n" in text
    blocks = blocksOf(top.get_payload()[1])
    assert field(blocks[1], "Action") == "delayed"
    assert field(blocks[1], "Status") == "4.4.1"
    assert field(blocks[1], "Diagnostic-Code") == "X-Mta; " + DEFERRED.text
    until = email.utils.parsedate_to_datetime(field(blocks[1], "Will-Retry-Until")).timestamp()
    assert until == ARRIVAL + 5 * 86400
    # Delay notices return headers only, whatever RET says (Postfix).
    part = top.get_payload()[2]
    assert part.get_content_type() == "text/rfc822-headers"
    assert part["Content-Description"] == "Undelivered Message Headers"
    # Without delayWarningTime the message's age is given; the lifetime is a parameter.
    text = parse(notice("delay", items=[(BOB, DEFERRED)], maximalQueueLifetime=2 * 86400).message)
    text = textOf(text)
    assert "for more than 5 hour(s)." in text and "until it is 2 day(s) old." in text


def test_success_notice_actions():
    carol = Recipient("carol@example.com", notify=("SUCCESS",))
    dave = Recipient("dave@example.com", notify=("SUCCESS", "FAILURE"))
    erin = DeliveryRecipient(2, "erin@example.com", "team@example.com", notify=("SUCCESS",))
    items = [(carol, DELIVERED), (dave, RELAYED), (erin, DELIVERED, "expanded")]
    n = notice("success", env=envelope(ret="FULL"), items=items)
    top = parse(n.message)
    assert top["Subject"] == "Successful Mail Delivery Report"
    text = textOf(top)
    assert "Your message was successfully delivered to the destination(s)\n" in text
    assert "For further assistance" not in text
    assert "<carol@example.com>: delivery via virtual: delivered to maildir" in text
    assert "<dave@example.com>: delivery via mx.example.net[192.0.2.1]:25: 250 2.0.0 Ok" in text
    assert "<erin@example.com> (expanded from <team@example.com>): delivery via virtual" in text
    blocks = blocksOf(top.get_payload()[1])
    assert [field(b, "Final-Recipient") for b in blocks[1:]] == [
        "rfc822; carol@example.com",
        "rfc822; dave@example.com",
        "rfc822; erin@example.com",
    ]
    assert [field(b, "Action") for b in blocks[1:]] == ["delivered", "relayed", "expanded"]
    assert [field(b, "Status") for b in blocks[1:]] == ["2.0.0"] * 3
    assert field(blocks[2], "Remote-MTA") == "dns; mx.example.net"
    assert field(blocks[2], "Diagnostic-Code") == "smtp; 250 2.0.0 Ok: queued as 4Tc0000001"
    assert field(blocks[1], "Diagnostic-Code") == "X-Mta; delivered to maildir"
    part = top.get_payload()[2]
    assert part.get_content_type() == "text/rfc822-headers"
    assert part["Content-Description"] == "Message Headers"


def test_success_only_for_those_who_asked():
    assert notice("success", items=[(BOB, DELIVERED)]) is None
    with pytest.raises(ValueError):
        notice("success", items=[(Recipient("x@example.com", notify=("SUCCESS",)), DELIVERED, "bogus")])


# -- NOTIFY, several recipients ------------------------------------------------------


@pytest.mark.parametrize(
    "notify, failure, delay, success",
    [
        ((), True, True, False),
        (("NEVER",), False, False, False),
        (("SUCCESS",), False, False, True),
        (("FAILURE",), True, False, False),
        (("DELAY",), False, True, False),
        (("SUCCESS", "FAILURE", "DELAY"), True, True, True),
        (("failure", "delay"), True, True, False),
    ],
)
def test_should_notify(notify, failure, delay, success):
    r = Recipient("x@example.com", notify=notify)
    assert shouldNotify("failure", r) is failure
    assert shouldNotify("delay", r) is delay
    assert shouldNotify("success", r) is success


def test_should_notify_rejects_unknown_kind():
    with pytest.raises(ValueError):
        shouldNotify("bounce", BOB)
    with pytest.raises(ValueError):
        notice("bounce")


def test_several_recipients_mixed():
    plain = Recipient("bob@example.net")
    failureOnly = Recipient("carol@example.net", orcpt="rfc822;Carol@Example.NET", notify=("FAILURE",))
    never = Recipient("dave@example.net", notify=("NEVER",))
    successOnly = Recipient("erin@example.net", notify=("SUCCESS",))
    expanded = DeliveryRecipient(4, "frank@example.net", "staff@example.org", notify=("FAILURE", "DELAY"))
    local = RecipientResult(4, "bounced", "5.2.2", "maildir quota exceeded", relay="virtual")
    items = [(plain, REJECTED), (failureOnly, REJECTED), (never, REJECTED), (successOnly, REJECTED),
             (expanded, local)]
    n = notice(items=items)
    top = parse(n.message)
    blocks = blocksOf(top.get_payload()[1])
    assert [field(b, "Final-Recipient") for b in blocks[1:]] == [
        "rfc822; bob@example.net",
        "rfc822; carol@example.net",
        "rfc822; frank@example.net",
    ]
    assert [field(b, "Original-Recipient") for b in blocks[1:]] == [None, "rfc822;Carol@Example.NET", None]
    assert [field(b, "Status") for b in blocks[1:]] == ["5.1.1", "5.1.1", "5.2.2"]
    assert [field(b, "Diagnostic-Code") for b in blocks[1:]][2] == "X-Mta; maildir quota exceeded"
    text = textOf(top)
    assert "<dave@example.net>" not in text and "<erin@example.net>" not in text
    assert "\n<frank@example.net> (expanded from <staff@example.org>): maildir quota exceeded\n" in text
    # Nobody left to notify: no notice.
    assert notice(items=[(never, REJECTED), (successOnly, REJECTED)]) is None


# -- ENVID and ORCPT ------------------------------------------------------------------


def test_envid_round_trip_from_the_mail_command():
    params = parseMailParameters([("ENVID", "QQ+2B314159+3Dx")], sizeLimit=0, offered=frozenset({"DSN"}))
    assert params.envid == "QQ+314159=x"
    blocks = dsn(notice(env=envelope(envid=params.envid)).message)
    # RFC 3461 4.4: the DSN holds the value "prior to encoding as xtext".
    assert field(blocks[0], "Original-Envelope-Id") == "QQ+314159=x"


def test_orcpt_round_trip_from_the_rcpt_command():
    params = parseRcptParameters([("ORCPT", "rfc822;bob+2Btag@Example.NET")], offered=frozenset({"DSN"}),
                                 smtputf8=False)
    assert params.orcpt == "rfc822;bob+tag@Example.NET"
    r = Recipient("bob@example.net", orcpt=params.orcpt)
    blocks = dsn(notice(items=[(r, REJECTED)]).message)
    assert field(blocks[1], "Original-Recipient") == "rfc822;bob+tag@Example.NET"
    assert field(blocks[1], "Final-Recipient") == "rfc822; bob@example.net"


def test_utf8_orcpt_is_reencoded_and_keeps_the_notice_ascii():
    params = parseRcptParameters([("ORCPT", "utf-8;j\\x{F6}hn\\x{20}x@example.org")], offered=frozenset({"DSN"}),
                                 smtputf8=False)
    assert params.orcpt == "utf-8;j\u00f6hn x@example.org"
    r = Recipient("john@example.org", orcpt=params.orcpt)
    n = notice(items=[(r, REJECTED)])
    assert n.smtputf8 is False and n.message.isascii()
    assert field(dsn(n.message)[1], "Original-Recipient") == "utf-8;j\\x{F6}hn\\x{20}x@example.org"


def test_orcpt_of_another_type_kept_as_given():
    r = Recipient("bob@example.net", orcpt="x400;/G=Bob/S=Smith/O=Example/")
    assert field(dsn(notice(items=[(r, REJECTED)]).message)[1], "Original-Recipient") == \
        "x400;/G=Bob/S=Smith/O=Example/"


# -- SMTPUTF8 ------------------------------------------------------------------------


def test_non_ascii_addresses_make_a_global_notice():
    sender = "\u00e9lise@ex\u00e4mple.org"
    rcpt = Recipient("b\u00f8b@example.net", orcpt="utf-8;b\u00f8b+x@example.net")
    content = "Subject: caf\u00e9\r\nFrom: \u00e9lise@ex\u00e4mple.org\r\n\r\nbody\r\n".encode("utf-8")
    env = envelope(sender=sender, recipients=(rcpt,), smtputf8=True, body="8BITMIME")
    n = notice(env=env, items=[(rcpt, REJECTED)], original=reader(content))
    assert n.smtputf8 is True and n.body == "8BITMIME"
    assert n.to == sender
    top = parse(n.message)
    assert b"\r\nTo: " + sender.encode("utf-8") + b"\r\n" in n.message  # RFC 6532: raw UTF-8
    parts = rawParts(n.message)
    assert b"Content-Type: message/global-delivery-status" in parts[1][0]
    blocks = rawBlocks(parts[1][1])
    assert field(blocks[0], "X-Mta-Sender") == "utf-8; " + sender
    assert field(blocks[1], "Final-Recipient") == "utf-8; b\u00f8b@example.net"
    # utf-8-addr-unitext: raw UTF-8, "+" escaped.
    assert field(blocks[1], "Original-Recipient") == "utf-8;b\u00f8b\\x{2B}x@example.net"
    assert field(blocks[1], "Action") == "failed"
    assert b"Content-Type: message/global\r\n" in parts[2][0]
    assert parts[2][1] == "Return-Path: <\u00e9lise@ex\u00e4mple.org>\r\n".encode("utf-8") + content
    text = top.get_payload()[0]
    assert text.get_content_charset() == "utf-8"
    assert "\n<b\u00f8b@example.net>: host mx.example.net" in text.get_content()


def test_smtputf8_headers_in_the_original_make_a_global_notice():
    content = "Subject: caf\u00e9\r\n\r\nbody\r\n".encode("utf-8")
    n = notice(env=envelope(smtputf8=True, ret="HDRS"), original=reader(content))
    assert n.smtputf8 is True
    parts = rawParts(n.message)
    assert b"Content-Type: message/global-headers" in parts[2][0]
    assert b"Content-Type: message/global-delivery-status" in parts[1][0]
    # The same headers without SMTPUTF8: an ASCII notice with an 8bit headers part.
    n = notice(env=envelope(ret="HDRS"), original=reader(content))
    assert n.smtputf8 is False and n.body == "8BITMIME"
    assert parse(n.message).get_payload()[2].get_content_type() == "text/rfc822-headers"
    head, body = rawParts(n.message)[2]
    assert b"Content-Transfer-Encoding: 8bit" in head
    assert body == b"Return-Path: <alice@example.org>\r\n" + "Subject: caf\u00e9\r\n".encode("utf-8")


def test_non_ascii_diagnostic_in_an_ascii_notice_is_masked():
    odd = attrs.evolve(REJECTED, diagnostic="smtp; 550 5.1.1 Benutzer unbekannt \u00fc\u20ac", text="nope \u00fc")
    n = notice(items=[(BOB, odd)])
    assert n.message.isascii()
    assert field(dsn(n.message)[1], "Diagnostic-Code") == "smtp; 550 5.1.1 Benutzer unbekannt ??"


# -- folding and injection ------------------------------------------------------------


def test_long_fields_folded_at_spaces_never_encoded():
    words = " ".join(f"word{i}" for i in range(60))
    token = "t" * 200
    odd = attrs.evolve(REJECTED, diagnostic=f"smtp; 550 5.0.0 {words} {token} end")
    n = notice(items=[(BOB, odd)])
    assert b"=?" not in n.message
    body = rawParts(n.message)[1][1]
    diag = body.split(b"Diagnostic-Code: ", 1)[1].split(b"\r\nLast-Attempt-Date", 1)[0]
    lines = diag.split(b"\r\n")
    assert len(lines) > 3
    assert all(line.startswith(b" ") for line in lines[1:])
    assert all(len(line) <= 78 for line in lines if token.encode() not in line)
    assert field(dsn(n.message)[1], "Diagnostic-Code") == f"smtp; 550 5.0.0 {words} {token} end"


def test_crlf_injection_in_diagnostic_text_and_addresses():
    evil = RecipientResult(
        0,
        "bounced",
        "5.0.0",
        "550 no\r\nX-Injected: text\r\n\r\n--boundary\r\nContent-Type: text/html",
        diagnostic="smtp; 550 no\r\nX-Injected: yes\nX-Also: 1\rX-Too: 2\x00\x85\u2028X-Sep: 3",
        remote_mta="dns; mx.example.net\r\nX-Remote: 1",
    )
    rcpt = Recipient("bob@example.net\r\nX-Evil: 1", orcpt="rfc822;x@y\r\nX-Orcpt: 1")
    env = envelope(sender="alice@example.org\r\nBcc: victim@example.com", envid="id\r\nX-Envid: 1")
    n = notice(env=env, items=[(rcpt, evil)])
    lines = n.message.split(b"\r\n")
    for name in (b"X-Injected", b"X-Also", b"X-Too", b"X-Sep", b"X-Evil", b"X-Orcpt", b"X-Envid",
                 b"X-Remote", b"Bcc", b"Content-Type: text/html"):
        assert not any(line.startswith(name) for line in lines), name
    top = parse(n.message)
    assert len(top.get_payload()) == 3
    assert top["Bcc"] is None
    assert len(top["To"].addresses) == 1
    blocks = dsn(n.message)
    assert len(blocks) == 2
    names = {k.lower() for b in blocks for k, _ in b}
    assert not names & {"x-injected", "x-also", "x-too", "x-sep", "x-evil", "x-orcpt", "x-envid", "x-remote"}
    assert field(blocks[1], "Diagnostic-Code") == "smtp; 550 no  X-Injected: yes X-Also: 1 X-Too: 2   X-Sep: 3"
    assert field(blocks[1], "Final-Recipient") == "rfc822; bob@example.net  X-Evil: 1"
    assert field(blocks[1], "Remote-MTA") == "dns; mx.example.net  X-Remote: 1"
    assert field(blocks[0], "Original-Envelope-Id") == "id  X-Envid: 1"
    text = textOf(top)
    assert "\nX-Injected" not in text and "\n--boundary" not in text


def test_boundary_in_the_original_cannot_end_the_report():
    base = f"{QID}.{int(NOW)}/{HOST}"
    content = HEADERS + b"\r\n" + f"--{base}\r\nContent-Type: text/html\r\n\r\n<b>x</b>\r\n--{base}--\r\n".encode()
    n = notice(original=reader(content))
    top = parse(n.message)
    assert top.get_boundary() != base
    assert len(top.get_payload()) == 3
    assert rawParts(n.message)[2][1] == b"Return-Path: <alice@example.org>\r\n" + content


# -- bounces, postmaster copies, double bounces --------------------------------------------


def test_never_bounce_a_bounce():
    null = envelope(sender="")
    assert isBounce(null) and not isBounce(envelope())
    with pytest.raises(ValueError):
        notice(env=null)


def test_double_bounce_goes_to_postmaster_with_the_full_message():
    null = envelope(sender="")
    n = notice(env=null, postmasterCopy=True, postmaster="postmaster")
    assert n.sender == "double-bounce@mail.example.org"
    assert n.to == "postmaster@mail.example.org"
    top = parse(n.message)
    assert top["Subject"] == "Postmaster Copy: Undelivered Mail"
    assert top["Auto-Submitted"] == "auto-generated"
    assert top["To"].addresses[0].addr_spec == "postmaster@mail.example.org"
    assert field(blocksOf(top.get_payload()[1])[0], "X-Mta-Sender") == "rfc822; MAILER-DAEMON"
    assert rawParts(n.message)[2][1] == b"Return-Path: <>\r\n" + CONTENT
    # No boiler plate in postmaster copies, as in Postfix.
    text = textOf(top)
    assert "I'm sorry" not in text and text.strip().startswith("<bob@example.net>: host")


def test_postmaster_copy_of_a_bounce_has_headers_and_every_recipient():
    never = Recipient("dave@example.net", notify=("NEVER",))
    n = notice(items=[(never, REJECTED)], postmasterCopy=True, postmaster="admin@example.org",
               myorigin="example.org")
    assert n.sender == "double-bounce@example.org"
    assert n.to == "admin@example.org"
    top = parse(n.message)
    assert top["From"].addresses[0].addr_spec == "MAILER-DAEMON@example.org"
    assert top.get_payload()[2].get_content_type() == "text/rfc822-headers"
    assert field(blocksOf(top.get_payload()[1])[1], "Final-Recipient") == "rfc822; dave@example.net"
    # The delay variant.
    n = notice("delay", items=[(BOB, DEFERRED)], postmasterCopy=True)
    assert parse(n.message)["Subject"] == "Postmaster Warning: Delayed Mail"


def test_no_triple_bounce():
    failedNotice = envelope(sender="double-bounce@mail.example.org")
    assert isDoubleBounce(failedNotice, "double-bounce", HOST)
    assert not isDoubleBounce(envelope(), "double-bounce", HOST)
    assert doubleBounceAddress("double-bounce", "example.org") == "double-bounce@example.org"
    assert doubleBounceAddress("bounces@example.net", "example.org") == "bounces@example.net"
    assert notice(env=failedNotice, postmasterCopy=True) is None


def test_message_ids_differ_between_kinds_and_copies():
    ids = {
        parse(notice().message)["Message-Id"],
        parse(notice(postmasterCopy=True).message)["Message-Id"],
        parse(notice("delay", items=[(BOB, DEFERRED)]).message)["Message-Id"],
        parse(notice(now=NOW + 1).message)["Message-Id"],
    }
    assert len(ids) == 4
    assert parse(notice(messageId="<given@example.org>").message)["Message-Id"] == "<given@example.org>"
