"""The queue manager with a fake clock, a real queue directory and fake transports."""

import collections
import os

import pytest
from twisted.internet.defer import Deferred, succeed

from mta.cleanup import Cleanup
from mta.config import ConfigError, load, openTables
from mta.maillog import MailLogger
from mta.model import Envelope, Recipient, RecipientResult
from mta.queue.fileformat import readQueueFile
from mta.queue.manager import QueueManager
from mta.queue.notices import Notices
from mta.queue.store import FileSystem, QueueStore
from mta.routing import Router
from mta.tables import Tables
from mta.testing import SyncReactor


class FakeTransport:
    """Answers every recipient with C{answer(recipient)}; or holds requests when C{hold}."""

    def __init__(self, answer=None):
        self.answer = answer or (lambda r: ("sent", "2.0.0", "delivered"))
        self.requests = []
        self.contents = []
        self.held = []
        self.hold = False

    def deliver(self, request):
        self.requests.append(request)
        with open(request.path, "rb") as f:
            f.seek(request.content_offset)
            self.contents.append(f.read(request.content_length))
        results = []
        for r in request.recipients:
            status, dsn, text = self.answer(r)
            results.append(RecipientResult(r.index, status, dsn, text, relay="fake"))
        if self.hold:
            d = Deferred()
            self.held.append((d, results))
            return d
        return succeed(results)

    def release(self):
        held, self.held = self.held, []
        for d, results in held:
            d.callback(results)


class FaultyFileSystem(FileSystem):
    """
    The store's system calls, counted in C{calls} (name -> count), with
    faults: C{faults} maps a call name to a function of its arguments that
    returns an OSError to raise (or None), e.g. to fail only the Nth call.
    """

    def __init__(self):
        self.calls = collections.Counter()
        self.faults = {}
        self.appendOpens = 0
        self.appendPaths = []  # the files opened for a state append, in order
        self.stateWritten = False  # a state record was written since the last syncfs

    def _call(self, name, *args):
        self.calls[name] += 1
        fault = self.faults.get(name)
        error = fault(*args) if fault is not None else None
        if error is not None:
            raise error

    def open(self, path, flags, mode):
        self._call("open", path, flags)
        if flags & os.O_APPEND:
            self.appendOpens += 1
            self.appendPaths.append(path)
        return super().open(path, flags, mode)

    def write(self, fd, data):
        self._call("write", fd, data)
        n = super().write(fd, data)
        self.stateWritten = self.stateWritten or bytes(data[:6]) == b"state "
        return n

    def syncfs(self, fd):
        try:
            self._call("syncfs", fd)
            super().syncfs(fd)
        finally:
            self.stateWritten = False

    def fsync(self, fd):
        self._call("fsync", fd)
        super().fsync(fd)

    def fdatasync(self, fd):
        self._call("fdatasync", fd)
        super().fdatasync(fd)

    def rename(self, src, dst):
        self._call("rename", src, dst)
        super().rename(src, dst)

    def unlink(self, path):
        self._call("unlink", path)
        super().unlink(path)

    def utime(self, path, times):
        self._call("utime", path)
        super().utime(path, times)

    def scandir(self, path):
        self._call("scandir", path)
        return super().scandir(path)

    def lstat(self, path):
        self._call("lstat", path)
        return super().lstat(path)

    def fsyncDirectory(self, path):
        self._call("fsyncDirectory", path)
        super().fsyncDirectory(path)


def once(error, match=lambda *args: True):
    """A fault that raises C{error} the first time C{match(*args)} holds."""
    state = {"done": False}

    def fault(*args):
        if not state["done"] and match(*args):
            state["done"] = True
            return error
        return None

    return fault


