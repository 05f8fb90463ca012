"""mta.smtpd.postscreen: the screen before smtpd, with a Clock, StringTransport and a fake DNS list."""

import dns.rdata
import pytest
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from mta.config import ConfigError, load
from mta.config.settings.postscreen import parseSite
from mta.delivery.dns import DNSError
from mta.smtpd.postscreen import PostscreenServer
from mta.smtpd.psengine import formatDelay
from mta.smtpd.protocol import SMTPServer
from mta.smtpd.pscache import PostscreenCache
from mta.testing import FakeQueueStore, serverFactory


class FakeDNS:
    """A records from a dict (query name -> list of addresses, or a DNSError, or "hang"); TTLs from another."""

    def __init__(self, answers=None, ttls=None):
        self.answers = answers or {}
        self.ttls = ttls or {}
        self.queries = []

    def lookupRecords(self, name, rdtype):
        self.queries.append(name)
        value = self.answers.get(name)
        if value is None:
            return fail(DNSError(f"Host or domain name not found. Name service error for name={name}",
                                 temporary=False, notFound=True))
        if value == "hang":
            return Deferred()
        if isinstance(value, Exception):
            return fail(value)
        return succeed([dns.rdata.from_text("IN", "A", a) for a in value])

    def cachedTTL(self, name, rdtype):
        return self.ttls.get(name)


class Lines:
    def __init__(self):
        self.lines = []

    def emit(self, line, queue_id=None, level=None, **kw):
        self.lines.append(line)

    def text(self):
        return "\n".join(self.lines)


BASE = "postscreen_enable = yes\n"


class Screen:
    """A listener factory with the screen on, its clock, mail log and fake DNS."""

    def __init__(self, main="", dnsServer=None, store=None):
        self.clock = Clock()
        self.clock.advance(1_000_000)
        self.dns = dnsServer or FakeDNS()
        self.store = store or FakeQueueStore()
        if "postscreen_access_list" not in main:
            main = "postscreen_access_list =\n" + main
        self.factory = serverFactory(BASE + main, clock=self.clock, store=self.store, dns=self.dns)
        self.log = Lines()
        screen = self.factory.postscreen
        screen.maillog = screen.dnsbl.maillog = self.log

    def connect(self, address="192.0.2.1", port=4321):
        family = IPv6Address if ":" in address else IPv4Address
        transport = StringTransport(peerAddress=family("TCP", address, port),
                                    hostAddress=family("TCP", "::1" if ":" in address else "192.0.2.25", 25))
        protocol = self.factory.buildProtocol(None)
        transport.protocol = protocol
        protocol.makeConnection(transport)
        return transport

    def send(self, transport, data):
        transport.protocol.dataReceived(data)

    def hangup(self, transport):
        transport.protocol.connectionLost(None)


def lines(transport):
    return transport.value().decode().split("\r\n")[:-1]


# -- settings -------------------------------------------------------------


def test_sites_syntax():
    site = parseSite("zen.example=127.0.0.[2..11]*3")
    assert (site.spec.domain, site.spec.pattern, site.weight) == ("zen.example", "127.0.0.[2..11]", 3)
    assert parseSite("wl.example*-2").weight == -2
    assert parseSite("bl.example").weight == 1
    with pytest.raises(ValueError):
        parseSite("bl.example*x")


@pytest.mark.parametrize("line", ["postscreen_dnsbl_sites = bad..domain", "postscreen_dnsbl_sites = a.example*1.5",
                                  "postscreen_access_list = permit_everyone", "postscreen_cache_map = hash:/x",
                                  "postscreen_denylist_action = maybe",
                                  "postscreen_dnsbl_min_ttl = 2h\npostscreen_dnsbl_max_ttl = 1h"])
def test_bad_settings_fail_at_load(line):
    with pytest.raises(ConfigError):
        load("<test>", f"[main]\n{line}\n")


def test_older_names_and_listener_override():
    config = load("<test>", "[main]\npostscreen_blacklist_action = drop\npostscreen_dnsbl_whitelist_threshold = -2\n"
                            "[listener:mx]\nendpoint = tcp:2525\npostscreen_enable = yes\n"
                            "[listener:sub]\nendpoint = tcp:2587\n")
    mx, sub = (listener.settings.postscreen for listener in config.listeners)
    assert (mx.enabled, sub.enabled) == (True, False)
    assert mx.denylistAction == "drop" and mx.dnsblAllowlistThreshold == -2
    assert mx.cacheMap == ("memory", None)


