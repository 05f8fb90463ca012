"""check_*_{a,mx,ns}_access: a name's mail servers, name servers or addresses in an access table (fake DNS)."""

import dns.rdata
from twisted.internet.defer import fail, succeed

from mta.delivery.dns import DNSError
from mta.testing import FakeQueueStore, serverFactory
from tests.dialogs.harness import Dialog, MailLog

OUTSIDE = "192.0.2.10"


class ServerDNS:
    def __init__(self):
        self.mx = {"spam.example": [(10, "mx.badhost.example")], "nomx.example": [], "null.example": [(0, ".")],
                   "slow.example": DNSError("Host not found, try again", temporary=True)}
        self.ns = {"spam.example": ["ns1.badns.example"], "example": ["ns.tld.example"]}
        self.addresses = {"mx.badhost.example": ["198.51.100.7"], "nomx.example": ["203.0.113.5"],
                          "plain.example": ["203.0.113.9"]}

    def lookupMX(self, name):
        value = self.mx.get(name)
        if value is None:
            return fail(DNSError("not found", temporary=False, notFound=True))
        return fail(value) if isinstance(value, Exception) else succeed(value)

    def lookupRecords(self, name, rdtype):
        if rdtype == "NS" and name in self.ns:
            return succeed([dns.rdata.from_text("IN", "NS", n + ".") for n in self.ns[name]])
        return fail(DNSError("not found", temporary=False, notFound=True))

    def lookupAddresses(self, name, families=("ipv4", "ipv6"), preference="any"):
        if name in self.addresses:
            return succeed(self.addresses[name])
        return fail(DNSError("not found", temporary=False, notFound=True))


def rcpt(tmp_path, restriction, entries, sender="a@spam.example"):
    table = tmp_path / "access"
    table.write_text(entries)
    f = serverFactory(f"smtpd_recipient_restrictions = {restriction} texthash:{table}, permit\n"
                      "smtpd_peername_lookup = no\n", store=FakeQueueStore(), dns=ServerDNS())
    d = Dialog(f, peer=OUTSIDE)
    d.send("EHLO client.example\r\n")
    d.send(f"MAIL FROM:<{sender}>\r\n")
    return d.send("RCPT TO:<b@mx.test>\r\n")


def test_sender_mx_access_by_host_name_its_parents_and_addresses(tmp_path):
    assert rcpt(tmp_path, "check_sender_mx_access", "badhost.example REJECT bad mx\n") == (
        "554 5.7.1 <a@spam.example>: Sender address rejected: bad mx\r\n")
    assert rcpt(tmp_path, "check_sender_mx_access", "198.51.100 REJECT bad net\n").endswith("bad net\r\n")
    assert rcpt(tmp_path, "check_sender_mx_access", "203.0.113.5 REJECT own\n", sender="a@nomx.example").endswith(
        "own\r\n")  # no MX: the domain is its own mail server
    assert rcpt(tmp_path, "check_sender_mx_access", "badhost.example REJECT\n", sender="a@null.example") == (
        "250 2.1.5 Ok\r\n")
    assert rcpt(tmp_path, "check_sender_mx_access", "other.example REJECT\n") == "250 2.1.5 Ok\r\n"


def test_sender_ns_access_walks_up_to_the_zone(tmp_path):
    assert rcpt(tmp_path, "check_sender_ns_access", "badns.example REJECT bad dns\n").endswith("bad dns\r\n")
    assert rcpt(tmp_path, "check_sender_ns_access", "ns.tld.example REJECT parent\n", sender="a@sub.plain.example"
                ).endswith("parent\r\n")  # no NS for sub.plain.example or plain.example: example's


def test_sender_a_access(tmp_path):
    assert rcpt(tmp_path, "check_sender_a_access", "203.0.113.0/24 REJECT\n203.0.113 REJECT net\n",
                sender="a@plain.example").endswith("net\r\n")


def test_ok_is_not_allowed_and_dns_failures_pass(tmp_path):
    with MailLog() as log:
        assert rcpt(tmp_path, "check_sender_mx_access", "badhost.example OK\n") == (
            "451 4.3.5 Server configuration error\r\n")
    assert log.matching("warning: restriction check_sender_mx_access returns OK for a@spam.example")
    with MailLog() as log:
        assert rcpt(tmp_path, "check_sender_mx_access", "badhost.example REJECT\n", sender="a@slow.example") == (
            "250 2.1.5 Ok\r\n")
    assert log.matching("warning: Unable to look up MX host for slow.example: Host not found, try again")


def test_helo_mx_access_and_an_address_literal(tmp_path):
    table = tmp_path / "access"
    table.write_text("198.51.100.7 REJECT literal\n")
    f = serverFactory(f"smtpd_recipient_restrictions = check_helo_mx_access texthash:{table}, permit\n"
                      "smtpd_peername_lookup = no\n", store=FakeQueueStore(), dns=ServerDNS())
    d = Dialog(f, peer=OUTSIDE)
    d.send("EHLO [198.51.100.7]\r\n")
    d.send("MAIL FROM:<a@example.org>\r\n")
    assert d.send("RCPT TO:<b@mx.test>\r\n") == "554 5.7.1 <[198.51.100.7]>: Helo command rejected: literal\r\n"