class Harness:
    def __init__(self, tmp_path, main="", transports=None, fs=None, clock=None, syncMethod="syncfs"):
        self.clock = clock or SyncReactor()
        if clock is None:
            self.clock.advance(1_000_000)
        self.fs = fs if fs is not None else FaultyFileSystem()
        self.config = load("<t>", "[main]\nmyhostname = mx.test\nvirtual_mailbox_domains = box.example\n" + main)
        self.tables = Tables(self.clock)
        openTables(self.config, self.tables)
        self.store = QueueStore(str(tmp_path / "queue"), self.clock, fileSystem=self.fs, syncMethod=syncMethod)
        self.store.prepare()
        self.transports = transports if transports is not None else {"virtual": FakeTransport(), "smtp": FakeTransport()}
        self.lines = []
        self.manager = self.newManager()

    def newManager(self):
        return QueueManager(
            self.store, Router(self.config.settings.resolver, self.tables), self.transports.get,
            self.config.settings.qmgr, self.clock, self.maillog,
            notices=Notices(self.config.settings.notices,
                            Cleanup(self.config.settings.cleanup, self.store, self.clock, self.maillog),
                            self.clock, self.maillog),
        )

    def restart(self):
        """Stop the manager and start a new one on the same store (as a new daemon would)."""
        self.manager.stop()
        self.manager = self.newManager()
        self.manager.start()
        return self.manager

    def maillog(self, program):
        harness = self

        class Recorder(MailLogger):
            def emit(self, text, queue_id=None, level=None, prefix=True, **fields):
                harness.lines.append(f"{program}: {queue_id + ': ' if queue_id and prefix else ''}{text}")

        return Recorder("mta", program)

    def submit(self, recipients, sender="alice@example.org", content=b"Subject: t\r\n\r\nhi\r\n", arrival=None):
        message = self.store.newMessage()
        message.write(content)
        envelope = Envelope(
            sender=sender,
            recipients=tuple(r if isinstance(r, Recipient) else Recipient(r) for r in recipients),
            arrival_time=self.clock.seconds() if arrival is None else arrival,
        )
        ids = []
        message.commit(envelope).addCallback(ids.append)
        return ids[0]

    def queue(self, name):
        return self.store.listQueue(name)


def test_newMailIsDeliveredAtOnceAndRemoved(tmp_path):
    h = Harness(tmp_path)
    h.manager.start()
    queueId = h.submit(["u@box.example", "x@elsewhere.example"])
    virtual, smtp = h.transports["virtual"], h.transports["smtp"]
    assert [r.address for r in virtual.requests[0].recipients] == ["u@box.example"]
    assert smtp.requests[0].nexthop == "elsewhere.example"
    assert virtual.contents == [b"Subject: t\r\n\r\nhi\r\n"]
    assert h.queue("incoming") == h.queue("active") == h.queue("deferred") == []
    assert f"qmgr: {queueId}: removed" in h.lines
    assert any(line.startswith(f"qmgr: {queueId}: from=<alice@example.org>, size=18, nrcpt=2 (queue active)") for line in h.lines)
    assert any(f"{queueId}: to=<u@box.example>, relay=fake" in line and "dsn=2.0.0, status=sent (delivered)" in line for line in h.lines)


def test_deferredMailIsRetriedWithBackoffThenExpires(tmp_path):
    attempts = []

    def answer(r):
        if r.address == "x@elsewhere.example":  # not the bounce to the sender, deferred too
            attempts.append(h.clock.seconds())
        return ("deferred", "4.4.1", "connection refused")

    h = Harness(tmp_path, "maximal_queue_lifetime = 1h\n", {"smtp": FakeTransport(answer)})
    h.manager.start()
    arrival = h.clock.seconds()
    queueId = h.submit(["x@elsewhere.example"])
    assert h.queue("deferred") == [queueId]
    mtime = os.stat(h.store.queuePath("deferred", queueId)).st_mtime
    assert mtime == pytest.approx(arrival + 300)  # age 0, bounded below by minimal_backoff_time
    h.clock.advance(299)
    assert len(attempts) == 1
    h.clock.advance(301)  # the next queue run after the due time
    assert len(attempts) == 2
    while h.clock.seconds() - arrival < 6000:
        h.clock.advance(300)
    # the interval is the message's age, bounded by 300 s and 4000 s, rounded up to a queue run
    assert [round(a - arrival) for a in attempts] == [0, 600, 1200, 2400, 4800]
    assert queueId not in h.queue("deferred") + h.queue("active")  # expired after an hour: bounced, removed
    assert any("status=bounced (message expired: connection refused)" in line for line in h.lines)
    assert f"qmgr: {queueId}: removed" in h.lines


