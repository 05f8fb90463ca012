"""mta.smtpd.peername: the client's name, reverse then forward, with a fake DNS and hosts file."""

import os

import dns.rdata
import pytest
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock

from mta.delivery.dns import DNSError
from mta.smtpd import peername
from mta.smtpd.peername import OK, PERM, TEMP, HostsFile, PeerName, PeerNames, validHostname
from mta.testing import resultOf


class FakeDNS:
    """PTR and address answers from dicts; a DNSError value is raised."""

    def __init__(self, ptr=None, addresses=None):
        self.ptr = ptr or {}
        self.addresses = addresses or {}
        self.queries = []

    def lookupRecords(self, name, rdtype):
        self.queries.append((name, rdtype))
        value = self.ptr.get(name, DNSError(f"Host or domain name not found. Name service error for name={name} "
                                            "type=PTR: Host not found", temporary=False, notFound=True))
        if isinstance(value, Exception):
            return fail(value)
        return succeed([dns.rdata.from_text("IN", "PTR", f"{n}.") for n in value])

    def lookupAddresses(self, name, families=("ipv4", "ipv6"), preference="any"):
        self.queries.append((name, families))
        value = self.addresses.get(name, DNSError(f"Host or domain name not found. Name service error for name={name} "
                                                  "type=A: Host not found", temporary=False, notFound=True))
        if isinstance(value, Exception):
            return fail(value)
        return succeed(list(value))


class Lines:
    def __init__(self):
        self.lines = []

    def emit(self, line, **kw):
        self.lines.append(line)


@pytest.fixture
def hosts(tmp_path):
    path = tmp_path / "hosts"
    path.write_text("# comment\n127.0.0.1 localhost vm\n::1 localhost ip6-localhost\n"
                    "192.0.2.7 seven.example seven # trailing\n192.0.2.8 8.8\nbogus line\n")
    return HostsFile(Clock(), str(path))


def names(dnsServer, hosts, log=None):
    return PeerNames(lambda: dnsServer, Clock(), log or Lines(), hosts=hosts)


def looked(result):
    return resultOf(result) if isinstance(result, Deferred) else result


# -- host names -------------------------------------------------------------------------------


@pytest.mark.parametrize("name, valid", [
    ("mail.example.com", True), ("a", True), ("x_y.example", True), ("a-b.example", True),
    ("-a.example", False), ("a-.example", False), ("a..b", False), ("a.example.", False), ("", False),
    ("192.0.2.1", False), ("1.2", False), ("a" * 64 + ".example", False), ("bad name.example", False),
    ("ex\u00e4mple.com", False), ("mail.example\n", False),
])
def test_valid_hostname(name, valid):
    assert validHostname(name) is valid


# -- /etc/hosts ---------------------------------------------------------------------------------


def test_hosts_file_answers_reverse_and_forward(hosts):
    from ipaddress import ip_address

    assert hosts.reverse(ip_address("127.0.0.1")) == "localhost"
    assert hosts.reverse(ip_address("192.0.2.7")) == "seven.example"
    assert hosts.reverse(ip_address("192.0.2.8")) is None  # "8.8" is numeric: not a host name
    assert hosts.forward("SEVEN") == [ip_address("192.0.2.7")]
    assert hosts.forward("localhost") == [ip_address("127.0.0.1"), ip_address("::1")]
    assert hosts.forward("nowhere") is None


def test_hosts_file_is_read_again_when_it_changes(tmp_path):
    from ipaddress import ip_address

    clock = Clock()
    path = tmp_path / "hosts"
    path.write_text("192.0.2.1 old.example\n")
    hosts = HostsFile(clock, str(path))
    assert hosts.reverse(ip_address("192.0.2.1")) == "old.example"
    path.write_text("192.0.2.1 new.example\n")
    os.utime(path, ns=(1, 1))
    assert hosts.reverse(ip_address("192.0.2.1")) == "old.example"  # not looked at again within HOSTS_CHECK
    clock.advance(peername.HOSTS_CHECK)
    assert hosts.reverse(ip_address("192.0.2.1")) == "new.example"
    path.unlink()
    clock.advance(peername.HOSTS_CHECK)
    assert hosts.reverse(ip_address("192.0.2.1")) is None


