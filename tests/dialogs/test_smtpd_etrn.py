"""Scripted dialogs for ETRN (RFC 1985) with Postfix's replies, restrictions and fast_flush_domains."""

from types import SimpleNamespace

import pytest
from twisted.internet.defer import Deferred, fail, succeed

from mta.config.loader import load
from mta.smtpd.factory import serverFactory as daemonServerFactory
from mta.testing import FakeQueueStore, serverFactory
from tests.dialogs.harness import Dialog, MailLog

OUTSIDE = "198.51.100.7"
FLUSH = "fast_flush_domains = example.com, example.org\n"


class FakeFlush:
    """QueueManager.flushSite(domain) -> Deferred[int], recorded."""

    def __init__(self, result=None):
        self.sites = []
        self.result = result

    def __call__(self, site):
        self.sites.append(site)
        return self.result if self.result is not None else succeed(2)


def dialog(main=FLUSH, peer=OUTSIDE, flush=None, hello=True):
    factory = serverFactory(main, store=FakeQueueStore())
    factory.flushSite = flush
    d = Dialog(factory, peer=peer)
    if hello:
        d.send("EHLO client.example\r\n")
    return d


def test_etrnFlushesTheSite():
    flush = FakeFlush()
    d = dialog(flush=flush)
    assert d.send("ETRN example.com\r\n") == "250 Queuing started\r\n"
    assert d.send("ETRN Sub.Example.COM\r\n") == "250 Queuing started\r\n"  # subdomains, any case
    # An address literal is valid syntax (Postfix's extension), but no domain list holds one.
    assert d.send("ETRN [192.0.2.1]\r\n") == "459 <[192.0.2.1]>: service unavailable\r\n"
    assert flush.sites == ["example.com", "sub.example.com"]


@pytest.mark.parametrize("argument", ["@example.com", "#example.com"])
def test_rfc1985Forms(argument):
    """'@domain' (with subdomains) and '#queue' are taken as the domain, as Postfix does."""
    flush = FakeFlush()
    d = dialog(flush=flush)
    assert d.send(f"ETRN {argument}\r\n") == "250 Queuing started\r\n"
    assert flush.sites == ["example.com"]


def test_domainNotInFastFlushDomains():
    flush = FakeFlush()
    d = dialog(flush=flush)
    with MailLog() as log:
        assert d.send("ETRN example.net\r\n") == "459 <example.net>: service unavailable\r\n"
    assert log.matching(f"warning: reject: ETRN example.net... from unknown[{OUTSIDE}]")
    assert flush.sites == []


def test_defaultFastFlushDomainsIsRelayDomains():
    d = dialog(main="", flush=FakeFlush())  # relay_domains is empty by default
    assert d.send("ETRN example.com\r\n") == "459 <example.com>: service unavailable\r\n"
    d = dialog(main="relay_domains = example.com\n", flush=FakeFlush())
    assert d.send("ETRN example.com\r\n") == "250 Queuing started\r\n"


def test_withoutAFlushServiceAnswers458():
    with MailLog() as log:
        d = dialog(flush=None)
        assert d.send("ETRN example.com\r\n") == "458 Unable to queue messages\r\n"
    assert log.matching("warning: unable to talk to fast flush service")


def test_aFailedFlushAnswers458():
    d = dialog(flush=FakeFlush(fail(OSError("queue manager stopped"))))
    assert d.send("ETRN example.com\r\n") == "458 Unable to queue messages\r\n"
    assert d.send("NOOP\r\n") == "250 2.0.0 Ok\r\n"


def test_aSlowFlushKeepsThePipelinedOrder():
    pending = Deferred()
    flush = FakeFlush(pending)
    d = dialog(flush=flush)
    assert d.send("ETRN example.com\r\nRSET\r\n") == ""
    pending.callback(7)
    assert d.read() == "250 Queuing started\r\n250 2.0.0 Ok\r\n"


