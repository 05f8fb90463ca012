"""DNS block and allow lists in smtpd_recipient_restrictions (mta.smtpd.dnsxl), with a fake DNS."""

import dns.rdata
import pytest
from twisted.internet.defer import fail, succeed

from mta.delivery.dns import DNSError
from mta.smtpd.dnsxl import clientQuery, domainQuery, expandTemplate
from mta.smtpd.peername import HostsFile
from mta.testing import FakeQueueStore, serverFactory
from tests.dialogs.harness import Dialog, MailLog

LISTED = "192.0.2.66"
CLEAN = "192.0.2.1"
OUTSIDE = "198.51.100.1"


class ZoneDNS:
    """(name, type) -> record texts; a DNSError value is raised; anything else: NXDOMAIN."""

    def __init__(self, records):
        self.records = records
        self.queries = []

    def lookupRecords(self, name, rdtype):
        self.queries.append((name, rdtype))
        value = self.records.get((name, rdtype))
        if value is None:
            return fail(DNSError(f"Host or domain name not found. Name service error for name={name} type={rdtype}: "
                                 "Host not found", temporary=False, notFound=True))
        if isinstance(value, Exception):
            return fail(value)
        return succeed([dns.rdata.from_text("IN", rdtype, text) for text in value])

    def lookupAddresses(self, name, families=("ipv4",), preference="any"):
        return fail(DNSError("not found", temporary=False, notFound=True))


def zone():
    return ZoneDNS({
        ("66.2.0.192.bl.example", "A"): ["127.0.0.2"],
        ("66.2.0.192.bl.example", "TXT"): ['"listed for spam"', '" see http://bl.example/66"'],
        ("66.2.0.192.policy.example", "A"): ["127.0.0.10"],  # a policy listing, outside 127.0.0.[2..9]
        ("1.2.0.192.wl.example", "A"): ["127.0.5.1"],
        ("1.2.0.192.down.example", "A"): DNSError("Host not found, try again", temporary=True),
        ("spam.example.dbl.example", "A"): ["127.0.1.2"],
        ("badhelo.example.dbl.example", "A"): ["127.0.1.2"],
    })


def factory(restrictions, tmp_path, extra="", server=None):
    f = serverFactory(f"smtpd_recipient_restrictions = {restrictions}\nsmtpd_relay_restrictions =\n{extra}", store=FakeQueueStore(),
                      dns=server or zone())
    (tmp_path / "hosts").write_text("")
    f.peerNames.hosts = HostsFile(f.clock, str(tmp_path / "hosts"))
    return f


def rcpt(f, peer, sender="a@example.org", recipient="b@mx.test", helo="c.test"):
    d = Dialog(f, peer=peer)
    d.send(f"EHLO {helo}\r\n")
    d.send(f"MAIL FROM:<{sender}>\r\n")
    return d.send(f"RCPT TO:<{recipient}>\r\n")


def test_query_names():
    assert clientQuery("192.0.2.66", "bl.example") == "66.2.0.192.bl.example"
    assert clientQuery("::ffff:192.0.2.66", "bl.example") == "66.2.0.192.bl.example"
    assert clientQuery("2001:db8::1", "bl.example") == "1." + "0." * 23 + "8.b.d.0.1.0.0.2.bl.example"
    assert domainQuery("a@Spam.Example", "dbl.example") == "spam.example.dbl.example"
    assert domainQuery("host.example", "dbl.example") == "host.example.dbl.example"
    for what in ("a@[192.0.2.1]", "a@", "1.2.3.4", "bad_name!.example", "x@host.123"):
        assert domainQuery(what, "dbl.example") is None, what
    assert domainQuery("a@b\u00fccher.example", "dbl.example") == "xn--bcher-kva.example.dbl.example"