def test_deliveredRecipientsAreNotDeliveredAgain(tmp_path):
    calls = []

    def answer(r):
        calls.append(r.address)
        return ("sent", "2.0.0", "ok") if r.address.startswith("good") else ("deferred", "4.0.0", "later")

    h = Harness(tmp_path, transports={"smtp": FakeTransport(answer)})
    h.manager.start()
    queueId = h.submit(["good@a.example", "bad@b.example"])
    assert sorted(calls) == ["bad@b.example", "good@a.example"]
    h.clock.advance(700)
    assert sorted(calls) == ["bad@b.example", "bad@b.example", "good@a.example"]
    states = readQueueFile(h.store.queuePath("deferred", queueId)).states
    assert any(s.get("recipients", {}).get("0", {}).get("status") == "sent" for s in states)


def test_crashRecoveryTakesUpActiveMail(tmp_path):
    h = Harness(tmp_path)
    queueId = h.submit(["u@box.example"])  # the manager is not running: stays in incoming
    os.rename(h.store.queuePath("incoming", queueId), h.store.queuePath("active", queueId))  # as after a crash
    h.manager.start()
    assert len(h.transports["virtual"].requests) == 1
    assert h.queue("active") == []


def test_corruptFileIsSetAsideAndOthersFlow(tmp_path):
    h = Harness(tmp_path)
    bad = h.submit(["u@box.example"])
    with open(h.store.queuePath("incoming", bad), "r+b") as f:
        f.seek(5)
        f.write(b"XX")
    good = h.submit(["v@box.example"])
    h.manager.start()
    assert h.queue("corrupt") == [bad]
    assert [r.recipients[0].address for r in h.transports["virtual"].requests] == ["v@box.example"]
    assert any(line.startswith(f'qmgr: warning: saving corrupt file "{bad}" from queue "active" to queue "corrupt": ')
               for line in h.lines)
    assert f"qmgr: {good}: removed" in h.lines


def test_concurrencyLimitPerDestinationAndFairness(tmp_path):
    slow, fast = FakeTransport(), FakeTransport()
    slow.hold = True
    transports = {"smtp": slow, "virtual": fast}
    h = Harness(tmp_path, "smtp_destination_concurrency_limit = 2\n", transports)
    h.manager.start()
    for i in range(5):
        h.submit([f"u{i}@dead.example"])
    h.submit(["u@box.example"])
    assert len(slow.requests) == 2  # the dead destination holds only its own two slots
    assert len(fast.requests) == 1  # the other destination is not blocked
    slow.hold = False
    slow.release()
    assert len(slow.requests) == 5


def test_recipientLimitSplitsDeliveries(tmp_path):
    h = Harness(tmp_path, "smtp_destination_recipient_limit = 2\n")
    h.manager.start()
    h.submit([f"u{i}@one.example" for i in range(5)])
    assert [len(r.recipients) for r in h.transports["smtp"].requests] == [2, 2, 1]


def test_activeLimitQueuesTheRest(tmp_path):
    slow = FakeTransport()
    slow.hold = True
    h = Harness(tmp_path, "qmgr_message_active_limit = 2\n", {"smtp": slow})
    h.manager.start()
    for i in range(4):
        h.submit([f"u{i}@x{i}.example"])
    assert len(slow.requests) == 2 and len(h.queue("incoming")) == 2
    slow.release()
    assert len(slow.requests) == 4


def test_softBounceAndDeferTransportsAndMissingTransport(tmp_path):
    h = Harness(tmp_path, "soft_bounce = yes\ndefer_transports = virtual\n",
                {"smtp": FakeTransport(lambda r: ("bounced", "5.1.1", "no such user"))})
    h.manager.start()
    queueId = h.submit(["x@elsewhere.example", "u@box.example", "v@relay.example"])
    assert h.queue("deferred") == [queueId]
    text = "\n".join(h.lines)
    assert "dsn=4.1.1, status=deferred (no such user)" in text
    assert "status=deferred (deferred transport)" in text
    h2 = Harness(tmp_path / "b", transports={})
    h2.manager.start()
    h2.submit(["x@elsewhere.example"])
    assert "status=deferred (mail transport unavailable: smtp)" in "\n".join(h2.lines)