def test_format_delay():
    assert [formatDelay(t) for t in (0, 0.1, 0.123, 1.25, 6, 12.7)] == ["0", "0.1", "0.12", "1.2", "6", "12"]


# -- the hand-over ----------------------------------------------------------


def test_off_by_default_and_the_in_session_greet_test_still_works():
    clock = Clock()
    factory = serverFactory("postscreen_greet_wait = 2s\npostscreen_greet_action = drop\n", clock=clock)
    assert factory.postscreen is None
    transport = StringTransport(peerAddress=IPv4Address("TCP", "192.0.2.1", 4321))
    protocol = factory.buildProtocol(None)
    assert isinstance(protocol, SMTPServer)
    protocol.makeConnection(transport)
    protocol.dataReceived(b"EHLO early\r\n")
    clock.advance(2)
    assert lines(transport) == ["521 5.5.1 Protocol error"]


def test_clean_client_passes_and_speaks_smtp_to_the_real_session():
    s = Screen("postscreen_greet_wait = 6s\n")
    t = s.connect()
    assert isinstance(t.protocol, PostscreenServer)
    assert lines(t) == ["220-mx.test ESMTP mta"]
    s.clock.advance(5.9)
    assert lines(t) == ["220-mx.test ESMTP mta"]
    s.clock.advance(0.1)
    assert isinstance(t.protocol, SMTPServer) and t.protocol.screened
    assert lines(t) == ["220-mx.test ESMTP mta", "220 mx.test ESMTP mta"]
    t.clear()
    for line in (b"EHLO client.example\r\n", b"MAIL FROM:<a@example.org>\r\nRCPT TO:<postmaster@mx.test>\r\nDATA\r\n",
                 b"Subject: hi\r\n\r\nbody\r\n.\r\nQUIT\r\n"):
        s.send(t, line)
    replies = [r for r in lines(t) if not r.startswith("250-")]
    assert replies[:4] == ["250 CHUNKING", "250 2.1.0 Ok", "250 2.1.5 Ok", "354 End data with <CR><LF>.<CR><LF>"]
    assert replies[4].startswith("250 2.0.0 Ok: queued as ") and replies[5] == "221 2.0.0 Bye"
    assert len(s.store.committed) == 1
    assert s.log.lines == ["CONNECT from [192.0.2.1]:4321 to [192.0.2.25]:25", "PASS NEW [192.0.2.1]:4321"]
    assert t.protocol in s.factory.sessions and not s.factory.postscreen.screening


def test_second_connection_is_pass_old_without_teaser_or_wait():
    s = Screen("postscreen_greet_wait = 6s\n")
    s.connect()
    s.clock.advance(6)
    t = s.connect(port=4322)
    assert lines(t) == ["220 mx.test ESMTP mta"] and isinstance(t.protocol, SMTPServer)
    assert s.log.lines[-1] == "PASS OLD [192.0.2.1]:4322"
    s.clock.advance(86400)  # postscreen_greet_ttl: tested again
    t = s.connect(port=4323)
    assert lines(t) == ["220-mx.test ESMTP mta"]
    s.clock.advance(6)
    assert s.log.lines[-1] == "PASS OLD [192.0.2.1]:4323"  # not the first pass of this address: OLD


def test_no_tests_hands_over_at_once():
    s = Screen()
    t = s.connect()
    assert lines(t) == ["220 mx.test ESMTP mta"] and isinstance(t.protocol, SMTPServer)
    assert s.log.lines == ["CONNECT from [192.0.2.1]:4321 to [192.0.2.25]:25"]


def test_a_unix_socket_client_is_not_screened():
    from twisted.internet.address import UNIXAddress

    s = Screen("postscreen_greet_wait = 6s\npostscreen_dnsbl_sites = zen.example\n")
    transport = StringTransport(peerAddress=UNIXAddress(None), hostAddress=UNIXAddress(b"/tmp/x"))
    protocol = s.factory.buildProtocol(None)
    transport.protocol = protocol
    protocol.makeConnection(transport)
    assert isinstance(transport.protocol, SMTPServer) and lines(transport) == ["220 mx.test ESMTP mta"]
    assert s.log.lines == [] and s.dns.queries == []


