"""The rest of smtp(8)'s controls (mta.delivery.smtpquirks and its hooks): scripted servers, Clock, no sockets."""

import attrs
import pytest
from twisted.internet.defer import fail, succeed
from twisted.internet.task import Clock

from mta.delivery.smtpclient import SMTPClientSession
from mta.delivery.smtpquirks import isPixGreeting
from mta.delivery.smtpreply import ReplyParser
from mta.tables import Tables, TableTemporaryError
from tests.unit.test_smtpclient import (
    EHLO_ALL,
    NAMADDR,
    RecordingTransport,
    Session,
    clientSettings,
    handshake,
    makeRequest,
)

PIX_GREETING = "220 ******************************\r\n"
EHLO_PLAIN = "250-mx.example.net\r\n250-PIPELINING\r\n250-DSN\r\n250-SIZE 1000000\r\n250 8BITMIME\r\n"


class Lines(list):
    def emit(self, text, queue_id=None, level=None, **kw):
        self.append(text)


class Controlled(Session):
    """A Session with a mail log that keeps its lines, and the generation's Tables."""

    def __init__(self, lmtp=False, tables=None, now=0.0, **params):
        self.clock = Clock()
        self.clock.advance(now)  # the time of the connection (a message arrives at 0)
        self.settings = clientSettings(lmtp, **params)
        self.log = Lines()
        self.protocol = SMTPClientSession(self.settings, self.clock, self.log)
        self.protocol.tables = tables if tables is not None else Tables(self.clock)
        self.transport = RecordingTransport()
        self.protocol.makeConnection(self.transport)
        self.outcomes = []


def finishMail(s, ehlo=EHLO_PLAIN):
    """From the EHLO reply to the end: the commands of the transaction."""
    s.reply(ehlo)
    sent = s.sent()
    s.reply("250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n354 go\r\n")
    sent += s.sent()
    s.reply("250 2.0.0 Ok: queued\r\n")
    return sent


# -- smtp_discard_ehlo_keyword_address_maps ----------------------------------------------------------


def test_the_address_map_replaces_the_keyword_list_for_that_server():
    s = Controlled(smtp_discard_ehlo_keywords="size",
                   smtp_discard_ehlo_keyword_address_maps="inline:{ {192.0.2.1 = pipelining, dsn} }")
    handshake(s, ehlo=EHLO_PLAIN)
    assert set(s.protocol.extensions) == {"SIZE", "8BITMIME"}  # SIZE kept: the map's list replaced the default
    assert s.sent().startswith("MAIL FROM:<alice@example.org> SIZE=")  # not pipelined: PIPELINING discarded
    assert "discarding EHLO keywords: DSN PIPELINING" in s.log


def test_another_address_gets_smtp_discard_ehlo_keywords():
    s = Controlled(smtp_discard_ehlo_keywords="size",
                   smtp_discard_ehlo_keyword_address_maps="inline:{ {192.0.2.99 = pipelining} }")
    handshake(s, ehlo=EHLO_PLAIN)
    assert set(s.protocol.extensions) == {"PIPELINING", "DSN", "8BITMIME"}
    assert "discarding EHLO keywords: SIZE" in s.log


def test_silent_discard_keeps_the_log_quiet():
    s = Controlled(smtp_discard_ehlo_keyword_address_maps="inline:{ {192.0.2.1 = silent-discard dsn} }")
    handshake(s, ehlo=EHLO_PLAIN)
    assert "DSN" not in s.protocol.extensions
    assert not [line for line in s.log if "discarding" in line]


def test_the_lmtp_twin():
    s = Controlled(lmtp=True, lmtp_discard_lhlo_keyword_address_maps="inline:{ {192.0.2.1 = pipelining} }")
    s.deliver()
    s.reply("220 mx LMTP\r\n")
    assert s.sent() == "LHLO client.example.org\r\n"
    s.reply(EHLO_PLAIN)
    assert "PIPELINING" not in s.protocol.extensions


class BrokenTables:
    def open(self, spec):
        return self

    def lookup(self, key):
        return fail(TableTemporaryError("the table is down"))