def test_routingErrorsAreResults(tmp_path):
    h = Harness(tmp_path, "virtual_alias_domains = alias.example\n")
    h.manager.start()
    queueId = h.submit(["nobody@alias.example"])
    assert "dsn=5.1.1, status=bounced (User unknown in virtual alias table)" in "\n".join(h.lines)
    assert f"qmgr: {queueId}: removed" in h.lines


def test_aliasExpansionStateIsPerAddress(tmp_path):
    calls = []

    def answer(r):
        calls.append(r.address)
        return ("sent", "2.0.0", "ok") if r.address.startswith("a@") else ("deferred", "4.0.0", "later")

    h = Harness(tmp_path, "virtual_alias_maps = inline:{ {list@x.example = a@box.example, b@box.example} }\n",
                {"virtual": FakeTransport(answer)})
    h.manager.start()
    h.submit(["list@x.example"])
    assert sorted(calls) == ["a@box.example", "b@box.example"]
    h.clock.advance(700)
    assert sorted(calls) == ["a@box.example", "b@box.example", "b@box.example"]  # a is not repeated


def test_flushActivatesAllDeferred(tmp_path):
    h = Harness(tmp_path, transports={"smtp": FakeTransport(lambda r: ("deferred", "4.0.0", "later"))})
    h.manager.start()
    h.submit(["x@elsewhere.example"])
    assert len(h.transports["smtp"].requests) == 1
    h.manager.scanDeferred(flush=True)
    assert len(h.transports["smtp"].requests) == 2


def test_bounceIsSentOnceToTheSenderAndNeverBounced(tmp_path):
    import email
    import email.policy

    def answer(r):
        return ("bounced", "5.1.1", "550 5.1.1 no such user") if r.address.startswith("bad") else ("sent", "2.0.0", "ok")

    smtp = FakeTransport(answer)
    h = Harness(tmp_path, transports={"smtp": smtp})
    h.manager.start()
    queueId = h.submit(["bad@far.example", "good@far.example"])
    # the notice was queued and delivered to the sender by the same transport
    notices = [c for r, c in zip(smtp.requests, smtp.contents) if r.envelope.sender == ""]
    assert len(notices) == 1
    assert [r.address for r in smtp.requests[-1].recipients] == ["alice@example.org"]
    report = email.message_from_bytes(notices[0], policy=email.policy.default)
    assert report.get_content_type() == "multipart/report"
    assert "bad@far.example" in notices[0].decode() and "good@far.example" not in notices[0].decode().split("Final-Recipient")[1]
    assert any(line.startswith(f"bounce: {queueId}: sender non-delivery notification: ") for line in h.lines)
    assert f"qmgr: {queueId}: removed" in h.lines
    # a bounce that bounces is dropped with a log line (neither 2bounce nor bounce is in notify_classes by default)
    smtp.answer = lambda r: ("bounced", "5.1.1", "550 5.1.1 gone")
    bounceId = h.submit(["alice@example.org"], sender="")
    assert f"bounce: {bounceId}: undeliverable bounce discarded (notify_classes has neither 2bounce nor bounce)" in h.lines
    assert h.queue("incoming") == h.queue("deferred") == h.queue("active") == []


def test_noticeIsNotRepeatedAfterRestart(tmp_path):
    smtp = FakeTransport(lambda r: ("bounced", "5.0.0", "no") if r.address == "bad@far.example" else ("deferred", "4.0.0", "later"))
    h = Harness(tmp_path, transports={"smtp": smtp})
    h.manager.start()
    queueId = h.submit(["bad@far.example", "slow@far.example"])
    first = sum(1 for line in h.lines if "sender non-delivery notification" in line)
    assert first == 1
    h.clock.advance(700)  # retried: slow is deferred again; bad was notified already
    assert sum(1 for line in h.lines if "sender non-delivery notification" in line) == 1
    assert queueId in h.queue("deferred")


