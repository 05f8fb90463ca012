"""Address verification (mta.verify, mta.smtpd.verifycheck): cache rules, replies, probes; Clock, no sockets."""

import sqlite3

import pytest
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock

from mta.cleanup import Cleanup, Origin
from mta.config import load, openTables
from mta.config.errors import ConfigError
from mta.delivery.virtual import VirtualTransport
from mta.maillog import MailLogger
from mta.model import Address, Envelope, Recipient
from mta.queue import fileformat
from mta.routing import AddressResolver
from mta.smtpd.policy import RecipientPolicy
from mta.tables import Tables
from mta.testing import SyncReactor, resultOf
from mta.verify import BOUNCE, DEFER, OK, TODO, VerifyService, probeSender
from mta.verify.cache import Entry, VerifyCache
from mta.verify.service import PROBE_TTL
from tests.unit.test_queue_manager import FakeTransport, Harness
from tests.unit.test_smtpclient import EHLO_ALL, EHLO_PLAIN, Session, makeRequest

DAY = 86400.0
START = 1_700_000_000.0


def verifySettings(text=""):
    if "address_verify_map" not in text:
        text = "address_verify_map =\n" + text  # memory only, unless the test names a file
    return load("<t>", "[main]\nmyhostname = mx.test\n" + text).settings.verify


class Verify:
    """A VerifyService on a Clock, with the probes it posts recorded."""

    def __init__(self, text="", path=None):
        self.clock = Clock()
        self.clock.advance(START)
        settings = verifySettings(text + (f"address_verify_map = sqlite:{path}\n" if path else ""))
        self.probes = []
        self.lines = []
        self.service = VerifyService(settings, self.clock, self.post, self.maillogs,
                                     qualify=lambda a: a if "@" in a else a + "@mx.test")
        self.service.start()

    def post(self, sender, address):
        self.probes.append((sender, address))
        return succeed("4ABCDEFGHIJ")

    def maillogs(self, program):
        lines = self.lines

        class Log:
            def emit(self, text, *a, **kw):
                lines.append(f"{program}: {text}")

        return Log()

    def query(self, address="u@example.com"):
        return resultOf(self.service.query(address))


# -- the cache rules (verify.c) --------------------------------------------------------------


def test_an_unknown_address_is_in_progress_and_gets_one_probe():
    v = Verify()
    assert v.query() == (TODO, "Address verification in progress")
    assert v.probes == [("double-bounce@mx.test", "u@example.com")]
    v.clock.advance(PROBE_TTL - 1)
    assert v.query() == (TODO, "Address verification in progress")
    assert len(v.probes) == 1  # a probe is outstanding: not another one
    v.clock.advance(2)  # the probe is taken as lost: the next query sends another
    assert v.query()[0] == TODO
    assert len(v.probes) == 2


def test_a_deliverable_result_is_used_then_refreshed_then_expires():
    v = Verify()
    v.query()
    assert v.service.update("u@example.com", OK, "250 2.1.5 Ok") == "deliverable"
    assert v.query() == (OK, "250 2.1.5 Ok")
    assert len(v.probes) == 1
    v.clock.advance(7 * DAY + 1)  # address_verify_positive_refresh_time: the old result, and a probe
    assert v.query() == (OK, "250 2.1.5 Ok")
    assert len(v.probes) == 2
    v.clock.advance(24 * DAY)  # address_verify_positive_expire_time (31d) since the result: unknown again
    assert v.query() == (TODO, "Address verification in progress")
    assert len(v.probes) == 3


def test_an_undeliverable_result_is_refreshed_after_three_hours_and_expires_after_three_days():
    v = Verify()
    v.query()
    text = "host mx[192.0.2.1] said: 550 5.1.1 unknown (in reply to RCPT TO command)"
    assert v.service.update("u@example.com", BOUNCE, text) == "undeliverable"
    assert v.query() == (BOUNCE, text)
    v.clock.advance(3 * 3600 + 1)
    assert v.query() == (BOUNCE, text)  # the negative result stays in force while the new probe runs
    assert len(v.probes) == 2
    v.clock.advance(3 * DAY)
    assert v.query()[0] == TODO


