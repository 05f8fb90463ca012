"""Reloading the daemon (mta.service, mta.listeners, mta.generation): a real
MTAService on a memory reactor whose TCP ports are fake and whose thread pool
runs jobs at once, configuration files in tmp_path; no sockets, no sleeps."""

import errno
import os
import signal

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import CannotListenError
from twisted.internet.testing import MemoryReactorClock
from twisted.protocols import amp
from twisted.test import iosim

from mta import control, tap
from mta.config import load, openTables
from mta.generation import TransportRegistry
from mta.model import DeliveryRequest
from mta.service import MTAService, ReloadResult
from mta.smtpd import serverFactory
from mta.tables import Tables
from mta.testing import SyncPool, resultOf
from tests.dialogs.harness import Dialog
from tests.unit.test_queue_manager import FakeTransport, Harness


class Port:
    def __init__(self, reactor, interface, number, factory):
        self.reactor = reactor
        self.interface = interface or "0.0.0.0"
        self.number = number
        self.factory = factory

    def stopListening(self):
        self.reactor.ports.remove(self)
        if self.reactor.holdStops:
            d = Deferred()
            self.reactor.heldStops.append(d)
            return d
        return None

    def getHost(self):
        return IPv4Address("TCP", self.interface, self.number)


class Reactor(MemoryReactorClock):
    """TCP ports that conflict as the kernel's do (same port, same or wildcard address); a SyncPool."""

    def __init__(self):
        super().__init__()
        self.pool = SyncPool()
        self.ports = []
        self.busy = set()  # (interface, port) taken by another program
        self.holdStops = False
        self.heldStops = []
        self.listenCalls = 0

    def getThreadPool(self):
        return self.pool

    def callFromThread(self, f, *args, **kwargs):
        f(*args, **kwargs)

    def listenTCP(self, port, factory, backlog=50, interface=""):
        self.listenCalls += 1
        interface = interface or "0.0.0.0"
        taken = [(p.interface, p.number) for p in self.ports] + list(self.busy)
        for otherInterface, otherPort in taken:
            if otherPort == port and "0.0.0.0" in (interface, otherInterface) or (otherInterface, otherPort) == (
                interface, port
            ):
                raise CannotListenError(interface, port, OSError(errno.EADDRINUSE, "Address already in use"))
        p = Port(self, interface, port, factory)
        self.ports.append(p)
        return p

    def portAt(self, number, interface="127.0.0.1"):
        found = [p for p in self.ports if (p.interface, p.number) == (interface, number)]
        return found[0] if found else None


class Daemon:
    """An MTAService on a Reactor, its configuration file at C{path}."""

    def __init__(self, tmp_path):
        self.tmp = tmp_path
        self.path = str(tmp_path / "mta.ini")
        self.maillog = tmp_path / "maillog"
        self.reactor = Reactor()
        self.service = None

    def write(self, main="", listeners="[listener:smtp]\nendpoint = tcp:port=25:interface=127.0.0.1\n"):
        with open(self.path, "w") as f:
            f.write(f"[main]\nqueue_directory = {self.tmp}/q\nmaillog_file = {self.maillog}\n"
                    f"myhostname = mx.test\n{main}\n{listeners}")

    def start(self):
        config = load(self.path)
        tables = Tables(self.reactor)
        openTables(config, tables)
        self.service = MTAService(config, self.reactor, tables, serverFactory)
        self.service.privilegedStartService()
        self.service.startService()
        return self

    def reload(self):
        return resultOf(self.service.reload())

    def session(self, name="smtp"):
        return Dialog(self.service.listeners[name].factory)

    def log(self):
        mailLogFile = getattr(self.service, "_observer", None) if self.service is not None else None
        if mailLogFile is not None:
            mailLogFile.flush()  # buffered for up to 50 ms (mta.maillog.MailLogFile)
        return self.maillog.read_text()


@pytest.fixture
def daemon(tmp_path):
    d = Daemon(tmp_path)
    yield d
    if d.service is not None and d.service.running:
        resultOf(d.service.stopService())


def sizeOffered(dialog):
    return [line for line in dialog.send("EHLO client.test\r\n").split("\r\n") if "SIZE" in line]


# -- settings: old sessions keep theirs, new sessions get the new ones ---------------------------


