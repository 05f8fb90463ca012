"""defer_if_permit, defer_if_reject, warn_if_reject, reject_multi_recipient_bounce, reject_unlisted_sender."""

from mta.testing import FakeQueueStore, serverFactory
from tests.dialogs.harness import Dialog, MailLog

OUTSIDE = "192.0.2.10"


def session(restrictions, extra=""):
    f = serverFactory(f"smtpd_recipient_restrictions = {restrictions}\nsmtpd_relay_restrictions =\n{extra}",
                      store=FakeQueueStore())
    d = Dialog(f, peer=OUTSIDE)
    d.send("EHLO c.test\r\n")
    return d


def test_defer_if_permit_and_defer_if_reject():
    d = session("defer_if_permit, permit")
    d.send("MAIL FROM:<a@example.org>\r\n")
    assert d.send("RCPT TO:<b@mx.test>\r\n") == (
        "450 4.7.0 <b@mx.test>: Recipient address rejected: defer_if_permit requested\r\n")
    d = session("defer_if_permit, reject")
    d.send("MAIL FROM:<a@example.org>\r\n")
    assert d.send("RCPT TO:<b@mx.test>\r\n") == "554 5.7.1 <b@mx.test>: Recipient address rejected: Access denied\r\n"
    d = session("defer_if_reject, reject")
    d.send("MAIL FROM:<a@example.org>\r\n")
    assert d.send("RCPT TO:<b@mx.test>\r\n") == (
        "450 4.7.0 <b@mx.test>: Recipient address rejected: defer_if_reject requested\r\n")
    d = session("defer_if_reject, permit")
    d.send("MAIL FROM:<a@example.org>\r\n")
    assert d.send("RCPT TO:<b@mx.test>\r\n") == "250 2.1.5 Ok\r\n"


def test_warn_if_reject_logs_the_next_reject_and_goes_on():
    d = session("warn_if_reject, reject_unauth_destination, reject_non_fqdn_recipient, permit")
    d.send("MAIL FROM:<a@example.org>\r\n")
    with MailLog() as log:
        assert d.send("RCPT TO:<b@elsewhere.example>\r\n") == "250 2.1.5 Ok\r\n"
    assert log.matching(f"NOQUEUE: reject_warning: RCPT from unknown[{OUTSIDE}]: 554 5.7.1 <b@elsewhere.example>: "
                        "Relay access denied; from=<a@example.org> to=<b@elsewhere.example>")
    with MailLog() as log:  # only the next restriction is a warning: the one after it still refuses
        assert d.send("RCPT TO:<b@nodots>\r\n").startswith("504 5.5.2 <b@nodots")
    assert [line for line in log.lines if "reject_warning" in line and "Relay access denied" not in line] == []


def test_reject_multi_recipient_bounce():
    d = session("reject_multi_recipient_bounce, permit")
    d.send("MAIL FROM:<>\r\n")
    assert d.send("RCPT TO:<a@mx.test>\r\n") == "250 2.1.5 Ok\r\n"
    assert d.send("RCPT TO:<b@mx.test>\r\n") == "550 5.5.3 <>: Sender address rejected: Multi-recipient bounce\r\n"
    d.send("RSET\r\n")
    d.send("MAIL FROM:<x@example.org>\r\n")
    assert d.send("RCPT TO:<a@mx.test>\r\nRCPT TO:<b@mx.test>\r\n") == "250 2.1.5 Ok\r\n250 2.1.5 Ok\r\n"


def test_reject_unlisted_sender(tmp_path):
    users = tmp_path / "users"
    users.write_text("alice@mx.test x\n")
    d = session("reject_unlisted_sender, permit", f"local_recipient_maps = texthash:{users}\n")
    d.send("MAIL FROM:<mallory@mx.test>\r\n")
    assert d.send("RCPT TO:<alice@mx.test>\r\n") == (
        "550 5.1.0 <mallory@mx.test>: Sender address rejected: User unknown in local recipient table\r\n")
    d.send("RSET\r\n")
    d.send("MAIL FROM:<alice@mx.test>\r\n")
    assert d.send("RCPT TO:<alice@mx.test>\r\n") == "250 2.1.5 Ok\r\n"
    d.send("RSET\r\n")
    d.send("MAIL FROM:<someone@example.org>\r\n")  # not ours: nothing to know
    assert d.send("RCPT TO:<alice@mx.test>\r\n") == "250 2.1.5 Ok\r\n"
