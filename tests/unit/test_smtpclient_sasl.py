"""SASL in mta.delivery.smtpclient (mta.delivery.smtpsasl): scripted servers, no sockets, no sleeps."""

import base64
import json

import attrs
import pytest
from twisted.internet.task import Clock

from mta.config import ConfigError, load
from mta.delivery.saslcache import AuthCache
from mta.delivery.saslmech import MECHANISMS, SaslError, acceptable, b64decode
from mta.delivery.smtpclient import RemoteHost, SMTPClientSession
from mta.delivery.smtpsasl import SaslClient, offeredMechanisms
from mta.delivery.smtpreply import SMTPReply
from mta.tables import Tables
from mta.transcript import Transcript
from tests.tlssupport import Certificates, TLSServerEnd, TLSStringTransport
from tests.unit.test_smtpclient import BODY, RecordingTransport, clientSettings, makeRequest

HOST = RemoteHost("relay.isp.example", "192.0.2.7", 587)
NAMADDR = "relay.isp.example[192.0.2.7]"
DEST = "[relay.isp.example]:587"
EHLO_AUTH = "250-relay.isp.example\r\n250-PIPELINING\r\n250-AUTH PLAIN LOGIN XOAUTH2 OAUTHBEARER\r\n250 8BITMIME\r\n"
EHLO_NOAUTH = "250-relay.isp.example\r\n250-PIPELINING\r\n250 8BITMIME\r\n"
PASSWORDS = "inline:{ { [relay.isp.example]:587 = alice:s3cret:with:colons } }"
ALLOW_PLAINTEXT = dict(smtp_sasl_security_options="noanonymous")


def b64(text):
    return base64.b64encode(text.encode() if isinstance(text, str) else text).decode()


class Lines(list):
    def emit(self, text, queue_id=None, level=None, **kw):
        self.append(text)


def saslSettings(**params):
    params.setdefault("smtp_sasl_auth_enable", True)
    params.setdefault("smtp_sasl_password_maps", PASSWORDS)
    return clientSettings(**params)


class Session:
    """A session with SASL against a scripted server (plaintext)."""

    def __init__(self, clock=None, sasl=None, request=None, destination=DEST, **params):
        self.clock = clock or Clock()
        self.settings = saslSettings(**params)
        self.sasl = sasl or SaslClient(self.settings.sasl, Tables(self.clock), self.clock)
        self.log = Lines()
        self.transcript = Transcript()
        self.protocol = SMTPClientSession(self.settings, self.clock, self.log, transcript=self.transcript,
                                          sasl=self.sasl, destination=destination)
        self.transport = RecordingTransport()
        self.protocol.makeConnection(self.transport)
        self.outcomes = []
        self.protocol.deliver(request or makeRequest(), (BODY,), HOST).addBoth(self.outcomes.append)

    def greet(self, ehlo=EHLO_AUTH):
        self.reply("220 relay.isp.example ESMTP\r\n")
        assert self.sent() == "EHLO client.example.org\r\n"
        self.reply(ehlo)

    def reply(self, text):
        self.protocol.dataReceived(text.encode())

    def sent(self):
        value = self.transport.value().decode()
        self.transport.clear()
        return value

    def finish(self):
        mail = self.sent()
        assert mail.startswith("MAIL FROM:<alice@example.org>"), mail
        self.reply("250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n354 go\r\n")
        self.sent()
        self.reply("250 2.0.0 Ok: queued as X\r\n")
        return mail

    @property
    def outcome(self):
        assert len(self.outcomes) == 1, self.outcomes
        return self.outcomes[0]

    def statuses(self):
        return [(r.status, r.dsn, r.text) for r in self.outcome.results]


# -- the password lookup ------------------------------------------------------------------------


def client(**params):
    settings = saslSettings(**params)
    clock = Clock()
    return SaslClient(settings.sasl, Tables(clock), clock)