def test_delayWarningOnceAfterDelayWarningTime(tmp_path):
    smtp = FakeTransport(lambda r: ("deferred", "4.4.1", "no answer") if r.address.endswith("far.example") else ("sent", "2.0.0", "ok"))
    h = Harness(tmp_path, "delay_warning_time = 1h\n", {"smtp": smtp})
    h.manager.start()
    queueId = h.submit(["x@far.example"])
    for _ in range(40):  # 3.3 hours of queue runs
        h.clock.advance(300)
    warnings = [line for line in h.lines if "sender delay notification" in line]
    assert len(warnings) == 1 and warnings[0].startswith(f"bounce: {queueId}: ")
    notices = [c for r, c in zip(smtp.requests, smtp.contents) if r.envelope.sender == ""]
    assert len(notices) == 1 and b"Delayed Mail (still being retried)" in notices[0]
    assert b"Action: delayed" in notices[0]


@pytest.mark.parametrize("value, text", [(0, "0"), (3.2e-05, "0"), (0.0031, "0"), (0.27, "0.27"), (1.25, "1.2"), (42.4, "42"), (123.4, "123")])
def test_delaysAreLoggedWithoutExponents(value, text):
    from mta.maillog import _seconds

    assert _seconds(value) == text


def test_eachLineIsLoggedUnderThePostfixProgram(tmp_path):
    """to= lines under the delivery agent (the transport's name), qmgr's own verdicts under qmgr, notices under bounce."""
    def answer(r):
        return ("bounced", "5.1.1", "no such user") if r.address.startswith("bad") else ("sent", "2.0.0", "ok")

    transports = {name: FakeTransport(answer) for name in ("virtual", "smtp", "relay", "retry")}
    h = Harness(tmp_path, "relay_domains = relay.example\nvirtual_alias_domains = alias.example\n"
                "transport_maps = inline:{ {held.example = retry:} }\ndefer_transports = retry\n", transports)
    h.manager.start()
    queueId = h.submit(["u@box.example", "bad@far.example", "r@relay.example", "nobody@alias.example",
                        "h@held.example"])
    programs = {line.split(": ", 1)[0] for line in h.lines if f"{queueId}: to=<" in line}
    assert programs == {"virtual", "smtp", "relay", "error", "qmgr"}

    def line(program, address):
        return next(x for x in h.lines if x.startswith(f"{program}: {queueId}: to=<{address}>"))

    assert "status=sent" in line("virtual", "u@box.example") and "status=sent" in line("relay", "r@relay.example")
    assert "status=bounced (no such user)" in line("smtp", "bad@far.example")
    assert "status=bounced (User unknown in virtual alias table)" in line("error", "nobody@alias.example")
    assert "status=deferred (deferred transport)" in line("qmgr", "h@held.example")
    assert any(x.startswith(f"qmgr: {queueId}: from=<alice@example.org>, size=18, nrcpt=5 (queue active)") for x in h.lines)
    assert any(x.startswith(f"bounce: {queueId}: sender non-delivery notification: ") for x in h.lines)
    # expiry is qmgr's: its line, then the deferred recipient bounces
    h.clock.advance(5 * 86400)
    h.manager.flush()
    assert f"qmgr: {queueId}: from=<alice@example.org>, status=expired, returned to sender" in h.lines
    assert any(x.startswith(f"qmgr: {queueId}: to=<h@held.example>")
               and x.endswith("status=bounced (message expired: deferred transport)") for x in h.lines)
    assert sum("sender non-delivery notification" in x for x in h.lines) == 2
    assert h.lines[-1] == f"qmgr: {queueId}: removed"


# -- settings (mta.config.settings.qmgr) ------------------------------------------------------------


def test_qmgrSettingsGiveEachTransportItsLimits():
    settings = load("<t>", "[main]\ndefault_destination_concurrency_limit = 5\nsmtp_destination_concurrency_limit = 7\n"
                    "relay_destination_recipient_limit = 3\nlmtp_destination_recipient_limit = $relay_destination_recipient_limit\n"
                    ).settings.qmgr
    assert [settings.concurrencyLimit(t) for t in ("smtp", "relay", "lmtp")] == [7, 5, 5]
    assert [settings.recipientLimit(t) for t in ("smtp", "relay", "lmtp")] == [50, 3, 3]
    assert settings.concurrency == {"smtp": 7} and settings.recipientLimits == {"relay": 3, "lmtp": 3}
    defaults = load("<t>", "[main]\n").settings.qmgr
    assert (defaults.activeLimit, defaults.runDelay, defaults.minBackoff, defaults.maxBackoff) == (20000, 300, 300, 4000)
    assert (defaults.lifetime, defaults.deferTransports, defaults.softBounce) == (5 * 86400, frozenset(), False)


