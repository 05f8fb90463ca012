"""mta.routing.AddressResolver: one trivial-rewrite for the SMTP server's recipient checks and the queue manager.

Each address class is asked of the resolver directly, of the router (what
the queue manager delivers by) and of the recipient policy (what smtpd's
RCPT checks decide), with one shared resolver: the answers must agree.
Then the daemon's wiring (one resolver per generation, from [main], shared
by every listener) and the settings it is built from.
"""

import pytest
from twisted.internet.defer import fail
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock

from mta.config import ConfigError, load, openTables
from mta.config.settings.routing import RecipientCheckSettings, ResolverSettings
from mta.model import Address
from mta.routing import AddressResolver, Resolution, Route, RouteError, Router
from mta.smtpd.policy import RecipientPolicy
from mta.tables import Tables, TableTemporaryError
from mta.testing import resultOf
from tests.dialogs.harness import Dialog

OUTSIDE = "198.51.100.7"

CLASSES = (
    "[main]\nmyhostname = mx.test\n"
    "virtual_alias_maps = inline:{ info@alias.example=u@box.example }\n"
    "virtual_alias_domains = alias.example\n"
    "virtual_mailbox_domains = box.example\n"
    "virtual_mailbox_maps = inline:{ u@box.example=box.example/u/ }\n"
    "relay_domains = relay.example\n"
    "transport_maps = inline:{ special.relay.example=smtp:[gw.example] }\n"
)


class Shared:
    """A configuration's resolver, and the router and recipient policy that share it."""

    def __init__(self, text=CLASSES):
        self.config = load("<t>", text)
        self.tables = Tables(Clock())
        openTables(self.config, self.tables)
        self.resolver = AddressResolver(self.config.settings.resolver, self.tables)
        self.router = Router(self.config.settings.resolver, self.tables, self.resolver)
        self.policy = RecipientPolicy(self.config.listeners[0].settings.recipients, self.resolver, self.tables)


def address(text):
    local, _, domain = text.rpartition("@")
    return Address(local, domain)


# address, class, (transport, nexthop) of the resolver, what the router makes of it, authorized for relaying
ANSWERS = [
    ("u@mx.test", "local", ("error", "5.1.1 local delivery is not available"),
     Route("u@mx.test", "error", "5.1.1 local delivery is not available"), True),
    ("info@alias.example", "alias", ("error", "5.1.1 User unknown in virtual alias table"),
     RouteError("info@alias.example", "bounced", "5.1.1", "User unknown in virtual alias table"), True),
    ("u@box.example", "virtual", ("virtual", "box.example"), Route("u@box.example", "virtual", "box.example"), True),
    ("r@relay.example", "relay", ("relay", "relay.example"), Route("r@relay.example", "relay", "relay.example"), True),
    ("r@sub.relay.example", "relay", ("relay", "sub.relay.example"),
     Route("r@sub.relay.example", "relay", "sub.relay.example"), True),
    ("r@special.relay.example", "relay", ("smtp", "[gw.example]"),
     Route("r@special.relay.example", "smtp", "[gw.example]"), True),
    ("x@elsewhere.example", "default", ("smtp", "elsewhere.example"),
     Route("x@elsewhere.example", "smtp", "elsewhere.example"), False),
]


@pytest.mark.parametrize("text, addressClass, transport, route, authorized", ANSWERS, ids=[a[1] + ":" + a[0] for a in ANSWERS])
def test_each_class_gets_the_same_answer_from_the_resolver_the_router_and_the_smtpd_checks(
    text, addressClass, transport, route, authorized
):
    s = Shared()
    resolution = resultOf(s.resolver.resolve(text))
    assert (resolution.addressClass, (resolution.transport, resolution.nexthop)) == (addressClass, transport)
    assert resolution.final is (addressClass in ("local", "alias", "virtual"))  # RESOLVE_CLASS_FINAL
    assert resultOf(s.resolver.classify(address(text))) == Resolution(text, addressClass)  # as smtpd has it
    assert resultOf(s.router.resolve(text)) == route  # what the queue manager delivers by
    assert resultOf(s.policy.authorizedDestination(address(text))) is authorized  # relay control at RCPT


def test_unlisted_recipients_are_judged_by_the_resolvers_class():
    s = Shared()
    unlisted = {text: resultOf(s.policy.unlistedRecipient(address(text))) for text, *_ in ANSWERS}
    assert unlisted["info@alias.example"] is None  # the alias exists
    assert unlisted["u@box.example"] is None  # the mailbox exists
    assert resultOf(s.policy.unlistedRecipient(address("nobody@alias.example"))).text.endswith(
        "User unknown in virtual alias table")
    assert resultOf(s.policy.unlistedRecipient(address("v@box.example"))).text.endswith(
        "User unknown in virtual mailbox table")
    assert resultOf(s.router.resolve("nobody@alias.example")).text == "User unknown in virtual alias table"
    assert unlisted["x@elsewhere.example"] is None  # class default: nothing to look up