def test_templates():
    values = {"rbl_code": "554", "rbl_reason": "", "x": "a\x01b"}
    assert expandTemplate("$rbl_code ok${rbl_reason?; $rbl_reason}${rbl_reason:.} $$ $(x) ${x}", values) == (
        "554 ok. $ a_b a_b")
    for bad in ("$nope", "${nope}", "${x", "$ x", "${x!y}"):
        with pytest.raises(ValueError):
            expandTemplate(bad, values)


def test_reject_rbl_client_with_postfix_default_reply(tmp_path):
    f = factory("reject_rbl_client bl.example, permit", tmp_path)
    with MailLog() as log:
        assert rcpt(f, LISTED) == (
            f"554 5.7.1 Service unavailable; Client host [{LISTED}] blocked using bl.example; "
            "listed for spam see http://bl.example/66\r\n")
    assert log.matching(f"NOQUEUE: reject: RCPT from unknown[{LISTED}]: 554 5.7.1 Service unavailable; Client host")
    assert rcpt(f, CLEAN) == "250 2.1.5 Ok\r\n"


def test_the_pattern_picks_the_listings_that_count(tmp_path):
    f = factory("reject_rbl_client policy.example=127.0.0.[2..9], reject_rbl_client bl.example=127.0.0.[3;4], permit",
                tmp_path)
    assert rcpt(f, LISTED) == "250 2.1.5 Ok\r\n"  # 127.0.0.10 and 127.0.0.2: neither matches
    f = factory("reject_rbl_client policy.example=127.0.0.[2;10], permit", tmp_path)
    assert rcpt(f, LISTED).startswith("554 5.7.1 Service unavailable; Client host [192.0.2.66] blocked using "
                                      "policy.example\r\n")


def test_reply_templates_from_rbl_reply_maps_and_maps_rbl_reject_code(tmp_path):
    maps = tmp_path / "rbl_replies"
    maps.write_text("bl.example $rbl_code 4.7.9 Listed by $rbl_domain ($rbl_what via $helo_name, $sender)\n"
                    "broken.example 250 not a refusal\n")
    f = factory("reject_rbl_client bl.example, permit", tmp_path,
                f"rbl_reply_maps = texthash:{maps}\nmaps_rbl_reject_code = 450\n")
    assert rcpt(f, LISTED) == f"450 4.7.9 Listed by bl.example ({LISTED} via c.test, a@example.org)\r\n"


def test_a_bad_template_falls_back_to_the_default_with_a_warning(tmp_path):
    maps = tmp_path / "rbl_replies"
    maps.write_text("bl.example $no_such_name\n")
    f = factory("reject_rbl_client bl.example, permit", tmp_path, f"rbl_reply_maps = texthash:{maps}\n")
    with MailLog() as log:
        assert rcpt(f, LISTED).startswith("554 5.7.1 Service unavailable; Client host [192.0.2.66]")
    assert log.matching("warning: bad rbl reply template for domain bl.example: $no_such_name")


def test_a_list_that_is_down_never_refuses_mail(tmp_path):
    f = factory("reject_rbl_client down.example, permit", tmp_path)
    with MailLog() as log:
        assert rcpt(f, CLEAN) == "250 2.1.5 Ok\r\n"
    assert log.matching("warning: 1.2.0.192.down.example: RBL lookup error: Host not found, try again")


def test_permit_dnswl_client(tmp_path):
    f = factory("permit_dnswl_client wl.example, reject", tmp_path)
    assert rcpt(f, CLEAN) == "250 2.1.5 Ok\r\n"
    assert rcpt(f, OUTSIDE).startswith("554 5.7.1 <b@mx.test>: Recipient address rejected: Access denied")
    # An allow list never opens the relay: a recipient that is no authorized destination passes on.
    assert rcpt(f, CLEAN, recipient="x@elsewhere.example").startswith(
        "554 5.7.1 <x@elsewhere.example>: Recipient address rejected: Access denied")


