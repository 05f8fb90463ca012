"""The delivery transports' settings (mta.config.settings.client, .delivery), built at load, and the
transports made from them (IDeliveryTransportFactory.makeTransport(name, settings, context))."""

import pytest
from twisted.internet.defer import succeed
from twisted.internet.task import Clock
from twisted.plugin import getPlugins
from zope.interface import implementer
from zope.interface.verify import verifyObject

import mta.plugins
from mta.cli import config as cliConfig
from mta.config import ConfigError, load
from mta.config.types import TableSpec
from mta.delivery.dns import Resolver, SystemResolver
from mta.delivery.smtp import SMTPTransport
from mta.delivery.virtual import VirtualTransport
from mta.generation import TransportRegistry
from mta.interfaces import IDeliveryTransport, IDeliveryTransportFactory, IDNSResolver, IHostResolver
from mta.model import DeliveryRecipient, DeliveryRequest, Envelope, Recipient
from mta.tables import Tables
from tests.unit.test_mx import FakeResolver


def compiled(text=""):
    return load("<test>", "[main]\n" + text).settings


def refused(text, where):
    """load() refuses C{text}, naming C{where} ("<test>:LINE: [main] KEY") first."""
    with pytest.raises(ConfigError) as e:
        compiled(text)
    assert str(e.value).startswith(where + ": "), str(e.value)
    return str(e.value)


# -- smtpClient and lmtpClient ------------------------------------------------------------------


def test_smtp_client_defaults_are_postfix_defaults():
    s = compiled("myhostname = mx.example.org\n").smtpClient
    assert not s.lmtp and s.defaultPort is None and not s.lmtpAssumeFinal
    assert (s.heloName, s.myHostname, s.replyLimit, s.lineLengthLimit) == ("mx.example.org", "mx.example.org", 2048, 998)
    assert (s.heloTimeout, s.mailTimeout, s.rcptTimeout, s.dataInitTimeout, s.dataXferTimeout, s.dataDoneTimeout,
            s.rsetTimeout, s.quitTimeout) == (300.0, 300.0, 300.0, 120.0, 180.0, 600.0, 20.0, 300.0)
    assert (s.neverSendEhlo, s.alwaysSendEhlo, s.skip5xxGreeting, s.skipQuitResponse, s.quoteRfc821Envelope) == (
        False, True, True, True, True)
    assert s.discardEhloKeywords == frozenset() and s.connectTimeout == 30.0
    assert (s.bind4, s.bind6, s.relayhost, s.fallbackRelays, s.proxyInterfaces) == (None, None, "", (), ())
    assert (s.cacheOnDemand, s.cacheDestinations, s.cacheTimeLimit, s.reuseTimeLimit, s.reuseCountLimit) == (
        True, frozenset(), 2.0, 300.0, 0)
    assert (s.randomize, s.mxAddressLimit, s.mxSessionLimit, s.ignoreMxLookupError, s.deferIfNoMxAddressFound,
            s.disableDnsLookups) == (True, 5, 2, False, False, False)
    assert (s.hostLookup, s.families, s.addressPreference, s.balanceInetProtocols, s.bestMxTransport) == (
        ("dns",), ("ipv4", "ipv6"), "any", True, "")
    assert not s.disableMimeOutputConversion
    assert s.syslogName == "mta"
    # The client's postmaster transcripts read the notices' settings (config.settings.notices).
    n = compiled("myhostname = mx.example.org\n").notices
    assert n.classes == {"resource", "software"}
    assert (n.errorRecipient, n.bounceRecipient, n.doubleBounceSender, n.myorigin, n.mailName) == (
        "postmaster", "postmaster", "double-bounce", "mx.example.org", "mta")