def result(d):
    out = []
    d.addBoth(out.append) if hasattr(d, "addBoth") else out.append(d)
    return out[0]


def run(coroutine):
    from twisted.internet.defer import Deferred

    return result(Deferred.fromCoroutine(coroutine))


def test_password_keys_in_postfixs_order():
    plain = client()
    assert plain.passwordKeys("Alice@Example.ORG", "Relay.ISP.example", DEST) == [
        "relay.isp.example", "[relay.isp.example]:587"]
    dependent = client(smtp_sender_dependent_authentication=True)
    assert dependent.passwordKeys("Alice@Example.ORG", "relay.isp.example", DEST) == [
        "alice@example.org", "@example.org", "relay.isp.example", "[relay.isp.example]:587"]
    assert dependent.passwordKeys("", "relay.isp.example", "example.com") == ["relay.isp.example", "example.com"]


def test_credentials_first_key_wins_and_the_delimiter_splits_once():
    maps = ("inline:{ { alice@example.org = per-sender:p1 }, { @example.org = per-domain:p2 }, "
            "{ relay.isp.example = per-host:p3 }, { [relay.isp.example]:587 = per-nexthop:p4:x } }")
    dependent = client(smtp_sender_dependent_authentication=True, smtp_sasl_password_maps=maps)
    found = run(dependent.credentials("alice@example.org", "relay.isp.example", DEST))
    assert (found.user, found.password, found.key) == ("per-sender", "p1", "alice@example.org")
    found = run(dependent.credentials("bob@example.org", "relay.isp.example", DEST))
    assert (found.user, found.key) == ("per-domain", "@example.org")
    found = run(dependent.credentials("", "relay.isp.example", DEST))
    assert (found.user, found.key) == ("per-host", "relay.isp.example")
    plain = client(smtp_sasl_password_maps=maps)
    found = run(plain.credentials("alice@example.org", "other.host", DEST))
    assert (found.user, found.password, found.key) == ("per-nexthop", "p4:x", "[relay.isp.example]:587")
    assert run(plain.credentials("alice@example.org", "other.host", "[other]:25")) is None
    assert "p4" not in repr(found)
    hashed = client(smtp_sasl_password_maps="inline:{ { relay.isp.example = u#pw:x } }",
                    smtp_sasl_password_result_delimiter="#")
    found = run(hashed.credentials("", "relay.isp.example", DEST))
    assert (found.user, found.password) == ("u", "pw:x")


def test_mechanism_filter_names_negation_and_tables(tmp_path):
    offered = ["GSSAPI", "PLAIN", "LOGIN", "XOAUTH2"]
    assert run(client().filterMechanisms(offered)) == offered
    assert run(client(smtp_sasl_mechanism_filter="plain, login").filterMechanisms(offered)) == ["PLAIN", "LOGIN"]
    assert run(client(smtp_sasl_mechanism_filter="!gssapi, !login, static:all").filterMechanisms(offered)) == [
        "PLAIN", "XOAUTH2"]
    names = tmp_path / "mechs"
    names.write_text("# mechanisms\nxoauth2\n")
    assert run(client(smtp_sasl_mechanism_filter=str(names)).filterMechanisms(offered)) == ["XOAUTH2"]


def test_mechanism_choice_by_the_security_options():
    assert SaslClient.choose(["LOGIN", "PLAIN"], {"noanonymous"}) == "PLAIN"
    assert SaslClient.choose(["LOGIN"], {"noanonymous"}) == "LOGIN"
    assert SaslClient.choose(["XOAUTH2", "OAUTHBEARER"], set()) == "OAUTHBEARER"
    assert SaslClient.choose(["XOAUTH2", "LOGIN"], {"noanonymous"}) == "LOGIN"  # passwords first
    for option in ("noplaintext", "noactive", "nodictionary", "mutual_auth", "forward_secrecy"):
        assert SaslClient.choose(["PLAIN", "LOGIN", "XOAUTH2", "OAUTHBEARER"], {option, "noanonymous"}) is None
    assert SaslClient.choose(["CRAM-MD5", "GSSAPI"], set()) is None  # not built in
    assert not acceptable("PLAIN", {"noplaintext"}) and acceptable("PLAIN", ())


