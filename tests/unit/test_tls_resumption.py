"""TLS session resumption in the SMTP client (mta.delivery.tlssessions) over in-memory TLS: no sockets, no sleeps."""

import attrs
import pytest
from twisted.internet.task import Clock

from mta.delivery.smtpclient import RemoteHost, SMTPClientSession
from mta.delivery.smtptls import ClientTLS
from mta.delivery.tlssessions import MAX_TIMEOUT, MIN_TIMEOUT, TlsSessionCache, sessionKey
from tests.tlssupport import Certificates, TLSServerEnd, TLSStringTransport
from tests.unit.test_smtpclient import BODY, clientSettings, makeRequest
from tests.unit.test_smtpclient_tls import EHLO_AFTER, EHLO_TLS, Lines

MX = RemoteHost("mx.test", "127.0.0.1", 25)


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    return Certificates(tmp_path_factory.mktemp("certs"))


class Server:
    """One next hop: one server context (its ticket keys), so that its sessions can be resumed."""

    def __init__(self, certs, chain="server-chain.pem"):
        self.context = TLSServerEnd.serverContext(certs, chain)
        self.clock = Clock()  # the session cache's clock
        self.cache = TlsSessionCache(self.clock, 3600)
        self.contexts = {}

    def deliver(self, settings, host=MX, useCache=True):
        """One connection and one mail over STARTTLS; the session (with tlsInfo) and its log."""
        log = Lines()
        # One context per TLS policy, as the transport keeps it (a session resumes only in its context).
        tls = self.contexts.setdefault(settings.tls, ClientTLS(settings.tls))
        protocol = SMTPClientSession(settings, Clock(), log, tls=tls)
        protocol.tlsSessions = self.cache if useCache else None
        transport = TLSStringTransport(client=True)
        transport.protocol = protocol
        server = TLSServerEnd(transport, self.context)
        protocol.makeConnection(transport)
        outcomes = []
        protocol.deliver(attrs.evolve(makeRequest(), nexthop="mta.test"), (BODY,), host).addBoth(outcomes.append)
        server.send("220 mx.test ESMTP\r\n")
        assert server.read() == "EHLO client.example.org\r\n"
        server.send(EHLO_TLS)
        assert server.read() == "STARTTLS\r\n"
        server.send("220 2.0.0 Ready\r\n")
        server.accept()
        if protocol.tlsVerdict is not None and protocol.tlsVerdict.failure:
            return protocol, log, outcomes
        assert server.read() == "EHLO client.example.org\r\n"
        server.send(EHLO_AFTER)
        assert server.read().startswith("MAIL FROM:")
        server.send("250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n354 go\r\n")
        assert server.read().endswith("\r\n.\r\nQUIT\r\n")  # QUIT pipelined after the final "."
        server.send("250 2.0.0 Ok: queued as X\r\n221 Bye\r\n")
        transport.tlsClock.advance(0)
        assert [r.status for r in outcomes[0].results] == ["sent"]
        return protocol, log, outcomes


def test_a_second_connection_resumes_the_session(certs):
    srv = Server(certs)
    settings = clientSettings(smtp_tls_loglevel=2)
    first, log1, _ = srv.deliver(settings)
    assert first.tlsInfo.protocol == "TLSv1.3" and not first.tlsInfo.reused
    assert len(srv.cache) == 1
    second, log2, _ = srv.deliver(settings)
    assert second.tlsInfo.reused  # TlsInfo says so (TLS-RPT's skip_reused_handshakes)
    assert "smtp:127.0.0.1:25: Reusing old session" in log2
    # Postfix's words: a new connection is "established", resumed or not ("reused" is for cached connections)
    assert any(t.startswith("Untrusted TLS connection established to mx.test[127.0.0.1]:25: TLSv1.3") for t in log2)
    assert not [t for t in log1 if "Reusing" in t]


def test_the_session_is_taken_after_the_first_reply_inside_tls(certs):
    # TLS 1.3 tickets come after the handshake: the entry is settled (holds a Session, not the connection).
    srv = Server(certs)
    srv.deliver(clientSettings())
    (entry,) = srv.cache._entries.values()
    assert entry.session is not None and entry.connection is None


def test_reusing_is_logged_only_at_loglevel_2(certs):
    srv = Server(certs)
    srv.deliver(clientSettings(smtp_tls_loglevel=1))
    second, log, _ = srv.deliver(clientSettings(smtp_tls_loglevel=1))
    assert second.tlsInfo.reused
    assert not [t for t in log if "Reusing" in t]


def test_an_expired_session_means_a_full_handshake(certs):
    srv = Server(certs)
    settings = clientSettings()
    srv.deliver(settings)
    srv.clock.advance(3599)
    assert srv.deliver(settings)[0].tlsInfo.reused
    srv.clock.advance(3600)  # the second handshake stored it again at 3599: now it is 3600 old
    third, _, _ = srv.deliver(settings)
    assert not third.tlsInfo.reused
    assert srv.deliver(settings)[0].tlsInfo.reused  # the full handshake stored a fresh one


