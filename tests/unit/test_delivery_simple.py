"""mta.delivery.discard, mta.delivery.error and mta.delivery.status: discard(8), error(8), retry."""

import pytest
from twisted.plugin import getPlugins

import mta.plugins
from mta.config import load
from mta.delivery.discard import DiscardTransport
from mta.delivery.error import ErrorTransport
from mta.delivery.status import errnoStatus, splitStatus, statusClass, validStatus
from mta.interfaces import IDeliveryTransport, IDeliveryTransportFactory
from mta.model import DeliveryRecipient, DeliveryRequest, Envelope, Recipient


class FakeMailLog:
    def __init__(self):
        self.lines = []

    def emit(self, text, queue_id=None, level=None, **fields):
        self.lines.append((queue_id, text))


def request(nexthop, count=2, transport="error"):
    envelope = Envelope(sender="alice@example.org",
                        recipients=tuple(Recipient(f"r{i}@example.com") for i in range(count)),
                        arrival_time=1700000000.0)
    recipients = tuple(DeliveryRecipient(index=i * 3, address=f"r{i}@example.com", original=f"r{i}@example.com")
                       for i in range(count))
    # The content is never read: a path that does not exist proves it.
    return DeliveryRequest("4TbC0hR2x8Zq", transport, nexthop, envelope, recipients, "/nonexistent/queue/file",
                           50, 1234)


def results(transport, req):
    out = []
    transport.deliver(req).addBoth(out.append)
    assert len(out) == 1 and isinstance(out[0], list), out
    return [(r.index, r.status, r.dsn, r.text, r.relay) for r in out[0]]


# -- status codes --------------------------------------------------------------------


@pytest.mark.parametrize("text, expected", [
    ("5.1.1 No such user", ("5.1.1", "No such user")),
    ("  4.7.1   Try again later ", ("4.7.1", "Try again later")),
    ("4.7.1", ("4.7.1", "")),
    ("2.0.0\tok", ("2.0.0", "ok")),
    ("5.1.1text", ("5.0.0", "5.1.1text")),
    ("6.1.1 nope", ("5.0.0", "6.1.1 nope")),
    ("5.1234.1 nope", ("5.0.0", "5.1234.1 nope")),
    ("550 5.1.1 smtp style", ("5.0.0", "550 5.1.1 smtp style")),
    ("example.com", ("5.0.0", "example.com")),
    ("", ("5.0.0", "")),
    (None, ("5.0.0", "")),
])
def test_split_status(text, expected):
    assert splitStatus(text, "5.0.0") == expected


def test_status_helpers():
    assert validStatus("4.2.0") and validStatus("5.999.999") and not validStatus("4.2.0 x") and not validStatus("3.0.0")
    assert [statusClass(s) for s in ("2.0.0", "4.3.0", "5.1.1")] == ["sent", "deferred", "bounced"]
    import errno

    assert errnoStatus(errno.ENOSPC, "4.2.0") == "4.3.1"
    assert errnoStatus(errno.EDQUOT, "4.2.0") == errnoStatus(errno.EFBIG, "4.2.0") == "5.2.2"
    assert errnoStatus(errno.EAGAIN, "4.3.0") == errnoStatus(errno.ESTALE, "4.3.0") == "4.2.0"
    assert errnoStatus(errno.EIO, "4.3.0") == "4.3.0"


# -- discard(8) ----------------------------------------------------------------------


def test_discard_sends_every_recipient_with_the_nexthop_as_reason():
    t = DiscardTransport(maillog=FakeMailLog())
    assert IDeliveryTransport.providedBy(t)
    assert results(t, request("example.com", 3)) == [
        (0, "sent", "2.0.0", "example.com", "none"),
        (3, "sent", "2.0.0", "example.com", "none"),
        (6, "sent", "2.0.0", "example.com", "none"),
    ]