def test_offered_mechanisms_joins_auth_lines_and_the_old_form():
    reply = SMTPReply(250, ("250-mx", "250-AUTH PLAIN login", "250-AUTH=LOGIN XOAUTH2", "250 8BITMIME"))
    assert offeredMechanisms(reply, {"AUTH": "LOGIN XOAUTH2"}) == ["PLAIN", "LOGIN", "XOAUTH2"]


# -- the mechanisms' encodings ------------------------------------------------------------------


def test_plain_login_xoauth2_oauthbearer_encodings():
    assert MECHANISMS["PLAIN"]("alice", "pw").initial() == b"\0alice\0pw"
    login = MECHANISMS["LOGIN"]("alice", "pw")
    assert login.initial() is None
    assert login.step(b"Username:") == b"alice" and login.step(b"Password:") == b"pw"
    with pytest.raises(SaslError):
        login.step(b"More:")
    xo = MECHANISMS["XOAUTH2"]("alice@example.com", "ya29.token")
    assert xo.initial() == b"user=alice@example.com\x01auth=Bearer ya29.token\x01\x01"
    assert xo.step(json.dumps({"status": "401"}).encode()) == b""  # then the server's 5xx
    ob = MECHANISMS["OAUTHBEARER"]("a,b=c@example.com", "tok", "smtp.example.com", 587)
    assert ob.initial() == (b"n,a=a=2Cb=3Dc@example.com,\x01host=smtp.example.com\x01port=587\x01"
                            b"auth=Bearer tok\x01\x01")
    assert ob.step(b'{"status":"invalid_token"}') == b"\x01"  # RFC 7628 3.2.3
    with pytest.raises(SaslError):
        ob.step(b"again")
    with pytest.raises(SaslError):
        MECHANISMS["PLAIN"]("a\0b", "pw").initial()
    with pytest.raises(SaslError):
        MECHANISMS["XOAUTH2"]("a", "t\x01auth=x").initial()
    with pytest.raises(SaslError, match="bad protocol / cancel"):
        b64decode("not base64!")


# -- the dialog -----------------------------------------------------------------------------------


def test_plain_in_plaintext_only_when_the_options_allow_it():
    s = Session(**ALLOW_PLAINTEXT)
    s.greet()
    assert s.sent() == f"AUTH PLAIN {b64(chr(0) + 'alice' + chr(0) + 's3cret:with:colons')}\r\n"
    s.reply("235 2.7.0 Authentication successful\r\n")
    mail = s.finish()
    assert mail.startswith("MAIL FROM:<alice@example.org>\r\n")  # no AUTH=<> by default (Postfix 2.9+)
    assert s.statuses()[0][0] == "sent"
    assert s.protocol.saslIdentity == ("alice", "PLAIN")
    assert f"{HOST.relay}: SASL PLAIN authentication succeeded as alice" in s.log
    transcript = "\n".join(s.transcript._head)
    assert "s3cret" not in transcript and b64("\0alice\0s3cret:with:colons") not in transcript
    assert "AUTH PLAIN <hidden>" in transcript


def test_default_options_send_no_credentials_in_plaintext():
    s = Session()
    s.greet()
    assert s.sent() == "QUIT\r\n"
    assert s.statuses() == [("deferred", "4.7.0", f"SASL authentication failed; cannot authenticate to server "
                                                  f"{NAMADDR}: no mechanism available")]
    assert s.outcome.tryNextHost
    assert "warning: SASL authentication failure: No worthy mechs found" in s.log


