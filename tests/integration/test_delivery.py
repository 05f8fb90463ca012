"""End to end: SMTP into the queue, the queue manager, virtual(8) Maildir delivery, bounces."""

import email
import email.policy
import os
import smtplib
import time

import pytest

from tests.integration.daemon import waitFor

pytestmark = pytest.mark.integration




def maildirFiles(base, mailbox):
    path = os.path.join(base, mailbox, "new")
    return sorted(os.path.join(path, n) for n in os.listdir(path)) if os.path.isdir(path) else []


@pytest.fixture
def mailhost(makeMailhost):
    return makeMailhost(
        "transport_maps = inline:{ {fail.example = error:5.1.1 mailbox unavailable}, "
        "{later.example = retry:4.4.1 try again later} }\n"
    ).start()


def test_smtpToMaildir(mailhost):
    with smtplib.SMTP("127.0.0.1", mailhost.port, timeout=30) as s:
        s.sendmail("sender@example.org", ["u@box.example", "v@box.example"],
                   b"Subject: hello\r\nMessage-Id: <1@example.org>\r\n\r\nbody line\r\n.dot\r\n")
    files = waitFor(lambda: maildirFiles(mailhost.base, "box.example/u") and maildirFiles(mailhost.base, "box.example/v") and True,
                    what="both Maildir deliveries")
    assert files
    data = open(maildirFiles(mailhost.base, "box.example/u")[0], "rb").read()
    assert data.startswith(b"Return-Path: <sender@example.org>\n")
    assert b"\nDelivered-To: u@box.example\n" in data
    assert b"\nSubject: hello\nMessage-Id: <1@example.org>\n" in data  # cleanup adds Date: and From: (local client)
    assert data.endswith(b"\n\nbody line\n.dot\n")
    assert b"\r\n" not in data
    log = waitFor(lambda: "removed" in mailhost.maillogText() and mailhost.maillogText(), what="removed")
    assert "status=sent (delivered to maildir)" in log and "relay=virtual" in log
    assert waitFor(lambda: all(not os.listdir(os.path.join(mailhost.queue, q)) for q in ("incoming", "active", "deferred")),
                   what="an empty queue")


def test_bounceComesBackToTheSendersMaildir(mailhost):
    with smtplib.SMTP("127.0.0.1", mailhost.port, timeout=30) as s:
        s.sendmail("u@box.example", ["x@fail.example"], b"Subject: doomed\r\n\r\nhello\r\n")
    files = waitFor(lambda: maildirFiles(mailhost.base, "box.example/u"), what="the bounce in u's Maildir")
    data = open(files[0], "rb").read()
    assert data.startswith(b"Return-Path: <>\n")
    notice = email.message_from_bytes(data, policy=email.policy.default)
    assert notice["Subject"] == "Undelivered Mail Returned to Sender"
    assert notice.get_content_type() == "multipart/report"
    status = [p for p in notice.walk() if p.get_content_type() == "message/delivery-status"][0]
    text = status.as_string()
    assert "Final-Recipient: rfc822; x@fail.example" in text
    assert "Action: failed" in text and "Status: 5.1.1" in text
    log = mailhost.maillogText()
    assert "sender non-delivery notification" in log


def test_deferredMailStaysQueued(mailhost):
    with smtplib.SMTP("127.0.0.1", mailhost.port, timeout=30) as s:
        s.sendmail("u@box.example", ["x@later.example"], b"Subject: wait\r\n\r\nhello\r\n")
    deferred = os.path.join(mailhost.queue, "deferred")
    ids = waitFor(lambda: os.listdir(deferred), what="a deferred message")
    assert len(ids) == 1
    log = waitFor(lambda: "status=deferred" in mailhost.maillogText() and mailhost.maillogText(), what="deferred line")
    assert "dsn=4.4.1, status=deferred (try again later)" in log
    assert os.stat(os.path.join(deferred, ids[0])).st_mtime > time.time() + 200  # next attempt in ~300 s


def test_damagedQueueFileGoesToCorruptAndMailFlows(makeDaemon, tmp_path):
    from mta.model import Envelope, Recipient
    from mta.queue.fileformat import dumpQueueFile

    base = tmp_path / "mail2"
    base.mkdir()
    main = (
        "virtual_mailbox_domains = box.example\n"
        f"virtual_mailbox_base = {base}\n"
        "virtual_mailbox_maps = inline:{ u@box.example=box.example/u/ }\n"
    )
    d = makeDaemon(main=main, hold=False)
    incoming = os.path.join(d.queue, "incoming")
    os.makedirs(incoming)
    good = dumpQueueFile(Envelope("s@example.org", (Recipient("u@box.example"),), time.time()),
                         b"Subject: left over\r\n\r\nhi\r\n")
    with open(os.path.join(incoming, "8DmOAAAAAAAAAA"), "wb") as f:
        f.write(good[:40] + b"garbage" + good[47:])  # damaged header
    with open(os.path.join(incoming, "8DmOBBBBBBBBBB"), "wb") as f:
        f.write(good)
    d.start()
    assert waitFor(lambda: os.path.exists(os.path.join(d.queue, "corrupt", "8DmOAAAAAAAAAA")), what="corrupt/")
    assert waitFor(lambda: len(maildirFiles(str(base), "box.example/u")) == 1, what="the good left-over delivered")
    with smtplib.SMTP("127.0.0.1", d.port, timeout=30) as s:
        s.sendmail("s@example.org", ["u@box.example"], b"Subject: new\r\n\r\nhi\r\n")
    assert waitFor(lambda: len(maildirFiles(str(base), "box.example/u")) == 2, what="new mail delivered")
    assert "corrupt queue file moved to corrupt/" in d.maillogText()