def test_empty_greet_banner_sends_no_teaser():
    s = Screen("postscreen_greet_wait = 2s\npostscreen_greet_banner =\n")
    t = s.connect()
    assert t.value() == b""
    s.clock.advance(2)
    assert lines(t) == ["220 mx.test ESMTP mta"]


# -- pregreet -----------------------------------------------------------------


def test_pregreet_drop():
    s = Screen("postscreen_greet_wait = 6s\npostscreen_greet_action = drop\n")
    t = s.connect()
    s.clock.advance(0.5)
    s.send(t, b"EHLO zombie\r\n")
    assert lines(t) == ["220-mx.test ESMTP mta", "521 5.5.1 Protocol error"] and t.disconnecting
    assert s.log.lines[1:] == ["PREGREET 13 after 0.5 from [192.0.2.1]:4321: EHLO zombie\\x0d\\x0a",
                               "DISCONNECT [192.0.2.1]:4321"]
    assert s.factory.postscreen.cache.get("192.0.2.1") is None


def test_pregreet_enforce_goes_to_the_dummy_engine():
    s = Screen("postscreen_greet_wait = 6s\npostscreen_greet_action = enforce\n")
    t = s.connect()
    s.send(t, b"EHLO zombie\r\n")
    # As Postfix: with no DNSBL test pending the verdict is in; no 220 after a failed pregreet
    # test, and the early EHLO is answered by the engine.
    assert lines(t)[1] == "250-mx.test" and isinstance(t.protocol, PostscreenServer)
    t.clear()
    s.send(t, b"MAIL FROM:<spam@example.org>\r\nRCPT TO:<victim@mx.test>\r\nQUIT\r\n")
    assert lines(t) == ["250 2.1.0 Ok", "550 5.5.1 Protocol error", "221 2.0.0 Bye"]
    assert ("NOQUEUE: reject: RCPT from [192.0.2.1]:4321: 550 5.5.1 Protocol error; from=<spam@example.org>, "
            "to=<victim@mx.test>, proto=ESMTP, helo=<zombie>") in s.log.lines
    assert s.log.lines[-1] == "DISCONNECT [192.0.2.1]:4321" and not s.store.committed


def test_pregreet_ignore_passes_the_bytes_to_smtpd_and_is_not_cached():
    s = Screen("postscreen_greet_wait = 6s\n")
    t = s.connect()
    s.send(t, b"NOOP\r\n")
    s.clock.advance(6)
    assert isinstance(t.protocol, SMTPServer)
    assert lines(t) == ["220-mx.test ESMTP mta", "220 mx.test ESMTP mta", "250 2.0.0 Ok"]
    assert "PASS NEW" not in s.log.text() and s.factory.postscreen.cache.get("192.0.2.1") is None


def test_hangup_during_the_wait():
    s = Screen("postscreen_greet_wait = 6s\n")
    t = s.connect()
    s.clock.advance(1.5)
    s.hangup(t)
    assert s.log.lines[1:] == ["HANGUP after 1.5 from [192.0.2.1]:4321 in tests before SMTP handshake",
                               "DISCONNECT [192.0.2.1]:4321"]
    assert not s.factory.postscreen.screening and not s.clock.getDelayedCalls()[1:]


# -- access list ----------------------------------------------------------------


@pytest.fixture
def cidr(tmp_path):
    path = tmp_path / "access"
    path.write_text("192.0.2.66 reject\n192.0.2.77 permit\n192.0.2.5 dunno\n")
    return path


def test_access_list_permit_and_mynetworks(cidr):
    s = Screen(f"postscreen_greet_wait = 6s\npostscreen_access_list = permit_mynetworks, texthash:{cidr}\n")
    t = s.connect("192.0.2.77")
    assert lines(t) == ["220 mx.test ESMTP mta"] and s.log.lines[-1] == "ALLOWLISTED [192.0.2.77]:4321"
    t = s.connect("127.0.0.1")
    assert lines(t) == ["220 mx.test ESMTP mta"] and s.log.lines[-1] == "ALLOWLISTED [127.0.0.1]:4321"
    t = s.connect("192.0.2.5")  # dunno: the tests
    assert lines(t) == ["220-mx.test ESMTP mta"]


