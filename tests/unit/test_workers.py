"""mta.workers: the master's side and the worker's side, without processes, sockets or sleeps."""

import base64
import os
import socket
from types import SimpleNamespace

import pytest
from argon2 import PasswordHasher
from twisted.internet import error
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.test import iosim

from mta.config.types import Integer
from mta.queue.store import QueueStore
from mta.testing import FakeQueueStore, SyncPool, SyncReactor, resultOf, serverFactory
from mta.workers import master, worker
from tests.dialogs.harness import Dialog, MailLog

OUTSIDE = "192.0.2.10"


# -- fakes ---------------------------------------------------------------------------------


class FakeFactory:
    """The per-client counts of one listener's SMTPServerFactory (its anvil's, in the master)."""

    def __init__(self):
        self.connections = {}
        self.events = {}

    def clientConnect(self, address):
        self.connections[address] = self.connections.get(address, 0) + 1
        return self.connections[address], 10 + self.connections[address]

    def clientDisconnect(self, address):
        self.connections[address] -= 1
        if not self.connections[address]:
            del self.connections[address]

    def clientEvent(self, address, kind):
        self.events[address, kind] = self.events.get((address, kind), 0) + 1
        return self.events[address, kind]

    def clientStatus(self, address, kind):
        return self.events.get((address, kind), 0)


class FakeManager:
    def __init__(self):
        self.enqueued = []
        self.scans = 0

    def enqueue(self, queueId, inline=False):
        self.enqueued.append((queueId, inline))

    def flushSite(self, domain):
        return succeed(len(domain))

    def scanIncoming(self):
        self.scans += 1
        return succeed(None)


class FakeMaillog:
    def __init__(self, lines):
        self.lines = lines

    def emit(self, line, **kw):
        self.lines.append(line)


class FakePort:
    def __init__(self, name):
        self.name = name

    def __repr__(self):
        return f"<port {self.name}>"


class FakeDaemon:
    def __init__(self, tmp_path, workers=2):
        self.config = SimpleNamespace(
            path=None,
            settings=SimpleNamespace(service=SimpleNamespace(workerProcesses=workers, serviceThrottleTime=60.0)))
        self.factory = FakeFactory()
        self.current = SimpleNamespace(factories={"smtp": self.factory})
        self.manager = FakeManager()
        self.queueDirectory = str(tmp_path)
        os.makedirs(tmp_path / "tmp", exist_ok=True)
        self.store = SimpleNamespace(queuePath=lambda *parts: os.path.join(str(tmp_path), *parts))
        self.ports = [FakePort("smtp"), FakePort("submission")]
        self.listeners = {p.name: SimpleNamespace(port=p) for p in self.ports}
        self.maillogLines = []

    def maillogFor(self, name):
        return FakeMaillog(self.maillogLines)


class FakeReactor(Clock):
    """A Clock that records which readers are added and removed, and spawns nothing."""

    def __init__(self):
        super().__init__()
        self.readers = set()
        self.spawned = []

    def addReader(self, reader):
        self.readers.add(reader)

    def removeReader(self, reader):
        self.readers.discard(reader)


class FakeProcessTransport:
    def __init__(self, pid):
        self.pid = pid
        self.signals = []

    def signalProcess(self, name):
        self.signals.append(name)


def pool(tmp_path, workers=2):
    daemon = FakeDaemon(tmp_path, workers)
    reactor = FakeReactor()
    reactor.readers.update(daemon.ports)
    workerPool = master.WorkerPool(daemon, reactor)
    spawned = []

    def spawn(index):  # instead of a process: a WorkerProcess with a fake transport
        workerPool._restarts.pop(index, None)
        if not workerPool.running:
            return
        w = master.WorkerProcess(workerPool, index)
        w.pid = 1000 + len(spawned)
        w.transport = FakeProcessTransport(w.pid)
        workerPool.workers[index] = w
        spawned.append(w)

    workerPool._spawn = spawn
    return workerPool, daemon, reactor, spawned


