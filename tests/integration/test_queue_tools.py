"""mta-queue against a real ``twistd mta``: list, show, release, hold, delete, flush
through the control channel, and on the queue files once the daemon is stopped."""

import json
import os
import re
import smtplib
import subprocess
import sys
import time

import pytest

from tests.integration.daemon import ROOT, environment, waitFor

pytestmark = pytest.mark.integration

LATER = "transport_maps = inline:{ {later.example = retry:4.4.1 try again later} }\n"




def mtaQueue(daemon, *args, input=None):
    """Run ``mta-queue -c CONFIG ARGS`` as its own process; the CompletedProcess."""
    done = subprocess.run(
        [sys.executable, "-m", "mta.cli.queue", "-c", daemon.config, *args],
        cwd=ROOT, env=environment(), input=input, capture_output=True, text=True, timeout=60,
    )
    assert "Traceback" not in done.stderr, done.stderr
    return done


def send(daemon, recipients, sender="alice@example.org", subject="hello"):
    """Send one message with smtplib; its queue id (from the 250 reply)."""
    with smtplib.SMTP("127.0.0.1", daemon.port, timeout=30) as s:
        s.ehlo("client.example")
        s.mail(sender)
        for recipient in recipients:
            assert s.rcpt(recipient)[0] == 250
        code, reply = s.data(f"Subject: {subject}\r\n\r\nbody line\r\n".encode())
    assert code == 250, reply
    return re.search(rb"queued as ([0-9A-Za-z]+)", reply).group(1).decode()


def queueFiles(daemon, queue):
    path = os.path.join(daemon.queue, queue)
    return sorted(os.listdir(path)) if os.path.isdir(path) else []


def deferredLines(daemon, queueId):
    return [line for line in daemon.maillogText().splitlines()
            if f"{queueId}: to=<" in line and "status=deferred" in line]


def listJson(daemon):
    """mta-queue list --json: postqueue -j's one object per line."""
    done = mtaQueue(daemon, "list", "--json")
    assert (done.returncode, done.stderr) == (0, "")
    assert done.stdout == "" or done.stdout.endswith("}\n")
    return [json.loads(line) for line in done.stdout.splitlines()]


def test_list_and_show_a_held_message(daemon):
    before = time.time()
    queueId = send(daemon, ["bob@example.net", "carol@example.net"])
    assert daemon.incoming() == [queueId]  # on hold: the test daemon holds all mail

    [entry] = listJson(daemon)
    assert list(entry) == ["queue_name", "queue_id", "arrival_time", "message_size", "forced_expire", "sender",
                           "recipients"]
    assert (entry["queue_id"], entry["queue_name"], entry["sender"], entry["forced_expire"]) == (
        queueId, "hold", "alice@example.org", False)
    assert entry["recipients"] == [
        {"orig_address": "bob@example.net", "address": "bob@example.net"},
        {"orig_address": "carol@example.net", "address": "carol@example.net"},
    ]
    assert isinstance(entry["arrival_time"], int) and before - 1 <= entry["arrival_time"] <= time.time() + 1
    size = os.path.getsize(os.path.join(daemon.queue, "hold", queueId))
    assert 0 < entry["message_size"] < size

    done = mtaQueue(daemon, "list")
    assert (done.returncode, done.stderr) == (0, "")
    lines = done.stdout.splitlines()
    assert lines[0] == "-Queue ID-  --Size-- ----Arrival Time---- -Sender/Recipient-------"
    assert re.fullmatch(rf"{queueId}! +{entry['message_size']} \w{{3}} \w{{3}} [ \d]\d \d\d:\d\d:\d\d  alice@example.org",
                        lines[1]), lines[1]
    assert [line.strip() for line in lines[2:4]] == ["bob@example.net", "carol@example.net"]
    assert lines[4:] == ["", "-- 0 Kbytes in 1 Request."]

    done = mtaQueue(daemon, "show", queueId)
    assert (done.returncode, done.stderr) == (0, "")
    assert done.stdout.startswith(f"*** ENVELOPE hold/{queueId} ***\nqueue_id: {queueId}\nqueue: hold\n")
    assert "\nsender: alice@example.org\n" in done.stdout
    assert "\nclient: localhost[127.0.0.1]:" in done.stdout or "\nclient: unknown[127.0.0.1]:" in done.stdout
    assert "\nrecipient: bob@example.net (pending)\n" in done.stdout
    assert "\nSubject: hello\n" in done.stdout and "\n\nbody line\n" in done.stdout
    assert done.stdout.endswith(f"*** END OF MESSAGE hold/{queueId} ***\n")

    done = mtaQueue(daemon, "show", "0000000000zzzz")
    assert (done.returncode, done.stdout) == (1, "")
    assert done.stderr == "mta-queue: 0000000000zzzz: no such message in the queue\n"

    assert mtaQueue(daemon, "status").stdout.startswith("mta is running: pid ")