def test_an_allow_list_that_is_down_defers_what_would_be_rejected(tmp_path):
    f = factory("permit_dnswl_client down.example, reject_rbl_client bl.example, reject", tmp_path)
    assert rcpt(f, CLEAN) == f"450 4.7.1 <{CLEAN}>: Client host rejected: Service unavailable\r\n"
    f = factory("permit_dnswl_client down.example, permit", tmp_path)
    assert rcpt(f, CLEAN) == "250 2.1.5 Ok\r\n"  # not a reject: the deferral is dropped


def test_rhsbl_sender_helo_and_recipient(tmp_path):
    f = factory("reject_rhsbl_sender dbl.example, reject_rhsbl_helo dbl.example, "
                "reject_rhsbl_recipient dbl.example, permit", tmp_path)
    assert rcpt(f, CLEAN, sender="x@spam.example") == (
        "554 5.7.1 Service unavailable; Sender address [x@spam.example] blocked using dbl.example\r\n")
    assert rcpt(f, CLEAN, helo="badhelo.example") == (
        "554 5.7.1 Service unavailable; Helo command [badhelo.example] blocked using dbl.example\r\n")
    assert rcpt(f, CLEAN, sender="", recipient="y@spam.example").startswith(
        "554 5.7.1 Service unavailable; Recipient address [y@spam.example]")
    assert rcpt(f, CLEAN) == "250 2.1.5 Ok\r\n"


def test_rhsbl_client_needs_a_verified_name(tmp_path):
    server = zone()
    f = factory("reject_rhsbl_client dbl.example, reject_rhsbl_reverse_client dbl.example, permit", tmp_path,
                server=server)
    assert rcpt(f, CLEAN) == "250 2.1.5 Ok\r\n"  # unknown: nothing to ask
    assert not [q for q in server.queries if q[0].endswith("dbl.example")]


def test_a_bad_list_argument_is_a_configuration_error():
    from mta.config import ConfigError, load

    for text in ("reject_rbl_client", "reject_rbl_client bl.example=127.0.0", "reject_rbl_client bl..example"):
        with pytest.raises(ConfigError, match="smtpd_recipient_restrictions"):
            load("<t>", f"[main]\nsmtpd_recipient_restrictions = {text}\n").listeners[0].settings


def test_default_rbl_reply_is_a_template_not_expanded_at_load(tmp_path):
    f = factory("reject_rbl_client bl.example, permit", tmp_path,
                "default_rbl_reply = $rbl_code 5.7.0 go away, $client_address (${rbl_reason?why: $rbl_reason})\n")
    assert rcpt(f, LISTED) == f"554 5.7.0 go away, {LISTED} (why: listed for spam see http://bl.example/66)\r\n"


def test_answers_are_kept_a_minute_as_postfixs_smtpd_keeps_them(tmp_path):
    server = zone()
    f = factory("reject_rbl_client bl.example, permit", tmp_path, server=server)
    for _ in range(3):
        assert rcpt(f, CLEAN) == "250 2.1.5 Ok\r\n"  # NXDOMAIN: not listed
        assert rcpt(f, LISTED).startswith("554 5.7.1 Service unavailable")
    asked = [q for q in server.queries if q[1] == "A" and q[0].endswith(".bl.example")]
    assert sorted(asked) == [("1.2.0.192.bl.example", "A"), ("66.2.0.192.bl.example", "A")]
    f.clock.advance(61)  # past RESULT_CACHE_SECONDS: asked again
    assert rcpt(f, CLEAN) == "250 2.1.5 Ok\r\n"
    assert [q for q in server.queries if q == ("1.2.0.192.bl.example", "A")] == [("1.2.0.192.bl.example", "A")] * 2
    server.records[("1.2.0.192.down.example", "A")] = DNSError("try again", temporary=True)
    f = factory("reject_rbl_client down.example, permit", tmp_path, server=server)
    with MailLog():
        rcpt(f, CLEAN)
        rcpt(f, CLEAN)
    assert server.queries.count(("1.2.0.192.down.example", "A")) == 2  # a failure is never kept