def terminated(signal=None, status=None):
    return Failure(error.ProcessTerminated(exitCode=status, signal=signal))


# -- configuration ----------------------------------------------------------------------------


def test_integer_maximum():
    assert Integer(minimum=0, maximum=64).parse("64") == 64
    with pytest.raises(ValueError, match="65 is above the maximum 64"):
        Integer(minimum=0, maximum=64).parse("65")


# -- command line -----------------------------------------------------------------------------


def test_parse_listener():
    assert worker.parseListener("smtp=4/2") == ("smtp", 4, socket.AF_INET)
    assert worker.parseListener("sub=5/10") == ("sub", 5, socket.AF_INET6)
    for bad in ("smtp", "=4/2", "smtp=x/2", "smtp=4", "smtp=4/inet"):
        with pytest.raises(ValueError):
            worker.parseListener(bad)


def test_parse_arguments():
    options = worker.parseArguments(["--index", "2", "--control-fd", "3", "--queue-directory", "/q",
                                     "--listener", "smtp=4/2", "--listener", "sub=5/10", "--config", "/etc/mta.ini"])
    assert (options.index, options.control_fd, options.queue_directory, options.config) == (2, 3, "/q", "/etc/mta.ini")
    assert options.listener == [("smtp", 4, socket.AF_INET), ("sub", 5, socket.AF_INET6)]
    with pytest.raises(SystemExit) as e:
        worker.parseArguments(["--index", "1", "--control-fd", "3", "--queue-directory", "/q", "--listener", "x"])
    assert e.value.code == 2


def test_describe_end():
    assert master.describeEnd(terminated(signal=9)) == "killed by signal 9"
    assert master.describeEnd(terminated(status=1)) == "exit status 1"
    assert master.describeEnd(Failure(error.ProcessDone(0))) == "exit status 0"


# -- worker directories ------------------------------------------------------------------------


def test_remove_worker_directory_unlinks_files_and_links_never_their_targets(tmp_path):
    outside = tmp_path / "precious"
    outside.write_text("keep")
    d = tmp_path / "tmp" / "worker.77"
    d.mkdir(parents=True)
    (d / "A1B2C3").write_text("half a message")
    (d / "link").symlink_to(outside)
    assert master.removeWorkerDirectory(str(d)) == 2
    assert not d.exists() and outside.read_text() == "keep"
    assert master.removeWorkerDirectory(str(d)) == 0  # gone already


def test_remove_worker_directory_leaves_a_link_to_a_directory_and_a_subdirectory(tmp_path):
    target = tmp_path / "elsewhere"
    target.mkdir()
    (target / "file").write_text("keep")
    link = tmp_path / "tmp" / "worker.5"
    link.parent.mkdir()
    link.symlink_to(target)
    assert master.removeWorkerDirectory(str(link)) == 0
    assert (target / "file").read_text() == "keep"
    d = tmp_path / "tmp" / "worker.6"
    (d / "sub").mkdir(parents=True)
    (d / "sub" / "inner").write_text("x")
    (d / "F00").write_text("x")
    assert master.removeWorkerDirectory(str(d)) == 1  # the directory stays: not empty (a warning)
    assert (d / "sub" / "inner").exists()


def test_remove_worker_directories_only_touches_worker_entries(tmp_path):
    (tmp_path / "tmp" / "worker.1").mkdir(parents=True)
    (tmp_path / "tmp" / "worker.1" / "X").write_text("x")
    (tmp_path / "tmp" / "worker.2").mkdir()
    (tmp_path / "tmp" / "ABCDEF").write_text("the master's own file")
    store = SimpleNamespace(queuePath=lambda *parts: os.path.join(str(tmp_path), *parts))
    assert master.removeWorkerDirectories(store) == 1
    assert sorted(os.listdir(tmp_path / "tmp")) == ["ABCDEF"]
    assert master.removeWorkerDirectories(SimpleNamespace(queuePath=lambda *p: str(tmp_path / "none"))) == 0


