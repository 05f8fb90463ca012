"""kill -9 while the queue manager delivers: after a restart every accepted message is
delivered, and at most the deliveries that were in flight (the RFC 1047 window) twice."""

import collections
import os
import smtplib
import threading
import time

import pytest

from tests.integration.daemon import Daemon

pytestmark = pytest.mark.integration

MAIN_TEMPLATE = (
    "virtual_mailbox_domains = box.example\n"
    "virtual_mailbox_base = {base}\n"
    "virtual_mailbox_maps = inline:{{ u@box.example=box.example/u/, v@box.example=box.example/v/ }}\n"
)


def subjects(base):
    counts = collections.Counter()
    for mailbox in ("u", "v"):
        new = os.path.join(base, "box.example", mailbox, "new")
        if not os.path.isdir(new):
            continue
        for name in os.listdir(new):
            with open(os.path.join(new, name), "rb") as f:
                for line in f:
                    if line.startswith(b"Subject: "):
                        counts[(mailbox, line.strip().decode())] += 1
                        break
    return counts


def queueEmpty(queue):
    return all(not os.listdir(os.path.join(queue, q)) for q in ("incoming", "active", "deferred"))


def test_killDuringDeliveryThenRestart(tmp_path):
    base = tmp_path / "mail"
    base.mkdir()
    main = MAIN_TEMPLATE.format(base=base)
    daemon = Daemon(tmp_path, main, hold=False).start()
    accepted = []
    lock = threading.Lock()
    stop = threading.Event()

    def client(n):
        i = 0
        while not stop.is_set():
            subject = f"Subject: m{n}-{i}"
            try:
                with smtplib.SMTP("127.0.0.1", daemon.port, timeout=10) as s:
                    s.sendmail("sender@example.org", ["u@box.example", "v@box.example"],
                               f"{subject}\r\n\r\nbody\r\n".encode())
                with lock:
                    accepted.append(subject)
            except (OSError, smtplib.SMTPException):
                return
            i += 1

    threads = [threading.Thread(target=client, args=(n,), daemon=True) for n in range(6)]
    for t in threads:
        t.start()
    time.sleep(1.5)
    daemon.kill()
    stop.set()
    for t in threads:
        t.join(15)
    assert accepted, "no message was accepted before the kill"

    restarted = Daemon(tmp_path, main, hold=False).start()
    try:
        deadline = time.monotonic() + 60
        while not queueEmpty(restarted.queue) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert queueEmpty(restarted.queue), "the restarted daemon did not empty the queue"
    finally:
        code, out, err = restarted.stop()
    assert code == 0, err
    counts = subjects(str(base))
    for subject in accepted:
        for mailbox in ("u", "v"):
            assert counts[(mailbox, subject)] >= 1, f"{subject} never reached {mailbox}"
    duplicates = sum(n - 1 for n in counts.values() if n > 1)
    # Only deliveries that were in flight at the kill may repeat: at most the concurrency limit.
    assert duplicates <= 20, f"{duplicates} duplicate deliveries"
    print(f"accepted {len(accepted)} messages x 2 recipients, {duplicates} duplicates after kill -9")