@pytest.mark.parametrize(
    "line, message",
    [
        ("smtp_destination_recipient_limit = 0", "smtp_destination_recipient_limit: 0 is below the minimum 1"),
        ("relay_destination_concurrency_limit = many", "relay_destination_concurrency_limit: 'many' is not an integer"),
        ("queue_run_delay = soon", "queue_run_delay: 'soon' is not a time"),
        ("qmgr_message_active_limit = 0", "qmgr_message_active_limit: 0 is below the minimum 1"),
    ],
)
def test_aBadQmgrValueFailsAtLoadWithItsLine(line, message):
    with pytest.raises(ConfigError) as e:
        load("/etc/mta/mta.ini", f"[main]\nmyhostname = mx.test\n{line}\n")
    assert str(e.value).startswith(f"/etc/mta/mta.ini:3: [main] {message}")


def test_theManagerUsesTheLimitsOfEachTransport(tmp_path):
    transports = {"smtp": FakeTransport(), "relay": FakeTransport(), "virtual": FakeTransport()}
    transports["smtp"].hold = transports["relay"].hold = True
    h = Harness(tmp_path, "relay_domains = relay.example\nsmtp_destination_concurrency_limit = 1\n"
                "default_destination_concurrency_limit = 3\nrelay_destination_recipient_limit = 2\n", transports)
    h.manager.start()
    for i in range(4):
        h.submit([f"u{i}@far.example"])
    h.submit([f"r{i}@relay.example" for i in range(5)])
    assert len(transports["smtp"].requests) == 1  # smtp's own concurrency limit: one at a time to far.example
    assert [len(r.recipients) for r in transports["relay"].requests] == [2, 2, 1]  # relay's recipient limit
    assert h.manager.destinations[("relay", "relay.example")].limit == 3  # the default concurrency for relay
    assert h.manager.destinations[("smtp", "far.example")].limit == 1


def test_regression_aTransportNameOutsideTheParameterPatternGetsTheDefaultLimits(tmp_path):
    """A transport named Fancy.Out (transport_maps) used to fail every routing (no such parameter): deferred forever."""
    transports = {"Fancy.Out": FakeTransport(), "virtual": FakeTransport()}
    h = Harness(tmp_path, "transport_maps = inline:{ far.example=Fancy.Out:[gw.example] }\n", transports)
    h.manager.start()
    queueId = h.submit(["u@far.example"])
    assert [r.nexthop for r in transports["Fancy.Out"].requests] == ["[gw.example]"]
    assert f"qmgr: {queueId}: removed" in h.lines


def test_smallContentIsHandedToTheTransportFromMemoryAndBigContentIsNot(tmp_path):
    from mta.queue.fileformat import SMALL_FILE
    h = Harness(tmp_path)
    h.manager.start()
    big = b"x" * 998 + b"\r\n"
    big *= SMALL_FILE // len(big) + 1
    h.submit(["u@box.example"])
    h.submit(["v@box.example"], content=big)
    small, large = h.transports["virtual"].requests
    assert small.content == b"Subject: t\r\n\r\nhi\r\n" and large.content is None
    assert h.transports["virtual"].contents[1] == big
    assert h.manager._contentBytes == 0  # given back at the end of each attempt


def test_contentHeldInMemoryIsBounded(tmp_path, monkeypatch):
    from mta.queue import manager
    monkeypatch.setattr(manager, "CONTENT_MEMORY", 10)
    h = Harness(tmp_path)
    h.manager.start()
    h.submit(["u@box.example"])
    assert h.transports["virtual"].requests[0].content is None  # over the budget: read from the file
    assert h.transports["virtual"].contents == [b"Subject: t\r\n\r\nhi\r\n"]