def test_store_writes_in_its_own_temporary_directory(tmp_path):
    reactor = SyncReactor()
    store = QueueStore(tmp_path, reactor, threadpool=SyncPool(), temporary="tmp/worker.9")
    store.prepare()
    os.mkdir(store.tmpDirectory)
    assert store.tmpDirectory == os.path.join(str(tmp_path), "tmp", "worker.9")
    message = store.newMessage()
    assert os.path.dirname(message.path) == store.tmpDirectory
    (tmp_path / "tmp" / "master-file").write_text("not this store's")
    (tmp_path / "tmp" / "worker.9" / "stale").write_text("this store's")
    assert store.cleanTemporary() == ["stale"]  # blocking (the scanner runs it in the pool)
    assert (tmp_path / "tmp" / "master-file").exists()


# -- the channel: master and worker over AMP (iosim, no sockets) --------------------------------


class FakeWorker:
    def __init__(self):
        self.retired = 0
        self.gone = 0
        self.reopened = 0

    def retire(self):
        self.retired += 1

    def reopenMaillog(self):
        self.reopened += 1

    def masterGone(self):
        self.gone += 1


def channel(tmp_path):
    workerPool, daemon, reactor, spawned = pool(tmp_path)
    workerPool.running = True
    workerPool._spawn(1)
    process = spawned[0]
    fakeWorker = FakeWorker()
    workerSide, masterSide, pump = iosim.connectedServerAndClient(  # (client, server, pump)
        lambda: master.MasterSide(workerPool, process), lambda: worker.WorkerSide(fakeWorker))
    process.channel = masterSide
    return SimpleNamespace(pool=workerPool, daemon=daemon, reactor=reactor, process=process, worker=fakeWorker,
                           workerSide=workerSide, masterSide=masterSide, pump=pump,
                           anvil=worker.RemoteAnvil(workerSide))


def test_remote_anvil_counts_in_the_master_for_every_worker(tmp_path):
    c = channel(tmp_path)
    first = c.anvil.connect("smtp", OUTSIDE)
    second = c.anvil.connect("smtp", OUTSIDE)
    c.pump.flush()
    assert (resultOf(first), resultOf(second)) == ((1, 11), (2, 12))
    assert c.daemon.factory.connections == {OUTSIDE: 2}
    assert c.process.counts == {("smtp", OUTSIDE): 2}
    c.anvil.disconnect("smtp", OUTSIDE)
    c.pump.flush()
    assert c.daemon.factory.connections == {OUTSIDE: 1} and c.process.counts == {("smtp", OUTSIDE): 1}
    counted = [c.anvil.event("smtp", OUTSIDE, "rcpt", True) for _ in range(2)]
    looked = c.anvil.event("smtp", OUTSIDE, "rcpt", False)
    c.pump.flush()
    assert [resultOf(d) for d in counted] == [1, 2] and resultOf(looked) == 2


def test_remote_anvil_unknown_listener_and_unmatched_release(tmp_path):
    c = channel(tmp_path)
    count = c.anvil.connect("nosuch", OUTSIDE)
    auth = c.anvil.event("nosuch", OUTSIDE, "auth", True)
    strange = c.anvil.event("smtp", OUTSIDE, "__class__", True)  # not an anvil event: 0, nothing counted
    c.anvil.disconnect("smtp", "198.51.100.1")  # never counted by this worker: ignored
    c.pump.flush()
    assert (resultOf(count), resultOf(auth), resultOf(strange)) == ((0, 0), 0, 0)
    assert c.daemon.factory.connections == {} and c.daemon.factory.events == {} and c.process.counts == {}


def test_remote_anvil_counts_nothing_when_the_master_is_gone(tmp_path):
    c = channel(tmp_path)
    count = c.anvil.connect("smtp", OUTSIDE)
    rate = c.anvil.event("smtp", OUTSIDE, "mail", True)
    c.workerSide.connectionLost(Failure(error.ConnectionDone()))  # before the master answered
    assert (resultOf(count), resultOf(rate)) == ((0, 0), 0)
    assert c.worker.gone == 1