def test_smtp_client_conversions():
    everything = compiled(
        "smtp_helo_name = helo.example.org\n"
        "smtp_helo_timeout = 5m\n"
        "smtp_discard_ehlo_keywords = pipelining, Dsn\n"
        "smtp_line_length_limit = 0\n"
        "inet_protocols = ipv6, ipv4\n"
        "smtp_host_lookup = native, dns\n"
        "smtp_bind_address = 192.0.2.7\n"
        "smtp_bind_address6 = 2001:DB8::7\n"
        "smtp_connection_cache_destinations = a.example, [b.example]:25\n"
        "smtp_fallback_relay = [relay1.example], relay2.example\n"
        "proxy_interfaces = 198.51.100.1\n"
        "notify_classes = protocol\n"
        "line_length_limit = 4096\n"
    )
    s = everything.smtpClient
    assert s.heloName == "helo.example.org" and s.heloTimeout == 300.0
    assert s.discardEhloKeywords == {"PIPELINING", "DSN"}
    assert s.lineLengthLimit == 0 and s.replyLimit == 4096
    assert s.families == ("ipv4", "ipv6")  # Postfix's order, whatever the order written
    assert s.hostLookup == ("native", "dns")  # the order of use
    assert (s.bind4, s.bind6) == ("192.0.2.7", "2001:db8::7")
    assert s.cacheDestinations == {"a.example", "[b.example]:25"}
    assert s.fallbackRelays == ("[relay1.example]", "relay2.example")
    assert s.proxyInterfaces == ("198.51.100.1",) and everything.notices.classes == {"protocol"}


@pytest.mark.parametrize("value, families", [("all", ("ipv4", "ipv6")), ("ipv4", ("ipv4",)),
                                             ("ipv6", ("ipv6",)), ("ipv4, all", ("ipv4", "ipv6"))])
def test_inet_protocols(value, families):
    assert compiled(f"inet_protocols = {value}\n").smtpClient.families == families


def test_lmtp_client_reads_the_lmtp_parameters():
    s = compiled(
        "myhostname = mx.example.org\n"
        "smtp_helo_name = smtp.example.org\n"
        "lmtp_lhlo_name = lmtp.example.org\n"
        "smtp_never_send_ehlo = yes\n"
        "lmtp_data_done_timeout = 7s\n"
        "lmtp_discard_lhlo_keywords = chunking\n"
        "lmtp_assume_final = yes\n"
        "lmtp_tcp_port = 2003\n"
        "lmtp_line_length_limit = 500\n"
        "smtp_connect_timeout = 9s\n"
    ).lmtpClient
    assert s.lmtp and s.heloName == "lmtp.example.org" and s.dataDoneTimeout == 7.0
    assert s.discardEhloKeywords == {"CHUNKING"} and s.lmtpAssumeFinal and s.defaultPort == "2003"
    assert s.lineLengthLimit == 500 and not s.skipQuitResponse  # lmtp_skip_quit_response = no
    assert not s.neverSendEhlo and s.alwaysSendEhlo  # LMTP always sends LHLO
    assert s.connectTimeout == 9.0  # the smtp_* parameters that have no lmtp_* form


def test_smtp_and_lmtp_settings_are_apart():
    settings = compiled("smtp_helo_name = smtp.example.org\nlmtp_skip_quit_response = yes\n")
    assert settings.lmtpClient.heloName != "smtp.example.org"
    assert settings.smtpClient.skipQuitResponse and settings.lmtpClient.skipQuitResponse


@pytest.mark.parametrize("line, key", [
    ("smtp_helo_name = two words", "smtp_helo_name"),
    ("smtp_helo_name = bad\x01name", "smtp_helo_name"),
    ("lmtp_lhlo_name = a\tb", "lmtp_lhlo_name"),
    ("smtp_line_length_limit = 1", "smtp_line_length_limit"),
    ("lmtp_line_length_limit = -5", "lmtp_line_length_limit"),
    ("smtp_bind_address = ::1", "smtp_bind_address"),
    ("smtp_bind_address = mail.example.org", "smtp_bind_address"),
    ("smtp_bind_address6 = 192.0.2.1", "smtp_bind_address6"),
    ("inet_protocols = ipx", "inet_protocols"),
    ("smtp_host_lookup = nis", "smtp_host_lookup"),
    ("line_length_limit = 40", "line_length_limit"),
])
def test_bad_client_values_fail_at_load_with_the_line(line, key):
    refused(f"mail_name = x\n{line}\n", f"<test>:3: [main] {key}")


