"""
Address verification against a real ``twistd mta``: reject_unverified_recipient
probes a scripted SMTP server (tests.integration.peerservers.ScriptedSMTPServer)
that accepts one recipient and refuses another with 550.

- the first RCPT of each gets 450 "Address verification in progress";
- the probes stop after RCPT (the server never sees DATA, never gets a
  message), their lines say status=deliverable / status=undeliverable,
  nothing is bounced and the queue is empty afterwards;
- then the good address gets 250 and the bad one 550 (or 450, with the
  default unverified_recipient_reject_code);
- the cache file (address_verify_map) survives a restart;
- with worker_processes, smtpd in a worker asks the master's verify service.
"""

import os
import re
import smtplib
import time
from contextlib import ExitStack

import pytest

from tests.integration.daemon import waitFor
from tests.integration.peerservers import ScriptedSMTPServer

pytestmark = pytest.mark.integration

GOOD = "good@scripted.example"
BAD = "bad@scripted.example"


@pytest.fixture
def peers():
    with ExitStack() as stack:
        yield stack


def scripted(peers):
    def rcpt(session):
        if session.rcpts[-1].decode("latin-1").lower() == f"<{BAD}>":
            return b"550 5.1.1 <bad@scripted.example>: Recipient address rejected: User unknown\r\n"
        return b"250 2.1.5 Ok\r\n"

    server = ScriptedSMTPServer({"rcpt": rcpt})
    peers.callback(server.stop)
    return server.start()


def config(server, extra=""):
    return (f"relay_domains = scripted.example\n"
            f"transport_maps = inline:{{ {{scripted.example = smtp:[127.0.0.1]:{server.port}}} }}\n"
            "smtpd_recipient_restrictions = reject_unverified_recipient\n"
            "address_verify_poll_count = 1\n"
            "minimal_backoff_time = 1s\nmaximal_backoff_time = 2s\nqueue_run_delay = 1s\n" + extra)


def rcpt(daemon, *recipients):
    """The (code, text) of RCPT TO for each recipient, in one session (RSET after each)."""
    answers = []
    with smtplib.SMTP("127.0.0.1", daemon.port, timeout=60) as s:
        s.ehlo("client.test")
        for recipient in recipients:
            code, _ = s.mail("sender@client.test")
            assert code == 250
            code, text = s.rcpt(recipient)
            answers.append((code, text.decode()))
            s.rset()
    return answers


def waitProbeLines(daemon, timeout=60):
    def found():
        text = daemon.maillogText()
        good = re.search(rf"to=<{GOOD}>, relay=127\.0\.0\.1\[127\.0\.0\.1\]:\d+, .*status=deliverable "
                         rf"\(250 2\.1\.5 Ok\)", text)
        bad = re.search(rf"to=<{BAD}>, relay=.*dsn=5\.1\.1, status=undeliverable \(host 127\.0\.0\.1\[127\.0\.0\.1\] "
                        rf"said: 550 5\.1\.1 <{BAD}>: Recipient address rejected: User unknown \(in reply to RCPT TO "
                        rf"command\)\)", text)
        return text if good and bad else None

    try:
        return waitFor(found, timeout, "the probes' status=deliverable and status=undeliverable lines")
    except AssertionError as e:
        raise AssertionError(f"{e}\n--- maillog ---\n{daemon.maillogText()}") from None


def mails(server):
    """The MAIL commands the server got: one per probe."""
    return sum(1 for c in server.commands if c.upper().startswith("MAIL FROM:"))


def queueFiles(daemon):
    found = []
    for name in ("incoming", "active", "deferred", "hold", "corrupt"):
        path = os.path.join(daemon.queue, name)
        if os.path.isdir(path):
            found += [f"{name}/{f}" for f in os.listdir(path)]
    return found


PROGRESS = "4.1.1 <{}>: Recipient address rejected: unverified address: Address verification in progress"
UNDELIVERABLE = ("5.1.1 <bad@scripted.example>: Recipient address rejected: undeliverable address: host "
                 "127.0.0.1[127.0.0.1] said: 550 5.1.1 <bad@scripted.example>: Recipient address rejected: "
                 "User unknown (in reply to RCPT TO command)")


def checkProbed(daemon, server):
    """The probes' results are in; nothing was delivered or bounced, nothing is left queued."""
    text = waitProbeLines(daemon)
    waitFor(lambda: queueFiles(daemon) == [], 30, "an empty queue")
    assert "DATA" not in [c.split(" ")[0].upper() for c in server.commands], server.commands
    assert server.messages == []
    assert "notification" not in text and "status=bounced" not in text and "status=sent" not in text
    probes = re.findall(r"(\w+): from=<(double-bounce@mta\.test)>", text)
    assert len(probes) >= 2, text  # one probe per address, from $double_bounce_sender
    return text