@pytest.mark.parametrize("action, expected", [
    ("drop", ["521 5.3.2 Service currently unavailable"]),
    ("enforce", ["220-mx.test ESMTP mta"]),  # the tests still run (as Postfix), then the engine
    ("ignore", ["220-mx.test ESMTP mta"]),
])
def test_denylist_actions(cidr, action, expected):
    s = Screen(f"postscreen_greet_wait = 6s\npostscreen_access_list = texthash:{cidr}\n"
               f"postscreen_denylist_action = {action}\n")
    t = s.connect("192.0.2.66")
    assert lines(t) == expected
    assert "DENYLISTED [192.0.2.66]:4321" in s.log.lines
    if action == "enforce":
        s.clock.advance(6)
        assert lines(t) == ["220-mx.test ESMTP mta", "220 mx.test ESMTP mta"]
        assert isinstance(t.protocol, PostscreenServer)
        s.send(t, b"HELO x\r\nMAIL FROM:<>\r\nRCPT TO:<u@mx.test>\r\n")
        assert lines(t)[-1] == "550 5.3.2 Service currently unavailable"
        assert s.factory.postscreen.cache.get("192.0.2.66") is None


def test_access_table_failure_ends_the_list():
    from mta.tables import TableTemporaryError

    class Broken:
        def lookup(self, key):
            return fail(TableTemporaryError("server down"))

    s = Screen("postscreen_greet_wait = 1s\n")
    s.factory.postscreen.access = (Broken(), "permit_mynetworks")
    t = s.connect("127.0.0.1")
    assert lines(t) == ["220-mx.test ESMTP mta"]  # screened, not allowlisted, not refused
    assert "table lookup error for 127.0.0.1" in s.log.text()


# -- DNSBL ------------------------------------------------------------------------


ZEN = "1.2.0.192.zen.example"
WL = "1.2.0.192.wl.example"


def test_dnsbl_enforce_dummy_engine_logs_the_rejects():
    dnsServer = FakeDNS({ZEN: ["127.0.0.2"]}, {ZEN: 300})
    s = Screen("postscreen_dnsbl_sites = zen.example*2\npostscreen_dnsbl_action = enforce\n", dnsServer)
    t = s.connect()
    assert lines(t) == ["220 mx.test ESMTP mta"]  # the engine's: no pregreet test
    s.send(t, b"EHLO spam.example\r\nMAIL FROM:<s@example.org>\r\nRCPT TO:<u@mx.test>\r\nDATA\r\n")
    replies = lines(t)
    assert replies[-3:] == ["250 2.1.0 Ok", "550 5.7.1 Service unavailable; client [192.0.2.1] blocked using "
                            "zen.example", "554 5.5.1 Error: no valid recipients"]
    assert "250-PIPELINING" not in replies and t.disconnecting
    log = s.log.text()
    assert "DNSBL rank 2 for [192.0.2.1]:4321" in log
    assert ("NOQUEUE: reject: RCPT from [192.0.2.1]:4321: 550 5.7.1 Service unavailable; client [192.0.2.1] "
            "blocked using zen.example; from=<s@example.org>, to=<u@mx.test>, proto=ESMTP, "
            "helo=<spam.example>") in log
    assert "DATA without valid RCPT from [192.0.2.1]:4321" in log and not s.store.committed


def test_dnsbl_drop_and_reply_map(tmp_path):
    path = tmp_path / "names"
    path.write_text("secret.example Spamhaus\n")
    answer = "1.2.0.192.secret.example"
    s = Screen(f"postscreen_dnsbl_sites = secret.example\npostscreen_dnsbl_action = drop\n"
               f"postscreen_dnsbl_reply_map = texthash:{path}\n", FakeDNS({answer: ["127.0.0.4"]}))
    t = s.connect()
    assert lines(t) == ["521 5.7.1 Service unavailable; client [192.0.2.1] blocked using Spamhaus"]
    assert t.disconnecting


def test_weights_thresholds_and_patterns():
    answers = {ZEN: ["127.0.0.10"], "1.2.0.192.bl.example": ["127.0.0.2"], WL: ["127.0.0.5"]}
    main = ("postscreen_dnsbl_sites = zen.example=127.0.0.[2..9]*5, zen.example=127.0.0.10*2, bl.example*1, "
            "wl.example=127.0.0.5*-2\npostscreen_dnsbl_threshold = 2\npostscreen_dnsbl_action = drop\n")
    s = Screen(main, FakeDNS(answers))
    t = s.connect()
    assert "DNSBL rank 1 for" not in s.log.text()  # 2 + 1 - 2 = 1 < 2: passes
    assert isinstance(t.protocol, SMTPServer) and "PASS NEW [192.0.2.1]:4321" in s.log.lines
    answers.pop(WL)
    s2 = Screen(main, FakeDNS(answers))
    t = s2.connect()
    assert "DNSBL rank 3 for [192.0.2.1]:4321" in s2.log.lines
    assert lines(t) == ["521 5.7.1 Service unavailable; client [192.0.2.1] blocked using zen.example"]