def test_smtpd_and_the_router_ask_the_one_resolver():
    s = Shared()
    asked = []
    real = s.resolver.addressClass

    async def counting(domain):
        asked.append(domain)
        return await real(domain)

    s.resolver.addressClass = counting
    resultOf(s.policy.checkRecipient(s.policy.request(OUTSIDE, recipient=address("r@relay.example"))))
    resultOf(s.router.route("u@box.example"))
    assert asked[0] == "relay.example" and "box.example" in asked
    assert s.policy.resolver is s.router.resolver is s.resolver


@pytest.mark.parametrize(
    "text, routed, literal",
    [
        ("user%other@relay.example", True, False),
        ("other!user@relay.example", True, False),
        ('"user@other"@relay.example', True, False),
        ("u@[192.0.2.1]", False, True),
        ("u@relay.example", False, False),
    ],
)
def test_the_routed_and_literal_flags(text, routed, literal):
    s = Shared()
    resolution = resultOf(s.resolver.resolve(text))
    assert (resolution.routed, resolution.literal) == (routed, literal)
    assert s.resolver.flags(text) == (routed, literal)
    parsed = Address("user@other", "relay.example") if text.startswith('"') else address(text)
    assert s.resolver.flags(parsed) == (routed, literal)  # the parsed form (unquoted local part) agrees
    assert resultOf(s.policy.authorizedDestination(parsed)) is (not routed and not literal)


def test_a_relay_trick_is_refused_before_any_table_is_asked():
    s = Shared()

    def failing(domain):
        raise AssertionError("no lookup for a relay trick")

    s.resolver.addressClass = failing
    assert resultOf(s.policy.authorizedDestination(Address("user%other", "relay.example"))) is False
    assert resultOf(s.policy.authorizedDestination(Address("u", "[192.0.2.1]"))) is False


class FailingTable:
    spec = "failing:"

    def lookup(self, key):
        return fail(TableTemporaryError("down"))


def test_a_domain_table_that_cannot_answer_defers_in_both_callers():
    s = Shared()
    s.resolver.relayDomains._tables = [FailingTable()]
    outcome = resultOf(s.policy.checkRecipient(s.policy.request(OUTSIDE, recipient=address("x@elsewhere.example"))))
    assert (outcome.reply.code, outcome.reply.status, outcome.errorClass) == (451, "4.3.0", "data")
    assert resultOf(s.router.route("x@elsewhere.example")) == [
        RouteError("x@elsewhere.example", "deferred", "4.3.0", "transport table lookup failure")]
    with pytest.raises(TableTemporaryError):
        resultOf(s.resolver.classify("x@elsewhere.example"))


def test_smtpd_does_not_read_transport_maps():
    """classify() (smtpd's question) never consults transport_maps: a failing one does not defer RCPT."""
    s = Shared()
    s.resolver.transportMaps = [FailingTable()]
    outcome = resultOf(s.policy.checkRecipient(s.policy.request(OUTSIDE, recipient=address("r@relay.example"))))
    assert (outcome.reply, outcome.errorClass, outcome.hold) == (None, None, None)
    assert resultOf(s.router.route("r@relay.example"))[0].dsn == "4.3.0"


# -- the daemon: one resolver per generation, from [main], shared by every listener -------------


LISTENERS = (
    "[main]\nmyhostname = mx.test\nqueue_directory = {q}\nrelay_domains = relay.example\n"
    "[listener:smtp]\nendpoint = tcp:port=2525:interface=127.0.0.1\n"
    "[listener:other]\nendpoint = tcp:port=2526:interface=127.0.0.1\n"
    "relay_domains = other.example\nmydestination = other.test\nmynetworks = 198.51.100.0/24\n"
)


def daemon(tmp_path):
    from mta.service import buildService

    config = load("<t>", LISTENERS.format(q=tmp_path / "q"))
    reactor = MemoryReactorClock()
    tables = Tables(reactor)
    openTables(config, tables)
    return config, buildService(config, reactor, tables)


def rcpt(factory, recipient, peer=OUTSIDE):
    d = Dialog(factory, peer=peer)
    d.send("EHLO c\r\n")
    d.send("MAIL FROM:<a@example.org>\r\n")
    return d.send(f"RCPT TO:<{recipient}>\r\n")


def test_the_generation_shares_one_resolver_between_the_router_and_every_listener(tmp_path):
    _, service = daemon(tmp_path)
    generation = service.current
    factories = generation.factories
    assert generation.router.resolver is generation.addressResolver
    assert factories["smtp"].policy.resolver is factories["other"].policy.resolver is generation.addressResolver