def test_an_empty_helo_name_fails_at_load():
    # $myhostname is the default; an empty name cannot be sent.
    refused("smtp_helo_name =\n", "<test>:2: [main] smtp_helo_name")


# -- virtual and agent ------------------------------------------------------------------


def test_virtual_settings():
    v = compiled(
        "virtual_mailbox_base = /var/mail/vhosts\n"
        "virtual_mailbox_maps = inline:{ bob@example.com=bob/ }, static:x\n"
        "virtual_uid_maps = static:5000\n"
        "virtual_minimum_uid = 500\n"
        "virtual_mailbox_lock = Dotlock, fcntl\n"
        "deliver_lock_attempts = 3\n"
        "deliver_lock_delay = 2s\n"
        "stale_lock_time = 1m\n"
        "strict_mailbox_ownership = no\n"
        "virtual_mailbox_follow_symlinks = yes\n"
        "recipient_delimiter = +-\n"
        "syslog_name = postfix/test\n"
    ).virtual
    assert v.base == "/var/mail/vhosts"
    assert v.mailboxMaps == (TableSpec("inline", "{ bob@example.com=bob/ }"), TableSpec("static", "x"))
    assert v.uidMaps == (TableSpec("static", "5000"),) and v.gidMaps == ()
    assert (v.minimumUid, v.mailboxLimit, v.lockStyles) == (500, 51200000, ("dotlock", "fcntl"))
    assert (v.lockAttempts, v.lockDelay, v.staleLockTime) == (3, 2.0, 60.0)
    assert (v.strictOwnership, v.followSymlinks, v.delimiter, v.syslogName) == (False, True, "+-", "postfix/test")


def test_virtual_defaults():
    v = compiled().virtual
    assert (v.base, v.mailboxMaps, v.minimumUid, v.mailboxLimit, v.lockStyles, v.lockAttempts) == (
        "", (), 100, 51200000, ("fcntl", "dotlock"), 20)
    assert (v.lockDelay, v.staleLockTime, v.strictOwnership, v.followSymlinks, v.delimiter) == (
        1.0, 500.0, True, False, "")


@pytest.mark.parametrize("text, where, message", [
    ("virtual_mailbox_base = var/mail\n", "<test>:2: [main] virtual_mailbox_base", "relative path"),
    ("virtual_mailbox_limit = 1000\nmessage_size_limit = 2000\nvirtual_mailbox_domains = box.example\n", "<test>:2: [main] virtual_mailbox_limit",
     "virtual_mailbox_limit (1000) is smaller than message_size_limit (2000)"),
    # Only the size limit is in the file: its line is named.
    ("mail_name = x\nmessage_size_limit = 60000000\nvirtual_mailbox_domains = box.example\n", "<test>:3: [main] message_size_limit",
     "virtual_mailbox_limit (51200000) is smaller than message_size_limit (60000000)"),
    ("message_size_limit = 0\nvirtual_mailbox_domains = box.example\n", "<test>:2: [main] message_size_limit",
     "virtual_mailbox_limit is limited but message_size_limit is unlimited"),
    ("virtual_mailbox_lock = fcntl, posix\n", "<test>:2: [main] virtual_mailbox_lock", "'posix' is not one of"),
    ("deliver_lock_attempts = 0\n", "<test>:2: [main] deliver_lock_attempts", ""),
])
def test_bad_virtual_values_fail_at_load_with_the_line(text, where, message):
    assert message in refused(text, where)


@pytest.mark.parametrize("text", [
    "message_size_limit = 0\n",  # no virtual mailbox domains: nothing goes to virtual(8)
    "message_size_limit = 0\nvirtual_mailbox_domains = box.example\nvirtual_transport = lmtp:unix:/run/lmtp\n",
])
def test_the_mailbox_limit_rule_waits_for_a_configuration_that_uses_virtual(text):
    """Postfix's virtual(8) refuses the conflict when it starts; mta at load when mail can reach it."""
    settings = load("<test>", "[main]\n" + text).settings.virtual
    assert settings.mailboxLimitProblem() == "virtual_mailbox_limit is limited but message_size_limit is unlimited"


