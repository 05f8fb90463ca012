"""notify_classes in the queue manager's notices: delay copies, bounce copies, double bounces (bounce implies 2bounce)."""

import email
import email.policy
import errno
import os

import pytest

from tests.unit.test_queue_manager import FakeTransport, Harness

DOUBLE_BOUNCE = "double-bounce@mx.test"


def postmasterNotices(h, transport, address):
    """(request, content) of the notices from double-bounce to C{address} that C{transport} got."""
    t = h.transports[transport]
    return [(r, c) for r, c in zip(t.requests, t.contents)
            if r.envelope.sender == DOUBLE_BOUNCE and [x.address for x in r.recipients] == [address]]


def senderNotices(h, transport, original=None):
    """The notices from <> (not the message C{original} itself)."""
    t = h.transports[transport]
    return [(r, c) for r, c in zip(t.requests, t.contents) if r.envelope.sender == "" and r.queue_id != original]


def slowFar(r):
    return ("deferred", "4.4.1", "no answer") if r.address.endswith("far.example") else ("sent", "2.0.0", "ok")


@pytest.mark.parametrize("classes", ["delay", "resource, delay, software"])
def test_delayGivesThePostmasterACopyOfEachDelayWarning(tmp_path, classes):
    h = Harness(tmp_path, f"delay_warning_time = 1h\nnotify_classes = {classes}\n"
                "delay_notice_recipient = delays@box.example\n",
                {"smtp": FakeTransport(slowFar), "virtual": FakeTransport()})
    h.manager.start()
    queueId = h.submit(["x@far.example"], content=b"Subject: t\r\n\r\nthe secret body\r\n")
    for _ in range(40):  # 3.3 hours of queue runs: one warning only
        h.clock.advance(300)
    [(request, copy)] = postmasterNotices(h, "virtual", "delays@box.example")
    assert len(senderNotices(h, "smtp")) == 1  # the sender's warning is still sent
    message = email.message_from_bytes(copy, policy=email.policy.default)
    assert message["Subject"] == "Postmaster Warning: Delayed Mail"
    assert message["To"] == "delays@box.example"
    assert message["Auto-Submitted"] == "auto-generated"
    assert b"Action: delayed" in copy and b"Final-Recipient: rfc822; x@far.example" in copy
    assert b"Content-Type: text/rfc822-headers" in copy  # headers only, as for bounce copies
    assert b"Subject: t" in copy and b"the secret body" not in copy
    copyId = request.queue_id
    assert f"bounce: {queueId}: postmaster delay notification: {copyId}" in h.lines
    assert sum("sender delay notification" in line for line in h.lines) == 1
    assert sum("postmaster delay notification" in line for line in h.lines) == 1


def test_noDelayCopyWithoutTheDelayClass(tmp_path):
    h = Harness(tmp_path, "delay_warning_time = 1h\nnotify_classes = bounce, 2bounce, resource, software\n"
                "delay_notice_recipient = delays@box.example\n",
                {"smtp": FakeTransport(slowFar), "virtual": FakeTransport()})
    h.manager.start()
    h.submit(["x@far.example"])
    for _ in range(40):
        h.clock.advance(300)
    assert len(senderNotices(h, "smtp")) == 1
    assert postmasterNotices(h, "virtual", "delays@box.example") == []
    assert not any("postmaster delay notification" in line for line in h.lines)


def test_delayCopyEvenWhenTheSenderAskedForNoWarning(tmp_path):
    """Postmaster copies ignore NOTIFY (Postfix's DSN_NOTIFY_OVERRIDE)."""
    from mta.model import Recipient

    h = Harness(tmp_path, "delay_warning_time = 1h\nnotify_classes = delay\n"
                "delay_notice_recipient = delays@box.example\n",
                {"smtp": FakeTransport(slowFar), "virtual": FakeTransport()})
    h.manager.start()
    h.submit([Recipient("x@far.example", notify=("FAILURE",))])
    for _ in range(40):
        h.clock.advance(300)
    assert senderNotices(h, "smtp") == []
    assert len(postmasterNotices(h, "virtual", "delays@box.example")) == 1
    assert sum("postmaster delay notification" in line for line in h.lines) == 1  # once, not at every run


def test_noDelayWarningForMailFromTheNullSender(tmp_path):
    """Postfix's cleanup gives mail from <> no warning time: nobody is warned, the postmaster neither."""
    h = Harness(tmp_path, "delay_warning_time = 1h\nnotify_classes = delay\n"
                "delay_notice_recipient = delays@box.example\n",
                {"smtp": FakeTransport(slowFar), "virtual": FakeTransport()})
    h.manager.start()
    h.submit(["x@far.example"], sender="")
    for _ in range(40):
        h.clock.advance(300)
    assert postmasterNotices(h, "virtual", "delays@box.example") == []
    assert not any("delay notification" in line for line in h.lines)