def test_a_listener_override_of_the_address_classes_does_not_change_them(tmp_path):
    """As in Postfix (trivial-rewrite reads main.cf only): relay control follows [main] on every listener."""
    config, service = daemon(tmp_path)
    assert config.listeners[1].params["relay_domains"] == ("other.example",)  # the override is there
    smtp, other = service.current.factories["smtp"], service.current.factories["other"]
    assert rcpt(smtp, "u@relay.example") == "250 2.1.5 Ok\r\n"
    assert rcpt(other, "u@relay.example", peer="203.0.113.9") == "250 2.1.5 Ok\r\n"  # [main]'s relay_domains
    assert rcpt(other, "u@other.example", peer="203.0.113.9") == (
        "454 4.7.1 <u@other.example>: Relay access denied\r\n")  # the override names no class
    assert resultOf(service.current.router.resolve("u@other.test")) == Route("u@other.test", "smtp", "other.test")


def test_what_smtpd_reads_itself_stays_per_listener(tmp_path):
    """mynetworks (and the recipient tables, restrictions, codes) are the listener's own, as smtpd -o."""
    _, service = daemon(tmp_path)
    smtp, other = service.current.factories["smtp"], service.current.factories["other"]
    assert rcpt(smtp, "x@elsewhere.example") == "454 4.7.1 <x@elsewhere.example>: Relay access denied\r\n"
    assert rcpt(other, "x@elsewhere.example") == "250 2.1.5 Ok\r\n"  # 198.51.100.7 is in this listener's mynetworks


# -- the settings ----------------------------------------------------------------------------------


def test_resolver_settings_come_from_main_and_split_the_transports():
    config = load("/etc/mta/mta.ini", LISTENERS.format(q="/tmp/q"))
    settings = config.settings.resolver
    assert isinstance(settings, ResolverSettings)
    assert settings.relayDomains == ("relay.example",)
    assert settings.transport("default") == ("smtp", "")
    assert settings.transport("local") == ("error", "5.1.1 local delivery is not available")
    assert not hasattr(config.listeners[1].settings, "resolver")  # never per listener
    assert config.listeners[1].settings.recipients.mynetworks[0].compressed == "198.51.100.0/24"
    assert config.listeners[0].settings.recipients.mynetworks != config.listeners[1].settings.recipients.mynetworks


def test_transport_settings_with_a_nexthop():
    settings = load("<t>", "[main]\nrelay_transport = smtp:[relay.example]:587\nvirtual_transport = lmtp:unix:/run/l\n"
                    ).settings.resolver
    assert settings.transport("relay") == ("smtp", "[relay.example]:587")
    assert settings.transport("virtual") == ("lmtp", "unix:/run/l")
    assert settings.transportNames() == ["error", "smtp"]  # no virtual_mailbox_domains: lmtp gets no mail
    withDomains = load("<t>", "[main]\nvirtual_transport = lmtp:unix:/run/l\nvirtual_mailbox_domains = v.example\n"
                       ).settings.resolver
    assert withDomains.transportNames() == ["error", "lmtp", "relay", "smtp"]


def test_a_message_size_limit_above_the_virtual_mailbox_limit_starts_when_virtual_gets_no_mail(tmp_path):
    from mta.generation import configuredTransports

    config = load("<t>", "[main]\nmessage_size_limit = 62914560\n")  # virtual_mailbox_limit stays 51200000
    assert "virtual" not in configuredTransports(config)


def test_recipient_check_settings_hold_the_parsed_restriction_lists():
    config = load("<t>", "[main]\nsmtpd_recipient_restrictions = Permit_Mynetworks, "
                  "check_recipient_access inline:{ a=OK }, reject_unauth_destination\n")
    settings = config.listeners[0].settings.recipients
    assert isinstance(settings, RecipientCheckSettings)
    names = [name for name, _ in settings.recipientRestrictions]
    assert names == ["permit_mynetworks", "check_recipient_access", "reject_unauth_destination"]
    assert str(settings.recipientRestrictions[1][1]) == "inline:{ a=OK }"
    assert settings.etrnRestrictions == ()
    assert settings.unknownCode("virtual") == 550 and settings.relayRejectCode == 554


def test_a_listeners_bad_restriction_list_fails_at_load_with_its_line():
    text = ("[main]\nmyhostname = mx.test\n"
            "[listener:smtp]\nendpoint = tcp:port=2525:interface=127.0.0.1\n"
            "smtpd_recipient_restrictions = permit_mynetworks, check_client_access\n")
    with pytest.raises(ConfigError) as e:
        load("/etc/mta/mta.ini", text)
    assert str(e.value).startswith("/etc/mta/mta.ini:5: [listener:smtp] smtpd_recipient_restrictions: ")
    assert "check_client_access needs a table argument" in str(e.value)


def test_the_restriction_names_of_the_configuration_are_those_implemented():
    from mta.config.types import RESTRICTION_NAMES
    from mta.smtpd.restrictions import RESTRICTIONS

    assert {name: needsTable for name, (needsTable, _) in RESTRICTIONS.items()} == RESTRICTION_NAMES