def test_syntaxAndSequence():
    d = dialog(flush=FakeFlush())
    assert d.send("ETRN\r\n") == "500 Syntax: ETRN domain\r\n"
    assert d.send("ETRN a.example b.example\r\n") == "500 Syntax: ETRN domain\r\n"
    assert d.send("ETRN bad..example\r\n") == "501 Error: invalid parameter syntax\r\n"
    assert d.send("ETRN @\r\n") == "501 Error: invalid parameter syntax\r\n"
    assert d.send("ETRN [300.1.1.1]\r\n") == "501 Error: invalid parameter syntax\r\n"
    d.send("MAIL FROM:<a@example.org>\r\n")
    assert d.send("ETRN example.com\r\n") == "503 Error: MAIL transaction in progress\r\n"


def test_heloOnlyWhenRequired():
    d = dialog(flush=FakeFlush(), hello=False)
    assert d.send("ETRN example.com\r\n") == "250 Queuing started\r\n"
    d = dialog(main=FLUSH + "smtpd_helo_required = yes\n", flush=FakeFlush(), hello=False)
    assert d.send("ETRN example.com\r\n") == "503 Error: send HELO/EHLO first\r\n"


def test_etrnRestrictions():
    main = FLUSH + (
        "smtpd_etrn_restrictions = check_etrn_access inline:{ { example.com = REJECT no flush for you }, "
        "sub.example.com=OK }, permit_mynetworks, reject\n"
    )
    flush = FakeFlush()
    d = dialog(main=main, flush=flush)
    with MailLog() as log:
        assert d.send("ETRN sub.example.com\r\n") == "250 Queuing started\r\n"
        assert d.send("ETRN a.sub.example.com\r\n") == "250 Queuing started\r\n"  # parent domains match
        reply = "554 5.7.1 <example.com>: Etrn command rejected: no flush for you"
        assert d.send("ETRN example.com\r\n") == reply + "\r\n"
        assert d.send("ETRN example.org\r\n") == "554 5.7.1 <example.org>: Etrn command rejected: Access denied\r\n"  # the final reject
    assert log.matching(f"NOQUEUE: reject: ETRN from unknown[{OUTSIDE}]: {reply}; proto=ESMTP helo=<client.example>")
    assert flush.sites == ["sub.example.com", "a.sub.example.com"]
    d = dialog(main=main, peer="127.0.0.1", flush=flush)  # in $mynetworks
    assert d.send("ETRN example.org\r\n") == "250 Queuing started\r\n"


def test_recipientRestrictionsHaveNothingToJudgeInEtrn():
    """As in Postfix, reject_unauth_destination and the like pass on when there is no recipient."""
    main = FLUSH + "smtpd_etrn_restrictions = reject_unauth_destination, reject_unlisted_recipient\n"
    d = dialog(main=main, flush=FakeFlush())
    assert d.send("ETRN example.com\r\n") == "250 Queuing started\r\n"


def test_serverFactoryTakesTheQueueManagersFlushSite():
    """factory.serverFactory hands the daemon's flushSite (the queue manager's, mta.service) to the sessions."""
    config = load("<test>", "[main]\nmyhostname = mx.test\n")
    flush = FakeFlush()
    listener = SimpleNamespace(params=config.main, settings=config.listeners[0].settings, name="smtp")
    from mta.tables import Tables
    from twisted.internet.task import Clock

    clock = Clock()
    from mta.routing import AddressResolver

    tables = Tables(clock)
    daemon = SimpleNamespace(clock=clock, store=FakeQueueStore(), tables=tables, flushSite=flush,
                             addressResolver=AddressResolver(config.settings.resolver, tables))
    assert daemonServerFactory(listener, daemon).flushSite is flush
    del daemon.flushSite  # no queue manager to flush: 458
    assert daemonServerFactory(listener, daemon).flushSite is None


def test_theDaemonsGenerationsFlushThroughTheQueueManager(tmp_path):
    """Every generation (the first and those of reloads) gets the daemon's flushSite, which asks the manager."""
    from twisted.internet.testing import MemoryReactorClock

    from mta.service import buildService
    from mta.tables import Tables

    config = load("<test>", f"[main]\nmyhostname = mx.test\nqueue_directory = {tmp_path}\n")
    reactor = MemoryReactorClock()
    service = buildService(config, reactor, Tables(reactor))
    asked = []
    service.manager.flushSite = lambda domain: asked.append(domain) or succeed(0)
    factory = service.current.factories["smtp"]
    factory.flushSite("example.com")
    assert asked == ["example.com"]