def test_a_failed_probe_never_overwrites_a_deliverable_address():
    v = Verify()
    v.service.update("u@example.com", OK, "250 ok")
    v.service.update("u@example.com", DEFER, "connection refused")
    v.service.update("u@example.com", BOUNCE, "550 no")
    assert v.query() == (OK, "250 ok")
    v.service.update("u@example.com", OK, "250 fresh")
    assert v.query() == (OK, "250 fresh")


def test_a_deferred_result_is_a_temporary_status():
    v = Verify()
    v.service.update("u@example.com", DEFER, "conversation timed out")
    assert v.query() == (DEFER, "conversation timed out")


def test_without_negative_caching_only_deliverable_results_are_kept():
    v = Verify("address_verify_negative_cache = no\n")
    assert v.query()[0] == TODO
    assert v.query()[0] == TODO
    assert len(v.probes) == 2  # nothing is stored for a new address: every query probes (Postfix)
    assert v.service.update("u@example.com", BOUNCE, "550 no") == "undeliverable-but-not-cached"
    assert v.query()[0] == TODO
    v.service.update("u@example.com", OK, "250 ok")
    assert v.query() == (OK, "250 ok")


def test_keys_are_postfix_keys_and_texts_are_made_printable():
    v = Verify()
    v.service.update("u@[IPv6:2001:db8::1]", BOUNCE, "550 bad\r\nQUIT\x00" + "x" * 5000)
    [(key, entry)] = v.service.cache.entries()
    assert key == "u@[IPv6_2001_db8__1]"
    assert entry.text.startswith("550 bad??QUIT?") and len(entry.text) == 1000
    assert v.query("u@[IPv6:2001:db8::1]")[0] == BOUNCE


def test_the_cleanup_removes_expired_entries_only():
    v = Verify("address_verify_cache_cleanup_interval = 1h\n")
    v.service.update("old@example.com", BOUNCE, "550 no")
    v.clock.advance(3 * DAY - 3600)
    v.service.update("new@example.com", BOUNCE, "550 no")
    v.clock.advance(3600 - 500)
    v.query("pending@example.com")  # a probe outstanding (sent less than PROBE_TTL ago): kept
    v.clock.advance(501)  # the cleanup runs: old@ expired
    assert sorted(k for k, _ in v.service.cache.entries()) == ["new@example.com", "pending@example.com"]
    assert "verify: cache memory full cleanup: retained=2 dropped=1 entries" in v.lines