def test_no_credentials_or_no_auth_offered_means_no_auth():
    s = Session(smtp_sasl_password_maps="inline:{ { other.host = u:p } }", **ALLOW_PLAINTEXT)
    s.greet()
    s.finish()
    assert s.statuses()[0][0] == "sent" and s.protocol.saslIdentity is None
    s = Session(**ALLOW_PLAINTEXT)
    s.greet(EHLO_NOAUTH)
    s.finish()
    assert s.statuses()[0][0] == "sent"


def test_filter_leaves_nothing():
    s = Session(smtp_sasl_mechanism_filter="cram-md5", **ALLOW_PLAINTEXT)
    s.greet()
    assert s.sent() == "QUIT\r\n"
    assert s.statuses() == [("deferred", "4.7.0", f"SASL authentication failed: server {NAMADDR} offered no "
                             "compatible authentication mechanisms for this type of connection security")]
    assert ("warning: relay.isp.example[192.0.2.7]:587 offered no supported AUTH mechanisms: "
            "'PLAIN LOGIN XOAUTH2 OAUTHBEARER'") in s.log


@pytest.mark.parametrize("softBounce, status, dsn", [(True, "deferred", "4.7.8"), (False, "bounced", "5.7.8")])
def test_535_names_the_relay_and_soft_bounce_decides(softBounce, status, dsn):
    s = Session(smtp_sasl_auth_soft_bounce=softBounce, **ALLOW_PLAINTEXT)
    s.greet()
    assert s.sent().startswith("AUTH PLAIN ")
    s.reply("535 5.7.8 Error: authentication failed: authentication failure\r\n")
    assert s.sent() == "QUIT\r\n"
    [(got, code, text)] = s.statuses()
    assert (got, code) == (status, dsn)
    assert text == (f"SASL authentication failed; server {NAMADDR} said: 535 5.7.8 Error: authentication failed: "
                    "authentication failure")
    assert s.outcome.results[0].diagnostic.startswith("smtp; 535 5.7.8")


def test_4xx_to_auth_defers():
    s = Session(**ALLOW_PLAINTEXT)
    s.greet()
    s.sent()
    s.reply("454 4.7.0 Temporary authentication failure\r\n")
    assert s.statuses()[0][:2] == ("deferred", "4.7.0") and s.outcome.tryNextHost


def test_login_dialog():
    s = Session(smtp_sasl_mechanism_filter="login", **ALLOW_PLAINTEXT)
    s.greet()
    assert s.sent() == "AUTH LOGIN\r\n"
    s.reply(f"334 {b64('Username:')}\r\n")
    assert s.sent() == b64("alice") + "\r\n"
    s.reply(f"334 {b64('Password:')}\r\n")
    assert s.sent() == b64("s3cret:with:colons") + "\r\n"
    s.reply("235 2.7.0 Authentication successful\r\n")
    s.finish()
    assert s.protocol.saslIdentity == ("alice", "LOGIN")


def test_xoauth2_with_the_token_from_the_password_map_and_its_error_challenge():
    s = Session(smtp_sasl_mechanism_filter="xoauth2", smtp_sasl_security_options="",
                smtp_sasl_password_maps="inline:{ { relay.isp.example = alice@example.com:ya29.tok } }")
    s.greet()
    assert s.sent() == f"AUTH XOAUTH2 {b64('user=alice@example.com' + chr(1) + 'auth=Bearer ya29.tok' + chr(1) * 2)}\r\n"
    s.reply(f"334 {b64(json.dumps({'status': '400', 'schemes': 'Bearer'}))}\r\n")
    assert s.sent() == "\r\n"
    s.reply("535 5.7.8 Username and Password not accepted\r\n")
    assert s.statuses()[0][:2] == ("deferred", "4.7.8")


def test_oauthbearer_success():
    s = Session(smtp_sasl_mechanism_filter="oauthbearer, xoauth2", smtp_sasl_security_options="noanonymous",
                smtp_sasl_password_maps="inline:{ { relay.isp.example = bob:tok } }")
    s.greet()
    line = s.sent()
    assert line.startswith("AUTH OAUTHBEARER ")
    assert base64.b64decode(line.split()[2]) == b"n,a=bob,\x01host=relay.isp.example\x01port=587\x01auth=Bearer tok\x01\x01"
    s.reply("235 2.7.0 Accepted\r\n")
    s.finish()
    assert s.protocol.saslIdentity == ("bob", "OAUTHBEARER")