def test_allowlist_threshold_skips_the_pregreet_wait():
    s = Screen("postscreen_greet_wait = 6s\npostscreen_dnsbl_sites = wl.example*-5\n"
               "postscreen_dnsbl_allowlist_threshold = -1\n", FakeDNS({WL: ["127.0.0.5"]}, {WL: 600}))
    t = s.connect()
    assert lines(t) == ["220-mx.test ESMTP mta", "220 mx.test ESMTP mta"]  # no wait
    entry = s.factory.postscreen.cache.get("192.0.2.1")
    now = s.clock.seconds()
    # As Postfix, the other tests count as passed too, enabled or not (psc_allowlist_non_dnsbl).
    assert entry == {test: now + 600 for test in ("pregreet", "dnsbl", "pipelining", "non_smtp", "bare_newline")}


def test_dnsbl_ttl_is_clamped():
    s = Screen("postscreen_dnsbl_sites = zen.example\npostscreen_dnsbl_min_ttl = 120s\n"
               "postscreen_dnsbl_max_ttl = 30m\n", FakeDNS({}, {ZEN: 5}))
    s.connect()
    now = s.clock.seconds()
    assert s.factory.postscreen.cache.get("192.0.2.1") == {"dnsbl": now + 120}
    s = Screen("postscreen_dnsbl_sites = zen.example\npostscreen_dnsbl_ttl = 30m\n", FakeDNS({}, {ZEN: 86400}))
    s.connect()
    assert s.factory.postscreen.cache.get("192.0.2.1") == {"dnsbl": s.clock.seconds() + 1800}


def test_dnsbl_timeout_counts_as_not_listed():
    s = Screen("postscreen_dnsbl_sites = zen.example, bl.example\npostscreen_dnsbl_timeout = 3s\n"
               "postscreen_dnsbl_action = drop\n",
               FakeDNS({ZEN: "hang", "1.2.0.192.bl.example": DNSError("SERVFAIL", temporary=True)}))
    t = s.connect()
    assert t.value() == b""
    s.clock.advance(3)
    assert lines(t) == ["220 mx.test ESMTP mta"] and isinstance(t.protocol, SMTPServer)
    log = s.log.text()
    assert "warning: dnsblog reply timeout 3s for zen.example" in log
    assert "lookup error for DNS query 1.2.0.192.bl.example: SERVFAIL" in log
    assert s.factory.postscreen.cache.get("192.0.2.1") == {"dnsbl": s.clock.seconds() + 60}  # min_ttl


def test_dnsbl_runs_during_the_greet_wait_and_late_answers_count_not():
    pending = Deferred()

    class Late(FakeDNS):
        def lookupRecords(self, name, rdtype):
            if not name.endswith("zen.example"):  # smtpd's PTR lookup after the hand-over
                return super().lookupRecords(name, rdtype)
            self.queries.append(name)
            return pending

    s = Screen("postscreen_greet_wait = 2s\npostscreen_dnsbl_sites = zen.example\npostscreen_dnsbl_action = drop\n"
               "postscreen_dnsbl_timeout = 10s\n", Late())
    t = s.connect()
    assert s.dns.queries == [ZEN]  # asked at connect, beside the teaser
    s.clock.advance(1.9)
    assert lines(t) == ["220-mx.test ESMTP mta"]
    s.clock.advance(0.1)  # the wait ends: the score so far (0) passes, as Postfix's partial score
    assert lines(t)[-1] == "220 mx.test ESMTP mta" and isinstance(t.protocol, SMTPServer)
    assert "PASS NEW [192.0.2.1]:4321" in s.log.lines
    pending.callback([dns.rdata.from_text("IN", "A", "127.0.0.2")])  # too late: changes nothing
    assert "DNSBL rank" not in s.log.text() and not t.disconnecting


