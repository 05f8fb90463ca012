"""Scripted dialogs for SMTP AUTH (RFC 4954) with the builtin backend: mta.smtpd.auth, mta.sasl."""

import base64

import pytest
from argon2 import PasswordHasher
from twisted.internet.task import Clock

from mta.config import load, openTables
from mta.queue.fileformat import dumpEnvelope, parseEnvelope
from mta.smtpd.factory import SMTPServerFactory
from mta.tables import Tables
from mta.testing import FakeQueueStore, serverFactory
from tests.dialogs.harness import Dialog, MailLog

OUTSIDE = "198.51.100.7"
PASSWORD = "s3cret-Pa55"
# Cheap parameters: the tests check behaviour, not argon2's cost.
FAST = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)


def b64(data):
    return base64.b64encode(data.encode("utf-8") if isinstance(data, str) else data).decode("ascii")


def plain(user, password=PASSWORD, authzid=""):
    return b64(f"{authzid}\0{user}\0{password}")


@pytest.fixture
def passwd(tmp_path):
    path = tmp_path / "sasl_passwd"
    path.write_text(f"alice@example.org  {FAST.hash(PASSWORD)}\nbob  {FAST.hash('bobs password')}\n"
                    f"carol  {PASSWORD}\n")  # not a hash: never matches
    return path


@pytest.fixture
def auth(passwd):
    """f(extra [main] text, peer=..., clock=..., store=...) -> a Dialog with builtin AUTH on."""

    def make(main="", peer=OUTSIDE, clock=None, store=None):
        text = (f"smtpd_sasl_auth_enable = yes\nsmtpd_sasl_type = builtin\n"
                f"smtpd_sasl_path = texthash:{passwd}\n{main}")
        return Dialog(serverFactory(text, clock=clock, store=store or FakeQueueStore()), peer=peer)

    return make


def login(d, user="alice@example.org"):
    assert d.send(f"AUTH PLAIN {plain(user)}\r\n") == "235 2.7.0 Authentication successful\r\n"


# -- what EHLO offers ---------------------------------------------------------------------


def test_auth_is_off_by_default():
    d = Dialog(serverFactory(), peer=OUTSIDE)
    assert "AUTH" not in d.send("EHLO c\r\n")
    assert d.send(f"AUTH PLAIN {plain('alice@example.org')}\r\n") == "503 5.5.1 Error: authentication not enabled\r\n"
    assert d.send("MAIL FROM:<a@example.org> AUTH=<>\r\n").startswith("555 5.5.4 ")


def test_ehlo_offers_auth_where_postfix_does(auth):
    lines = auth().send("EHLO c\r\n").split("\r\n")
    assert "250-AUTH PLAIN LOGIN" in lines
    assert lines.index("250-AUTH PLAIN LOGIN") == lines.index("250-ETRN") + 1
    assert not any(line.startswith("250-AUTH=") for line in lines)


def test_broken_sasl_auth_clients_adds_the_old_line(auth):
    out = auth("broken_sasl_auth_clients = yes\n").send("EHLO c\r\n")
    assert "250-AUTH PLAIN LOGIN\r\n250-AUTH=PLAIN LOGIN\r\n" in out


def test_exceptions_networks_hide_auth_but_accept_it(auth):
    d = auth("smtpd_sasl_exceptions_networks = 198.51.100.0/24\n")
    assert "AUTH" not in d.send("EHLO c\r\n")
    login(d)
    other = auth("smtpd_sasl_exceptions_networks = 192.0.2.0/24\n")
    assert "AUTH PLAIN LOGIN" in other.send("EHLO c\r\n")


def test_discarded_auth_is_neither_offered_nor_accepted(auth):
    d = auth("smtpd_discard_ehlo_keywords = auth, silent-discard\n")
    assert "AUTH" not in d.send("EHLO c\r\n")
    assert d.send(f"AUTH PLAIN {plain('alice@example.org')}\r\n") == "503 5.5.1 Error: authentication not enabled\r\n"