def test_release_hands_the_message_to_the_queue_manager(makeDaemon):
    d = makeDaemon(main=LATER).start()
    queueId = send(d, ["x@later.example"])
    assert d.incoming() == [queueId]
    done = mtaQueue(d, "release", queueId)
    assert (done.returncode, done.stderr) == (0, "")
    assert done.stdout == f"mta-queue: {queueId}: released from hold\nmta-queue: Released from hold: 1 message\n"
    waitFor(lambda: deferredLines(d, queueId), what="the delivery attempt after release")
    assert "mta/postsuper[" in d.maillogText() and f"{queueId}: released from hold" in d.maillogText()
    assert "dsn=4.4.1, status=deferred (try again later)" in deferredLines(d, queueId)[0]
    waitFor(lambda: queueFiles(d, "deferred") == [queueId], what="the message in deferred/")
    assert queueFiles(d, "hold") == []
    [entry] = listJson(d)
    assert entry["queue_name"] == "deferred"
    assert entry["recipients"] == [
        {"orig_address": "x@later.example", "address": "x@later.example", "delay_reason": "try again later"}]


def test_hold_and_delete_a_deferred_message(makeDaemon):
    d = makeDaemon(main=LATER, hold=False).start()
    queueId = send(d, ["x@later.example"])
    other = send(d, ["y@later.example"], subject="other")
    waitFor(lambda: queueFiles(d, "deferred") == sorted([queueId, other]), what="two deferred messages")

    done = mtaQueue(d, "hold", "-", input=f"{queueId}\n")  # ids from stdin, as postsuper -h -
    assert (done.returncode, done.stderr) == (0, "")
    assert done.stdout == f"mta-queue: {queueId}: placed on hold\nmta-queue: Placed on hold: 1 message\n"
    assert queueFiles(d, "hold") == [queueId] and queueFiles(d, "deferred") == [other]
    assert f"{queueId}: placed on hold" in d.maillogText()
    listing = mtaQueue(d, "list").stdout
    assert f"\n{queueId}! " in listing and f"\n{other}  " in listing
    assert "\n(try again later)\n" in listing

    done = mtaQueue(d, "delete", queueId, "0000000000zzzz")
    assert done.returncode == 1
    assert done.stdout == f"mta-queue: {queueId}: removed\nmta-queue: Deleted: 1 message\n"
    assert done.stderr == "mta-queue: not found in hold, incoming, active, deferred: 0000000000zzzz\n"
    assert queueFiles(d, "hold") == []
    assert f"{queueId}: removed" in d.maillogText()

    done = mtaQueue(d, "delete", "ALL")
    assert (done.returncode, done.stderr) == (0, "")
    assert done.stdout == f"mta-queue: {other}: removed\nmta-queue: Deleted: 1 message\n"
    assert mtaQueue(d, "list").stdout == "Mail queue is empty\n"


def test_bad_ids_are_refused_before_anything_is_done(daemon):
    queueId = send(daemon, ["bob@example.net"])
    done = mtaQueue(daemon, "delete", queueId, "../hold/x")
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr == "mta-queue: delete: not a queue id: '../hold/x'; nothing done\n"
    assert daemon.incoming() == [queueId]