def test_discard_detail_code_and_empty_nexthop():
    t = DiscardTransport(maillog=FakeMailLog())
    assert results(t, request("2.7.0 sender blocked by policy", 1)) == [
        (0, "sent", "2.7.0", "sender blocked by policy", "none")]
    assert results(t, request("", 1)) == [(0, "sent", "2.0.0", "discarded", "none")]
    assert t.maillog.lines == []


def test_discard_ignores_a_failure_code_with_a_warning():
    t = DiscardTransport(maillog=FakeMailLog())
    assert results(t, request("5.1.1 go away", 1)) == [(0, "sent", "2.0.0", "go away", "none")]
    [(queueId, line)] = t.maillog.lines
    assert queueId == "4TbC0hR2x8Zq" and line.startswith('warning: discard: ignoring dsn code "5.1.1"')


# -- error(8) and retry ----------------------------------------------------------------


def test_error_bounces_with_the_nexthop_as_reason():
    t = ErrorTransport(maillog=FakeMailLog())
    assert IDeliveryTransport.providedBy(t)
    assert results(t, request("5.1.1 No such user here")) == [
        (0, "bounced", "5.1.1", "No such user here", "none"),
        (3, "bounced", "5.1.1", "No such user here", "none"),
    ]
    assert results(t, request("mail for this domain is not accepted", 1)) == [
        (0, "bounced", "5.0.0", "mail for this domain is not accepted", "none")]


def test_error_default_text():
    t = ErrorTransport(maillog=FakeMailLog())
    assert results(t, request("", 1)) == [(0, "bounced", "5.0.0", "Address is undeliverable", "none")]
    assert results(t, request("5.7.1", 1)) == [(0, "bounced", "5.7.1", "Address is undeliverable", "none")]


def test_error_with_a_temporary_code_defers():
    t = ErrorTransport(maillog=FakeMailLog())
    assert results(t, request("4.7.1 Try again later", 1)) == [(0, "deferred", "4.7.1", "Try again later", "none")]
    assert t.maillog.lines == []


def test_error_ignores_a_success_code_with_a_warning():
    t = ErrorTransport(maillog=FakeMailLog())
    assert results(t, request("2.0.0 fine", 1)) == [(0, "bounced", "5.0.0", "fine", "none")]
    assert len(t.maillog.lines) == 1 and "ignoring dsn code" in t.maillog.lines[0][1]


def test_retry_defers_always():
    t = ErrorTransport(retry=True, maillog=FakeMailLog())
    assert t.name == "retry"
    assert results(t, request("", 1)) == [(0, "deferred", "4.0.0", "Delivery temporarily suspended", "none")]
    assert results(t, request("4.4.1 host down", 1)) == [(0, "deferred", "4.4.1", "host down", "none")]
    assert results(t, request("5.1.1 nope", 1)) == [(0, "deferred", "4.0.0", "nope", "none")]
    assert len(t.maillog.lines) == 1


def test_stop_fires_at_once():
    for t in (DiscardTransport(maillog=FakeMailLog()), ErrorTransport(maillog=FakeMailLog())):
        fired = []
        t.stop().addCallback(fired.append)
        assert fired == [None]


# -- plugins -----------------------------------------------------------------------------


def test_plugins_make_the_transports_from_the_configuration():
    factories = {f.transportType: f for f in getPlugins(IDeliveryTransportFactory, mta.plugins)}
    settings = load(None, "[main]\nsyslog_name = postfix-test\n").settings
    discard = factories["discard"].makeTransport("discard", settings, None)
    error = factories["error"].makeTransport("error", settings, None)
    retry = factories["retry"].makeTransport("retry", settings, None)
    assert isinstance(discard, DiscardTransport) and isinstance(error, ErrorTransport)
    assert isinstance(retry, ErrorTransport) and retry.retry and not error.retry
    assert error.maillog.log.namespace == "postfix-test/error"
    assert results(retry, request("4.3.2 maintenance", 1)) == [(0, "deferred", "4.3.2", "maintenance", "none")]
    for factory in factories.values():
        assert factory.description