def test_another_server_name_is_not_resumed(certs):
    srv = Server(certs)
    settings = clientSettings(smtp_tls_servername="hostname")
    srv.deliver(settings, host=MX)
    other = RemoteHost("mx2.test", "127.0.0.1", 25)  # same address and port, another SNI
    assert not srv.deliver(settings, host=other)[0].tlsInfo.reused
    assert srv.deliver(settings, host=MX)[0].tlsInfo.reused


def test_another_address_or_port_is_not_resumed(certs):
    srv = Server(certs)
    settings = clientSettings()
    srv.deliver(settings)
    assert not srv.deliver(settings, host=RemoteHost("mx.test", "127.0.0.2", 25))[0].tlsInfo.reused
    assert not srv.deliver(settings, host=RemoteHost("mx.test", "127.0.0.1", 2525))[0].tlsInfo.reused


def test_another_tls_policy_is_not_resumed(certs):
    srv = Server(certs)
    srv.deliver(clientSettings(smtp_tls_security_level="may"))
    encrypt = clientSettings(smtp_tls_security_level="encrypt")
    assert not srv.deliver(encrypt)[0].tlsInfo.reused
    assert srv.deliver(encrypt)[0].tlsInfo.reused


def test_an_untrusted_original_stays_untrusted_when_resumed(certs):
    # OpenSSL does not verify the chain again on resumption: the verdict of the original handshake holds.
    srv = Server(certs)
    settings = clientSettings(smtp_tls_security_level="encrypt", smtp_tls_loglevel=1)
    srv.deliver(settings)
    second, log, _ = srv.deliver(settings)
    assert second.tlsInfo.reused and second.tlsVerdict.trust == "Untrusted"


def test_verified_sessions_resume_as_verified(certs):
    srv = Server(certs)
    settings = clientSettings(smtp_tls_security_level="verify", smtp_tls_CAfile=certs["ca.pem"], smtp_tls_loglevel=1)
    srv.deliver(settings)
    second, log, _ = srv.deliver(settings)
    assert second.tlsInfo.reused and second.tlsVerdict.trust == "Verified"
    assert any(t.startswith("Verified TLS connection established to mx.test[127.0.0.1]:25") for t in log)


def test_a_refused_certificate_leaves_no_session(certs):
    srv = Server(certs)
    protocol, _, outcomes = srv.deliver(clientSettings(smtp_tls_security_level="verify"))  # no CA: not trusted
    assert protocol.tlsVerdict.failure == "Server certificate not trusted"
    assert len(srv.cache) == 0


def test_no_cache_no_resumption(certs):
    srv = Server(certs)
    settings = clientSettings()
    first, _, _ = srv.deliver(settings, useCache=False)
    second, _, _ = srv.deliver(settings, useCache=False)
    assert not second.tlsInfo.reused


# -- the cache alone ----------------------------------------------------------------------


class FakeConnection:
    def __init__(self, session):
        self.session = session

    def get_session(self):
        return self.session


def test_cache_keys_lookup_and_expiry():
    clock = Clock()
    cache = TlsSessionCache(clock, 600)
    key = sessionKey("127.0.0.1", 25, "MX.test", "policy")
    assert key == sessionKey("127.0.0.1", 25, "mx.test", "policy")  # SNI compared in lower case
    conn = FakeConnection("S1")
    cache.remember(key, conn, trusted=True)
    assert cache.lookup(key) == ("S1", True)  # not settled yet: the open connection's session
    conn.session = "S2"  # the TLS 1.3 ticket came
    cache.settle(conn)
    del conn
    assert cache.lookup(key) == ("S2", True)
    assert cache.lookup(sessionKey("127.0.0.1", 25, "mx.test", "other policy")) is None
    clock.advance(600)
    assert cache.lookup(key) is None and len(cache) == 0


def test_cache_forgets_a_connection_that_went_away_unsettled():
    cache = TlsSessionCache(Clock(), 600)
    cache.remember("k", FakeConnection("S"), trusted=False)  # the connection is gone at once
    assert cache.lookup("k") is None


def test_cache_limit_drops_the_oldest():
    cache = TlsSessionCache(Clock(), 600, limit=2)
    conns = [FakeConnection(f"S{i}") for i in range(3)]
    for i, c in enumerate(conns):
        cache.remember(i, c, trusted=False)
    assert cache.lookup(0) is None and cache.lookup(2) == ("S2", False) and len(cache) == 2


def test_effective_timeout_is_postfix_s():
    assert TlsSessionCache.effectiveTimeout(0) == 0
    assert TlsSessionCache.effectiveTimeout(30) == MIN_TIMEOUT == 120
    assert TlsSessionCache.effectiveTimeout(3600) == 3600
    assert TlsSessionCache.effectiveTimeout(MAX_TIMEOUT) == 8640000


def test_settings_bounds():
    from mta.config.errors import ConfigError

    assert clientSettings().tlsSessionCacheTimeout == 3600
    assert clientSettings().tlsConnectionReuse is True
    assert clientSettings(lmtp=True, lmtp_tls_session_cache_timeout="0").tlsSessionCacheTimeout == 0
    with pytest.raises(ConfigError, match="smtp_tls_session_cache_timeout.*100 days"):
        clientSettings(smtp_tls_session_cache_timeout="101d")