def bounceAll(r):
    return ("bounced", "5.1.1", "550 5.1.1 gone") if r.address.endswith("far.example") else ("sent", "2.0.0", "ok")


@pytest.mark.parametrize("classes", ["bounce", "2bounce", "bounce, 2bounce"])
def test_bounceImplies2bounce(tmp_path, classes):
    """A bounce that bounces goes to 2bounce_notice_recipient with either class, whole (Postfix's ANY_BOUNCE)."""
    h = Harness(tmp_path, f"notify_classes = {classes}\n2bounce_notice_recipient = doubles@box.example\n"
                "bounce_notice_recipient = copies@box.example\n",
                {"smtp": FakeTransport(bounceAll), "virtual": FakeTransport()})
    h.manager.start()
    queueId = h.submit(["mailer@far.example"], sender="", content=b"Subject: a bounce\r\n\r\nits body\r\n")
    [(request, double)] = postmasterNotices(h, "virtual", "doubles@box.example")
    assert b"Postmaster Copy: Undelivered Mail" in double
    assert b"Content-Type: message/rfc822" in double and b"its body" in double  # the whole message
    assert f"bounce: {queueId}: postmaster non-delivery notification: {request.queue_id}" in h.lines
    # a bounce is never bounced, and a double bounce gets no bounce copy besides
    assert senderNotices(h, "smtp", queueId) == []
    assert postmasterNotices(h, "virtual", "copies@box.example") == []


def test_withoutBounceOr2bounceABounceThatBouncesIsDropped(tmp_path):
    h = Harness(tmp_path, "notify_classes = delay, resource, software\n2bounce_notice_recipient = doubles@box.example\n",
                {"smtp": FakeTransport(bounceAll), "virtual": FakeTransport()})
    h.manager.start()
    queueId = h.submit(["mailer@far.example"], sender="")
    assert postmasterNotices(h, "virtual", "doubles@box.example") == []
    assert f"bounce: {queueId}: undeliverable bounce discarded (notify_classes has neither 2bounce nor bounce)" in h.lines
    assert h.queue("incoming") == h.queue("deferred") == h.queue("active") == []


@pytest.mark.parametrize("classes, copies", [("bounce", 1), ("2bounce", 0), ("resource, software", 0)])
def test_bounceCopiesOnlyWithTheBounceClass(tmp_path, classes, copies):
    h = Harness(tmp_path, f"notify_classes = {classes}\nbounce_notice_recipient = copies@box.example\n",
                {"smtp": FakeTransport(bounceAll), "virtual": FakeTransport()})
    h.manager.start()
    queueId = h.submit(["x@far.example"], content=b"Subject: t\r\n\r\nthe body\r\n")
    assert len(senderNotices(h, "smtp")) == 1
    found = postmasterNotices(h, "virtual", "copies@box.example")
    assert len(found) == copies
    if copies:
        assert b"Content-Type: text/rfc822-headers" in found[0][1] and b"the body" not in found[0][1]
        assert any(line.startswith(f"bounce: {queueId}: postmaster non-delivery notification: ") for line in h.lines)


def test_aCopyThatCannotBeQueuedDoesNotRepeatTheSendersNotice(tmp_path):
    """Postfix: the postmaster copy "is not critical, so if it fails don't retransmit the bounce"."""
    smtp = FakeTransport(bounceAll)
    smtp.hold = True
    h = Harness(tmp_path, "notify_classes = bounce\nbounce_notice_recipient = copies@box.example\n",
                {"smtp": smtp, "virtual": FakeTransport()})
    h.manager.start()
    queueId = h.submit(["x@far.example"])
    creates = []

    def secondCreateFails(path, flags):
        if flags & os.O_CREAT:
            creates.append(path)
            if len(creates) == 2:  # the sender's notice, then the postmaster's copy
                return OSError(errno.ENOSPC, "No space left on device")
        return None

    h.fs.faults["open"] = secondCreateFails
    smtp.release()
    del h.fs.faults["open"]
    assert any(line.startswith(f"bounce: warning: {queueId}: postmaster notification failed: ") for line in h.lines)
    assert f"qmgr: {queueId}: removed" in h.lines  # recorded as notified: nothing owed
    h.clock.advance(3600)
    assert len(senderNotices(h, "smtp")) == 1
    assert postmasterNotices(h, "virtual", "copies@box.example") == []