def test_a_table_that_cannot_answer_defers_with_a_local_data_error():
    s = Controlled(tables=BrokenTables(), smtp_discard_ehlo_keyword_address_maps="inline:{ {x = y} }")
    s.deliver()
    s.reply("220 mx.example.net ESMTP\r\n")
    s.sent()
    s.reply(EHLO_PLAIN)
    [result] = s.outcome.results
    assert (result.status, result.dsn) == ("deferred", "4.3.0")
    assert result.text == f"local data error while talking to {NAMADDR}"
    assert s.outcome.tryNextHost
    assert "warning: smtp_discard_ehlo_keyword_address_maps map lookup error for 192.0.2.1" in s.log
    assert "MAIL" not in s.sent()


def test_the_data_class_is_noted_in_the_transcript():
    from mta.transcript import Transcript

    s = Controlled(tables=BrokenTables(), smtp_discard_ehlo_keyword_address_maps="inline:{ {x = y} }")
    s.protocol.transcript = Transcript()
    s.deliver()
    s.reply("220 mx.example.net ESMTP\r\n")
    s.reply(EHLO_PLAIN)
    assert s.protocol.transcript.errors == {"data"}


# -- the PIX workarounds ------------------------------------------------------------------------------


@pytest.mark.parametrize("greeting, pix", [
    ("220 ****************\r\n", True),
    ("220 ** ** **\r\n", True),
    ("220\r\n", True),  # Postfix's test: only "2", "0", space and "*" (the code counts)
    ("220 mx.example.net ESMTP\r\n", False),
    ("220-*****\r\n220 *****\r\n", False),  # the "-" of a continuation line is not in the set
    ("220 ***** 1\r\n", False),
])
def test_the_pix_greeting(greeting, pix):
    [reply] = ReplyParser(2048).feed(greeting.encode())
    assert isPixGreeting(reply) is pix


def test_a_pix_greeting_sends_helo_and_the_fresh_message_gets_no_delay():
    s = Controlled()
    s.deliver()
    s.reply(PIX_GREETING)
    assert s.sent() == "HELO client.example.org\r\n"
    assert s.log == [f"enabling PIX workarounds: disable_esmtp for {NAMADDR}:25"]
    s.reply("250 mx.example.net\r\n")
    assert s.sent().startswith("MAIL FROM:<alice@example.org>\r\n")  # no ESMTP: no SIZE, no pipelining
    s.reply("250 2.1.0 Ok\r\n")
    s.sent()
    s.reply("250 2.1.5 Ok\r\n")
    s.sent()
    s.reply("354 go\r\n")
    assert s.sent().endswith("\r\n.\r\n")  # queued for less than 500s: no delay


def transaction(s, request):
    """Deliver C{request} after a PIX greeting up to the content; the bytes sent after 354."""
    s.deliver(request)
    s.reply(PIX_GREETING)
    s.sent()
    s.reply("250 mx.example.net\r\n")
    for reply in ("250 2.1.0 Ok\r\n", "250 2.1.5 Ok\r\n", "354 go\r\n"):
        s.sent()
        s.reply(reply)
    return s.sent()


def test_delay_dotcrlf_for_a_message_queued_longer_than_the_threshold():
    s = Controlled(now=1000.0)  # the message arrived at 0: queued for 1000s > 500s
    content = transaction(s, makeRequest())
    assert s.log == [f"enabling PIX workarounds: disable_esmtp delay_dotcrlf for {NAMADDR}:25"]
    assert content.endswith("Hello\r\n..dot line\r\n") and not content.endswith(".\r\n.\r\n")
    s.clock.advance(9.9)
    assert s.sent() == ""  # smtp_pix_workaround_delay_time is 10s
    s.clock.advance(0.1)
    assert s.sent() == ".\r\n"
    s.reply("250 2.0.0 Ok: queued\r\n")
    assert s.outcome.results[0].status == "sent"


def test_the_delay_and_threshold_times_are_read():
    s = Controlled(smtp_pix_workaround_delay_time="3s", smtp_pix_workaround_threshold_time=0)
    transaction(s, makeRequest())  # threshold 0: from the first attempt
    s.clock.advance(2.9)
    assert s.sent() == ""
    s.clock.advance(0.1)
    assert s.sent() == ".\r\n"