def test_noplaintext_leaves_nothing_to_offer(auth):
    d = auth("smtpd_sasl_security_options = noanonymous, noplaintext\n")
    assert "AUTH" not in d.send("EHLO c\r\n")
    assert d.send(f"AUTH PLAIN {plain('alice@example.org')}\r\n") == (
        "535 5.7.8 Error: authentication failed: Invalid authentication mechanism\r\n")


def test_tls_security_options_apply_under_tls(auth):
    main = "smtpd_sasl_security_options = noanonymous, noplaintext\nsmtpd_sasl_tls_security_options = noanonymous\n"
    d = auth(main)
    assert "AUTH" not in d.send("EHLO c\r\n")
    d = auth(main)
    d.protocol.session.tlsActive = True  # as STARTTLS leaves it (branch tls)
    assert "250-AUTH PLAIN LOGIN" in d.send("EHLO c\r\n")
    login(d)


# -- smtpd_tls_auth_only ------------------------------------------------------------------


def test_tls_auth_only_hides_and_refuses_auth_in_plaintext(auth):
    d = auth("smtpd_tls_auth_only = yes\n")
    assert "AUTH" not in d.send("EHLO c\r\n")
    with MailLog() as log:
        reply = d.send(f"AUTH PLAIN {plain('alice@example.org')}\r\n")
    assert reply == "504 5.5.4 Encryption required for requested authentication mechanism\r\n"
    assert d.protocol.session.saslUsername is None
    assert not any(b64(PASSWORD) in line or plain("alice@example.org") in line for line in log.lines)


def test_tls_auth_only_offers_auth_under_tls(auth):
    d = auth("smtpd_tls_auth_only = yes\n")
    d.protocol.session.tlsActive = True
    assert "250-AUTH PLAIN LOGIN" in d.send("EHLO c\r\n")
    login(d)
    assert d.protocol.session.receivedProtocol() == "ESMTPSA"


# -- the command's rules ------------------------------------------------------------------


def test_auth_before_ehlo(auth):
    d = auth()
    assert d.send(f"AUTH PLAIN {plain('alice@example.org')}\r\n") == "503 5.5.1 Error: send EHLO first\r\n"
    d.send("HELO c\r\n")
    assert d.send(f"AUTH PLAIN {plain('alice@example.org')}\r\n") == "503 5.5.1 Error: send EHLO first\r\n"
    assert d.protocol.session.errors == 2


def test_auth_in_a_transaction(auth):
    d = auth()
    d.send("EHLO c\r\n")
    d.send("MAIL FROM:<alice@example.org>\r\n")
    assert d.send(f"AUTH PLAIN {plain('alice@example.org')}\r\n") == (
        "503 5.5.1 Error: MAIL transaction in progress\r\n")
    d.send("RSET\r\n")
    login(d)


def test_auth_twice(auth):
    d = auth()
    d.send("EHLO c\r\n")
    login(d)
    assert d.send(f"AUTH PLAIN {plain('bob', 'bobs password')}\r\n") == "503 5.5.1 Error: already authenticated\r\n"
    assert d.protocol.session.saslUsername == "alice@example.org"
    d.send("EHLO again\r\n")  # EHLO keeps the login (Postfix's helo_reset does not touch it)
    assert d.protocol.session.saslUsername == "alice@example.org"


@pytest.mark.parametrize("line", ["AUTH", "AUTH ", "AUTH PLAIN a b"])
def test_auth_syntax(auth, line):
    d = auth()
    d.send("EHLO c\r\n")
    assert d.send(line + "\r\n") == "501 5.5.4 Syntax: AUTH mechanism\r\n"


def test_unknown_mechanism(auth):
    d = auth()
    d.send("EHLO c\r\n")
    assert d.send("AUTH CRAM-MD5\r\n") == "535 5.7.8 Error: authentication failed: Invalid authentication mechanism\r\n"


# -- the exchange -------------------------------------------------------------------------