def test_reject_unverified_recipient_probes_then_answers(peers, makeDaemon):
    server = scripted(peers)
    d = makeDaemon(main=config(server, "unverified_recipient_reject_code = 550\n"), hold=False).start()
    assert rcpt(d, GOOD, BAD) == [(450, PROGRESS.format(GOOD)), (450, PROGRESS.format(BAD))]
    checkProbed(d, server)
    assert rcpt(d, GOOD, BAD) == [(250, "2.1.5 Ok"), (550, UNDELIVERABLE)]
    # The answers come from the cache: no new probe went out.
    probes = mails(server)
    assert probes == 2
    assert rcpt(d, GOOD) == [(250, "2.1.5 Ok")]
    assert mails(server) == probes

    # The cache file (sqlite:$queue_directory/verify_cache) outlives the daemon.
    code, out, err = d.stop()
    assert code == 0, (out, err)
    assert os.path.exists(os.path.join(d.queue, "verify_cache"))
    d.start()
    assert rcpt(d, GOOD, BAD) == [(250, "2.1.5 Ok"), (550, UNDELIVERABLE)]
    assert mails(server) == probes
    assert "DATA" not in [c.split(" ")[0].upper() for c in server.commands], server.commands


def test_the_default_reject_code_is_450(peers, makeDaemon):
    server = scripted(peers)
    d = makeDaemon(main=config(server, "address_verify_map =\n"), hold=False).start()
    assert rcpt(d, BAD) == [(450, PROGRESS.format(BAD))]
    waitFor(lambda: "status=undeliverable" in d.maillogText(), 60, "the probe's result")
    [(code, text)] = rcpt(d, BAD)
    assert code == 450
    assert text.startswith(f"4.1.1 <{BAD}>: Recipient address rejected: unverified address: host 127.0.0.1")
    assert server.messages == []
    assert not os.path.exists(os.path.join(d.queue, "verify_cache"))  # memory only


def test_a_down_server_defers_the_probe_and_the_address_stays_unverified(peers, makeDaemon):
    from tests.integration.peerservers import freePort

    port = freePort()  # nothing listens there
    main = (f"relay_domains = scripted.example\n"
            f"transport_maps = inline:{{ {{scripted.example = smtp:[127.0.0.1]:{port}}} }}\n"
            "smtpd_recipient_restrictions = reject_unverified_recipient\naddress_verify_poll_count = 1\n"
            "minimal_backoff_time = 1s\nmaximal_backoff_time = 2s\nqueue_run_delay = 1s\n")
    d = makeDaemon(main=main, hold=False).start()
    assert rcpt(d, GOOD) == [(450, PROGRESS.format(GOOD))]
    waitFor(lambda: re.search(rf"to=<{GOOD}>.*status=undeliverable \(connect to 127\.0\.0\.1", d.maillogText()),
            60, "the deferred probe's line")
    [(code, text)] = rcpt(d, GOOD)
    assert code == 450 and "unverified address: connect to 127.0.0.1" in text, text
    assert any(f.startswith(("deferred/", "active/", "incoming/")) for f in queueFiles(d))  # retried later
    assert "notification" not in d.maillogText()


def test_smtpd_in_worker_processes_asks_the_masters_verify_service(peers, makeDaemon):
    server = scripted(peers)
    d = makeDaemon(main=config(server, "worker_processes = 2\nunverified_recipient_reject_code = 550\n"),
                   hold=False).start()
    d.waitForWorkers(2)
    time.sleep(0.5)  # the master stops accepting once the workers are ready
    assert rcpt(d, GOOD, BAD) == [(450, PROGRESS.format(GOOD)), (450, PROGRESS.format(BAD))]
    checkProbed(d, server)
    for _ in range(3):  # whichever process takes the connection, the answer is the master's cache
        assert rcpt(d, GOOD, BAD) == [(250, "2.1.5 Ok"), (550, UNDELIVERABLE)]


def test_reject_unverified_sender(peers, makeDaemon):
    server = scripted(peers)
    main = config(server, "unverified_sender_reject_code = 550\n").replace(
        "smtpd_recipient_restrictions = reject_unverified_recipient\n",
        "smtpd_sender_restrictions = reject_unverified_sender\nrelay_domains = scripted.example, local.example\n"
        "smtpd_recipient_restrictions = permit\n").replace("relay_domains = scripted.example\n", "", 1)

    def mailFrom(sender):
        with smtplib.SMTP("127.0.0.1", d.port, timeout=60) as s:
            s.ehlo("client.test")
            assert s.mail(sender)[0] == 250  # smtpd_delay_reject: the sender is judged at RCPT
            code, text = s.rcpt("someone@local.example")
            return code, text.decode()

    d = makeDaemon(main=main, hold=False).start()
    assert mailFrom(BAD) == (450, f"4.1.7 <{BAD}>: Sender address rejected: unverified address: Address "
                                  f"verification in progress")
    waitFor(lambda: "status=undeliverable" in d.maillogText(), 60, "the probe's result")
    code, text = mailFrom(BAD)
    assert code == 550 and text.startswith(f"5.1.7 <{BAD}>: Sender address rejected: undeliverable address: host "
                                           f"127.0.0.1[127.0.0.1] said: 550 5.1.1"), text
    assert server.messages == []
