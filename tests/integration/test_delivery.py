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
    assert 'warning: saving corrupt file "8DmOAAAAAAAAAA" from queue "active" to queue "corrupt": ' in d.maillogText()


def test_strayFilesDamagedBodiesAndTmpLeftoversDoNotStopMail(makeMailhost, tmp_path):
    """
    With one active slot, stray entries (names that are not queue ids, a symbolic link to a
    FIFO, a FIFO, a directory) in incoming/, active/ and deferred/ and a file whose body was
    damaged all go to corrupt/, nothing of the damaged one is delivered, crash leftovers in
    tmp/ are removed at start, whatever their age, and mail flows.
    """
    from mta.model import Envelope, Recipient
    from mta.queue.fileformat import HEADER_SIZE, dumpQueueFile

    d = makeMailhost("qmgr_message_active_limit = 1\n")
    for queue in ("incoming", "active", "deferred", "tmp"):
        os.makedirs(os.path.join(d.queue, queue), exist_ok=True)
    fifo = str(tmp_path / "a.fifo")
    os.mkfifo(fifo)
    strays = {}
    for n, queue in enumerate(("incoming", "active", "deferred")):
        directory = os.path.join(d.queue, queue)
        with open(os.path.join(directory, "core"), "wb") as f:
            f.write(b"junk")
        os.symlink(fifo, os.path.join(directory, f"8DmOLINK{n}AAAAA"))
        os.mkfifo(os.path.join(directory, f"8DmOFIFO{n}AAAAA"))
        os.mkdir(os.path.join(directory, f"8DmODIRS{n}AAAAA"))
        strays[queue] = ["core", f"8DmOLINK{n}AAAAA", f"8DmOFIFO{n}AAAAA", f"8DmODIRS{n}AAAAA"]
    damaged = bytearray(dumpQueueFile(Envelope("s@example.org", (Recipient("u@box.example"),), time.time()),
                                      b"Subject: damaged\r\n\r\nsecret body\r\n"))
    damaged[HEADER_SIZE + 25] ^= 0x01
    with open(os.path.join(d.queue, "incoming", "8DmOBADBODYAAA"), "wb") as f:
        f.write(damaged)
    for name in ("8DmOTMPAAAAAAA", "junk"):
        with open(os.path.join(d.queue, "tmp", name), "wb") as f:
            f.write(b"partial")  # young: written just now
    d.start()
    with smtplib.SMTP("127.0.0.1", d.port, timeout=30) as s:
        for i in range(3):
            s.sendmail("s@example.org", ["u@box.example"], f"Subject: m{i}\r\n\r\nhi\r\n".encode())
    assert waitFor(lambda: len(maildirFiles(d.base, "box.example/u")) == 3, what="three deliveries")
    corrupt = waitFor(lambda: (c := sorted(os.listdir(os.path.join(d.queue, "corrupt")))) and len(c) == 13 and c,
                      what="every stray in corrupt/")
    assert "8DmOBADBODYAAA" in corrupt and "core" in corrupt and "core.1" in corrupt and "core.2" in corrupt
    for queue, names in strays.items():
        assert not set(os.listdir(os.path.join(d.queue, queue))) & set(names)
    log = d.maillogText()
    assert "content checksum mismatch" in log and "to=<u@box.example>" in log
    assert not any(b"secret body" in open(path, "rb").read() for path in maildirFiles(d.base, "box.example/u"))
    assert os.listdir(os.path.join(d.queue, "tmp")) == []
    for queue in ("incoming", "active", "deferred"):
        assert f'from queue "{queue}" to queue "corrupt": a FIFO' in log