def test_plain_with_continuation_and_lower_case_mechanism(auth):
    d = auth()
    d.send("EHLO c\r\n")
    assert d.send("AUTH plain\r\n") == "334 \r\n"
    assert d.send(plain("alice@example.org") + "\r\n") == "235 2.7.0 Authentication successful\r\n"
    assert d.protocol.session.saslMethod == "PLAIN"


def test_login_with_and_without_initial_response(auth):
    d = auth()
    d.send("EHLO c\r\n")
    assert d.send("AUTH LOGIN\r\n") == f"334 {b64('Username:')}\r\n"
    assert d.send(b64("bob") + "\r\n") == f"334 {b64('Password:')}\r\n"
    assert d.send(b64("bobs password") + "\r\n") == "235 2.7.0 Authentication successful\r\n"
    d = auth()
    d.send("EHLO c\r\n")
    assert d.send(f"AUTH LOGIN {b64('bob')}\r\n") == f"334 {b64('Password:')}\r\n"
    assert d.send(b64("bobs password") + "\r\n") == "235 2.7.0 Authentication successful\r\n"
    assert d.protocol.session.saslUsername == "bob"
    assert d.protocol.session.saslMethod == "LOGIN"


def test_a_response_is_never_a_command(auth):
    d = auth()
    d.send("EHLO c\r\n")
    d.send("AUTH LOGIN\r\n")
    assert d.send("MAIL FROM:<a@example.org>\r\n") == "501 5.5.2 Invalid base64 data in continued response\r\n"
    assert d.send("RCPT TO:<bob@mx.test>\r\n") == "503 5.5.1 Error: need MAIL command\r\n"
    d.send("AUTH LOGIN\r\n")
    assert d.send("QUIT\r\n") == f"334 {b64('Password:')}\r\n"  # "QUIT" is base64: a user name here
    assert not d.closed
    assert d.send("*\r\n") == "501 5.7.0 Authentication aborted\r\n"


def test_star_cancels(auth):
    d = auth()
    d.send("EHLO c\r\n")
    d.send("AUTH LOGIN\r\n")
    with MailLog() as log:
        assert d.send("*\r\n") == "501 5.7.0 Authentication aborted\r\n"
    assert log.matching("SASL LOGIN authentication aborted")
    assert d.protocol.session.errors == 1
    login(d)  # a new AUTH may follow


def test_empty_initial_response(auth):
    d = auth()
    d.send("EHLO c\r\n")
    # "=" is an empty initial response: for PLAIN that is no credentials at all.
    assert d.send("AUTH PLAIN =\r\n") == "535 5.7.8 Error: authentication failed: authentication failure\r\n"


@pytest.mark.parametrize("bad", ["not-base64!", "AGFsaWNl=x", "\u00e9\u00e9\u00e9\u00e9"])
def test_bad_base64(auth, bad):
    d = auth()
    d.send("EHLO c\r\n")
    assert d.send(f"AUTH PLAIN {bad}\r\n") == "501 5.5.2 Invalid base64 data in initial response\r\n"
    d.send("AUTH PLAIN\r\n")
    assert d.send(f"{bad}\r\n") == "501 5.5.2 Invalid base64 data in continued response\r\n"
    assert d.protocol.session.errors == 2
    login(d)


def test_response_limit(auth):
    d = auth("smtpd_sasl_response_limit = 100\n")
    d.send("EHLO c\r\n")
    assert d.send(f"AUTH PLAIN {'A' * 104}\r\n") == "500 5.5.6 SASL response limit exceeded\r\n"
    d.send("AUTH LOGIN\r\n")
    assert d.send("A" * 200 + "\r\n") == "500 5.5.6 SASL response limit exceeded\r\n"
    assert d.send("NOOP\r\n") == "250 2.0.0 Ok\r\n"  # back to commands
    d.send("AUTH LOGIN\r\n")
    assert d.send("A" * 150, bytewise=True) == ""  # in pieces, past the limit
    assert d.send("A" * 50 + "\r\n") == "500 5.5.6 SASL response limit exceeded\r\n"
    login(d)