def test_a_bad_challenge_is_cancelled():
    s = Session(smtp_sasl_mechanism_filter="login", **ALLOW_PLAINTEXT)
    s.greet()
    s.sent()
    s.reply("334 %%%garbage\r\n")
    assert s.sent() == "*\r\n"
    s.reply("501 5.7.0 Authentication aborted\r\n")
    assert s.sent() == "QUIT\r\n"
    assert s.statuses() == [("deferred", "4.7.0", f"SASL authentication failed; cannot authenticate to server "
                                                  f"{NAMADDR}: bad protocol / cancel")]


def test_dummy_mail_auth_only_when_asked_and_authenticated():
    s = Session(smtp_send_dummy_mail_auth=True, **ALLOW_PLAINTEXT)
    s.greet()
    s.sent()
    s.reply("235 2.7.0 Ok\r\n")
    assert s.finish().startswith("MAIL FROM:<alice@example.org> AUTH=<>\r\n")


def test_a_table_that_cannot_answer_defers():
    from twisted.internet.defer import fail

    from mta.tables import TableTemporaryError

    s = Session.__new__(Session)
    settings = saslSettings(**ALLOW_PLAINTEXT)
    clock = Clock()
    sasl = SaslClient(settings.sasl, Tables(clock), clock)

    class Broken:
        def lookup(self, key):
            return fail(TableTemporaryError("down"))

    sasl.passwordMaps = [Broken()]
    s.__init__(clock=clock, sasl=sasl, **ALLOW_PLAINTEXT)
    s.greet()
    assert s.statuses() == [("deferred", "4.3.0", f"local data error while talking to {NAMADDR}")]
    assert any("smtp_sasl_password_maps lookup error" in line for line in s.log)


# -- the 535 cache ----------------------------------------------------------------------------------


def test_auth_cache_remembers_a_535_until_the_password_changes_or_it_expires(tmp_path):
    clock = Clock()
    clock.advance(1_000_000)
    cacheName = f"proxy:btree:{tmp_path}/sasl_auth_cache"
    params = dict(smtp_sasl_auth_cache_name=cacheName, smtp_sasl_auth_cache_time="1d", **ALLOW_PLAINTEXT)
    settings = saslSettings(**params)
    assert settings.sasl.cachePath == f"{tmp_path}/sasl_auth_cache.sqlite"
    sasl = SaslClient(settings.sasl, Tables(clock), clock)
    s = Session(clock=clock, sasl=sasl, **params)
    s.greet()
    s.sent()
    s.reply("535 5.7.8 Error: authentication failed\r\n")
    assert s.statuses()[0][:2] == ("deferred", "4.7.8")
    assert "s3cret" not in (tmp_path / "sasl_auth_cache.sqlite").read_bytes().decode("latin-1")
    # Another session (a new SaslClient: the file is what persists): no AUTH is tried.
    sasl2 = SaslClient(settings.sasl, Tables(clock), clock)
    s = Session(clock=clock, sasl=sasl2, **params)
    s.greet()
    assert s.sent() == "QUIT\r\n"
    assert s.statuses() == [("deferred", "4.7.8", "SASL [CACHED] authentication failed; server relay.isp.example "
                                                  "said: 535 5.7.8 Error: authentication failed")]
    # A new password is tried.
    changed = dict(params, smtp_sasl_password_maps="inline:{ { [relay.isp.example]:587 = alice:new } }")
    s = Session(clock=clock, sasl=SaslClient(saslSettings(**changed).sasl, Tables(clock), clock), **changed)
    s.greet()
    assert s.sent().startswith("AUTH PLAIN ")
    # The old password's entry was dropped when it no longer matched; store it again, let it expire.
    cache = AuthCache(f"{tmp_path}/sasl_auth_cache.sqlite", 86400, clock)
    cache.store("relay.isp.example", "alice", "s3cret:with:colons", "5.7.8", "535 5.7.8 no")
    assert cache.find("Relay.ISP.example", "alice", "s3cret:with:colons") == ("5.7.8", "535 5.7.8 no")
    clock.advance(86401)
    assert cache.find("relay.isp.example", "alice", "s3cret:with:colons") is None
    cache.close()


