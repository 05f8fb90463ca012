"""The HELO name and address domain checks (mta.smtpd.dnschecks) with a fake DNS."""

import pytest
from twisted.internet.defer import fail, succeed

from mta.delivery.dns import DNSError
from mta.smtpd.peername import HostsFile
from mta.testing import FakeQueueStore, serverFactory
from tests.dialogs.harness import Dialog

OUTSIDE = "192.0.2.10"


class HostDNS:
    """MX and address answers; a DNSError value is raised; a missing name is NXDOMAIN."""

    def __init__(self, mx=None, addresses=None):
        self.mx = mx or {}
        self.addresses = addresses or {}

    @staticmethod
    def _answer(table, name):
        value = table.get(name)
        if value is None:
            return fail(DNSError(f"Host or domain name not found. Name service error for name={name}: "
                                 "Host not found", temporary=False, notFound=True))
        if isinstance(value, Exception):
            return fail(value)
        return succeed(value)

    def lookupMX(self, name):
        return self._answer(self.mx, name)

    def lookupAddresses(self, name, families=("ipv4", "ipv6"), preference="any"):
        return self._answer(self.addresses, name)

    def lookupRecords(self, name, rdtype):
        return fail(DNSError("not found", temporary=False, notFound=True))


SLOW = DNSError("Host not found, try again", temporary=True)


def dnsServer():
    return HostDNS(
        mx={"mail.example": [(10, "mx.mail.example")], "null.example": [(0, ".")], "noaddress.example": [],
            "hostonly.example": [], "slow.example": SLOW, "slowhelo.example": []},
        addresses={"mx.mail.example": ["192.0.2.25"], "hostonly.example": ["192.0.2.26"], "noaddress.example": [],
                   "client.example": ["192.0.2.10"], "slowhelo.example": SLOW})


def dialog(restrictions, tmp_path, extra=""):
    f = serverFactory(f"smtpd_recipient_restrictions = {restrictions}\nsmtpd_relay_restrictions =\n{extra}", store=FakeQueueStore(),
                      dns=dnsServer())
    (tmp_path / "hosts").write_text("")
    f.peerNames.hosts = HostsFile(f.clock, str(tmp_path / "hosts"))
    return f


def rcpt(f, helo="client.example", sender="a@mail.example", recipient="b@mx.test"):
    d = Dialog(f, peer=OUTSIDE)
    d.send(f"EHLO {helo}\r\n")
    d.send(f"MAIL FROM:<{sender}>\r\n")
    return d.send(f"RCPT TO:<{recipient}>\r\n")


@pytest.mark.parametrize("helo, reply", [
    ("client.example", "250 2.1.5 Ok"),
    ("client.example.", "250 2.1.5 Ok"),  # one trailing dot is dropped
    ("[192.0.2.10]", "250 2.1.5 Ok"),
    ("[IPv6:2001:db8::1]", "250 2.1.5 Ok"),
    ("192.0.2.10", "250 2.1.5 Ok"),  # a bare address: Postfix's back-compat rule
    ("bad_helo!", "501 5.5.2 <bad_helo!>: Helo command rejected: Invalid name"),
    ("[300.1.1.1]", "501 5.5.2 <[300.1.1.1]>: Helo command rejected: invalid ip address"),
])
def test_reject_invalid_helo_hostname(tmp_path, helo, reply):
    f = dialog("reject_invalid_helo_hostname, permit", tmp_path)
    assert rcpt(f, helo=helo) == reply + "\r\n"


def test_reject_non_fqdn_helo_hostname(tmp_path):
    f = dialog("reject_non_fqdn_hostname, permit", tmp_path)
    assert rcpt(f, helo="localhost") == "504 5.5.2 <localhost>: Helo command rejected: need fully-qualified hostname\r\n"
    assert rcpt(f, helo="client.example") == "250 2.1.5 Ok\r\n"