def test_a_response_may_be_longer_than_a_command_line(auth):
    d = auth()  # line_length_limit 2048, smtpd_sasl_response_limit 12288
    d.send("EHLO c\r\n")
    d.send("AUTH PLAIN\r\n")
    long = plain("alice@example.org", "x" * 3000)
    assert len(long) > 2048
    assert d.send(long + "\r\n") == "535 5.7.8 Error: authentication failed: authentication failure\r\n"


# -- failures -----------------------------------------------------------------------------


def test_no_user_existence_leak(auth):
    replies, warnings = [], []
    for user, password in [("alice@example.org", "wrong"), ("nobody@example.org", "wrong"), ("carol", PASSWORD),
                           ("alice@example.org", PASSWORD[:-1]), ("", PASSWORD)]:
        d = auth()
        d.send("EHLO c\r\n")
        with MailLog() as log:
            replies.append(d.send(f"AUTH PLAIN {plain(user, password)}\r\n"))
        warnings.append(log.matching("authentication failed"))
        assert d.protocol.session.saslUsername is None
    assert set(replies) == {"535 5.7.8 Error: authentication failed: authentication failure\r\n"}
    assert all(w == [f"warning: unknown[{OUTSIDE}]: SASL PLAIN authentication failed: authentication failure"]
               for w in warnings)


def test_a_proxy_authorization_identity_is_refused(auth):
    d = auth()
    d.send("EHLO c\r\n")
    assert d.send(f"AUTH PLAIN {plain('bob', 'bobs password', authzid='alice@example.org')}\r\n").startswith("535 ")
    assert d.send(f"AUTH PLAIN {plain('bob', 'bobs password', authzid='bob')}\r\n").startswith("235 ")


def test_failures_count_as_errors_and_meet_the_tarpit(auth):
    clock = Clock()
    d = auth("smtpd_soft_error_limit = 1\nsmtpd_error_sleep_time = 5s\nsmtpd_hard_error_limit = 3\n", clock=clock)
    d.send("EHLO c\r\n")
    assert d.send(f"AUTH PLAIN {plain('alice@example.org', 'x')}\r\n").startswith("535 ")
    assert d.protocol.session.errors == 1
    assert d.send(f"AUTH PLAIN {plain('alice@example.org', 'y')}\r\n") == ""  # delayed
    clock.advance(5)
    assert d.read().startswith("535 ")
    d.send(f"AUTH PLAIN {plain('alice@example.org', 'z')}\r\n")
    clock.advance(5)
    out = d.read()
    assert out.startswith("535 ") and "421 4.7.0 mx.test Error: too many errors" in out
    assert d.closed


def test_disconnect_line_counts_auth(auth):
    d = auth()
    d.send("EHLO c\r\n")
    d.send(f"AUTH PLAIN {plain('alice@example.org', 'x')}\r\n")
    d.send("AUTH LOGIN\r\n")
    d.send(b64("alice@example.org") + "\r\n")
    with MailLog() as log:
        d.send(b64(PASSWORD) + "\r\nQUIT\r\n")
        d.protocol.connectionLost(None)
    assert log.matching("ehlo=1 auth=1/2 quit=1 commands=3/4")


# -- what a login leaves ------------------------------------------------------------------


