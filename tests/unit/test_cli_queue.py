"""mta-queue list, show, flush, delete, hold, release, requeue: on real queue
files in tmp_path (written by QueueStore with a synchronous fake reactor), and
against a fake control channel; no sockets."""

import io
import json
import os
import time

import pytest
from twisted.internet import error as netError
from twisted.internet.defer import fail, succeed
from twisted.internet.task import Clock

from mta import control
from mta.cli import queue as cliQueue
from mta.cli.queue import actions as queueActions
from mta.cli.queue.listing import _writeContent
from mta.model import Envelope, Recipient
from mta.queue.store import QueueStore
from mta.testing import SyncReactor, resultOf

HEADER = cliQueue.HEADER

ARRIVAL = 1_700_000_000.25  # Tue Nov 14 22:13:20 2023 UTC
CONTENT = b"Subject: test\r\nFrom: a@example.org\r\n\r\nline one\r\nline two\r\n"


@pytest.fixture(autouse=True)
def noOutsideConfiguration(tmp_path, monkeypatch):
    """Neither $MTA_CONFIG nor an /etc/mta/mta.ini of this machine takes part."""
    monkeypatch.delenv("MTA_CONFIG", raising=False)
    monkeypatch.setattr("mta.config.loader.DEFAULT_CONFIG", str(tmp_path / "no-such-default.ini"))


@pytest.fixture(autouse=True)
def utc(monkeypatch):
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


class Queue:
    """A queue directory in tmp_path, a configuration naming it, and helpers."""

    def __init__(self, tmp_path):
        self.directory = str(tmp_path / "queue")
        self.maillog = str(tmp_path / "maillog")
        self.reactor = SyncReactor()
        self.reactor.advance(ARRIVAL)
        self.store = QueueStore(self.directory, self.reactor)
        self.store.prepare()
        self.config = str(tmp_path / "mta.ini")
        with open(self.config, "w") as f:
            f.write(f"[main]\nqueue_directory = {self.directory}\nmaillog_file = {self.maillog}\n"
                    "myhostname = mx.test\n")

    def add(self, recipients, sender="alice@example.org", queue="incoming", content=CONTENT, **fields):
        message = self.store.newMessage()
        message.write(content)
        envelope = Envelope(
            sender=sender, recipients=tuple(Recipient(r) if isinstance(r, str) else r for r in recipients),
            arrival_time=ARRIVAL, **fields,
        )
        ids = []
        message.commit(envelope, queue="hold" if queue == "hold" else "incoming").addCallback(ids.append)
        queueId = ids[0]
        if queue not in ("incoming", "hold"):
            self.move(queueId, "incoming", queue)
        return queueId

    def state(self, queueId, queue, recipients):
        done = []
        self.store.appendState(self.store.queuePath(queue, queueId),
                               {"time": ARRIVAL + 1, "recipients": recipients}).addCallback(done.append)
        assert done

    def move(self, queueId, source, target, mtime=None):
        os.rename(self.store.queuePath(source, queueId), self.store.queuePath(target, queueId))
        if mtime is not None:
            os.utime(self.store.queuePath(target, queueId), (mtime, mtime))

    def damaged(self, queue, queueId="zzzzzzzzzzzzzz", data=b"not a queue file"):
        with open(self.store.queuePath(queue, queueId), "wb") as f:
            f.write(data)
        return queueId

    def ids(self, queue):
        return self.store.listQueue(queue)

    def run(self, capsys, *argv, stdin=None, monkeypatch=None):
        if stdin is not None:
            monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
        code = cliQueue.main(["-c", self.config, *argv])
        out, err = capsys.readouterr()
        return code, out, err

    def maillogLines(self):
        try:
            with open(self.maillog) as f:
                return [line.split(": ", 1)[1].rstrip("\n") for line in f]
        except FileNotFoundError:
            return []


@pytest.fixture
def q(tmp_path):
    return Queue(tmp_path)


# -- help ---------------------------------------------------------------------------------