def test_a_connection_lost_during_the_delay_may_be_retried():
    s = Controlled(smtp_pix_workaround_threshold_time=0)
    transaction(s, makeRequest())
    s.lose()
    s.clock.advance(10)
    assert s.sent() == ""
    [result] = s.outcome.results
    assert result.status == "deferred" and s.outcome.tryNextHost  # the "." never went out


def test_the_pix_map_replaces_the_workarounds_for_that_server():
    s = Controlled(smtp_pix_workaround_threshold_time=0,
                   smtp_pix_workaround_maps="inline:{ {192.0.2.1 = delay_dotcrlf, no_such_thing} }")
    s.deliver()
    s.reply(PIX_GREETING)
    assert s.sent() == "EHLO client.example.org\r\n"  # disable_esmtp is not in the map's list
    assert s.log == [f"enabling PIX workarounds: delay_dotcrlf for {NAMADDR}:25"]
    assert s.protocol.pixFeatures == {"delay_dotcrlf"}


def test_no_workarounds_when_none_are_configured():
    s = Controlled(smtp_pix_workarounds="")
    s.deliver()
    s.reply(PIX_GREETING)
    assert s.sent() == "EHLO client.example.org\r\n"
    assert s.log == [] and s.protocol.pixFeatures == frozenset()


def test_an_ordinary_greeting_turns_nothing_on():
    s = Controlled(smtp_pix_workaround_threshold_time=0)
    handshake(s, ehlo=EHLO_PLAIN)
    assert s.protocol.pixFeatures == frozenset() and s.log == []


def test_a_pix_map_that_cannot_answer_is_ignored():
    s = Controlled(tables=BrokenTables(), smtp_pix_workaround_maps="inline:{ {x = y} }")
    s.deliver()
    s.reply(PIX_GREETING)
    assert s.sent() == "HELO client.example.org\r\n"  # smtp_pix_workarounds: best effort, as Postfix


def test_an_lmtp_session_still_sends_lhlo():
    s = Controlled(lmtp=True)
    s.deliver()
    s.reply(PIX_GREETING)
    assert s.sent() == "LHLO client.example.org\r\n"


# -- smtp_skip_4xx_greeting --------------------------------------------------------------------------


@pytest.mark.parametrize("skip, nextHost", [(True, True), (False, False)])
def test_a_4xx_greeting(skip, nextHost):
    s = Controlled(smtp_skip_4xx_greeting=skip)
    s.deliver()
    s.reply("421 4.3.2 try later\r\n")
    [result] = s.outcome.results
    assert (result.status, result.dsn) == ("deferred", "4.3.2")
    assert result.text == f"host {NAMADDR} refused to talk to me: 421 4.3.2 try later"
    assert s.outcome.tryNextHost is nextHost


def test_skip_4xx_greeting_no_leaves_a_5xx_greeting_to_smtp_skip_5xx_greeting():
    s = Controlled(smtp_skip_4xx_greeting=False)
    s.deliver()
    s.reply("554 5.7.1 go away\r\n")
    assert s.outcome.results[0].dsn == "4.7.1" and s.outcome.tryNextHost


# -- smtp_tls_block_early_mail_reply -----------------------------------------------------------------


def inTls(s, ehloAndMore):
    """As if STARTTLS had been done: the session is inside TLS when the EHLO reply arrives."""
    s.deliver()
    s.reply("220 mx.example.net ESMTP\r\n")
    s.sent()
    s.protocol.tlsActive = True
    s.reply(ehloAndMore)


def test_input_waiting_before_mail_inside_tls_defers():
    s = Controlled(smtp_tls_block_early_mail_reply=True)
    inTls(s, EHLO_PLAIN + "250 2.1.0 O")  # the start of a reply to a MAIL nobody sent yet
    [result] = s.outcome.results
    assert (result.status, result.dsn, result.text) == ("deferred", "4.7.0", "unexpected server message")
    assert f"warning: server {NAMADDR} violates smtp_tls_block_early_mail_reply policy" in s.log
    assert "MAIL" not in s.sent() and s.closed


def test_without_the_parameter_the_partial_line_waits():
    s = Controlled()
    inTls(s, EHLO_PLAIN + "250 2.1.0 O")
    assert s.sent().startswith("MAIL FROM:")
    assert s.outcomes == []