def test_login_is_logged_recorded_and_named_in_received(auth):
    store = FakeQueueStore()
    d = auth("smtpd_sasl_authenticated_header = yes\n", store=store)
    d.send("EHLO c\r\n")
    login(d)
    with MailLog() as log:
        d.send("MAIL FROM:<alice@example.org> AUTH=alice@example.org\r\nRCPT TO:<bob@mx.test>\r\nDATA\r\n")
        assert d.send("Subject: hi\r\n\r\nhello\r\n.\r\n").startswith("250 2.0.0 Ok: queued as ")
    (message,) = store.committed
    queueId = message.queueId
    assert log.matching(f"{queueId}: client=unknown[{OUTSIDE}], sasl_method=PLAIN, "
                        "sasl_username=alice@example.org, sasl_sender=alice@example.org")
    envelope = message.envelope
    assert (envelope.sasl_method, envelope.sasl_username, envelope.sasl_sender) == (
        "PLAIN", "alice@example.org", "alice@example.org")
    assert parseEnvelope(dumpEnvelope(envelope)) == envelope  # the queue file keeps the login
    head = message.content.split(b"\r\n\r\n")[0].decode()
    assert head.startswith(f"Received: from c (unknown [{OUTSIDE}])\r\n\t(Authenticated sender: alice@example.org)\r\n"
                           "\tby mx.test (mta) with ESMTPA id ")


def test_without_authenticated_header_and_without_auth(auth):
    store = FakeQueueStore()
    d = auth(store=store)
    d.send("EHLO c\r\n")
    login(d)
    d.send("MAIL FROM:<alice@example.org> AUTH=<>\r\nRCPT TO:<bob@mx.test>\r\nDATA\r\n")
    d.send("Subject: x\r\n\r\n.\r\n")
    d2 = auth(store=store)
    d2.send("EHLO c\r\n")
    d2.send("MAIL FROM:<a@example.org>\r\nRCPT TO:<bob@mx.test>\r\nDATA\r\n")
    d2.send("Subject: x\r\n\r\n.\r\n")
    first, second = store.committed
    assert b"Authenticated sender" not in first.content
    assert b" with ESMTPA id " in first.content and first.envelope.sasl_sender is None
    assert b" with ESMTP id " in second.content
    assert (second.envelope.sasl_method, second.envelope.sasl_username) == (None, None)


# -- no password in logs or transcripts -----------------------------------------------------


def notifyingFactory(passwd):
    clock = Clock()
    config = load("<test>", "[main]\nmyhostname = mx.test\nnotify_classes = protocol, policy\n"
                  f"smtpd_sasl_auth_enable = yes\nsmtpd_sasl_type = builtin\nsmtpd_sasl_path = texthash:{passwd}\n")
    tables = Tables(clock)
    openTables(config, tables)
    return SMTPServerFactory.fromScope(config.main, clock, FakeQueueStore(), tables, postmasterNotices=True)


def test_password_absent_from_logs_and_transcripts(passwd):
    f = notifyingFactory(passwd)
    secrets = [PASSWORD, b64(PASSWORD), plain("alice@example.org"), plain("alice@example.org", "wrong"),
               b64("wrong"), "wrong"]
    d = Dialog(f, peer=OUTSIDE)
    with MailLog() as log:
        d.send("EHLO c\r\n")
        d.send(f"AUTH PLAIN {plain('alice@example.org', 'wrong')}\r\n")
        d.send("AUTH LOGIN\r\n")
        d.send(b64("alice@example.org") + "\r\n")
        d.send(b64("wrong") + "\r\n")
        d.send("AUTH PLAIN " + "A" * 3000 + "\r\n")  # too long: logged in part
        d.send(f"AUTH PLAIN {plain('alice@example.org')}\r\n")
        lines = d.protocol.transcript.lines()
        d.send("BOGUS\r\nQUIT\r\n")
        d.protocol.connectionLost(None)
    transcriptText = "\n".join(lines)
    assert "In:  AUTH PLAIN [response hidden]" in transcriptText
    assert "In:  [response hidden]" in transcriptText
    assert "Out: 334 " in transcriptText
    notices = [m.content.decode("utf-8", "replace") for m in f.store.committed]
    assert notices  # the session met the protocol class: the postmaster got its transcript
    for text in [transcriptText, *log.lines, *notices]:
        for secret in secrets:
            assert secret not in text
    assert log.matching("request longer than 2048: AUTH PLAIN [response hidden]")


# -- restrictions ---------------------------------------------------------------------------