def test_ipv6_client_query():
    dnsServer = FakeDNS()
    s = Screen("postscreen_dnsbl_sites = zen.example\n", dnsServer)
    s.connect("2001:db8::1")
    assert [q for q in dnsServer.queries if q.endswith("zen.example")] == ["1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.zen.example"]


# -- the dummy engine ---------------------------------------------------------------


def enforced(main=""):
    s = Screen("postscreen_dnsbl_sites = zen.example\npostscreen_dnsbl_action = enforce\n" + main,
               FakeDNS({ZEN: ["127.0.0.2"]}))
    t = s.connect()
    t.clear()
    return s, t


def test_engine_commands():
    s, t = enforced("postscreen_helo_required = yes\npostscreen_disable_vrfy_command = yes\n")
    s.send(t, b"MAIL FROM:<a@b>\r\nETRN x\r\nHELO h\r\nVRFY u\r\nNOOP\r\nRSET\r\nETRN x\r\nSTARTTLS\r\nFOO\r\n"
              b"RCPT TO:<u@v>\r\nMAIL FROM:<@route:a@b>\r\nMAIL FROM:<c@d>\r\nRCPT TO:<u@v\r\nQUIT\r\n")
    assert lines(t) == [
        "503 5.5.1 Error: send HELO/EHLO first", "503 5.5.1 Error: send HELO/EHLO first", "250 mx.test",
        "502 5.5.1 VRFY command is disabled", "250 2.0.0 Ok", "250 2.0.0 Ok", "458 Unable to queue messages",
        "502 5.5.1 Error: command not implemented", "502 5.5.2 Error: command not recognized",
        "503 5.5.1 Error: need MAIL command", "250 2.1.0 Ok", "503 5.5.1 Error: nested MAIL command",
        "501 5.1.3 Bad recipient address syntax", "221 2.0.0 Bye"]
    assert t.disconnecting


def test_engine_soft_bounce():
    s, t = enforced("soft_bounce = yes\n")
    s.send(t, b"HELO h\r\nMAIL FROM:<a@b>\r\nRCPT TO:<u@v>\r\n")
    assert lines(t)[-1] == "450 4.7.1 Service unavailable; client [192.0.2.1] blocked using zen.example"
    assert "RCPT from [192.0.2.1]:4321: 450 4.7.1 Service" in s.log.text()


def test_engine_time_and_count_limits():
    s, t = enforced("postscreen_command_time_limit = 30s\n")
    s.send(t, b"HELO h\r\n")
    s.clock.advance(29)
    s.send(t, b"NOOP\r\n")
    s.clock.advance(29)
    assert not t.disconnecting
    s.clock.advance(1)
    assert lines(t)[-1] == "421 4.4.2 mx.test Error: timeout exceeded" and t.disconnecting
    assert "COMMAND TIME LIMIT from [192.0.2.1]:4321 after NOOP" in s.log.lines
    s, t = enforced("postscreen_command_count_limit = 3\n")
    s.send(t, b"NOOP\r\nNOOP\r\nNOOP\r\nNOOP\r\nNOOP\r\n")
    assert lines(t) == ["250 2.0.0 Ok"] * 3 + ["421 mx.test Service unavailable - try again later"]
    assert "COMMAND COUNT LIMIT from [192.0.2.1]:4321 after NOOP" in s.log.lines


def test_engine_long_line_and_hangup():
    s, t = enforced()
    s.send(t, b"X" * 3000)
    assert lines(t) == ["421 mx.test Service unavailable - try again later"] and t.disconnecting
    s, t = enforced()
    s.clock.advance(2.5)
    s.hangup(t)
    assert s.log.lines[-2:] == ["HANGUP after 2.5 from [192.0.2.1]:4321 in tests after SMTP handshake",
                                "DISCONNECT [192.0.2.1]:4321"]
    assert not s.clock.getDelayedCalls() or min(c.getTime() for c in s.clock.getDelayedCalls()) > s.clock.seconds() + 3600


def test_engine_escapes_log_injection():
    s, t = enforced()
    s.send(t, b"HELO evil\x00\x1b[31m\r\nMAIL FROM:<a\x07@b>\r\nRCPT TO:<u@v>\r\n")
    line = [x for x in s.log.lines if x.startswith("NOQUEUE")][0]
    assert "\x00" not in line and "\x07" not in line and "\\x07" in line