# -- under TLS (in memory) ---------------------------------------------------------------------------

EHLO_STARTTLS = "250-relay.isp.example\r\n250-STARTTLS\r\n250-AUTH PLAIN LOGIN\r\n250 8BITMIME\r\n"


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    return Certificates(tmp_path_factory.mktemp("certs"))


class TLSSession(Session):
    def __init__(self, certs, **params):
        self.clock = Clock()
        self.settings = saslSettings(**params)
        self.sasl = SaslClient(self.settings.sasl, Tables(self.clock), self.clock)
        self.log = Lines()
        self.protocol = SMTPClientSession(self.settings, self.clock, self.log, sasl=self.sasl, destination=DEST)
        self.transport = TLSStringTransport(client=True)
        self.transport.protocol = self.protocol
        self.server = TLSServerEnd(self.transport, TLSServerEnd.serverContext(certs, "server-chain.pem"))
        self.protocol.makeConnection(self.transport)
        self.outcomes = []
        request = attrs.evolve(makeRequest(), nexthop="[relay.isp.example]:587")
        self.protocol.deliver(request, (BODY,), RemoteHost("mx.test", "127.0.0.1", 587)).addBoth(self.outcomes.append)

    def starttls(self):
        self.server.send("220 mx.test ESMTP\r\n")
        assert self.server.read() == "EHLO client.example.org\r\n"
        self.server.send(EHLO_STARTTLS)  # AUTH offered in plaintext too: it must not be used there
        assert self.server.read() == "STARTTLS\r\n"
        self.server.send("220 2.0.0 Ready\r\n")
        self.server.accept()
        assert self.server.read() == "EHLO client.example.org\r\n"
        self.server.send("250-mx.test\r\n250-AUTH PLAIN LOGIN\r\n250 8BITMIME\r\n")


PASSWORDS_MX = "inline:{ { mx.test = alice:pw } }"


def test_tls_security_options_allow_plain_after_starttls_and_the_second_ehlo(certs):
    s = TLSSession(certs, smtp_sasl_password_maps=PASSWORDS_MX, smtp_sasl_tls_security_options="noanonymous")
    s.starttls()
    assert s.protocol.tlsActive
    assert s.server.read() == f"AUTH PLAIN {b64(chr(0) + 'alice' + chr(0) + 'pw')}\r\n"
    s.server.send("235 2.7.0 Ok\r\n")
    assert s.server.read().startswith("MAIL FROM:")


def test_default_tls_options_still_forbid_plaintext_mechanisms(certs):
    s = TLSSession(certs, smtp_sasl_password_maps=PASSWORDS_MX)
    s.starttls()
    assert s.server.read() == "QUIT\r\n"
    s.server.send("221 Bye\r\n")
    s.transport.tlsClock.advance(0)
    assert s.statuses()[0][2].endswith("no mechanism available")


@pytest.mark.parametrize("level, ca, sent", [("may", False, False), ("verify", True, True)])
def test_verified_security_options_need_a_verified_certificate(certs, level, ca, sent):
    params = dict(smtp_sasl_password_maps=PASSWORDS_MX, smtp_sasl_tls_security_options="noplaintext",
                  smtp_sasl_tls_verified_security_options="noanonymous", smtp_tls_security_level=level)
    if ca:
        params["smtp_tls_CAfile"] = certs["ca.pem"]
    s = TLSSession(certs, **params)
    s.starttls()
    line = s.server.read()
    assert line.startswith("AUTH PLAIN ") if sent else line == "QUIT\r\n"