@pytest.mark.parametrize("transport", ["local_transport = virtual", "default_transport = virtual:"])
def test_the_mailbox_limit_rule_applies_to_any_transport_of_type_virtual(transport):
    with pytest.raises(ConfigError, match="virtual_mailbox_limit is limited but message_size_limit is unlimited"):
        load("<test>", f"[main]\nmessage_size_limit = 0\n{transport}\n")


def test_a_virtual_transport_reached_only_by_transport_maps_refuses_to_start():
    from mta.delivery.virtual import VirtualTransport

    settings = load("<test>", "[main]\nmessage_size_limit = 0\ntransport_maps = inline:{ a.example=virtual }\n")
    with pytest.raises(ConfigError, match="virtual_mailbox_limit is limited but message_size_limit is unlimited"):
        VirtualTransport(settings.settings.virtual, mailboxMaps=(), clock=None)



def test_unlimited_mailboxes_allow_any_message_size():
    v = compiled("virtual_mailbox_limit = 0\nmessage_size_limit = 0\n").virtual
    assert v.mailboxLimit == 0
    assert compiled("virtual_mailbox_limit = 20m\nmessage_size_limit = 20m\n").virtual.mailboxLimit == 20 << 20


def test_agent_settings():
    assert compiled("syslog_name = postfix-x\n").agent.syslogName == "postfix-x"


# -- mta-config --check builds them -------------------------------------------------------------


@pytest.mark.parametrize("line, key", [("smtp_bind_address6 = 192.0.2.1", "smtp_bind_address6"),
                                       ("lmtp_lhlo_name = a b", "lmtp_lhlo_name"),
                                       ("virtual_mailbox_base = relative", "virtual_mailbox_base")])
def test_mta_config_check_refuses_bad_transport_settings(capsys, tmp_path, monkeypatch, line, key):
    monkeypatch.delenv("MTA_CONFIG", raising=False)
    path = tmp_path / "mta.ini"
    path.write_text(f"[main]\n{line}\n")
    code = cliConfig.main(["-c", str(path), "--check"])
    out, err = capsys.readouterr()
    assert (code, out) == (1, "")
    assert err.startswith(f"mta-config: error: {path}:2: [main] {key}: "), err


# -- the factories pick their settings -------------------------------------------------------------


class Context:
    """What a Generation gives its transports (clock, tables, store, resolver, listeners, registry)."""

    def __init__(self, resolver=None, transports=None):
        self.clock = Clock()
        self.tables = Tables(self.clock)
        self.store = None
        self.cleanup = None  # the generation's one cleanup, for postmaster transcripts: none sent here
        self.resolver = resolver
        self.transports = transports

    def listenerDescriptions(self):
        return [("smtp", "tcp:port=25:interface=192.0.2.25")]

    def maillogFor(self, program):
        from mta.maillog import MailLogger

        return MailLogger("mta", program)


def factories():
    return {f.transportType: f for f in getPlugins(IDeliveryTransportFactory, mta.plugins)}


def test_each_factory_takes_its_settings_object():
    settings = compiled("smtp_helo_name = smtp.example.org\nlmtp_lhlo_name = lmtp.example.org\n"
                        "virtual_mailbox_base = /srv/vmail\nsyslog_name = postfix-x\n")
    made = {name: f.makeTransport(name, settings, Context()) for name, f in factories().items()}
    assert made["smtp"].settings is settings.smtpClient and made["relay"].settings is settings.smtpClient
    assert made["lmtp"].settings is settings.lmtpClient and made["lmtp"].lmtp and not made["smtp"].lmtp
    assert made["virtual"].settings is settings.virtual and made["virtual"].base == "/srv/vmail"
    for name in ("discard", "error", "retry", "smtp", "lmtp", "virtual"):
        assert made[name].maillog.log.namespace == f"postfix-x/{name}"
        assert IDeliveryTransport.providedBy(made[name])
    assert isinstance(made["virtual"], VirtualTransport) and isinstance(made["smtp"], SMTPTransport)