def test_flush_makes_a_new_attempt(makeDaemon):
    d = makeDaemon(main=LATER, hold=False).start()
    queueId = send(d, ["x@later.example"])
    waitFor(lambda: queueFiles(d, "deferred") == [queueId], what="the deferred message")
    assert len(deferredLines(d, queueId)) == 1
    done = mtaQueue(d, "flush")
    assert (done.returncode, done.stdout, done.stderr) == (0, "mta-queue: Flushed: 1 deferred message\n", "")
    waitFor(lambda: len(deferredLines(d, queueId)) == 2, what="a second deferred line")
    waitFor(lambda: queueFiles(d, "deferred") == [queueId], what="the message deferred again")


def test_offline_after_the_daemon_stops(makeDaemon):
    d = makeDaemon().start()
    first, second = send(d, ["bob@example.net"]), send(d, ["carol@example.net"])
    code, out, err = d.stop()
    assert code == 0, err

    done = mtaQueue(d, "status")
    assert done.returncode == 1 and "mta is not running" in done.stderr
    done = mtaQueue(d, "flush")
    assert (done.returncode, done.stdout) == (1, "")
    assert done.stderr.startswith("mta-queue: cannot flush the queue: mta is not running (no control socket at ")
    assert [(e["queue_id"], e["queue_name"]) for e in listJson(d)] == [(first, "hold"), (second, "hold")]

    done = mtaQueue(d, "release", first)
    assert (done.returncode, done.stderr) == (0, "")
    assert done.stdout == f"mta-queue: {first}: released from hold\nmta-queue: Released from hold: 1 message\n"
    assert queueFiles(d, "deferred") == [first]
    assert re.search(rf"mta\.test mta/postsuper\[\d+\]: {first}: released from hold\n", d.maillogText())

    done = mtaQueue(d, "delete", "ALL")
    assert (done.returncode, done.stderr) == (0, "")
    assert done.stdout == (f"mta-queue: {first}: removed\nmta-queue: {second}: removed\n"
                           "mta-queue: Deleted: 2 messages\n")
    assert mtaQueue(d, "list").stdout == "Mail queue is empty\n"

    d.start()  # the tool left no lock behind
    assert mtaQueue(d, "status").returncode == 0


def test_offline_after_kill_9(makeDaemon):
    d = makeDaemon().start()
    queueId = send(d, ["bob@example.net"])
    d.kill()
    socket = os.path.join(d.queue, "private", "control")
    assert os.path.lexists(socket) and os.path.lexists(socket + ".lock")  # both stale

    done = mtaQueue(d, "hold", "ALL")  # connection refused: on the files
    assert (done.returncode, done.stderr) == (0, "")
    assert done.stdout == "mta-queue: Placed on hold: 0 messages\n"
    done = mtaQueue(d, "requeue", queueId)
    assert (done.returncode, done.stderr) == (0, "")
    assert queueFiles(d, "incoming") == [queueId]
    assert not os.path.lexists(socket + ".lock")

    d.start()  # and the daemon starts again, and takes up the requeued message
    assert mtaQueue(d, "status").returncode == 0
    waitFor(lambda: f"{queueId}: to=<bob@example.net>" in d.maillogText(), what="the delivery attempt")


# -- list --json against Postfix's own postqueue -j ------------------------------------------


QUOTED_SENDER = '"john \\"q\\""@example.org'  # a quoted local part holding quotes: JSON must escape " and \


def sendRaw(port, sender, recipients):
    """MAIL FROM with C{sender} as it is (smtplib would re-quote it), then the recipients and a message."""
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as s:
        s.ehlo("client.example")
        code, reply = s.docmd(f"MAIL FROM:<{sender}>")
        assert code == 250, reply
        for recipient in recipients:
            code, reply = s.docmd(f"RCPT TO:<{recipient}>")
            assert code == 250, reply
        code, reply = s.data(b"Subject: json\r\n\r\nbody\r\n")
        assert code == 250, reply