def test_committed_ids_go_to_the_queue_manager(tmp_path):
    c = channel(tmp_path)
    c.workerSide.callRemote(master.commands.Committed, ids=["A1", "B2"])
    c.pump.flush()
    assert c.daemon.manager.enqueued == [("A1", True), ("B2", True)]


def test_flush_site_asks_the_master(tmp_path):
    c = channel(tmp_path)
    d = c.workerSide.callRemote(master.commands.FlushSite, domain="example.org")
    c.pump.flush()
    assert resultOf(d) == {"count": len("example.org")}


def test_ready_stops_the_master_accepting_and_retire_reaches_the_worker(tmp_path):
    c = channel(tmp_path)
    c.workerSide.callRemote(master.commands.Ready, index=1, pid=c.process.pid)
    c.pump.flush()
    assert c.process.ready and c.reactor.readers == set()
    c.pool._retire(c.process)
    c.pump.flush()
    assert c.worker.retired == 1


# -- the master's pool ---------------------------------------------------------------------------


def test_master_accepts_while_no_current_worker_is_ready(tmp_path):
    workerPool, daemon, reactor, spawned = pool(tmp_path)
    workerPool.start()
    assert len(spawned) == 2 and reactor.readers == set(daemon.ports)  # starting: the master accepts
    workerPool._ready(spawned[0])
    assert reactor.readers == set()
    workerPool._ended(spawned[0], terminated(signal=9))
    assert reactor.readers == set(daemon.ports)  # the other one is not ready yet
    workerPool._ready(spawned[1])
    assert reactor.readers == set()


def test_a_ready_worker_that_dies_is_replaced_at_once(tmp_path):
    workerPool, daemon, reactor, spawned = pool(tmp_path)
    workerPool.start()
    first = spawned[0]
    workerPool._ready(first)
    first.counts = {("smtp", OUTSIDE): 2}
    daemon.factory.connections = {OUTSIDE: 3}  # two of them this worker's, one another's
    (tmp_path / "tmp" / f"worker.{first.pid}").mkdir()
    (tmp_path / "tmp" / f"worker.{first.pid}" / "HALF").write_text("x")
    workerPool._ended(first, terminated(signal=9))
    assert daemon.maillogLines == [f"warning: process mta-worker pid {first.pid} killed by signal 9"]
    assert daemon.factory.connections == {OUTSIDE: 1}
    assert not (tmp_path / "tmp" / f"worker.{first.pid}").exists()
    assert daemon.manager.scans == 1
    reactor.advance(0)
    assert len(spawned) == 3 and workerPool.workers[1] is spawned[2]


def test_a_worker_that_dies_before_it_is_ready_is_throttled(tmp_path):
    workerPool, daemon, reactor, spawned = pool(tmp_path, workers=1)
    workerPool.start()
    workerPool._ended(spawned[0], terminated(status=1))
    assert daemon.maillogLines == [f"warning: process mta-worker pid {spawned[0].pid} exit status 1",
                                   "warning: mta-worker: bad command startup -- throttling"]
    reactor.advance(59)
    assert len(spawned) == 1
    reactor.advance(1)
    assert len(spawned) == 2


def test_reload_replaces_the_workers_and_the_old_ones_retire(tmp_path):
    workerPool, daemon, reactor, spawned = pool(tmp_path, workers=1)
    workerPool.start()
    old = spawned[0]
    workerPool._ready(old)
    sent = []
    workerPool._sendRetire = sent.append
    workerPool.reload()
    assert sent == [old] and old.retiring and workerPool.retiring == {old}
    assert workerPool.workers[1] is spawned[1]
    assert reactor.readers == set(daemon.ports)  # the new one is not ready yet: the master accepts
    workerPool._ended(old, Failure(error.ProcessDone(0)))
    assert workerPool.retiring == set() and daemon.maillogLines == []  # a retired worker is not restarted
    assert len(spawned) == 2


def test_a_retiring_worker_is_terminated_after_the_limit(tmp_path):
    workerPool, daemon, reactor, spawned = pool(tmp_path, workers=1)
    workerPool.start()
    workerPool._sendRetire = lambda w: None
    workerPool.reload()
    reactor.advance(master.RETIRE_LIMIT)
    assert spawned[0].transport.signals == ["TERM"]