@pytest.fixture
def logins(tmp_path):
    path = tmp_path / "sender_logins"
    path.write_text("alice@example.org  alice@example.org, Bob\nshared@example.org  bob alice@example.org\n"
                    "@owned.example  bob\n")
    return path


def relayDialog(auth, restrictions, logins=None):
    main = f"mynetworks = 192.0.2.0/24\nsmtpd_recipient_restrictions = {restrictions}\nsmtpd_relay_restrictions =\n"
    if logins is not None:
        main += f"smtpd_sender_login_maps = texthash:{logins}\n"
    d = auth(main)
    d.send("EHLO c\r\n")
    return d


def test_permit_sasl_authenticated_relays(auth):
    d = relayDialog(auth, "permit_sasl_authenticated, reject_unauth_destination")
    d.send("MAIL FROM:<alice@example.org>\r\n")
    assert d.send("RCPT TO:<x@elsewhere.example>\r\n") == "554 5.7.1 <x@elsewhere.example>: Relay access denied\r\n"
    d.send("RSET\r\n")
    login(d)
    d.send("MAIL FROM:<alice@example.org>\r\n")
    assert d.send("RCPT TO:<x@elsewhere.example>\r\n") == "250 2.1.5 Ok\r\n"


@pytest.mark.parametrize("restriction, user, sender, expected", [
    # reject_sender_login_mismatch: logged-in users send only as what they own; others as nothing owned
    ("reject_sender_login_mismatch", "alice@example.org", "alice@example.org", 250),
    ("reject_sender_login_mismatch", "alice@example.org", "shared@example.org", 250),
    ("reject_sender_login_mismatch", "bob", "alice@example.org", 250),  # owners are case-insensitive
    ("reject_sender_login_mismatch", "bob", "x@owned.example", 250),
    ("reject_sender_login_mismatch", "alice@example.org", "x@owned.example", 553),
    ("reject_sender_login_mismatch", "alice@example.org", "nobody@elsewhere.example", 553),
    ("reject_sender_login_mismatch", None, "alice@example.org", 553),
    ("reject_sender_login_mismatch", None, "nobody@elsewhere.example", 250),
    ("reject_sender_login_mismatch", "alice@example.org", "", 250),  # the null sender
    # known: an unlisted sender passes
    ("reject_known_sender_login_mismatch", "alice@example.org", "nobody@elsewhere.example", 250),
    ("reject_known_sender_login_mismatch", "alice@example.org", "x@owned.example", 553),
    ("reject_known_sender_login_mismatch", None, "alice@example.org", 553),
    # authenticated only
    ("reject_authenticated_sender_login_mismatch", None, "alice@example.org", 250),
    ("reject_authenticated_sender_login_mismatch", "bob", "nobody@elsewhere.example", 553),
    # unauthenticated only
    ("reject_unauthenticated_sender_login_mismatch", "bob", "nobody@elsewhere.example", 250),
    ("reject_unauthenticated_sender_login_mismatch", None, "shared@example.org", 553),
])
def test_sender_login_mismatch(auth, logins, restriction, user, sender, expected):
    d = relayDialog(auth, f"{restriction}, permit", logins)
    if user is not None:
        password = "bobs password" if user == "bob" else PASSWORD
        assert d.send(f"AUTH PLAIN {plain(user, password)}\r\n").startswith("235 ")
    d.send(f"MAIL FROM:<{sender}>\r\n")
    with MailLog() as log:
        reply = d.send("RCPT TO:<x@mx.test>\r\n")
    assert int(reply[:3]) == expected, reply
    if expected == 553:
        why = f"not owned by user {user}" if user else "not logged in"
        assert reply == f"553 5.7.1 <{sender}>: Sender address rejected: {why}\r\n"
        assert log.matching(f"NOQUEUE: reject: RCPT from unknown[{OUTSIDE}]: 553 5.7.1 <{sender}>")


def test_login_maps_unused_without_a_map(auth):
    d = relayDialog(auth, "reject_sender_login_mismatch, permit")
    login(d)
    d.send("MAIL FROM:<someone@elsewhere.example>\r\n")
    assert d.send("RCPT TO:<x@mx.test>\r\n") == "250 2.1.5 Ok\r\n"


