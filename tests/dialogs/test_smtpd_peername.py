"""The client's name in the session (mta.smtpd.peername): the log, Received, and the restrictions that read it."""

from twisted.internet.defer import Deferred

from mta.smtpd.peername import HostsFile
from mta.testing import FakeQueueStore, serverFactory
from tests.dialogs.harness import Dialog, MailLog
from tests.unit.test_peername import FakeDNS

NAMED = "192.0.2.1"  # mail.example.org, confirmed
FORGED = "192.0.2.2"  # forged.example, which resolves elsewhere
NONAME = "192.0.2.3"  # no PTR
BROKEN = "192.0.2.4"  # SERVFAIL


def dnsServer():
    from mta.delivery.dns import DNSError

    return FakeDNS(
        ptr={"1.2.0.192.in-addr.arpa": ["mail.example.org"], "2.2.0.192.in-addr.arpa": ["forged.example"],
             "4.2.0.192.in-addr.arpa": DNSError("Host not found, try again", temporary=True)},
        addresses={"mail.example.org": [NAMED], "forged.example": ["198.51.100.1"]})


def factory(main="", store=None, server=None, tmp_path=None):
    f = serverFactory(main, store=store or FakeQueueStore(), dns=server or dnsServer())
    if tmp_path is not None:
        (tmp_path / "hosts").write_text("")
        f.peerNames.hosts = HostsFile(f.clock, str(tmp_path / "hosts"))
    return f


def test_the_connect_line_and_received_name_the_verified_client(tmp_path):
    store = FakeQueueStore()
    f = factory(store=store, tmp_path=tmp_path)
    with MailLog() as log:
        d = Dialog(f, peer=NAMED)
        assert d.banner.startswith("220 ")
        d.send("EHLO c.test\r\n")
        d.send("MAIL FROM:<a@example.org>\r\n")
        d.send("RCPT TO:<b@mx.test>\r\n")
        d.send("DATA\r\n")
        d.send("Subject: x\r\n\r\nx\r\n.\r\n")
    assert log.lines[0] == f"connect from mail.example.org[{NAMED}]"
    assert d.protocol.session.reverseClientName == "mail.example.org"
    assert b"Received: from c.test (mail.example.org [192.0.2.1])" in store.committed[0].content


def test_a_forged_name_is_unknown_with_postfix_warning_before_the_connect_line(tmp_path):
    with MailLog() as log:
        d = Dialog(factory(tmp_path=tmp_path), peer=FORGED)
    assert log.lines[:2] == [f"warning: hostname forged.example does not resolve to address {FORGED}",
                             f"connect from unknown[{FORGED}]"]
    assert d.protocol.session.reverseClientName == "forged.example"


def test_input_waits_for_the_lookup_and_a_client_that_leaves_is_logged(tmp_path):
    pending = Deferred()

    class Slow(FakeDNS):
        def lookupRecords(self, name, rdtype):
            return pending

    f = factory(server=Slow(), tmp_path=tmp_path)
    with MailLog() as log:
        d = Dialog(f, peer=NAMED)
        assert d.banner == "" and log.lines == []
        assert d.send("EHLO c.test\r\n") == ""  # held until the greeting
        d.protocol.connectionLost(None)
    assert log.lines[0] == f"connect from unknown[{NAMED}]"
    assert log.matching(f"lost connection after CONNECT from unknown[{NAMED}]")
    from mta.delivery.dns import DNSError

    with MailLog() as log:
        pending.errback(DNSError("timed out", temporary=True))  # the answer comes after the end: nothing happens
    assert log.lines == [] and d.transport.value() == b""


def test_reject_unknown_client_hostname(tmp_path):
    f = factory("smtpd_recipient_restrictions = reject_unknown_client_hostname, permit\n", tmp_path=tmp_path)

    def rcpt(peer):
        d = Dialog(f, peer=peer)
        d.send("EHLO c.test\r\n")
        d.send("MAIL FROM:<a@example.org>\r\n")
        return d.send("RCPT TO:<b@mx.test>\r\n")

    assert rcpt(NAMED) == "250 2.1.5 Ok\r\n"
    assert rcpt(FORGED) == f"450 4.7.25 Client host rejected: cannot find your hostname, [{FORGED}]\r\n"
    assert rcpt(BROKEN) == f"450 4.7.25 Client host rejected: cannot find your hostname, [{BROKEN}]\r\n"
    f = factory("smtpd_recipient_restrictions = reject_unknown_client, permit\nunknown_client_reject_code = 550\n",
                tmp_path=tmp_path)
    assert rcpt(NONAME) == f"550 5.7.25 Client host rejected: cannot find your hostname, [{NONAME}]\r\n"
    assert rcpt(BROKEN).startswith("450 4.7.25 ")  # a temporary DNS failure is never a 5xx


def test_reject_unknown_reverse_client_hostname(tmp_path):
    f = factory("smtpd_recipient_restrictions = reject_unknown_reverse_client_hostname, permit\n"
                "unknown_client_reject_code = 550\n", tmp_path=tmp_path)

    def rcpt(peer):
        d = Dialog(f, peer=peer)
        d.send("EHLO c.test\r\n")
        d.send("MAIL FROM:<a@example.org>\r\n")
        return d.send("RCPT TO:<b@mx.test>\r\n")

    assert rcpt(FORGED) == "250 2.1.5 Ok\r\n"  # it has a PTR name: enough for this one
    assert rcpt(NONAME) == f"550 5.7.1 Client host rejected: cannot find your reverse hostname, [{NONAME}]\r\n"
    assert rcpt(BROKEN) == f"450 4.7.1 Client host rejected: cannot find your reverse hostname, [{BROKEN}]\r\n"


def test_check_client_access_looks_up_the_name_its_parents_then_the_networks(tmp_path):
    table = tmp_path / "access"

    def rcpt(entries, peer, restriction="check_client_access"):
        table.write_text(entries)
        f = factory(f"smtpd_recipient_restrictions = {restriction} texthash:{table}, permit\n", tmp_path=tmp_path)
        d = Dialog(f, peer=peer)
        d.send("EHLO c.test\r\n")
        d.send("MAIL FROM:<a@example.org>\r\n")
        return d.send("RCPT TO:<b@mx.test>\r\n")

    assert rcpt("example.org REJECT no\n", NAMED) == (
        f"554 5.7.1 <mail.example.org[{NAMED}]>: Client host rejected: no\r\n")
    assert rcpt("192.0.2 REJECT net\n", NAMED).startswith("554 5.7.1 ")
    assert rcpt("forged.example REJECT\n", FORGED) == "250 2.1.5 Ok\r\n"  # not verified: not its name
    assert rcpt("unknown REJECT nameless\n", FORGED).endswith("Client host rejected: nameless\r\n")  # as Postfix
    assert rcpt("forged.example REJECT unverified\n", FORGED, "check_reverse_client_hostname_access") == (
        f"554 5.7.1 <forged.example[{FORGED}]>: Unverified Client host rejected: unverified\r\n")


def test_no_lookup_when_turned_off(tmp_path):
    server = dnsServer()
    f = serverFactory("smtpd_peername_lookup = no\n", store=FakeQueueStore(), dns=server)
    with MailLog() as log:
        Dialog(f, peer=NAMED)
    assert log.lines == [f"connect from unknown[{NAMED}]"] and server.queries == []