def skeleton(value):
    """The shape of a JSON value: member names in order, value types."""
    if isinstance(value, dict):
        return [(name, skeleton(member)) for name, member in value.items()]
    if isinstance(value, list):
        return [skeleton(value[0])] if value else []
    return type(value).__name__


@pytest.fixture
def postfixDeferring():
    """A private Postfix (bench/postfix_instance.py) relaying to a loopback port where nothing listens."""
    from bench.postfix_instance import PostfixInstance
    from tests.integration.daemon import freePort

    instance = PostfixInstance(freePort(), relay_port=freePort())
    try:
        instance.start()
        yield instance
    finally:
        instance.stop()


def postqueueJ(instance):
    env = dict(os.environ)
    env.pop("MAIL_CONFIG", None)
    done = subprocess.run([instance.postqueue, "-c", str(instance.config_dir), "-j"],
                          capture_output=True, text=True, timeout=60, env=env)
    assert (done.returncode, done.stderr) == (0, ""), done
    return done.stdout


def test_list_json_is_what_postqueue_j_prints(postfixDeferring, makeDaemon):
    """
    The same message (a quoted sender, two recipients, deferred: connection
    refused) in a real Postfix and in mta: mta-queue list --json formats
    Postfix's own values exactly as postqueue -j prints them, and its own
    listing has the same shape.  (orig_address is Postfix 3.11's; an older
    Postfix, such as Debian 12's 3.7, does not print it.)
    """
    sendRaw(postfixDeferring.port, QUOTED_SENDER, ["one@far.example", "two@far.example"])
    def deferred():
        # qmgr writes the defer log (the delay reasons) before it moves the file to deferred/
        lines = postqueueJ(postfixDeferring).splitlines()
        entries = [json.loads(line) for line in lines]
        done = (len(entries) == 1 and entries[0]["queue_name"] == "deferred"
                and all("delay_reason" in r for r in entries[0]["recipients"]))
        return done and lines[0]

    line = waitFor(deferred, what="the message deferred by Postfix, with both delay reasons", timeout=60)
    theirs = json.loads(line)
    assert theirs["queue_name"] == "deferred"
    assert theirs["sender"] == QUOTED_SENDER
    assert all("Connection refused" in r["delay_reason"] for r in theirs["recipients"])

    # Postfix's values, through mta's formatter: the very same line.
    from mta.cli.queue import formatJson

    entry = {"queue": theirs["queue_name"], "id": theirs["queue_id"], "arrival_time": theirs["arrival_time"],
             "size": theirs["message_size"], "sender": theirs["sender"],
             "recipients": [{"address": r["address"], "status": "deferred", "reason": r["delay_reason"]}
                            for r in theirs["recipients"]]}
    ours = formatJson(entry)
    if "orig_address" not in line:
        ours = re.sub(r'"orig_address": "(?:[^"\\]|\\.)*", ', "", ours)
    assert ours == line
    assert '"sender": "\\"john \\\\\\"q\\\\\\"\\"@example.org"' in line  # the escaping compared above

    # mta's own listing of the same kind of message: the same members in the same order.
    d = makeDaemon(main="transport_maps = inline:{ {far.example = retry:4.4.1 connect to far.example: "
                        "Connection refused} }\n", hold=False).start()
    sendRaw(d.port, QUOTED_SENDER, ["one@far.example", "two@far.example"])
    waitFor(lambda: queueFiles(d, "deferred"), what="the message in deferred/")
    done = mtaQueue(d, "list", "--json")
    assert (done.returncode, done.stderr) == (0, "")
    [mine] = done.stdout.splitlines()
    mineParsed = json.loads(mine)
    if "orig_address" not in line:
        for recipient in mineParsed["recipients"]:
            del recipient["orig_address"]
    assert skeleton(mineParsed) == skeleton(theirs)
    assert mineParsed["sender"] == QUOTED_SENDER and mine.count('"\\"john \\\\\\"q\\\\\\"\\"@example.org"') == 1