def test_the_registry_gives_the_factories_the_compiled_settings():
    settings = compiled("syslog_name = postfix-y\n")
    registry = TransportRegistry(settings, Context())
    assert registry("error").maillog.log.namespace == "postfix-y/error"
    registry.check(["smtp", "virtual"])
    assert registry("smtp").settings is settings.smtpClient


def test_the_transport_copies_the_mx_options_from_its_settings():
    s = compiled("myhostname = mx.example.org\ninet_protocols = ipv4\nsmtp_host_lookup = native\n"
                 "smtp_mx_address_limit = 3\nbest_mx_transport = virtual\n"
                 "proxy_interfaces = 198.51.100.1\n").smtpClient
    t = SMTPTransport("smtp", s, Context())
    options = t.mxOptions
    assert (options["families"], options["hostLookup"], options["mxAddressLimit"], options["bestMxTransport"]) == (
        ("ipv4",), ("native",), 3, "virtual")
    assert options["myHostnames"] == {"mx.example.org"}
    assert {str(a) for a in options["myAddresses"]} == {"192.0.2.25", "198.51.100.1"}


# -- best_mx_transport: a fake transport takes the mail --------------------------------------------


@implementer(IDeliveryTransport)
class FakeTransport:
    """Records each request; every recipient sent."""

    def __init__(self):
        self.requests = []

    def deliver(self, request):
        from mta.model import RecipientResult

        self.requests.append(request)
        return succeed([RecipientResult(r.index, "sent", "2.0.0", "delivered") for r in request.recipients])

    def stop(self):
        return succeed(None)


def request(nexthop="example.com"):
    envelope = Envelope(sender="alice@example.org", recipients=(Recipient("bob@example.com"),), arrival_time=0.0)
    rcpts = (DeliveryRecipient(index=0, address="bob@example.com", original="bob@example.com"),)
    return DeliveryRequest("4TbC0hR2x8Zq", "smtp", nexthop, envelope, rcpts, "/nonexistent", 0, 10)


def test_best_mx_transport_hands_the_mail_over():
    resolver = FakeResolver(mx={"example.com": [(10, "mx.example.org")]},
                            hosts={"mx.example.org": ["192.0.2.25"]})
    other = FakeTransport()
    transports = {"virtual": other}
    s = compiled("myhostname = mx.example.org\nbest_mx_transport = virtual:vhosts\n").smtpClient
    t = SMTPTransport("smtp", s, Context(resolver, transports.get))
    results = []
    t.deliver(request()).addBoth(results.append)
    assert [(r.status, r.text) for r in results[0]] == [("sent", "delivered")]
    [passed] = other.requests
    assert (passed.transport, passed.nexthop) == ("virtual", "vhosts")


def test_without_best_mx_transport_mail_that_loops_bounces():
    resolver = FakeResolver(mx={"example.com": [(10, "mx.example.org")]},
                            hosts={"mx.example.org": ["192.0.2.25"]})
    s = compiled("myhostname = mx.example.org\n").smtpClient
    t = SMTPTransport("smtp", s, Context(resolver, {}.get))
    results = []
    t.deliver(request()).addBoth(results.append)
    assert [(r.status, r.dsn, r.text) for r in results[0]] == [
        ("bounced", "5.4.6", "mail for example.com loops back to myself")]


# -- the fakes and the real resolvers provide the interfaces ---------------------------------------


def test_resolvers_provide_their_interfaces():
    assert verifyObject(IDNSResolver, FakeResolver())
    assert verifyObject(IDNSResolver, Resolver(Clock(), servers=("127.0.0.1",)))
    assert verifyObject(IHostResolver, SystemResolver(Clock(), runInThread=lambda f, *a: succeed(None)))
    assert verifyObject(IDeliveryTransport, FakeTransport())
