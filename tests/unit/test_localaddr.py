"""mta.delivery.localaddr: the addresses of the listeners and of this host, for mail-loop detection."""

import ipaddress

import pytest

from mta.config.loader import load
from mta.delivery.localaddr import listenerAddresses, listenerInterface, localAddresses, parseAddress

HOST = [ipaddress.ip_address(a) for a in ("127.0.0.1", "192.0.2.7", "::1", "2001:db8::7")]


def ips(*texts):
    return {ipaddress.ip_address(t) for t in texts}


@pytest.mark.parametrize("description, bound", [
    ("tcp:port=25:interface=192.0.2.1", ("tcp", "192.0.2.1")),
    ("tcp:25:interface=192.0.2.1", ("tcp", "192.0.2.1")),
    (r"tcp6:port=25:interface=\:\:1", ("tcp", "::1")),
    (r"tcp6:port=2525:interface=2001\:db8\:\:25", ("tcp", "2001:db8::25")),
    (r"tcp6:interface=\:\:ffff\:127.0.0.1:port=25", ("tcp", "::ffff:127.0.0.1")),
    ("tcp:port=25", ("tcp", "")),
    ("tcp6:port=25", ("tcp", "::")),
    ("unix:/run/mta/smtp.sock", ("unix", "/run/mta/smtp.sock")),
    ("unix:address=/run/mta/smtp.sock:mode=660", ("unix", "/run/mta/smtp.sock")),
    ("systemd:domain=INET:index=0", None),
    ("nosuchkind:port=25", None),
    ("tcp:port=notanumber", None),
])
def test_the_interface_as_twisted_parses_it(description, bound):
    assert listenerInterface(description) == bound


def test_nothing_is_bound():
    # The recording reactor binds nothing: the same description can be "listened" on twice.
    assert listenerInterface("tcp:port=1:interface=127.0.0.1") == listenerInterface("tcp:port=1:interface=127.0.0.1")


def test_listener_addresses():
    """Escaped IPv6 colons give the address itself, never a backslash."""
    found = listenerAddresses(["tcp:port=25:interface=198.51.100.25", r"tcp6:port=25:interface=\:\:1",
                               r"tcp6:port=587:interface=2001\:db8\:\:25", "unix:/run/mta.sock"],
                              hostAddresses=lambda: pytest.fail("no wildcard here"))
    assert found == ips("198.51.100.25", "::1", "2001:db8::25")


def test_an_ipv4_mapped_interface_is_the_ipv4_address():
    assert listenerAddresses([r"tcp6:port=25:interface=\:\:ffff\:192.0.2.9"]) == ips("192.0.2.9")


@pytest.mark.parametrize("description, expected", [
    ("tcp:port=25", ("127.0.0.1", "192.0.2.7")),  # IPv4 wildcard: the host's IPv4 addresses
    ("tcp:port=25:interface=0.0.0.0", ("127.0.0.1", "192.0.2.7")),
    ("tcp6:port=25", ("127.0.0.1", "192.0.2.7", "::1", "2001:db8::7")),  # dual stack: all of them
    (r"tcp6:port=25:interface=\:\:", ("127.0.0.1", "192.0.2.7", "::1", "2001:db8::7")),
])
def test_a_wildcard_listener_counts_every_address_of_the_host(description, expected):
    """As Postfix's inet_interfaces = all: the host's own interface addresses."""
    calls = []
    found = listenerAddresses([description, description], hostAddresses=lambda: calls.append(1) or HOST)
    assert found == ips(*expected)
    assert calls == [1]  # asked once


def test_unix_listeners_have_no_address():
    assert listenerAddresses(["unix:/run/mta.sock"], hostAddresses=lambda: HOST) == set()


def test_a_host_name_as_interface_is_ignored_with_a_warning():
    warnings = []
    assert listenerAddresses(["tcp:port=25:interface=localhost"], warn=warnings.append) == set()
    assert warnings == ["listener endpoint tcp:port=25:interface=localhost: interface localhost is not an IP "
                        "address; not used for mail loop detection"]


def test_local_addresses_include_loopback():
    addresses = localAddresses()
    assert ipaddress.ip_address("127.0.0.1") in addresses
    assert all(isinstance(a, (ipaddress.IPv4Address, ipaddress.IPv6Address)) for a in addresses)
    assert all(a.version == 4 or a.ipv4_mapped is None for a in addresses)


def test_local_addresses_match_the_kernel():
    """The addresses of getifaddrs() are those the kernel lists (Linux: /proc/net/if_inet6 for IPv6)."""
    try:
        with open("/proc/net/if_inet6") as f:
            kernel = {ipaddress.ip_address(":".join(line.split()[0][i : i + 4] for i in range(0, 32, 4)))
                      for line in f if line.strip()}
    except OSError:
        pytest.fail("this test expects Linux's /proc/net/if_inet6")  # the CI machines are Linux
    assert {a for a in localAddresses() if a.version == 6} == kernel


@pytest.mark.parametrize("text, address", [
    ("192.0.2.1", "192.0.2.1"), ("[192.0.2.1]", "192.0.2.1"), ("::1", "::1"), ("[ipv6:::1]", "::1"),
    ("fe80::1%eth0", "fe80::1"), ("::ffff:10.0.0.1", "10.0.0.1"), (" 2001:db8::1 ", "2001:db8::1"),
])
def test_parse_address(text, address):
    assert parseAddress(text) == ipaddress.ip_address(address)


@pytest.mark.parametrize("text", ["localhost", "", r"\:\:1", "192.0.2.256", "[]"])
def test_parse_address_refuses_the_rest(text):
    assert parseAddress(text) is None


# -- the smtp transport's idea of "myself" --------------------------------------------------


class Context:
    def __init__(self, listeners):
        self.clock = None
        self.store = None
        self.resolver = None
        self._listeners = listeners

    def listenerDescriptions(self):
        return list(self._listeners.items())


def transport(listeners, main=""):
    from mta.delivery.smtp import SMTPTransport

    config = load(text="[main]\n" + main, checkEndpoints=False)
    return SMTPTransport("smtp", config.settings.smtpClient, Context(listeners))


def test_the_smtp_transport_knows_its_ipv6_listener():
    t = transport({"smtp": r"tcp6:port=25:interface=\:\:1", "submission": "tcp:port=587:interface=192.0.2.25",
                   "local": "unix:/run/mta.sock"}, main="proxy_interfaces = 198.51.100.1, [2001:db8::1]\n")
    assert t.mxOptions["myAddresses"] == ips("::1", "192.0.2.25", "198.51.100.1", "2001:db8::1")


def test_the_smtp_transport_with_a_wildcard_listener_counts_the_host_addresses():
    t = transport({"smtp": "tcp6:port=25"})
    assert t.mxOptions["myAddresses"] == set(localAddresses())


def test_a_proxy_interface_name_is_ignored_with_a_warning():
    from twisted.logger import globalLogPublisher

    events = []
    globalLogPublisher.addObserver(events.append)
    try:
        t = transport({"smtp": "tcp:port=25:interface=127.0.0.1"}, main="proxy_interfaces = proxy.example\n")
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert t.mxOptions["myAddresses"] == ips("127.0.0.1")
    assert [e["mail_line"] for e in events if "mail_line" in e] == [
        "warning: proxy_interfaces: proxy.example is not an IP address; not used for mail loop detection"]