@pytest.mark.parametrize("command, text", [
    ("list", "as mailq does"), ("show", "envelope"), ("flush", "when the daemon is not running"),
    ("delete", "Delete the named messages"), ("hold", "on hold"), ("release", "Release the named"),
    ("requeue", "back into incoming"),
])
def test_help_for_each_command(capsys, command, text):
    assert cliQueue.main([command, "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: mta-queue {command}")
    assert text in " ".join(out.split())


def test_action_needs_ids(capsys):
    assert cliQueue.main(["delete"]) == 2
    assert "the following arguments are required: ID" in capsys.readouterr().err


# -- list ---------------------------------------------------------------------------------


def test_list_empty(q, capsys):
    assert q.run(capsys, "list") == (0, "Mail queue is empty\n", "")
    assert q.run(capsys, "list", "--json") == (0, "", "")  # as postqueue -j


def test_list_text_is_mailq_shaped(q, capsys):
    a = q.add(["bob@example.net"], queue="active")
    d = q.add(["c@example.com", "d@example.com", "e@example.com", "f@example.com"], sender="", queue="deferred")
    q.state(d, "deferred", {
        "0": {"status": "deferred", "dsn": "4.4.1", "text": "connect to mx.example.com: Connection refused"},
        "1": {"status": "sent", "dsn": "2.0.0", "text": "delivered"},
        "2": {"status": "deferred", "dsn": "4.2.2", "text": "mailbox full\x1b"},
    })
    h = q.add(["g@example.com"], queue="hold")
    size = len(CONTENT)
    code, out, err = q.run(capsys, "list")
    assert (code, err) == (0, "")
    pad = " " * 46
    assert out == (
        "-Queue ID-  --Size-- ----Arrival Time---- -Sender/Recipient-------\n"
        f"{a}* {size:>8} Tue Nov 14 22:13:20  alice@example.org\n"
        f"{pad}bob@example.net\n"
        "\n"
        f"{d}  {size:>8} Tue Nov 14 22:13:20  MAILER-DAEMON\n"
        f"{pad}f@example.com\n"
        "(connect to mx.example.com: Connection refused)\n"
        f"{pad}c@example.com\n"
        "(mailbox full\\x1b)\n"
        f"{pad}e@example.com\n"
        "\n"
        f"{h}! {size:>8} Tue Nov 14 22:13:20  alice@example.org\n"
        f"{pad}g@example.com\n"
        "\n"
        "-- 0 Kbytes in 3 Requests.\n"
    )


def test_list_counts_kbytes(q, capsys):
    q.add(["b@example.net"], content=b"x" * 3000 + b"\r\n")
    code, out, _ = q.run(capsys, "list")
    assert out.endswith("\n-- 2 Kbytes in 1 Request.\n")


def test_list_json_is_postqueue_j(q):
    """One object per line, Postfix's members in Postfix's order, spacing and escaping (showq_json.c)."""
    a = q.add(["bob@example.net"])
    d = q.add(["c@example.com", "d@example.com", "e@example.com"], sender="", queue="deferred")
    q.state(d, "deferred", {"0": {"status": "deferred", "dsn": "4.4.1", "text": "try again later"},
                            "1": {"status": "bounced", "dsn": "5.1.1", "text": "no such user"}})
    q.move(d, "deferred", "deferred", mtime=ARRIVAL + 300)
    h = q.add(["e@example.com"], queue="hold")
    r = q.add(["f@example.com"], queue="active")
    out, err = io.StringIO(), io.StringIO()
    assert cliQueue.listQueue(q.directory, out, err, asJson=True, now=ARRIVAL + 5) == 0
    assert err.getvalue() == ""
    size = len(CONTENT)
    start = f'"arrival_time": 1700000000, "message_size": {size}, "forced_expire": false'
    assert out.getvalue().splitlines() == [  # showq's order: maildrop, active, incoming, deferred, hold
        f'{{"queue_name": "active", "queue_id": "{r}", {start}, "sender": "alice@example.org", '
        '"recipients": [{"orig_address": "f@example.com", "address": "f@example.com"}]}',
        f'{{"queue_name": "incoming", "queue_id": "{a}", {start}, "sender": "alice@example.org", '
        '"recipients": [{"orig_address": "bob@example.net", "address": "bob@example.net"}]}',
        f'{{"queue_name": "deferred", "queue_id": "{d}", {start}, "sender": "MAILER-DAEMON", '
        '"recipients": [{"orig_address": "c@example.com", "address": "c@example.com", '
        '"delay_reason": "try again later"}, {"orig_address": "e@example.com", "address": "e@example.com"}]}',
        f'{{"queue_name": "hold", "queue_id": "{h}", {start}, "sender": "alice@example.org", '
        '"recipients": [{"orig_address": "e@example.com", "address": "e@example.com"}]}',
    ]
    assert out.getvalue().endswith("}\n")
    for line in out.getvalue().splitlines():
        entry = json.loads(line)
        assert list(entry) == ["queue_name", "queue_id", "arrival_time", "message_size", "forced_expire",
                               "sender", "recipients"]
        assert all(list(r)[:2] == ["orig_address", "address"] for r in entry["recipients"])


def test_list_json_lists_maildrop(q, capsys):
    """Mail from mta-sendmail that pickup has not taken yet is in queue_name maildrop, listed first."""
    held = q.add(["h@example.com"], queue="hold")
    dropped = q.add(["m@example.com"])
    q.move(dropped, "incoming", "maildrop")
    code, out, err = q.run(capsys, "list", "--json")
    assert (code, err) == (0, "")
    assert [(e["queue_name"], e["queue_id"]) for e in map(json.loads, out.splitlines())] == [
        ("maildrop", dropped), ("hold", held)]
    code, out, err = q.run(capsys, "list")
    assert out.startswith(f"{HEADER}\n{dropped}  ")  # no mark, as mailq
    assert q.run(capsys, "show", dropped)[1].startswith(f"*** ENVELOPE maildrop/{dropped} ***\n")


def test_list_json_escapes_as_postfix(q, capsys):
    """quote_for_json(): \\b \\f \\n \\r \\t, \\" and \\\\, other controls and DEL as \\u00XX
    (upper case), UTF-8 as it is, surrogate escapes as '?'."""
    d = q.add(['"odd\\"name"@example.com', "j\u00f6rg@example.com"], sender="s\x01\x7f@example.org",
              queue="deferred")
    q.state(d, "deferred", {"0": {"status": "deferred", "dsn": "4.0.0", "text": "a\b\f\n\r\tb \\ \x1b \udcff \u00e9"}})
    code, out, err = q.run(capsys, "list", "--json")
    assert (code, err) == (0, "")
    line = out.rstrip("\n")
    assert '"sender": "s\\u0001\\u007F@example.org"' in line
    assert ('{"orig_address": "\\"odd\\\\\\"name\\"@example.com", "address": "\\"odd\\\\\\"name\\"@example.com", '
            '"delay_reason": "a\\b\\f\\n\\r\\tb \\\\ \\u001B ? \u00e9"}') in line
    assert '"address": "j\u00f6rg@example.com"' in line
    entry = json.loads(line)
    assert entry["sender"] == "s\x01\x7f@example.org"
    assert entry["recipients"][0]["delay_reason"] == "a\b\f\n\r\tb \\ \x1b ? \u00e9"


def test_jsonString_matches_quote_for_json():
    assert cliQueue.jsonString("plain") == '"plain"'
    assert cliQueue.jsonString("\x00\x1f\x7f\x80") == '"\\u0000\\u001F\\u007F\x80"'
    assert cliQueue.jsonString('"\\/') == '"\\"\\\\/"'  # '/' is not escaped


def test_list_json_writes_utf8_whatever_the_locale(q):
    q.add(["j\u00f6rg@example.com"])

    raw = io.BytesIO()
    out = io.TextIOWrapper(raw, encoding="ascii")
    assert cliQueue.listQueue(q.directory, out, io.StringIO(), asJson=True) == 0
    out.flush()
    assert '"address": "j\u00f6rg@example.com"'.encode("utf-8") in raw.getvalue()


def test_list_damaged_files(q, capsys):
    good = q.add(["bob@example.net"], queue="deferred")
    bad = q.damaged("deferred")
    truncated = q.add(["x@example.net"], queue="hold")
    path = q.store.queuePath("hold", truncated)
    os.truncate(path, os.path.getsize(path) - 5)
    code, out, err = q.run(capsys, "list", "--json")
    assert code == 0
    assert [json.loads(line)["queue_id"] for line in out.splitlines()] == [good]
    warnings = err.splitlines()
    assert len(warnings) == 2
    assert warnings[0].startswith(f"mta-queue: warning: deferred/{bad}: damaged queue file: ")
    assert "not a queue file" in warnings[0] and warnings[0].endswith(" -- not listed")
    assert warnings[1].startswith(f"mta-queue: warning: hold/{truncated}: damaged queue file: ")
    assert "envelope record" in warnings[1]
    code, out, err = q.run(capsys, "list")
    assert code == 0
    assert f"\n{bad}  {'?':>8} ?                    (damaged queue file: " in out
    assert f"\n{truncated}! {'?':>8} ?" in out
    assert out.endswith("-- 0 Kbytes in 3 Requests.\n")


def test_list_skips_a_file_that_moved_while_listing(q, monkeypatch):
    moved = q.add(["bob@example.net"])
    real = cliQueue.tools.describe

    def describe(store, queue, queueId, now):
        if queue == "incoming":
            q.move(queueId, "incoming", "deferred")  # the daemon took it meanwhile
        return real(store, queue, queueId, now)

    monkeypatch.setattr(cliQueue.tools, "describe", describe)
    entries = cliQueue.readQueue(q.directory, now=ARRIVAL)
    # gone from incoming (not damaged), found in deferred, scanned after it
    assert [(e["id"], e["queue"], "error" in e) for e in entries] == [(moved, "deferred", False)]


def test_list_escapes_control_characters(q, capsys):
    q.add(["b\x7fob@example.net"], sender="al\x01ice@example.org")
    out = q.run(capsys, "list")[1]
    assert "al\\x01ice@example.org" in out and "b\\x7fob@example.net" in out


def test_list_without_queue_directory(tmp_path, capsys):
    config = tmp_path / "mta.ini"
    config.write_text(f"[main]\nqueue_directory = {tmp_path}/nosuch\n")
    assert cliQueue.main(["-c", str(config), "list"]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err == f"mta-queue: no queue directory {tmp_path}/nosuch (configuration: {config} (from the command line))\n"


def test_list_with_an_unreadable_queue(q, capsys, monkeypatch):
    real = cliQueue.QueueStore.listQueue

    def listQueue(self, name):
        if name == "deferred":
            raise PermissionError(13, "Permission denied")
        return real(self, name)

    monkeypatch.setattr(cliQueue.QueueStore, "listQueue", listQueue)
    assert q.run(capsys, "list") == (1, "", f"mta-queue: cannot read the queue in {q.directory}: Permission denied\n")


# -- show ---------------------------------------------------------------------------------


def test_show(q, capsys):
    queueId = q.add(
        ["bob@example.net", Recipient("carol@example.net", orcpt="rfc822;carol@example.net", notify=("SUCCESS",))],
        queue="deferred", client_name="mail.example.org", client_address="192.0.2.7", client_port=40211,
        helo="mail.example.org", protocol="ESMTP", envid="abc",
    )
    q.state(queueId, "deferred", {"0": {"status": "deferred", "dsn": "4.4.1", "text": "try again"}})
    q.move(queueId, "deferred", "deferred", mtime=ARRIVAL + 300)
    code, out, err = q.run(capsys, "show", queueId)
    assert (code, err) == (0, "")
    assert out == (
        f"*** ENVELOPE deferred/{queueId} ***\n"
        f"queue_id: {queueId}\n"
        "queue: deferred\n"
        "arrival_time: Tue Nov 14 22:13:20 2023\n"
        f"size: {len(CONTENT)}\n"
        "sender: alice@example.org\n"
        "client: mail.example.org[192.0.2.7]:40211\n"
        "helo: mail.example.org\n"
        "protocol: ESMTP\n"
        "body: 7BIT\n"
        "envid: abc\n"
        "recipient: bob@example.net (deferred: try again)\n"
        "recipient: carol@example.net (pending) notify=SUCCESS orcpt=rfc822;carol@example.net\n"
        "next_attempt: Tue Nov 14 22:18:20 2023\n"
        f"*** MESSAGE CONTENT deferred/{queueId} ***\n"
        "Subject: test\nFrom: a@example.org\n\nline one\nline two\n"
        f"*** END OF MESSAGE deferred/{queueId} ***\n"
    )


def test_show_the_login(q, capsys):
    queueId = q.add(["bob@example.net"], protocol="ESMTP", sasl_method="PLAIN", sasl_username="alice@example.org",
                    sasl_sender="alice@example.org")
    out = q.run(capsys, "show", queueId)[1]
    assert "\nsasl_method: PLAIN\nsasl_username: alice@example.org\nsasl_sender: alice@example.org\nrecipient:" in out


def test_show_null_sender_on_hold(q, capsys):
    queueId = q.add(["bob@example.net"], sender="", queue="hold")
    out = q.run(capsys, "show", queueId)[1]
    assert "\nsender: <>\n" in out and "\nqueue: hold\n" in out
    assert "next_attempt" not in out


def test_show_unknown_id(q, capsys):
    assert q.run(capsys, "show", "8DmPCa9U3e0000") == (
        1, "", "mta-queue: 8DmPCa9U3e0000: no such message in the queue\n")


def test_show_bad_id(q, capsys):
    assert q.run(capsys, "show", "../../etc/passwd") == (
        2, "", "mta-queue: not a queue id: '../../etc/passwd'\n")


def test_show_damaged(q, capsys):
    bad = q.damaged("corrupt")
    code, out, err = q.run(capsys, "show", bad)
    assert (code, out) == (1, "")
    assert err.startswith(f"mta-queue: {bad}: damaged queue file in corrupt: ")
    assert err.count("\n") == 1


def test_writeContent_joins_crlf_split_between_reads_and_escapes():
    data = b"a\r" + b"\nb\x1b[2J\tc\r\n"
    f = io.BytesIO(b"HDR" + data)
    out = io.StringIO()
    original = f.read

    def smallReads(n=-1):
        return original(min(n, 2))  # every read returns at most 2 bytes

    f.read = smallReads
    _writeContent(out, f, 3, len(data), escape=True)
    assert out.getvalue() == "a\nb\\x1b[2J\tc\n"


# -- delete, hold, release, requeue on the files --------------------------------------------


def test_delete_all(q, capsys):
    ids = sorted([q.add(["a@example.net"]), q.add(["b@example.net"], queue="hold"),
                  q.add(["c@example.net"], queue="deferred"), q.add(["d@example.net"], queue="active")])
    code, out, err = q.run(capsys, "delete", "ALL")
    assert (code, err) == (0, "")
    assert out == "".join(f"mta-queue: {i}: removed\n" for i in ids) + "mta-queue: Deleted: 4 messages\n"
    assert all(q.ids(name) == [] for name in ("incoming", "hold", "deferred", "active"))
    assert q.maillogLines() == [f"{i}: removed" for i in ids]
    with open(q.maillog) as f:
        assert " mx.test mta/postsuper[" in f.readline()


def test_delete_by_id_and_missing(q, capsys):
    a, b = q.add(["a@example.net"]), q.add(["b@example.net"], queue="hold")
    missing = "8DmPCa9U3e0000"
    code, out, err = q.run(capsys, "delete", b, missing, b)
    assert code == 1
    assert out == f"mta-queue: {b}: removed\nmta-queue: Deleted: 1 message\n"
    assert err == f"mta-queue: not found in hold, incoming, active, deferred: {missing}\n"
    assert q.ids("incoming") == [a] and q.ids("hold") == []


def test_hold_and_release(q, capsys):
    a = q.add(["a@example.net"], queue="deferred")
    q.move(a, "deferred", "deferred", mtime=ARRIVAL + 3600)
    code, out, _ = q.run(capsys, "hold", a)
    assert (code, out) == (0, f"mta-queue: {a}: placed on hold\nmta-queue: Placed on hold: 1 message\n")
    assert q.ids("hold") == [a] and q.ids("deferred") == []
    before = time.time()
    code, out, _ = q.run(capsys, "release", a)
    assert (code, out) == (0, f"mta-queue: {a}: released from hold\nmta-queue: Released from hold: 1 message\n")
    assert q.ids("deferred") == [a]
    assert os.stat(q.store.queuePath("deferred", a)).st_mtime >= before - 1  # due at once
    assert q.maillogLines() == [f"{a}: placed on hold", f"{a}: released from hold"]


def test_release_only_looks_on_hold(q, capsys):
    a = q.add(["a@example.net"])
    code, out, err = q.run(capsys, "release", "ALL")
    assert (code, out, err) == (0, "mta-queue: Released from hold: 0 messages\n", "")
    code, out, err = q.run(capsys, "release", a)
    assert code == 1 and err == f"mta-queue: not found in hold: {a}\n"
    assert q.ids("incoming") == [a]


def test_requeue_all(q, capsys):
    incoming = q.add(["a@example.net"])
    held = q.add(["b@example.net"], queue="hold")
    deferred = q.add(["c@example.net"], queue="deferred")
    code, out, err = q.run(capsys, "requeue", "ALL")
    assert (code, err) == (0, "")
    assert out == "".join(f"mta-queue: {i}: requeued\n" for i in sorted([held, deferred])) + \
        "mta-queue: Requeued: 2 messages\n"
    assert q.ids("incoming") == sorted([incoming, held, deferred])


def test_hold_all_reads_nothing_from_hold(q, capsys):
    a, b = q.add(["a@example.net"]), q.add(["b@example.net"], queue="hold")
    code, out, _ = q.run(capsys, "hold", "ALL")
    assert out == f"mta-queue: {a}: placed on hold\nmta-queue: Placed on hold: 1 message\n"
    assert q.ids("hold") == sorted([a, b])


def test_ids_from_stdin(q, capsys, monkeypatch):
    a, b, c = q.add(["a@example.net"]), q.add(["b@example.net"]), q.add(["c@example.net"])
    code, out, err = q.run(capsys, "hold", "-", stdin=f"{a}\n  {b}\t\n\n", monkeypatch=monkeypatch)
    assert (code, err) == (0, "")
    assert out == f"mta-queue: {a}: placed on hold\nmta-queue: {b}: placed on hold\nmta-queue: Placed on hold: 2 messages\n"
    assert q.ids("incoming") == [c]


def test_empty_stdin_does_nothing(q, capsys, monkeypatch):
    q.add(["a@example.net"])
    assert q.run(capsys, "delete", "-", stdin="", monkeypatch=monkeypatch) == (
        0, "mta-queue: Deleted: 0 messages\n", "")
    assert len(q.ids("incoming")) == 1


@pytest.mark.parametrize("argv, stdin, message", [
    (["nope"], None, "not a queue id: 'nope'"),
    (["{a}", "../x"], None, "not a queue id: '../x'"),
    (["-"], "{a}\nbad\x1b[1m\n", "not a queue id: 'bad\\x1b[1m'"),
    (["-"], "ALL\n", "not a queue id: 'ALL'"),
    (["ALL", "{a}"], None, "ALL cannot be combined with queue ids"),
    (["a", "b", "c", "d", "e", "f", "g"], None, "not a queue id: 'a', 'b', 'c', 'd', 'e' and 2 more"),
])
def test_bad_ids_do_nothing(q, capsys, monkeypatch, argv, stdin, message):
    a = q.add(["a@example.net"])
    argv = [arg.format(a=a) for arg in argv]
    code, out, err = q.run(capsys, "delete", *argv, stdin=stdin and stdin.format(a=a), monkeypatch=monkeypatch)
    assert (code, out) == (2, "")
    assert err == f"mta-queue: delete: {message}; nothing done\n"
    assert q.ids("incoming") == [a]
    assert q.maillogLines() == []


def test_offline_breaks_a_stale_lock(q, capsys):
    a = q.add(["a@example.net"], queue="hold")
    control.prepareDirectory(q.directory)
    lock = control.socketPath(q.directory) + ".lock"
    os.symlink("999999999", lock)  # a pid that cannot exist: a daemon killed with -9
    code, out, err = q.run(capsys, "delete", a)
    assert (code, err) == (0, "")
    assert not os.path.lexists(lock)
    assert q.ids("hold") == []


def test_offline_refuses_when_the_lock_is_held(q, capsys):
    a = q.add(["a@example.net"], queue="hold")
    control.prepareDirectory(q.directory)
    lock = control.socketPath(q.directory) + ".lock"
    os.symlink(str(os.getpid()), lock)  # a live process: the daemon, without its socket
    code, out, err = q.run(capsys, "delete", "ALL")
    assert (code, out) == (1, "")
    assert err == (f"mta-queue: mta is running (pid {os.getpid()} holds {lock}) but does not answer on "
                   "its control socket; nothing done\n")
    assert q.ids("hold") == [a]
    assert os.readlink(lock) == str(os.getpid())


def test_no_maillog_file(q, capsys, tmp_path):
    a = q.add(["a@example.net"])
    with open(q.config, "w") as f:
        f.write(f"[main]\nqueue_directory = {q.directory}\n")
    assert q.run(capsys, "delete", a)[0] == 0
    assert not os.path.exists(q.maillog)


def test_maillog_write_failure_is_a_warning(q, capsys):
    a = q.add(["a@example.net"])
    os.mkdir(q.maillog)  # cannot be opened for appending
    code, out, err = q.run(capsys, "delete", a)
    assert code == 0
    assert err == f"mta-queue: warning: cannot write {q.maillog}: Is a directory\n"


# -- through the control channel (a fake one) -----------------------------------------------


class FakeTransport:
    lost = False

    def loseConnection(self):
        self.lost = True


class FakeClient:
    """Answers callRemote with C{answer(command, arguments)} (a value, or an exception to fail with)."""

    def __init__(self, answer):
        self.answer = answer
        self.transport = FakeTransport()
        self.calls = []

    def callRemote(self, command, **arguments):
        self.calls.append((command, arguments))
        result = self.answer(command, arguments)
        return fail(result) if isinstance(result, Exception) else succeed(result)


def socketStandIn(directory):
    control.prepareDirectory(directory)
    open(control.socketPath(directory), "w").close()  # stands for the socket


run = resultOf


def connectTo(client):
    def connect(reactor, queueDirectory, timeout):
        return succeed(client)
    return connect


def refused(reactor, queueDirectory, timeout):
    raise netError.ConnectionRefusedError()


def test_action_through_the_daemon(q):
    a, b = q.add(["a@example.net"]), q.add(["b@example.net"])
    socketStandIn(q.directory)
    client = FakeClient(lambda command, args: {"done": [args["ids"][0]], "missing": args["ids"][1:]})
    out, err = io.StringIO(), io.StringIO()
    code = run(cliQueue.queueAction(Clock(), q.directory, "hold", [a, b], out, err, connect=connectTo(client)))
    assert code == 1
    assert client.calls == [(control.QueueAction, {"action": "hold", "ids": [a, b]})]
    assert client.transport.lost
    assert out.getvalue() == f"mta-queue: {a}: placed on hold\nmta-queue: Placed on hold: 1 message\n"
    assert err.getvalue() == f"mta-queue: not found in incoming, active, deferred: {b}\n"
    assert q.ids("incoming") == [a, b]  # the (fake) daemon did it, not the tool


def test_all_through_the_daemon_is_sent_in_batches(q, monkeypatch):
    ids = sorted(q.add([f"{n}@example.net"], queue="deferred") for n in range(5))
    socketStandIn(q.directory)
    monkeypatch.setattr(queueActions, "BATCH", 2)
    client = FakeClient(lambda command, args: {"done": args["ids"], "missing": []})
    out, err = io.StringIO(), io.StringIO()
    assert run(cliQueue.queueAction(Clock(), q.directory, "delete", ["ALL"], out, err, connect=connectTo(client))) == 0
    assert [args["ids"] for _, args in client.calls] == [ids[0:2], ids[2:4], ids[4:]]
    assert out.getvalue().endswith("mta-queue: Deleted: 5 messages\n")


def test_daemon_failing_midway(q, monkeypatch):
    ids = sorted(q.add([f"{n}@example.net"]) for n in range(3))
    socketStandIn(q.directory)
    monkeypatch.setattr(queueActions, "BATCH", 1)
    client = FakeClient(lambda command, args: {"done": args["ids"], "missing": []} if args["ids"] == [ids[0]]
                        else ValueError("boom"))
    out, err = io.StringIO(), io.StringIO()
    assert run(cliQueue.queueAction(Clock(), q.directory, "delete", ids, out, err, connect=connectTo(client))) == 1
    assert out.getvalue() == f"mta-queue: {ids[0]}: removed\nmta-queue: Deleted: 1 message\n"
    assert err.getvalue() == (f"mta-queue: no answer from mta at {control.socketPath(q.directory)}: boom; "
                              "2 of 3 messages not done\n")


def test_stale_socket_falls_back_to_the_files(q):
    a = q.add(["a@example.net"], queue="hold")
    socketStandIn(q.directory)
    out, err = io.StringIO(), io.StringIO()
    code = run(cliQueue.queueAction(Clock(), q.directory, "release", [a], out, err, connect=refused))
    assert (code, err.getvalue()) == (0, "")
    assert out.getvalue() == f"mta-queue: {a}: released from hold\nmta-queue: Released from hold: 1 message\n"
    assert q.ids("deferred") == [a]


def test_unreachable_daemon_does_nothing(q):
    a = q.add(["a@example.net"], queue="hold")
    socketStandIn(q.directory)

    def connect(reactor, queueDirectory, timeout):
        raise netError.ConnectError("Permission denied")

    out, err = io.StringIO(), io.StringIO()
    assert run(cliQueue.queueAction(Clock(), q.directory, "delete", [a], out, err, connect=connect)) == 1
    assert out.getvalue() == ""
    assert err.getvalue().startswith(f"mta-queue: mta is not reachable at {control.socketPath(q.directory)}: ")
    assert err.getvalue().endswith("; nothing done\n")
    assert q.ids("hold") == [a]


def test_flush_through_the_daemon(q):
    socketStandIn(q.directory)
    client = FakeClient(lambda command, args: {"count": 3})
    out, err = io.StringIO(), io.StringIO()
    assert run(cliQueue.flush(Clock(), q.directory, out, err, connect=connectTo(client))) == 0
    assert client.calls == [(control.Flush, {})]
    assert (out.getvalue(), err.getvalue()) == ("mta-queue: Flushed: 3 deferred messages\n", "")


def test_flush_with_a_stale_socket(q):
    socketStandIn(q.directory)
    out, err = io.StringIO(), io.StringIO()
    assert run(cliQueue.flush(Clock(), q.directory, out, err, connect=refused)) == 1
    assert err.getvalue() == (
        "mta-queue: cannot flush the queue: mta is not running (stale control socket at "
        f"{control.socketPath(q.directory)}: connection refused); deferred mail will be tried when it starts\n"
    )


def test_flush_not_running(q, capsys):
    assert q.run(capsys, "flush") == (
        1, "",
        "mta-queue: cannot flush the queue: mta is not running (no control socket at "
        f"{control.socketPath(q.directory)}); deferred mail will be tried when it starts\n",
    )