def test_stop_terminates_then_kills(tmp_path):
    workerPool, daemon, reactor, spawned = pool(tmp_path)
    workerPool.start()
    workerPool._ready(spawned[0])
    stopped = workerPool.stop()
    assert [w.transport.signals for w in spawned] == [["TERM"], ["TERM"]]
    spawned[0].processEnded(Failure(error.ProcessDone(0)))
    assert not stopped.called
    reactor.advance(master.KILL_AFTER)
    assert spawned[1].transport.signals == ["TERM", "KILL"]
    spawned[1].processEnded(terminated(signal=9))
    assert stopped.called
    assert daemon.maillogLines == []  # stopping: no warnings, no restarts
    assert reactor.readers == set(daemon.ports) and len(spawned) == 2
    assert resultOf(master.WorkerPool(daemon, reactor).stop()) is None  # no workers: at once


def test_worker_standard_error_is_logged_line_by_line(tmp_path):
    workerPool, daemon, reactor, spawned = pool(tmp_path)
    events = []
    original, master.log = master.log, Logger(observer=events.append)
    try:
        w = master.WorkerProcess(workerPool, 3)
        w.pid = 42
        w.errReceived(b"warn the master did not")
        assert events == []
        w.errReceived(b" answer\ninfo ready\nTraceback without a level\n")
        w.errReceived(b"x" * (master.LINE_LIMIT + 10))
    finally:
        master.log = original
    got = [(e["log_level"].name, e["line"]) for e in events]
    assert got == [("warn", "the master did not answer"), ("info", "ready"), ("info", "Traceback without a level"),
                   ("info", "x" * master.LINE_LIMIT)]
    assert all(e["worker"] == "worker 3[42]" for e in events)


# -- smtpd with an anvil whose counts are Deferreds ---------------------------------------------


class DeferredAnvil:
    """A RemoteAnvil whose answers the test gives."""

    def __init__(self):
        self.pending = []
        self.released = []
        self.events = []  # (kind, count, Deferred)

    def connect(self, listener, address):
        d = Deferred()
        self.pending.append(d)
        return d

    def disconnect(self, listener, address):
        self.released.append((listener, address))

    def event(self, listener, address, kind, count):
        d = Deferred()
        self.events.append((kind, count, d))
        return d

    @property
    def auths(self):
        return [d for kind, _, d in self.events if kind == "auth"]


def anvilFactory(main="smtpd_client_connection_count_limit = 2\n"):
    factory = serverFactory(main, store=FakeQueueStore())
    factory.remoteAnvil = DeferredAnvil()
    return factory


def test_the_banner_waits_for_the_masters_count():
    factory = anvilFactory()
    d = Dialog(factory, peer=OUTSIDE)
    assert d.banner == ""
    assert d.send("EHLO c\r\n") == ""  # early commands wait for the banner
    factory.remoteAnvil.pending[0].callback((2, 2))
    out = d.read()
    assert out.startswith("220 ") and "250" in out
    d.protocol.connectionLost(None)
    assert factory.remoteAnvil.released == [("smtp", OUTSIDE)]


def test_over_the_masters_count_is_421():
    factory = anvilFactory()
    d = Dialog(factory, peer=OUTSIDE)
    with MailLog() as log:
        factory.remoteAnvil.pending[0].callback((3, 3))
    assert d.read() == f"421 4.7.0 mx.test Error: too many connections from {OUTSIDE}\r\n" and d.closed
    assert log.matching(f"warning: Connection concurrency limit exceeded: 3 from unknown[{OUTSIDE}] for service smtp")
    d.protocol.connectionLost(None)
    assert factory.remoteAnvil.released == [("smtp", OUTSIDE)]


def test_a_client_gone_before_the_count_is_released_once():
    factory = anvilFactory()
    d = Dialog(factory, peer=OUTSIDE)
    d.protocol.connectionLost(None)
    factory.remoteAnvil.pending[0].callback((1, 1))
    assert d.read() == ""
    assert factory.remoteAnvil.released == [("smtp", OUTSIDE)]