def test_the_probe_sender():
    assert probeSender(verifySettings(), START) == "double-bounce"
    assert probeSender(verifySettings("address_verify_sender = <>\n"), START) == ""
    settings = verifySettings("address_verify_sender = probe@example.org\naddress_verify_sender_ttl = 1d\n")
    epoch = int(START // DAY)
    digits = ""
    while epoch:
        epoch, d = divmod(epoch, 31)
        digits = "0123456789ABCDEFGHIJKLMNOPQRSTU"[d] + digits
    assert probeSender(settings, START) == f"probe{digits}@example.org"
    assert probeSender(settings, START + DAY) != probeSender(settings, START)  # it changes once a day
    for bad in ("@example.org", "probe@"):
        with pytest.raises(ConfigError):
            verifySettings(f"address_verify_sender = {bad}\n")


def test_a_probe_that_cannot_be_queued_is_tried_again_later():
    v = Verify()
    v.service.post = lambda sender, address: fail(OSError("disk full"))
    assert v.query()[0] == TODO
    v.service.post = v.post
    assert v.query()[0] == TODO
    assert v.probes == []  # within PROBE_TTL of the failed one
    v.clock.advance(PROBE_TTL + 1)
    assert v.query()[0] == TODO
    assert v.probes == [("double-bounce@mx.test", "u@example.com")]


# -- the cache file ------------------------------------------------------------------------------


def test_entries_round_trip_in_postfix_format():
    entry = Entry(OK, 0, 1700000000, "250 2.1.5 Ok: with: colons")
    assert entry.dump() == "0:0:1700000000:250 2.1.5 Ok: with: colons"
    assert Entry.parse(entry.dump()) == entry
    for bad in ("", "0:0:0:zero stamps", "7:0:1:bad status", "x:0:1:t", "0:1"):
        assert Entry.parse(bad) is None


def test_the_cache_file_keeps_entries_across_a_restart(tmp_path):
    path = tmp_path / "verify_cache"
    v = Verify(path=path)
    v.service.update("u@example.com", OK, "250 ok")
    v.clock.advance(2)  # the write-behind
    v.service.stop()
    again = Verify(path=path)
    assert again.query() == (OK, "250 ok")
    assert again.probes == []


def test_a_damaged_cache_file_is_an_empty_cache_and_damaged_entries_are_skipped(tmp_path):
    path = tmp_path / "verify_cache"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE verify (address TEXT PRIMARY KEY, entry TEXT NOT NULL)")
    db.execute("INSERT INTO verify VALUES ('good@example.com', '2:0:1700000000:550 no')")
    db.execute("INSERT INTO verify VALUES ('bad@example.com', 'garbage')")
    db.commit()
    db.close()
    cache = VerifyCache(Clock(), str(path))
    cache.load()
    assert [k for k, _ in cache.entries()] == ["good@example.com"]
    junk = tmp_path / "junk"
    junk.write_bytes(b"not a database at all" * 100)
    cache = VerifyCache(Clock(), str(junk))
    cache.load()
    assert cache.entries() == []


def test_address_verify_map_values():
    assert verifySettings().verifyMap == ("memory", None)
    assert load("<t>", "[main]\nqueue_directory = /q\n").settings.verify.verifyMap == ("sqlite", "/q/verify_cache")
    assert verifySettings("address_verify_map = btree:/x/c\n").verifyMap == ("sqlite", "/x/c")
    with pytest.raises(ConfigError):
        verifySettings("address_verify_map = hash:/x\n")


# -- reject_unverified_recipient and _sender (smtpd_check.c's replies) ------------------------


class Policy:
    def __init__(self, restrictions="reject_unverified_recipient", main="", answers=None, stage="recipient"):
        config = load("<t>", "[main]\nmyhostname = mx.test\nrelay_domains = example.com\nsmtpd_relay_restrictions =\n"
                             f"smtpd_{stage}_restrictions = {restrictions}\n" + main)
        self.clock = Clock()
        tables = Tables(self.clock)
        openTables(config, tables)
        self.answers = list(answers or [])
        self.asked = []
        listener = config.listeners[0].settings
        self.lines = []
        lines = self.lines

        class Recorder(MailLogger):
            def emit(self, text, queue_id=None, level=None, prefix=True, **fields):
                lines.append(text)

        self.policy = RecipientPolicy(listener.recipients, AddressResolver(config.settings.resolver, tables), tables,
                                      maillog=Recorder("mta", "smtpd"), reactor=self.clock, verifier=self.verifier,
                                      unverified=listener.unverified)

    def verifier(self, address):
        self.asked.append(address)
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if isinstance(answer, Exception):
            return fail(answer)
        if isinstance(answer, Deferred):
            return answer
        return succeed(answer)

    def check(self, recipient="u@example.com", sender="s@example.org"):
        if isinstance(recipient, str):
            local, _, domain = recipient.rpartition("@")
            recipient = Address(local, domain)
        slocal, _, sdomain = sender.rpartition("@")
        request = self.policy.request("192.0.2.9", "client.example", Address(slocal, sdomain), recipient)
        return Deferred.fromCoroutine(self.policy.checkRecipient(request))


def reply(outcome):
    return None if outcome.reply is None else str(outcome.reply)


def test_in_progress_is_450_unverified_address():
    p = Policy(main="address_verify_poll_count = 1\n", answers=[(TODO, "Address verification in progress")])
    assert reply(resultOf(p.check())) == ("450 4.1.1 <u@example.com>: Recipient address rejected: unverified "
                                          "address: Address verification in progress")
    assert p.asked == ["u@example.com"]


def test_a_deliverable_address_passes():
    p = Policy(answers=[(OK, "250 2.1.5 Ok")])
    assert reply(resultOf(p.check())) is None


def test_an_undeliverable_address_gets_the_reject_code():
    text = "host mx[192.0.2.1] said: 550 5.1.1 <u@example.com>: User unknown (in reply to RCPT TO command)"
    p = Policy(answers=[(BOUNCE, text)])
    assert reply(resultOf(p.check())) == f"450 4.1.1 <u@example.com>: Recipient address rejected: unverified address: {text}"
    p = Policy(main="unverified_recipient_reject_code = 550\n", answers=[(BOUNCE, text)])
    assert reply(resultOf(p.check())) == (f"550 5.1.1 <u@example.com>: Recipient address rejected: undeliverable "
                                          f"address: {text}")


def test_a_temporary_result_gets_the_defer_code():
    p = Policy(main="unverified_recipient_defer_code = 451\n", answers=[(DEFER, "connection refused")])
    assert reply(resultOf(p.check())) == ("451 4.1.1 <u@example.com>: Recipient address rejected: unverified "
                                          "address: connection refused")


def test_the_reject_reason_replaces_the_probe_text():
    p = Policy(main="unverified_recipient_reject_code = 550\nunverified_recipient_reject_reason = No such user\n",
               answers=[(BOUNCE, "550 secret details")])
    assert reply(resultOf(p.check())) == ("550 5.1.1 <u@example.com>: Recipient address rejected: undeliverable "
                                          "address: No such user")


def test_a_verify_service_failure_is_450_address_verification_problem():
    p = Policy(answers=[RuntimeError("gone")])
    assert reply(resultOf(p.check())) == ("450 4.1.1 <u@example.com>: Recipient address rejected: address "
                                          "verification problem")
    assert "warning: verify service failure" in p.lines
    config = load("<t>", "[main]\nrelay_domains = example.com\nsmtpd_recipient_restrictions = "
                         "reject_unverified_recipient\n")
    tables = Tables(Clock())
    openTables(config, tables)
    listener = config.listeners[0].settings
    policy = RecipientPolicy(listener.recipients, AddressResolver(config.settings.resolver, tables), tables,
                             unverified=listener.unverified)  # no verify service at all
    request = policy.request("192.0.2.9", None, Address("s", "example.org"), Address("u", "example.com"))
    assert resultOf(policy.checkRecipient(request)).reply.code == 450


def test_smtpd_polls_while_the_probe_runs():
    p = Policy(answers=[(TODO, "Address verification in progress"), (OK, "250 ok")])
    d = p.check()
    assert not d.called
    p.clock.advance(3)  # address_verify_poll_delay
    assert reply(resultOf(d)) is None
    assert len(p.asked) == 2


def test_smtpd_gives_up_after_the_poll_count():
    p = Policy(answers=[(TODO, "Address verification in progress")])
    d = p.check()
    p.clock.advance(3)
    assert not d.called
    p.clock.advance(3)
    assert reply(resultOf(d)).startswith("450 4.1.1 <u@example.com>: Recipient address rejected: unverified address")
    assert len(p.asked) == 3  # address_verify_poll_count = 3


def test_the_tempfail_action():
    # defer_if_permit (the default): a later reject wins; defer: the 450 at once.
    p = Policy("reject_unverified_recipient, reject", "address_verify_poll_count = 1\n", [(TODO, "in progress")])
    assert reply(resultOf(p.check())) == "554 5.7.1 <u@example.com>: Recipient address rejected: Access denied"
    p = Policy("reject_unverified_recipient, reject",
               "address_verify_poll_count = 1\nunverified_recipient_tempfail_action = defer\n", [(TODO, "in progress")])
    assert reply(resultOf(p.check())).startswith("450 4.1.1 <u@example.com>: Recipient address rejected: unverified")
    p = Policy("reject_unverified_recipient, reject", "reject_tempfail_action = defer\naddress_verify_poll_count = 1\n",
               [(TODO, "in progress")])
    assert reply(resultOf(p.check())).startswith("450 4.1.1")


def test_reject_unverified_sender():
    p = Policy("reject_unverified_sender", "unverified_sender_reject_code = 550\n", [(BOUNCE, "550 no such user")],
               stage="sender")
    assert reply(resultOf(p.check())) == ("550 5.1.7 <s@example.org>: Sender address rejected: undeliverable "
                                          "address: 550 no such user")
    assert p.asked == ["s@example.org"]
    p = Policy("reject_unverified_sender", "address_verify_poll_count = 1\n", [(TODO, "in progress")], stage="sender")
    assert reply(resultOf(p.check())).startswith("450 4.1.7 <s@example.org>: Sender address rejected: unverified")
    p = Policy("reject_unverified_sender", answers=[(BOUNCE, "550 no")], stage="sender")
    assert reply(resultOf(p.check(sender="@"))) is None  # the null sender is not verified
    assert p.asked == []


def test_a_key_with_injection_characters_is_only_a_key():
    p = Policy(main="address_verify_poll_count = 1\n", answers=[(TODO, "Address verification in progress")])
    outcome = resultOf(p.check(Address('a"b%c!d', "example.com")))
    assert outcome.reply.code == 450
    assert p.asked == ['"a\\"b%c!d"@example.com']


def test_sql_in_an_address_is_only_a_key_in_the_cache_file(tmp_path):
    path = tmp_path / "verify_cache"
    v = Verify(path=path)
    address = "x'); DROP TABLE verify;--@example.com"
    v.service.update(address, BOUNCE, "550 no'; --")
    v.service.update("other@example.com", OK, "250 ok")
    v.clock.advance(2)
    again = Verify(path=path)
    assert again.query(address) == (BOUNCE, "550 no'; --")
    assert again.query("other@example.com") == (OK, "250 ok")


# -- the queue file flag ----------------------------------------------------------------------


def test_the_probe_flag_round_trips_and_older_files_read_as_not_a_probe():
    envelope = Envelope("double-bounce@mx.test", (Recipient("u@example.com"),), 1700000000.0, probe=True)
    data = fileformat.dumpQueueFile(envelope, b"")
    assert b'"probe":true' in data
    parsed = fileformat.parseEnvelope(fileformat.dumpEnvelope(envelope))
    assert parsed.probe is True and parsed == envelope
    plain = attrsEvolve(envelope, probe=False)
    payload = fileformat.dumpEnvelope(plain)
    assert b"probe" not in payload  # a file without it is byte for byte what it was
    assert fileformat.parseEnvelope(payload).probe is False
    with pytest.raises(fileformat.CorruptQueueFile):
        fileformat.parseEnvelope(payload[:-1] + b',"probe":"yes"}')


def attrsEvolve(value, **changes):
    import attrs

    return attrs.evolve(value, **changes)


# -- the SMTP client stops after RCPT ------------------------------------------------------


def test_the_smtp_client_sends_no_data_for_a_probe_with_pipelining():
    s = Session()
    s.reply("220 mx.example.net ESMTP\r\n")
    s.deliver(makeRequest(recipients=("good@example.net", "bad@example.net"), sender="double-bounce@mx.test",
                          size=0, probe=True))
    assert s.sent().startswith("EHLO client.example.org")
    s.reply(EHLO_ALL)
    sent = s.sent()
    assert sent.startswith("MAIL FROM:<double-bounce@mx.test>")
    assert "RCPT TO:<good@example.net>" in sent and "RCPT TO:<bad@example.net>" in sent
    assert "DATA" not in sent
    s.reply("250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n550 5.1.1 <bad@example.net>: Recipient address rejected: unknown\r\n")
    assert s.sent() == "QUIT\r\n"
    s.reply("221 2.0.0 Bye\r\n")
    assert s.statuses() == [(10, "sent", "2.1.5"), (11, "bounced", "5.1.1")]
    texts = [r.text for r in s.outcome.results]
    assert texts[0] == "250 2.1.5 Ok"
    assert "said: 550 5.1.1 <bad@example.net>" in texts[1] and "(in reply to RCPT TO command)" in texts[1]


def test_the_smtp_client_probe_without_pipelining_and_a_cached_connection_resets():
    s = Session()
    s.reply("220 mx.example.net ESMTP\r\n")
    s.deliver(makeRequest(size=0, probe=True), keepOpen=True)
    s.sent()
    s.reply(EHLO_PLAIN)
    assert s.sent().startswith("MAIL FROM:")
    s.reply("250 2.1.0 Ok\r\n")
    assert s.sent() == "RCPT TO:<bob@example.net>\r\n"
    s.reply("450 4.2.0 <bob@example.net>: greylisted\r\n")
    assert s.sent() == "RSET\r\n"  # never DATA; the connection is kept for the next delivery
    s.reply("250 2.0.0 Ok\r\n")
    assert s.statuses() == [(10, "deferred", "4.2.0")]
    assert s.outcome.reusable


# -- the queue manager records probe results instead of delivering or bouncing ----------------


class Recorder:
    def __init__(self, negative=True):
        self.updates = []
        self.negative = negative

    def update(self, address, status, text):
        self.updates.append((address, status, text))
        if status != OK and not self.negative:
            return "undeliverable-but-not-cached"
        return "deliverable" if status == OK else "undeliverable"


def probeHarness(tmp_path, answer, main=""):
    h = Harness(tmp_path, main, {"smtp": FakeTransport(answer)})
    h.manager.verifier = Recorder()
    h.manager.start()
    cleanup = Cleanup(h.config.settings.cleanup, h.store, h.clock, h.maillog)
    return h, cleanup


def submitProbe(h, cleanup, address):
    ids = []
    cleanup.submit(Origin.internal(), "double-bounce@mx.test", (Recipient(address),), b"", probe=True).addCallback(
        ids.append)
    return ids[0]


def test_a_deliverable_probe_updates_the_cache_and_is_removed_without_a_notice(tmp_path):
    h, cleanup = probeHarness(tmp_path, lambda r: ("sent", "2.1.5", "250 2.1.5 Ok"))
    queueId = submitProbe(h, cleanup, "good@elsewhere.example")
    assert h.manager.verifier.updates == [("good@elsewhere.example", OK, "250 2.1.5 Ok")]
    assert h.queue("incoming") == h.queue("active") == h.queue("deferred") == []
    assert f"qmgr: {queueId}: removed" in h.lines
    assert any(f"{queueId}: to=<good@elsewhere.example>" in line and "status=deliverable (250 2.1.5 Ok)" in line
               for line in h.lines)
    assert len(h.transports["smtp"].requests) == 1
    assert h.transports["smtp"].requests[0].envelope.probe


def test_an_undeliverable_probe_never_bounces(tmp_path):
    h, cleanup = probeHarness(tmp_path, lambda r: ("bounced", "5.1.1", "host x said: 550 unknown"))
    queueId = submitProbe(h, cleanup, "bad@elsewhere.example")
    assert h.manager.verifier.updates == [("bad@elsewhere.example", BOUNCE, "host x said: 550 unknown")]
    assert any("status=undeliverable (host x said: 550 unknown)" in line for line in h.lines)
    assert not any("non-delivery notification" in line for line in h.lines)
    assert len(h.transports["smtp"].requests) == 1  # no bounce was queued and delivered
    assert f"qmgr: {queueId}: removed" in h.lines
    assert h.queue("incoming") == h.queue("deferred") == []


def test_a_deferred_probe_is_retried_until_its_lifetime_ends_then_counts_as_undeliverable(tmp_path):
    h, cleanup = probeHarness(tmp_path, lambda r: ("deferred", "4.4.1", "connection refused"),
                              "maximal_queue_lifetime = 1h\ndelay_warning_time = 1m\n")
    queueId = submitProbe(h, cleanup, "x@elsewhere.example")
    assert h.queue("deferred") == [queueId]
    assert h.manager.verifier.updates == [("x@elsewhere.example", DEFER, "connection refused")]
    for _ in range(30):
        h.clock.advance(300)
    assert h.queue("deferred") == []
    statuses = [u[1] for u in h.manager.verifier.updates]
    assert statuses[-1] == BOUNCE and set(statuses[:-1]) == {DEFER} and len(statuses) > 2
    assert not any("notification" in line for line in h.lines)  # no delay warning, no bounce
    assert all(r.envelope.probe for r in h.transports["smtp"].requests)


# -- virtual delivery answers a probe without delivering ------------------------------------


def test_virtual_delivery_of_a_probe_writes_nothing(tmp_path):
    config = load("<t>", f"[main]\nvirtual_mailbox_base = {tmp_path}/mail\n"
                         "virtual_mailbox_maps = inline:{ u@box.example=box.example/u/ }\n")
    tables = Tables(Clock())
    openTables(config, tables)
    transport = VirtualTransport(config.settings.virtual, mailboxMaps=[tables.open(t) for t in
                                                                       config.settings.virtual.mailboxMaps],
                                 clock=SyncReactor())
    request = makeRequest(recipients=("u@box.example", "nobody@box.example"), size=0, probe=True)
    results = resultOf(transport.deliver(request))
    assert [(r.status, r.dsn, r.text) for r in results] == [
        ("sent", "2.0.0", "delivers to maildir"), ("bounced", "5.1.1", 'unknown user: "nobody@box.example"')]
    assert not (tmp_path / "mail").exists()


def test_excess_probes_are_deferred_as_postfix_qmgr_does(tmp_path):
    transport = FakeTransport(lambda r: ("sent", "2.1.5", "250 2.1.5 Ok"))
    transport.hold = True  # the first probe stays in the active queue
    h = Harness(tmp_path, "address_verify_pending_request_limit = 1\n", {"smtp": transport})
    h.manager.verifier = Recorder()
    h.manager.start()
    cleanup = Cleanup(h.config.settings.cleanup, h.store, h.clock, h.maillog)
    first = submitProbe(h, cleanup, "one@elsewhere.example")
    second = submitProbe(h, cleanup, "two@elsewhere.example")
    assert [r.queue_id for r in transport.requests] == [first]
    assert h.manager.verifier.updates == [("two@elsewhere.example", DEFER, "Too many address verification requests")]
    assert h.queue("deferred") == [second]
    assert any(f"{second}: to=<two@elsewhere.example>" in line and "dsn=4.3.2, status=undeliverable (Too many "
               "address verification requests)" in line for line in h.lines)
    transport.release()
    assert h.manager.activeProbes == 0
    transport.hold = False
    h.clock.advance(301)  # the deferred probe's next attempt: now within the limit
    assert h.queue("deferred") == []
    assert ("two@elsewhere.example", OK, "250 2.1.5 Ok") in h.manager.verifier.updates


def test_a_reload_takes_the_new_times_but_keeps_the_cache(tmp_path):
    v = Verify(path=tmp_path / "verify_cache")
    v.service.update("u@example.com", OK, "250 ok")
    v.service.reconfigure(verifySettings("address_verify_positive_refresh_time = 1d\n"
                                         "address_verify_sender = other@example.org\n"))
    assert v.service.settings.verifyMap == ("sqlite", str(tmp_path / "verify_cache"))  # a restart changes it
    v.clock.advance(DAY + 1)
    assert v.query() == (OK, "250 ok")
    assert v.probes == [("other@example.org", "u@example.com")]


def test_the_lmtp_client_stops_after_rcpt_for_a_probe():
    s = Session(lmtp=True)
    s.reply("220 lmtp.example.net LMTP\r\n")
    s.deliver(makeRequest(recipients=("a@example.net", "b@example.net"), size=0, probe=True))
    assert s.sent().startswith("LHLO ")
    s.reply("250-lmtp.example.net\r\n250-PIPELINING\r\n250 ENHANCEDSTATUSCODES\r\n")
    sent = s.sent()
    assert sent.count("RCPT TO:") == 2 and "DATA" not in sent
    s.reply("250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n550 5.1.1 <b@example.net>: User unknown\r\n")
    assert s.sent() == "QUIT\r\n"
    s.reply("221 2.0.0 Bye\r\n")
    assert s.statuses() == [(10, "sent", "2.1.5"), (11, "bounced", "5.1.1")]