# -- limits and the cache ----------------------------------------------------------------


def test_post_and_pre_queue_limits():
    s = Screen("postscreen_post_queue_limit = 1\n")
    s.connect()
    t = s.connect(port=2)
    assert lines(t) == ["421 4.3.2 All server ports are busy"]
    assert "NOQUEUE: reject: CONNECT from [192.0.2.1]:2: all server ports busy" in s.log.lines
    s = Screen("postscreen_pre_queue_limit = 1\npostscreen_greet_wait = 6s\n")
    s.connect()
    t = s.connect(port=2)
    assert lines(t) == ["421 4.3.2 All screening ports are busy"]


def test_client_connection_count_limit():
    s = Screen("postscreen_client_connection_count_limit = 2\npostscreen_greet_wait = 6s\n")
    s.connect(port=1)
    s.connect(port=2)
    t = s.connect(port=3)
    assert lines(t) == ["421 4.7.0 Error: too many connections"]
    assert "NOQUEUE: reject: CONNECT from [192.0.2.1]:3: too many connections" in s.log.lines
    assert lines(s.connect("192.0.2.9", port=4)) == ["220-mx.test ESMTP mta"]  # another client


def test_cache_file_survives_and_cleans_up(tmp_path):
    path = str(tmp_path / "ps.db")
    clock = Clock()
    cache = PostscreenCache(clock, retention=100, cleanupInterval=50, path=path)
    cache.update("192.0.2.1", {"pregreet": 10, "dnsbl": 20})
    cache.update("192.0.2.1", {"pregreet": 5})
    clock.advance(1)  # the write-back
    again = PostscreenCache(Clock(), 100, 0, path=path)
    assert again.get("192.0.2.1") == {"pregreet": 10.0, "dnsbl": 20.0}
    clock.advance(120)  # 121 - 100 > 20: removed by the cleanup at 101
    assert cache.get("192.0.2.1") is None
    clock.advance(1)
    assert PostscreenCache(Clock(), 100, 0, path=path).get("192.0.2.1") is None
    cache.update("192.0.2.9", {"dnsbl": 500})
    cache.close()  # the pending change is written at once
    assert PostscreenCache(Clock(), 100, 0, path=path).get("192.0.2.9") == {"dnsbl": 500.0}
    assert not clock.getDelayedCalls()


def test_damaged_cache_file_is_an_empty_cache(tmp_path):
    path = tmp_path / "ps.db"
    path.write_bytes(b"this is not a database" * 100)
    cache = PostscreenCache(Clock(), 100, 0, path=str(path))
    assert cache.get("192.0.2.1") is None
    cache.update("192.0.2.1", {"dnsbl": 1})  # writes fail quietly (a warning)
    cache.flush()


def test_cache_shared_across_reload():
    from mta.listeners import shareConnectionCounts

    s = Screen("postscreen_greet_wait = 1s\n")
    s.connect()
    s.clock.advance(1)
    fresh = Screen("postscreen_greet_wait = 1s\n")
    shareConnectionCounts(s.factory, fresh.factory)
    assert fresh.factory.postscreen.cache is s.factory.postscreen.cache
    t = fresh.connect(port=2)
    assert lines(t) == ["220 mx.test ESMTP mta"]  # PASS OLD after the reload


def test_listener_stop_writes_the_cache(tmp_path):
    from mta.listeners import ListenerService

    s = Screen(f"postscreen_greet_wait = 1s\npostscreen_cache_map = sqlite:{tmp_path}/c.db\n")
    s.connect()
    s.clock.advance(1)
    service = ListenerService("smtp", "tcp:0", s.clock, s.factory)
    service.startService = lambda: None
    service.running = 1
    service.stopService()
    assert PostscreenCache(Clock(), 100, 0, path=f"{tmp_path}/c.db").get("192.0.2.1") is not None


# -- the deep protocol tests (after the 220, in the dummy engine) ------------------------------