def test_no_count_is_asked_for_exempt_clients_or_without_a_limit():
    factory = anvilFactory()
    assert Dialog(factory, peer="127.0.0.1").banner.startswith("220 ")  # $mynetworks: exempt
    unlimited = anvilFactory("smtpd_client_connection_count_limit = 0\n")
    assert Dialog(unlimited, peer=OUTSIDE).banner.startswith("220 ")  # no limit: the fast path
    assert unlimited.remoteAnvil.pending == []
    assert factory.remoteAnvil.pending == []


def test_auth_rate_counted_by_the_master(tmp_path):
    passwd = tmp_path / "passwd"
    passwd.write_text(f"alice@example.org {PasswordHasher(time_cost=1, memory_cost=8, parallelism=1).hash('secret')}\n")
    factory = anvilFactory(f"smtpd_client_connection_count_limit = 0\nsmtpd_sasl_auth_enable = yes\n"
                           f"smtpd_sasl_type = builtin\nsmtpd_sasl_path = texthash:{passwd}\n"
                           "smtpd_client_auth_rate_limit = 2\n")
    d = Dialog(factory, peer=OUTSIDE)
    d.send("EHLO c\r\n")
    plain = base64.b64encode(b"\0alice@example.org\0secret").decode()
    assert d.send(f"AUTH PLAIN {plain}\r\n") == ""  # waits for the master's count
    with MailLog() as log:
        factory.remoteAnvil.auths[0].callback(3)
    assert d.read() == f"450 4.7.1 Error: too many AUTH commands from {OUTSIDE}\r\n"
    assert log.matching(f"warning: AUTH command rate limit exceeded: 3 from unknown[{OUTSIDE}] for service smtp")
    d.send(f"AUTH PLAIN {plain}\r\n")
    factory.remoteAnvil.auths[1].callback(2)
    assert d.read().startswith("235 ")


def test_reopen_logs_reaches_the_workers(tmp_path):
    c = channel(tmp_path)
    c.pool.reopenLogs()
    c.pump.flush()
    assert c.worker.reopened == 1
    c.pool._retire(c.process)  # a retiring worker too
    c.pool.workers.clear()
    c.pool.reopenLogs()
    c.pump.flush()
    assert c.worker.reopened == 2


def test_verify_query_asks_the_masters_verify_service(tmp_path):
    c = channel(tmp_path)
    asked = []
    c.daemon.verify = SimpleNamespace(query=lambda a: asked.append(a) or succeed((3, "Address verification in progress")))
    d = c.workerSide.callRemote(master.commands.VerifyQuery, address="u@example.com")
    c.pump.flush()
    assert resultOf(d) == {"status": 3, "text": "Address verification in progress"}
    assert asked == ["u@example.com"]
    # The worker's side, as reject_unverified_* calls it (mta.smtpd.verifycheck).
    side = SimpleNamespace(channel=c.workerSide, generation=SimpleNamespace(clock=Clock()))
    d = worker.Worker.verifyAddress(side, "v@example.com")
    c.pump.flush()
    assert resultOf(d) == (3, "Address verification in progress")


def test_verify_query_fails_without_the_master_or_when_it_is_slow():
    from twisted.internet.defer import TimeoutError

    clock = Clock()
    gone = SimpleNamespace(channel=None, generation=SimpleNamespace(clock=clock))
    with pytest.raises(ConnectionError):
        resultOf(worker.Worker.verifyAddress(gone, "u@example.com"))
    slow = SimpleNamespace(channel=SimpleNamespace(callRemote=lambda *a, **kw: Deferred()),
                           generation=SimpleNamespace(clock=clock))
    d = worker.Worker.verifyAddress(slow, "u@example.com")
    clock.advance(worker.VERIFY_TIMEOUT - 1)
    assert not d.called
    clock.advance(1)
    with pytest.raises(TimeoutError):
        resultOf(d)