# -- configuration, the cache key, sender_dependent_relayhost_maps -------------------------------------


def test_configuration_errors_name_the_line(tmp_path):
    with pytest.raises(ConfigError, match=r"<t>:2: \[main\] smtp_sasl_auth_enable: specify a password table"):
        load("<t>", "[main]\nsmtp_sasl_auth_enable = yes\n")
    with pytest.raises(ConfigError, match="smtp_sasl_auth_cache_name"):
        load("<t>", "[main]\nsmtp_sasl_auth_cache_name = texthash:/tmp/x\n")
    with pytest.raises(ConfigError, match="smtp_sasl_mechanism_filter"):
        load("<t>", "[main]\nsmtp_sasl_mechanism_filter = /nonexistent/mechs\n")
    with pytest.raises(ConfigError, match="lmtp_sasl_password_result_delimiter"):
        load("<t>", "[main]\nlmtp_sasl_password_result_delimiter = ::\n")
    with pytest.raises(ConfigError, match="smtp_sasl_type"):
        load("<t>", "[main]\nsmtp_sasl_type = dovecot\n")
    settings = load("<t>", "[main]\nlmtp_sasl_auth_enable = yes\nlmtp_sasl_password_maps = inline:{ a=b:c }\n"
                    "lmtp_sasl_tls_security_options = noanonymous\n").settings
    assert settings.lmtpClient.sasl.active and not settings.smtpClient.sasl.active
    assert settings.lmtpClient.sasl.securityOptions == {"noplaintext", "noanonymous"}
    assert settings.lmtpClient.sasl.tlsVerifiedSecurityOptions == {"noanonymous"}  # follows the TLS options


def test_cache_key_holds_the_sender_only_under_sender_dependent_authentication():
    from mta.delivery.smtp import SMTPTransport

    request = makeRequest(sender="Alice@Example.org")
    keys = []
    for dependent in (False, True):
        transport = SMTPTransport.__new__(SMTPTransport)
        settings = saslSettings(smtp_sender_dependent_authentication=dependent)
        transport.sasl = SaslClient(settings.sasl, Tables(Clock()), Clock())
        transport.settings = settings
        keys.append(transport._cacheKey("[relay.isp.example]:587", "policy", transport._saslLabel(request)))
    assert keys[0] != keys[1]
    assert keys[0] == transport._cacheKey("[relay.isp.example]:587", "policy", None)
    assert keys[1] == transport._cacheKey("[relay.isp.example]:587", "policy", "alice@example.org")


def test_sender_dependent_relayhost_maps():
    from mta.routing import Router

    settings = load("<t>", "[main]\nmydestination = localhost\nrelayhost = [default.relay]\n"
                    "sender_dependent_relayhost_maps = inline:{ { alice@example.org = [alice.relay]:587 }, "
                    "{ @example.net = [net.relay] }, { <> = [bounce.relay] }, { carol@example.net = DUNNO } }\n"
                    "transport_maps = inline:{ { pinned.example = smtp:[pinned.relay] } }\n").settings.resolver
    router = Router(settings, Tables(Clock()))

    def nexthop(address, sender):
        [route] = run(router.route(address, sender))
        return route.nexthop

    assert nexthop("x@dest.example", "alice@example.org") == "[alice.relay]:587"
    assert nexthop("x@dest.example", "bob@example.net") == "[net.relay]"
    assert nexthop("x@dest.example", "") == "[bounce.relay]"
    assert nexthop("x@dest.example", "carol@example.net") == "[default.relay]"  # DUNNO: $relayhost
    assert nexthop("x@dest.example", "dave@elsewhere.example") == "[default.relay]"
    assert nexthop("x@dest.example", None) == "[default.relay]"
    assert nexthop("x@pinned.example", "alice@example.org") == "[pinned.relay]"  # transport_maps win