def test_deep_tests_pass_at_rcpt_then_pass_old():
    s = Screen("postscreen_pipelining_enable = yes\npostscreen_non_smtp_command_enable = yes\n"
               "postscreen_bare_newline_enable = yes\n")
    t = s.connect()
    assert lines(t) == ["220 mx.test ESMTP mta"] and isinstance(t.protocol, PostscreenServer)
    for line in (b"EHLO client.example\r\n", b"MAIL FROM:<a@example.org>\r\n", b"RCPT TO:<b@mx.test>\r\n"):
        s.send(t, line)
    assert lines(t)[-1] == "450 4.3.2 Service currently unavailable"  # come back later
    s.send(t, b"QUIT\r\n")
    assert lines(t)[-1] == "221 2.0.0 Bye" and t.disconnecting and not s.store.committed
    assert s.log.lines[-2:] == ["PASS NEW [192.0.2.1]:4321", "DISCONNECT [192.0.2.1]:4321"]
    now = s.clock.seconds()
    assert s.factory.postscreen.cache.get("192.0.2.1") == {"pipelining": now + 30 * 86400, "non_smtp": now + 30 * 86400,
                                                           "bare_newline": now + 30 * 86400}
    t = s.connect(port=2)
    assert lines(t) == ["220 mx.test ESMTP mta"] and isinstance(t.protocol, SMTPServer)
    assert s.log.lines[-1] == "PASS OLD [192.0.2.1]:2"


def test_pipelining_test_enforce():
    s = Screen("postscreen_pipelining_enable = yes\n")
    t = s.connect()
    s.send(t, b"EHLO c\r\nMAIL FROM:<a@b>\r\nRCPT TO:<u@v>\r\n")
    assert "COMMAND PIPELINING from [192.0.2.1]:4321 after EHLO: MAIL FROM:<a@b>\\x0d\\x0aRCPT TO:<u@v>\\x0d\\x0a" \
        in s.log.lines
    assert lines(t)[-1] == "550 5.5.1 Protocol error"
    s.send(t, b"QUIT\r\n")
    assert "PASS NEW" not in s.log.text() and s.factory.postscreen.cache.get("192.0.2.1") is None


def test_non_smtp_command_drop():
    s = Screen("postscreen_non_smtp_command_enable = yes\n")
    t = s.connect()
    s.send(t, b"Subject: buy now\r\n")
    assert lines(t)[-1] == "521 5.7.0 Error: I can break rules, too. Goodbye." and t.disconnecting
    assert "NON-SMTP COMMAND from [192.0.2.1]:4321 after CONNECT: Subject: buy now" in s.log.lines
    s = Screen("postscreen_non_smtp_command_enable = yes\n")
    t = s.connect()
    s.send(t, b"GET / HTTP/1.0\r\n")
    assert t.disconnecting and "NON-SMTP COMMAND from [192.0.2.1]:4321 after CONNECT: GET / HTTP/1.0" in s.log.lines
    s = Screen("postscreen_non_smtp_command_enable = yes\n")
    t = s.connect()
    s.send(t, b"FOO bar\r\n")  # unknown, but not a header nor forbidden: 502 only
    assert lines(t)[-1] == "502 5.5.2 Error: command not recognized" and not t.disconnecting


def test_bare_newline_ignore_passes_for_the_shortest_ttl():
    s = Screen("postscreen_bare_newline_enable = yes\npostscreen_greet_ttl = 1h\n")
    t = s.connect()
    s.send(t, b"HELO c\nMAIL FROM:<a@b>\r\nRCPT TO:<u@v>\r\nQUIT\r\n")
    assert "BARE NEWLINE from [192.0.2.1]:4321 after HELO c" in s.log.lines
    assert lines(t)[1:] == ["250 mx.test", "250 2.1.0 Ok", "450 4.3.2 Service currently unavailable",
                            "221 2.0.0 Bye"]
    assert s.factory.postscreen.cache.get("192.0.2.1") == {"bare_newline": s.clock.seconds() + 60}  # psc_min_ttl
    s = Screen("postscreen_bare_newline_enable = yes\npostscreen_bare_newline_action = drop\n")
    t = s.connect()
    s.send(t, b"HELO c\n")
    assert lines(t)[-1] == "521 5.5.1 Protocol error" and t.disconnecting


def test_pass_new_again_once_the_cache_forgot_the_client():
    s = Screen("postscreen_greet_wait = 1s\npostscreen_cache_retention_time = 1h\n")
    s.connect()
    s.clock.advance(1)
    s.clock.advance(86400 + 3601)
    assert s.factory.postscreen.cache.get("192.0.2.1") is None  # removed by the periodic cleanup
    s.connect(port=2)
    s.clock.advance(1)
    assert s.log.lines[-1] == "PASS NEW [192.0.2.1]:2"