def test_the_check_is_for_tls_sessions_only():
    s = Controlled(smtp_tls_block_early_mail_reply=True)
    handshake(s, ehlo=EHLO_PLAIN + "250 2.1.0 O")
    assert s.sent().startswith("MAIL FROM:")


def test_a_quiet_server_passes():
    s = Controlled(smtp_tls_block_early_mail_reply=True)
    inTls(s, EHLO_PLAIN)
    assert s.sent().startswith("MAIL FROM:")


# -- the transport: lmtp_cache_connection, smtp_cname_overrides_servername ---------------------------


def test_lmtp_cache_connection(tmp_path):
    from tests.unit.test_smtp_notices import Client, converse

    for cache, cached in ((True, True), (False, False)):
        c = Client(tmp_path, f"lmtp_cache_connection = {'yes' if cache else 'no'}\n", lmtp=True)
        assert c.transport._cacheable("inet:[192.0.2.1]:24") is cached
        c.deliver(nexthop="inet:[192.0.2.1]:24")
        protocol, server = c.accept()
        replies = ["220 mx LMTP\r\n", EHLO_ALL, "250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n354 go\r\n", "250 2.0.0 Ok\r\n"]
        sent = converse(protocol, server, replies + ([] if cached else ["221 2.0.0 Bye\r\n"]))
        assert [r.status for r in c.results[0]] == ["sent"]
        assert ("QUIT" in "".join(sent)) is not cached
        assert (len(c.transport.cache) == 1) is cached


def test_the_smtp_cache_is_not_affected(tmp_path):
    from tests.unit.test_smtp_notices import Client

    c = Client(tmp_path, "lmtp_cache_connection = no\n")
    assert c.transport._cacheable("[192.0.2.1]:25")


class CnameResolver:
    """MX and addresses for example.net; mx.example.net is a CNAME of real.example.com (one more link)."""

    def __init__(self):
        self.cnames = {"mx.example.net": "alias.example.org", "alias.example.org": "real.example.com"}
        self.asked = []

    def lookupMX(self, domain):
        return succeed([(10, "mx.example.net")])

    def lookupAddresses(self, name, families=("ipv4", "ipv6"), preference="any"):
        return succeed(["192.0.2.1"])

    def lookupRecords(self, name, rdtype):
        import dns.name
        import dns.rdata
        import dns.rdataclass
        import dns.rdatatype

        self.asked.append((name, rdtype))
        target = self.cnames.get(name)
        if target is None:
            return succeed([])
        return succeed([dns.rdata.from_text(dns.rdataclass.IN, dns.rdatatype.CNAME, target + ".")])


@pytest.mark.parametrize("override, name", [(False, "mx.example.net"), (True, "real.example.com")])
def test_cname_overrides_servername(tmp_path, override, name):
    from tests.unit.test_smtp_notices import Client, converse

    c = Client(tmp_path, f"smtp_cname_overrides_servername = {'yes' if override else 'no'}\n")
    resolver = c.transport.resolver = CnameResolver()
    c.deliver(nexthop="example.net")
    protocol, server = c.accept()
    converse(protocol, server, ["220 mx ESMTP\r\n", EHLO_ALL, "250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n354 go\r\n",
                                "250 2.0.0 Ok\r\n"])
    [result] = c.results[0]
    assert result.status == "sent" and result.relay == f"{name}[192.0.2.1]:25"
    assert protocol._wrappedProtocol.host.name == name  # the name the TLS checks use (RemoteHost)
    assert bool(resolver.asked) is override


def test_no_cname_lookup_for_an_address(tmp_path):
    from tests.unit.test_smtp_notices import Client

    c = Client(tmp_path, "smtp_cname_overrides_servername = yes\n")
    resolver = c.transport.resolver = CnameResolver()
    c.deliver(nexthop="[192.0.2.1]:25")
    c.accept()
    assert resolver.asked == []


def test_request_arrival_is_used_not_the_session_start():
    # the threshold compares the message's arrival time with the clock at the greeting
    s = Controlled(now=600.0)
    request = makeRequest()
    request = attrs.evolve(request, envelope=attrs.evolve(request.envelope, arrival_time=300.0))
    transaction(s, request)  # queued 300s < 500s
    assert s.protocol.pixFeatures == {"disable_esmtp"}