def test_reject_unknown_helo_hostname(tmp_path):
    f = dialog("reject_unknown_helo_hostname, permit", tmp_path)
    assert rcpt(f, helo="client.example") == "250 2.1.5 Ok\r\n"  # an A record
    assert rcpt(f, helo="mail.example") == "250 2.1.5 Ok\r\n"  # an MX record
    assert rcpt(f, helo="null.example") == "250 2.1.5 Ok\r\n"  # a null MX is fine for an MTA's own name
    assert rcpt(f, helo="nowhere.example") == "450 4.7.1 <nowhere.example>: Helo command rejected: Host not found\r\n"
    assert rcpt(f, helo="slowhelo.example") == (
        "450 4.7.1 <slowhelo.example>: Helo command rejected: Host not found\r\n")  # defer_if_permit, then permit
    f = dialog("reject_unknown_helo_hostname, reject", tmp_path)
    assert rcpt(f, helo="slowhelo.example") == "554 5.7.1 <b@mx.test>: Recipient address rejected: Access denied\r\n"  # a reject wins over defer_if_permit
    f = dialog("reject_unknown_helo_hostname, permit", tmp_path, "unknown_hostname_reject_code = 550\n")
    assert rcpt(f, helo="nowhere.example").startswith("550 5.7.1 <nowhere.example>: Helo command rejected")


def test_reject_unknown_sender_domain(tmp_path):
    f = dialog("reject_unknown_sender_domain, permit", tmp_path)
    assert rcpt(f, sender="a@mail.example") == "250 2.1.5 Ok\r\n"
    assert rcpt(f, sender="a@hostonly.example") == "250 2.1.5 Ok\r\n"  # no MX, an A record
    assert rcpt(f, sender="") == "250 2.1.5 Ok\r\n"  # the null sender
    assert rcpt(f, sender="a@mx.test") == "250 2.1.5 Ok\r\n"  # our own domain: no lookup
    assert rcpt(f, sender="a@[192.0.2.1]") == "250 2.1.5 Ok\r\n"
    assert rcpt(f, sender="a@gone.example") == "450 4.1.8 <a@gone.example>: Sender address rejected: Domain not found\r\n"
    assert rcpt(f, sender="a@noaddress.example").startswith("450 4.1.8 ")
    assert rcpt(f, sender="a@null.example") == (
        "550 5.7.27 <a@null.example>: Sender address rejected: Domain null.example does not accept mail (nullMX)\r\n")
    assert rcpt(f, sender="a@slow.example") == (
        "450 4.1.8 <a@slow.example>: Sender address rejected: Domain not found\r\n")
    f = dialog("reject_unknown_sender_domain, permit", tmp_path, "unknown_address_reject_code = 550\n")
    assert rcpt(f, sender="a@gone.example").startswith("550 5.1.8 ")
    assert rcpt(f, sender="a@slow.example").startswith("450 4.1.8 ")  # temporary: never a 5xx


def test_reject_unknown_recipient_domain(tmp_path):
    f = dialog("reject_unknown_recipient_domain, permit", tmp_path)
    assert rcpt(f, recipient="b@gone.example") == (
        "450 4.1.2 <b@gone.example>: Recipient address rejected: Domain not found\r\n")
    assert rcpt(f, recipient="b@null.example") == (
        "556 5.1.10 <b@null.example>: Recipient address rejected: Domain null.example does not accept mail (nullMX)\r\n")
    assert rcpt(f, recipient="b@mx.test") == "250 2.1.5 Ok\r\n"


def test_tempfail_action_defer_defers_at_once(tmp_path):
    f = dialog("reject_unknown_sender_domain, reject", tmp_path, "reject_tempfail_action = defer\n")
    assert rcpt(f, sender="a@slow.example").startswith("450 4.1.8 ")  # before the reject
    f = dialog("reject_unknown_sender_domain, reject", tmp_path)
    assert rcpt(f, sender="a@slow.example") == "554 5.7.1 <b@mx.test>: Recipient address rejected: Access denied\r\n"  # defer_if_permit: the reject wins