def test_sessionOpenBeforeReloadKeepsItsSettingsNewSessionGetsNew(daemon):
    daemon.write("smtpd_banner = $myhostname ESMTP before\nmessage_size_limit = 1000\n")
    daemon.start()
    before = daemon.session()
    assert before.banner == "220 mx.test ESMTP before\r\n"
    port = daemon.reactor.portAt(25)
    daemon.write("smtpd_banner = $myhostname ESMTP after\nmessage_size_limit = 2000\n")
    result = daemon.reload()
    assert result == ReloadResult(daemon.path)
    after = daemon.session()
    assert after.banner == "220 mx.test ESMTP after\r\n"
    assert sizeOffered(after) == ["250-SIZE 2000"]
    assert sizeOffered(before) == ["250-SIZE 1000"]  # opened before the reload: its settings stay
    assert daemon.reactor.portAt(25) is port and daemon.reactor.listenCalls == 1  # the socket is kept
    log = daemon.log()
    assert f"mta/master[{os.getpid()}]: reload -- version 0.1.0, configuration {daemon.path}\n" in log
    assert f"mta/master[{os.getpid()}]: reload done\n" in log


def test_brokenConfigurationIsRefusedAndTheOldOneStays(daemon):
    daemon.write("smtpd_banner = $myhostname ESMTP before\n")
    daemon.start()
    daemon.write("smtpd_banner = $myhostname ESMTP after\nmesage_size_limit = 5\n")
    result = daemon.reload()
    assert result.refused
    assert result.error == f"{daemon.path}:6: [main] mesage_size_limit: unknown parameter (did you mean message_size_limit?)"
    assert daemon.session().banner == "220 mx.test ESMTP before\r\n"
    assert f"error: reload refused, the configuration in force stays: {result.error}\n" in daemon.log()
    assert "reload done" not in daemon.log()
    # Once fixed, the next reload applies.
    daemon.write("smtpd_banner = $myhostname ESMTP after\n")
    assert not daemon.reload().refused
    assert daemon.session().banner == "220 mx.test ESMTP after\r\n"


def test_tableThatDoesNotOpenRefusesTheReload(daemon, tmp_path):
    daemon.write()
    daemon.start()
    daemon.write(f"relay_domains = texthash:{tmp_path}/absent\n")
    result = daemon.reload()
    assert result.refused
    assert result.error.startswith(f"{daemon.path}:5: [main] relay_domains: {tmp_path}/absent: cannot open table")
    assert daemon.service.config["relay_domains"] == ()


def test_transportThatCannotBeMadeRefusesTheReload(daemon):
    daemon.write()
    daemon.start()
    # The virtual transport refuses an unlimited message size (when mail can reach it: virtual mailbox domains).
    daemon.write("virtual_mailbox_domains = v.example\nmessage_size_limit = 0\n")
    result = daemon.reload()
    assert result.refused
    assert "message_size_limit is unlimited" in result.error
    assert daemon.service.config["message_size_limit"] == 10240000


def test_tablesAreOpenedAgain(daemon, tmp_path):
    access = tmp_path / "access"
    access.write_text("bob@mx.test REJECT no bob here\n")
    daemon.write(f"smtpd_recipient_restrictions = check_recipient_access texthash:{access}, permit_mynetworks\n")
    daemon.start()
    before = daemon.session(), daemon.service.tables
    before[0].send("EHLO client.test\r\n")
    before[0].send("MAIL FROM:<a@example.org>\r\n")
    access.write_text("carol@mx.test REJECT no carol here\n")
    assert not daemon.reload().refused
    assert daemon.service.tables is not before[1]
    after = daemon.session()
    after.send("EHLO client.test\r\n")
    after.send("MAIL FROM:<a@example.org>\r\n")
    # No clock time passed, so texthash has not looked at the file itself: the reload read it.
    assert after.send("RCPT TO:<bob@mx.test>\r\n").startswith("250 ")
    assert after.send("RCPT TO:<carol@mx.test>\r\n").startswith("554 5.7.1 <carol@mx.test>: Recipient address rejected: no carol here")
    assert before[0].send("RCPT TO:<bob@mx.test>\r\n").startswith("554 5.7.1 <bob@mx.test>: Recipient address rejected: no bob here")


class ClosableTable:
    """A table with ILookupTable's optional close(), as the network and database tables have."""

    spec = "closable:x"

    def __init__(self):
        self.closed = 0

    def lookup(self, key):
        return succeed(None)

    def close(self):
        self.closed += 1