# -- lookups ------------------------------------------------------------------------------------


def test_hosts_answer_at_once_without_dns(hosts):
    server = FakeDNS()
    result = names(server, hosts).lookup("192.0.2.7")
    assert result == PeerName("seven.example", "seven.example", OK, OK)
    assert server.queries == []
    assert names(server, hosts).lookup("::ffff:127.0.0.1") == PeerName("localhost", "localhost", OK, OK)


def test_ptr_then_forward_confirmation(hosts):
    server = FakeDNS(ptr={"1.2.0.192.in-addr.arpa": ["mail.example.org"]},
                     addresses={"mail.example.org": ["192.0.2.9", "192.0.2.1"]})
    result = names(server, hosts).lookup("192.0.2.1")
    assert isinstance(result, Deferred)
    assert resultOf(result) == PeerName("mail.example.org", "mail.example.org", OK, OK)
    assert server.queries == [("1.2.0.192.in-addr.arpa", "PTR"), ("mail.example.org", ("ipv4",))]


def test_a_name_that_does_not_resolve_back_is_unknown(hosts):
    log = Lines()
    server = FakeDNS(ptr={"1.2.0.192.in-addr.arpa": ["forged.example"]}, addresses={"forged.example": ["192.0.2.99"]})
    assert looked(names(server, hosts, log).lookup("192.0.2.1")) == PeerName("unknown", "forged.example", PERM, OK)
    assert log.lines == ["warning: hostname forged.example does not resolve to address 192.0.2.1"]


def test_forward_lookup_failures(hosts):
    log = Lines()
    temporary = DNSError("Host or domain name not found. Name service error for name=slow.example type=A: "
                         "Host not found, try again", temporary=True)
    server = FakeDNS(ptr={"1.2.0.192.in-addr.arpa": ["slow.example"], "2.2.0.192.in-addr.arpa": ["gone.example"]},
                     addresses={"slow.example": temporary})
    assert looked(names(server, hosts, log).lookup("192.0.2.1")) == PeerName("unknown", "slow.example", TEMP, OK)
    assert looked(names(server, hosts, log).lookup("192.0.2.2")) == PeerName("unknown", "gone.example", PERM, OK)
    assert log.lines[0] == ("warning: hostname slow.example does not resolve to address 192.0.2.1: Host or domain "
                            "name not found. Name service error for name=slow.example type=A: Host not found, try again")
    assert log.lines[1].startswith("warning: hostname gone.example does not resolve to address 192.0.2.2: ")


def test_reverse_lookup_failures(hosts):
    server = FakeDNS(ptr={"3.2.0.192.in-addr.arpa": DNSError("SERVFAIL", temporary=True),
                          "4.2.0.192.in-addr.arpa": [],
                          "5.2.0.192.in-addr.arpa": ["192.0.2.5", "bad\\032name", "ok.example"]},
                     addresses={"ok.example": ["192.0.2.5"]})
    lookup = names(server, hosts).lookup
    assert looked(lookup("192.0.2.1")) == PeerName("unknown", "unknown", PERM, PERM)  # NXDOMAIN
    assert looked(lookup("192.0.2.3")) == PeerName("unknown", "unknown", TEMP, TEMP)
    assert looked(lookup("192.0.2.4")) == PeerName("unknown", "unknown", PERM, PERM)  # NODATA
    assert looked(lookup("192.0.2.5")) == PeerName("ok.example", "ok.example", OK, OK)  # the first valid name


def test_an_ipv6_client_is_confirmed_with_aaaa_records(hosts):
    reverse = "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6.arpa"
    server = FakeDNS(ptr={reverse: ["six.example"]}, addresses={"six.example": ["2001:db8:0::1"]})
    assert looked(names(server, hosts).lookup("2001:db8::1")) == PeerName("six.example", "six.example", OK, OK)
    assert server.queries[-1] == ("six.example", ("ipv6",))


def test_not_an_address_is_not_looked_up(hosts):
    server = FakeDNS()
    assert names(server, hosts).lookup("") == peername.NOT_LOOKED_UP
    assert names(server, hosts).lookup("not-an-address") == peername.NOT_LOOKED_UP
    assert server.queries == []