def test_local_header_rewrite_clients_permit_sasl_authenticated(auth):
    store = FakeQueueStore()
    d = auth("local_header_rewrite_clients = permit_sasl_authenticated\n", store=store)
    d.send("EHLO c\r\n")
    d.send("MAIL FROM:<a@example.org>\r\nRCPT TO:<bob@mx.test>\r\nDATA\r\n")
    d.send("To: root\r\n\r\nx\r\n.\r\n")
    login(d)
    d.send("MAIL FROM:<a@example.org>\r\nRCPT TO:<bob@mx.test>\r\nDATA\r\n")
    d.send("To: root\r\n\r\nx\r\n.\r\n")
    before, after = store.committed
    assert b"\r\nTo: root\r\n" in before.content
    assert b"\r\nTo: root@mx.test\r\n" in after.content


# -- smtpd_client_auth_rate_limit -----------------------------------------------------------


def test_auth_rate_limit(passwd):
    clock = Clock()
    f = serverFactory(f"smtpd_sasl_auth_enable = yes\nsmtpd_sasl_type = builtin\nsmtpd_sasl_path = texthash:{passwd}\n"
                      "smtpd_client_auth_rate_limit = 2\nanvil_rate_time_unit = 60s\n", clock=clock)
    d = Dialog(f, peer=OUTSIDE)
    d.send("EHLO c\r\n")
    assert d.send(f"AUTH PLAIN {plain('alice@example.org', 'x')}\r\n").startswith("535 ")  # failed ones count
    other = Dialog(f, peer=OUTSIDE)  # the count is per client address, across sessions
    other.send("EHLO c\r\n")
    login(other)  # and successful ones
    with MailLog() as log:
        assert d.send(f"AUTH PLAIN {plain('alice@example.org')}\r\n") == (
            f"450 4.7.1 Error: too many AUTH commands from {OUTSIDE}\r\n")
    assert log.matching(f"warning: AUTH command rate limit exceeded: 3 from unknown[{OUTSIDE}] for service smtp")
    assert d.protocol.session.saslUsername is None and d.protocol.session.errors == 2
    neighbour = Dialog(f, peer="198.51.100.8")
    neighbour.send("EHLO c\r\n")
    login(neighbour)
    clock.advance(60)
    assert d.send(f"AUTH PLAIN {plain('alice@example.org')}\r\n").startswith("450 ")  # anvil: a window lasts 60s
    clock.advance(1)  # past it: a new window
    login(d)


def test_auth_rate_limit_exceptions(passwd):
    f = serverFactory(f"smtpd_sasl_auth_enable = yes\nsmtpd_sasl_type = builtin\nsmtpd_sasl_path = texthash:{passwd}\n"
                      "smtpd_client_auth_rate_limit = 1\n")  # exceptions: $mynetworks (127.0.0.0/8)
    for _ in range(3):
        d = Dialog(f, peer="127.0.0.1")
        d.send("EHLO c\r\n")
        login(d)


def test_no_auth_in_stand_alone_mode(passwd):
    # mta-sendmail -bs, as Postfix's smtpd in stand-alone mode: no AUTH.
    clock = Clock()
    config = load("<test>", "[main]\nmyhostname = mx.test\nsmtpd_sasl_auth_enable = yes\nsmtpd_sasl_type = builtin\n"
                  f"smtpd_sasl_path = texthash:{passwd}\n")
    tables = Tables(clock)
    openTables(config, tables)
    f = SMTPServerFactory.fromScope(config.main, clock, FakeQueueStore(), tables, "sendmail")
    d = Dialog(f, peer="127.0.0.1")
    assert "AUTH" not in d.send("EHLO c\r\n")
    assert d.send(f"AUTH PLAIN {plain('alice@example.org')}\r\n") == "503 5.5.1 Error: authentication not enabled\r\n"