def test_the_replaced_configurations_tables_are_closed_once_its_transports_retire(daemon):
    daemon.write("")
    daemon.start()
    table = ClosableTable()
    daemon.service.tables._open["closable:x"] = table
    assert not daemon.reload().refused
    assert table.closed == 1
    fresh = ClosableTable()
    daemon.service.tables._open["closable:x"] = fresh
    daemon.service.stopService()
    assert fresh.closed == 1 and table.closed == 1


def test_connectionCountsCarryOver(daemon):
    daemon.write("smtpd_client_connection_count_limit = 1\nsmtpd_client_event_limit_exceptions =\n")
    daemon.start()
    first = daemon.session()
    assert first.banner.startswith("220 ")
    daemon.write("smtpd_client_connection_count_limit = 1\nsmtpd_client_event_limit_exceptions =\n"
                 "smtpd_banner = $myhostname ESMTP new\n")
    daemon.reload()
    second = daemon.session()  # the session from before the reload still counts
    assert second.banner.startswith("421 4.7.0 mx.test Error: too many connections from 127.0.0.1")
    first.protocol.connectionLost(None)
    second.protocol.connectionLost(None)
    assert daemon.session().banner == "220 mx.test ESMTP new\r\n"


def test_reloadOfTheEmbeddedDefaults(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    reactor = Reactor()
    config = load(None)
    tables = Tables(reactor)
    service = MTAService(config, reactor, tables, serverFactory)
    service.privilegedStartService()
    service.startService()
    try:
        result = resultOf(service.reload())
        assert result == ReloadResult("(embedded defaults)")
        assert service.config.path is None
        assert reactor.portAt(2525) is not None and reactor.listenCalls == 1
    finally:
        resultOf(service.stopService())


# -- listeners ----------------------------------------------------------------------------


def listeners(*specs):
    return "".join(f"[listener:{name}]\nendpoint = tcp:port={port}:interface={interface}\n"
                   for name, port, interface in specs)


def test_listenerAddedRemovedAndChanged(daemon):
    daemon.write(listeners=listeners(("smtp", 25, "127.0.0.1"), ("old", 26, "127.0.0.1"), ("moved", 27, "127.0.0.1")))
    daemon.start()
    onRemoved = daemon.session("old")
    daemon.write(listeners=listeners(("smtp", 25, "127.0.0.1"), ("moved", 28, "127.0.0.1"), ("new", 29, "127.0.0.1")))
    result = daemon.reload()
    assert result == ReloadResult(daemon.path)
    r = daemon.reactor
    assert [(p.interface, p.number) for p in r.ports if p.number != 0] == [
        ("127.0.0.1", 25), ("127.0.0.1", 28), ("127.0.0.1", 29)]
    assert list(daemon.service.listeners) == ["smtp", "moved", "new"]
    assert daemon.service.listenerDescriptions() == [
        ("smtp", "tcp:port=25:interface=127.0.0.1"), ("moved", "tcp:port=28:interface=127.0.0.1"),
        ("new", "tcp:port=29:interface=127.0.0.1")]
    assert daemon.service.getServiceNamed("listener:new").running
    with pytest.raises(KeyError):
        daemon.service.getServiceNamed("listener:old")
    assert daemon.session("new").banner.startswith("220 mx.test ESMTP")
    assert onRemoved.send("NOOP\r\n") == "250 2.0.0 Ok\r\n"  # a session of a removed listener finishes
    log = daemon.log()
    assert "listener old (tcp:port=26:interface=127.0.0.1): removed; its open sessions finish" in log
    assert "listener moved (tcp:port=28:interface=127.0.0.1): moved from tcp:port=27:interface=127.0.0.1" in log
    assert "listener new (tcp:port=29:interface=127.0.0.1): added" in log


def test_renamedListenerTakesOverTheEndpoint(daemon):
    daemon.write(listeners=listeners(("smtp", 25, "127.0.0.1")))
    daemon.start()
    daemon.write(listeners=listeners(("mx", 25, "127.0.0.1")))
    assert daemon.reload() == ReloadResult(daemon.path)
    assert list(daemon.service.listeners) == ["mx"] and daemon.reactor.portAt(25) is not None


def test_sameportOnAnotherAddressClosesTheOldFirst(daemon):
    daemon.write(listeners=listeners(("smtp", 25, "127.0.0.1")))
    daemon.start()
    daemon.write(listeners=listeners(("smtp", 25, "0.0.0.0")))
    assert daemon.reload() == ReloadResult(daemon.path)
    assert [(p.interface, p.number) for p in daemon.reactor.ports if p.number == 25] == [("0.0.0.0", 25)]


def test_changedEndpointThatCannotBindStaysOnTheOld(daemon):
    daemon.write(listeners=listeners(("smtp", 25, "127.0.0.1")))
    daemon.start()
    daemon.reactor.busy.add(("127.0.0.1", 587))
    daemon.write("smtpd_banner = $myhostname ESMTP after\n", listeners=listeners(("smtp", 587, "127.0.0.1")))
    result = daemon.reload()
    text = ("listener smtp (tcp:port=587:interface=127.0.0.1): cannot listen: [Errno 98] Address already in use; "
            "still listening on tcp:port=25:interface=127.0.0.1")
    assert result == ReloadResult(daemon.path, warnings=(text,))
    assert daemon.service.listenerDescriptions() == [("smtp", "tcp:port=25:interface=127.0.0.1")]
    assert daemon.session().banner == "220 mx.test ESMTP after\r\n"  # the rest of the configuration applies
    assert f"warning: {text}\n" in daemon.log()
    assert "reload done (1 listener problem)" in daemon.log()
    # The next reload tries again.
    daemon.reactor.busy.clear()
    assert daemon.reload() == ReloadResult(daemon.path)
    assert daemon.service.listenerDescriptions() == [("smtp", "tcp:port=587:interface=127.0.0.1")]


def test_newListenerThatCannotBindIsAnErrorAndTheRestApplies(daemon):
    daemon.write()
    daemon.start()
    daemon.reactor.busy.add(("127.0.0.1", 587))
    daemon.write("smtpd_banner = $myhostname ESMTP after\n",
                 listeners=listeners(("smtp", 25, "127.0.0.1"), ("submission", 587, "127.0.0.1")))
    result = daemon.reload()
    assert result.errors == ("listener submission (tcp:port=587:interface=127.0.0.1): cannot listen: "
                             "[Errno 98] Address already in use; not listening",)
    assert not result.refused and result.warnings == ()
    assert daemon.service.listenerDescriptions() == [("smtp", "tcp:port=25:interface=127.0.0.1")]
    assert daemon.session().banner == "220 mx.test ESMTP after\r\n"
    assert f"error: {result.errors[0]}\n" in daemon.log()
    daemon.reactor.busy.clear()
    assert daemon.reload() == ReloadResult(daemon.path)
    assert [name for name, _ in daemon.service.listenerDescriptions()] == ["smtp", "submission"]


def test_listenerThatCannotBindAnywhereIsNotListening(daemon):
    daemon.write(listeners=listeners(("smtp", 25, "127.0.0.1")))
    daemon.start()
    daemon.reactor.busy.update({("127.0.0.1", 587), ("127.0.0.1", 25)})  # port 25 taken once we let it go
    daemon.write(listeners=listeners(("smtp", 587, "0.0.0.0")))
    result = daemon.reload()
    assert len(result.errors) == 1 and result.errors[0].endswith("; not listening")
    assert daemon.service.listenerDescriptions() == []
    daemon.reactor.busy.clear()
    assert daemon.reload() == ReloadResult(daemon.path)  # listening again, on the new endpoint
    assert daemon.service.listenerDescriptions() == [("smtp", "tcp:port=587:interface=0.0.0.0")]


# -- one reload at a time -------------------------------------------------------------------


def test_reloadWhileOneRunsIsQueuedAndSharedByLaterRequests(daemon):
    daemon.write(listeners=listeners(("smtp", 25, "127.0.0.1"), ("gone", 26, "127.0.0.1")))
    daemon.start()
    daemon.reactor.holdStops = True  # the removed listener's port closes when we say so
    daemon.write("smtpd_banner = $myhostname ESMTP second\n", listeners=listeners(("smtp", 25, "127.0.0.1")))
    first = daemon.service.reload()
    second, third = daemon.service.reload(), daemon.service.reload()
    assert daemon.log().count("reload --") == 1
    daemon.write("smtpd_banner = $myhostname ESMTP third\n", listeners=listeners(("smtp", 25, "127.0.0.1")))
    daemon.reactor.heldStops.pop().callback(None)
    assert resultOf(first) == ReloadResult(daemon.path)
    assert resultOf(second) is resultOf(third)  # one more run, after the first, for both
    assert daemon.log().count("reload --") == 2 and daemon.log().count("reload done") == 2
    assert daemon.session().banner == "220 mx.test ESMTP third\r\n"
    daemon.reactor.holdStops = False


def test_reloadWhenNotRunningIsRefused(daemon):
    daemon.write()
    daemon.start()
    resultOf(daemon.service.stopService())
    result = daemon.reload()
    assert result.refused and "not running" in result.error


# -- queue_directory, maillog_file ------------------------------------------------------------


def test_queueDirectoryChangeIsIgnoredWithPostfixsWarnings(daemon, tmp_path):
    daemon.write()
    daemon.start()
    text = open(daemon.path).read().replace(f"queue_directory = {tmp_path}/q",
                                            f"queue_directory = {tmp_path}/elsewhere\nmyorigin = new.test")
    open(daemon.path, "w").write(text)
    assert daemon.reload() == ReloadResult(daemon.path)
    assert daemon.service.queueDirectory == f"{tmp_path}/q"
    assert daemon.service.store.directory == f"{tmp_path}/q"
    assert daemon.service.config["myorigin"] == "new.test"  # the rest applies
    log = daemon.log()
    assert "warning: ignoring queue_directory parameter value change\n" in log
    assert f'warning: old value: "{tmp_path}/q", new value: "{tmp_path}/elsewhere"\n' in log
    assert "warning: to change queue_directory, stop and start mta\n" in log


def test_maillogFileIsOpenedAgainAfterRotation(daemon):
    daemon.write()
    daemon.start()
    os.rename(daemon.maillog, str(daemon.maillog) + ".1")
    daemon.reload()
    assert "reload done" in daemon.log()
    assert "reload --" in open(str(daemon.maillog) + ".1").read()


def test_maillogFileIsOpenedAgainWhenTheReloadIsRefused(daemon):
    daemon.write()
    daemon.start()
    os.rename(daemon.maillog, str(daemon.maillog) + ".1")
    daemon.write("bogus = 1\n")
    assert daemon.reload().refused
    assert "reload refused" in daemon.log()


def test_newMaillogFileThatCannotBeOpenedRefusesTheReload(daemon, tmp_path):
    daemon.write()
    daemon.start()
    text = open(daemon.path).read().replace(f"maillog_file = {daemon.maillog}",
                                            f"maillog_file = {tmp_path}/no/such/dir/log")
    open(daemon.path, "w").write(text)
    result = daemon.reload()
    assert result.refused
    assert result.error == f"maillog_file {tmp_path}/no/such/dir/log: cannot open: No such file or directory"


def test_syslogNameAppliesAfterTheReload(daemon):
    daemon.write()
    daemon.start()
    daemon.write("syslog_name = postmta\n")
    daemon.reload()
    daemon.session()
    assert f"postmta/smtpd[{os.getpid()}]: connect from" in daemon.log()
    assert daemon.service.maillogFor("qmgr").log.namespace == "postmta/qmgr"
    assert daemon.service.manager.maillog.log.namespace == "postmta/qmgr"


# -- the queue manager and the transports ------------------------------------------------------


def test_managerGetsTheNewRouterTransportsAndLimits(daemon):
    daemon.write()
    daemon.start()
    manager = daemon.service.manager
    oldRouter, oldTransports = manager.router, manager.transports
    daemon.write("qmgr_message_active_limit = 7\nqueue_run_delay = 60s\nsoft_bounce = yes\n")
    daemon.reload()
    assert manager.router is daemon.service.current.router is not oldRouter
    assert manager.transports is daemon.service.transports is not oldTransports
    assert manager.notices is daemon.service.current.notices
    assert (manager.activeLimit, manager.runDelay, manager.softBounce) == (7, 60, True)
    assert manager.scanner._scanCall.getTime() - daemon.reactor.seconds() <= 60  # the next scan comes sooner


class HeldTransport(FakeTransport):
    def __init__(self):
        super().__init__()
        self.hold = True
        self.stopped = 0

    def stop(self):
        self.stopped += 1
        return succeed(None)


class Factory:
    transportType = "fake"

    def __init__(self):
        self.made = []

    def makeTransport(self, name, params, context):
        self.made.append(HeldTransport())
        return self.made[-1]


def test_retiredTransportsStopWhenTheirLastDeliveryEnds(tmp_path):
    h = Harness(tmp_path, "smtp_destination_concurrency_limit = 1\n")
    factory = Factory()
    old = TransportRegistry(None, None, factories={"smtp": factory})
    h.manager.transports = old
    h.manager.start()
    h.submit(["a@one.example"])
    h.submit(["b@one.example"])  # waits: one delivery at a time to one.example
    first = factory.made[0]
    assert len(first.requests) == 1
    new = TransportRegistry(None, None, factories={"smtp": factory})
    config = load("<t>", "[main]\nmyhostname = mx.test\nsmtp_destination_concurrency_limit = 3\n")
    h.manager.reconfigure(config.settings.qmgr, h.manager.router, new, h.manager.notices)
    retired = old.retire()
    second = factory.made[1]
    assert [r.recipients[0].address for r in second.requests] == ["b@one.example"]  # new work, new transport
    assert h.manager.destinations[("smtp", "one.example")].limit == 3
    assert first.stopped == 0 and not retired.called  # a delivery is still in progress on it
    first.release()
    assert first.stopped == 1 and retired.called
    assert second.stopped == 0
    assert len([line for line in h.lines if line.endswith(": removed")]) == 1  # the second is still on its way
    second.release()
    assert len([line for line in h.lines if line.endswith(": removed")]) == 2


def test_registryStopsItsTransportsOnceAndAnswersEveryone():
    factory = Factory()
    registry = TransportRegistry(None, None, factories={"fake": factory})
    transport = registry("fake")
    d = transport.deliver(DeliveryRequest(queue_id="Q", transport="fake", nexthop="x", envelope=None, recipients=(),
                                          path=os.devnull, content_offset=0, content_length=0))
    retired = registry.retire()
    stopped = registry.stop()  # the daemon stops meanwhile: it does not wait for the delivery
    assert factory.made[0].stopped == 1 and retired.called and stopped.called
    factory.made[0].release()
    assert resultOf(d) == [] and factory.made[0].stopped == 1


def test_pickupIsReplacedAndKeepsWhatItMustNotQueueTwice(daemon):
    daemon.write()
    daemon.start()
    old = daemon.service.pickup
    old._skip.add("stuck-file")
    daemon.write("mail_name = new.test\n")
    daemon.reload()
    new = daemon.service.pickup
    assert new is not old and new._running and not old._running
    assert new.mailName == "new.test" and "stuck-file" in new._skip


def test_dnsClientIsMadeAgain(daemon):
    daemon.write("dns_servers = 127.0.0.1:5353\n")
    daemon.start()
    old = daemon.service.resolver
    daemon.write("dns_servers = 127.0.0.2:5353\n")
    daemon.reload()
    assert daemon.service.resolver is not old
    assert daemon.service.resolver.servers == (("127.0.0.2", 5353),)


# -- SIGHUP and the control channel ----------------------------------------------------------


class SignalReactor:
    def __init__(self):
        self.calls = []

    def callFromThread(self, f, *args):
        self.calls.append((f, args))


def test_sighupSchedulesTheSameReloadAsTheControlChannel():
    previous = signal.getsignal(signal.SIGHUP)
    reactor, reloads = SignalReactor(), []
    service = type("S", (), {"reload": lambda self: reloads.append(1)})()
    try:
        tap.reloadOnSighup(reactor, service)
        signal.getsignal(signal.SIGHUP)(signal.SIGHUP, None)
    finally:
        signal.signal(signal.SIGHUP, previous)
    assert reactor.calls == [(service.reload, ())]
    reactor.calls[0][0]()
    assert reloads == [1]


class FakeDaemon:
    def __init__(self, result):
        self.result = result
        self.stops = 0

    def reload(self):
        return succeed(self.result)

    def requestStop(self):
        self.stops += 1


def callOverAmp(daemon, command):
    client = amp.AMP()
    server, _, pump = iosim.connectedServerAndClient(lambda: control.ControlProtocol(daemon), lambda: client)
    d = client.callRemote(command)
    pump.flush()
    return resultOf(d)


def test_reloadCommandCarriesTheResult():
    result = ReloadResult("/etc/mta/mta.ini", warnings=("w" * 5000,) * 30, errors=("e",))
    answer = callOverAmp(FakeDaemon(result), control.Reload)
    assert answer["configuration"] == "/etc/mta/mta.ini" and answer["pid"] == os.getpid()
    assert not answer["refused"] and answer["errors"] == ["e"] and answer["error"] is None
    assert len(answer["warnings"]) == control.MAX_LINES
    assert answer["warnings"][-1] == "... and 11 more (see the log)"
    assert answer["warnings"][0] == "w" * control.MAX_TEXT
    refused = callOverAmp(FakeDaemon(ReloadResult("/x", refused=True, error="/x:1: bad")), control.Reload)
    assert refused["refused"] and refused["error"] == "/x:1: bad"


def test_stopCommandAnswersThenStops(daemon):
    daemon.write()
    daemon.start()
    answer = callOverAmp(daemon.service, control.Stop)
    assert answer == {"pid": os.getpid()}
    assert not daemon.reactor.hasStopped
    daemon.reactor.advance(0)
    assert daemon.reactor.hasStopped


def test_reloadCommandThroughTheRealDaemon(daemon):
    daemon.write()
    daemon.start()
    daemon.write("bad line\n")
    answer = callOverAmp(daemon.service, control.Reload)
    assert answer["refused"] and answer["error"] == f"{daemon.path}:5: expected 'name = value', found: bad line"


def test_theTlsReporterOutlivesAReloadAndTakesTheNewSettings(daemon):
    """TLS-RPT (mta.delivery.tlsrpt): one reporter for the daemon, its counts kept, the new settings used."""
    from mta.delivery.tlspolicy import SitePolicy, TlsResult
    from mta.delivery.smtpclient import RemoteHost

    daemon.write("smtp_tlsrpt_enable = yes\n")
    daemon.start()
    reporter = daemon.service.tlsReporter
    assert daemon.service.current.tlsReporter is reporter
    smtp = daemon.service.transports("smtp")
    assert smtp.tlsPolicy.reporter is reporter
    reporter.record(SitePolicy(tls=None, domain="example.com"), RemoteHost("mx.example.com", "192.0.2.1", 25),
                    TlsResult(True))
    daemon.write("smtp_tlsrpt_enable = yes\nsmtp_tlsrpt_organization_name = after.test\n")
    daemon.reload()
    assert daemon.service.tlsReporter is reporter and daemon.service.current.tlsReporter is reporter
    assert daemon.service.transports("smtp").tlsPolicy.reporter is reporter
    assert reporter.settings.organizationName == "after.test"
    assert reporter.cleanup is daemon.service.current.cleanup
    assert sum(c.success for c in reporter._memory.values()) == 1
    assert daemon.service.transports("lmtp") is None or daemon.service.transports("lmtp").tlsPolicy.reporter is None
    resultOf(daemon.service.stopService())
    assert reporter._memory == {}  # written to the store at stop
    assert os.path.exists(os.path.join(str(daemon.tmp), "q", "tlsrpt.sqlite"))


# -- the queue committer's thread --------------------------------------------------------------


class ThreadedReactor(Reactor):
    """A reactor whose pool is a real (never started) Twisted ThreadPool, as the daemon's is."""

    def __init__(self):
        super().__init__()
        from twisted.python.threadpool import ThreadPool

        self.pool = ThreadPool(1, 1)


def test_theCommitterGetsAThreadOfItsOwnForTheDaemonsLife(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    reactor = ThreadedReactor()
    config = load(None)
    service = MTAService(config, reactor, Tables(reactor), serverFactory)
    pool = service.commitPool
    assert pool is not None and pool is not reactor.pool and (pool.min, pool.max) == (1, 1)
    assert service.store.committer().pool is pool and service.store.committer().method == "syncfs"
    service.privilegedStartService()
    service.startService()
    assert pool.started and not pool.joined
    resultOf(service.stopService())
    assert pool.joined  # its thread ended with the daemon: nothing keeps the process alive


def test_aTestReactorsSynchronousPoolIsUsedAsItIs(daemon):
    daemon.write()
    daemon.start()
    assert daemon.service.commitPool is None
    assert daemon.service.store.committer().pool is daemon.reactor.pool


def test_reloadChangesTheSyncMethod(daemon):
    daemon.write()
    daemon.start()
    assert daemon.service.store.committer().method == "syncfs"
    daemon.write("queue_sync_method = fsync\n")
    assert daemon.reload() == ReloadResult(daemon.path)
    assert daemon.service.store.syncMethod == "fsync" and daemon.service.store.committer().method == "fsync"
