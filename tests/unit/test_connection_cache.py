"""The in-process connection cache (scache): idle limit, reuse limit, count limit, per destination."""

from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock

from mta.delivery.connectioncache import ConnectionCache


class FakeSession:
    def __init__(self):
        self.quits = 0

    def quit(self):
        self.quits += 1
        return succeed(None)


def test_takenOnlyForItsDestinationAndExpiresWhenIdle():
    clock = Clock()
    cache = ConnectionCache(clock, idleLimit=2, reuseLimit=300, countLimit=0)
    a = FakeSession()
    cache.put("a.example", a, "remote", clock.seconds(), 1)
    assert cache.take("b.example") is None
    entry = cache.take("a.example")
    assert entry.session is a and entry.uses == 1
    assert cache.take("a.example") is None  # taken: no longer idle
    cache.put("a.example", a, "remote", clock.seconds(), 2)
    clock.advance(2)
    assert a.quits == 1 and cache.take("a.example") is None


def test_reuseAndCountLimits():
    clock = Clock()
    cache = ConnectionCache(clock, idleLimit=10, reuseLimit=300, countLimit=3)
    old = FakeSession()
    cache.put("a.example", old, "remote", clock.seconds(), 1)
    clock.advance(5)
    assert cache.take("a.example").session is old
    cache.put("a.example", old, "remote", clock.seconds() - 400, 1)  # made too long ago: closed, not kept
    assert old.quits == 1 and cache.take("a.example") is None
    worn = FakeSession()
    cache.put("a.example", worn, "remote", clock.seconds(), 3)  # used countLimit times
    assert worn.quits == 1 and cache.take("a.example") is None


def test_closeAll():
    clock = Clock()
    cache = ConnectionCache(clock, idleLimit=10, reuseLimit=300, countLimit=0)
    sessions = [FakeSession() for _ in range(3)]
    for i, s in enumerate(sessions):
        cache.put(f"d{i % 2}.example", s, "remote", clock.seconds(), 1)
    cache.closeAll()
    assert [s.quits for s in sessions] == [1, 1, 1]
    clock.advance(20)  # no timer left behind
    assert [s.quits for s in sessions] == [1, 1, 1]


class ClosingSession(FakeSession):
    """A session whose socket closes only when told (connectionLost later than QUIT)."""

    def __init__(self):
        super().__init__()
        self.closed = Deferred()
        self.aborted = 0

    def whenClosed(self):
        return self.closed

    def abortNow(self):
        self.aborted += 1
        self.closed.callback(None)


def test_closeAll_waits_until_each_connection_is_gone():
    clock = Clock()
    cache = ConnectionCache(clock, idleLimit=10, reuseLimit=300, countLimit=0)
    quick, slow = ClosingSession(), ClosingSession()
    cache.put("a.example", quick, "remote", clock.seconds(), 1)
    cache.put("b.example", slow, "remote", clock.seconds(), 1)
    done = []
    cache.closeAll(closeTimeout=5).addCallback(done.append)
    assert quick.quits == slow.quits == 1 and done == []  # QUIT queued, the sockets still open
    quick.closed.callback(None)
    assert done == []
    clock.advance(5)  # the slow one is aborted
    assert slow.aborted == 1 and quick.aborted == 0 and len(done) == 1
    clock.advance(20)
    assert slow.aborted == 1


# -- keys: destination, TLS policy, extra parts (smtp_tls_connection_reuse) --------------------


def test_cacheKeyPartsAreComparedWhole():
    from mta.delivery.connectioncache import cacheKey

    assert cacheKey("a.example", "policy") == cacheKey("a.example", "policy", None, "") == ("a.example", "policy")
    assert cacheKey("a.example", "policy", "alice") != cacheKey("a.example", "policy", "bob")
    assert cacheKey("a.example", "policy", "alice") != cacheKey("a.example", "policy")
    clock = Clock()
    cache = ConnectionCache(clock, idleLimit=2, reuseLimit=300, countLimit=0)
    a = FakeSession()
    cache.put(cacheKey("a.example", "encrypt-policy"), a, "remote", clock.seconds(), 1)
    assert cache.take(cacheKey("a.example", "may-policy")) is None  # another policy: never this connection
    assert cache.take(cacheKey("b.example", "encrypt-policy")) is None  # another destination
    assert cache.take(cacheKey("a.example", "encrypt-policy", "alice")) is None  # another SASL identity
    assert cache.take(cacheKey("a.example", "encrypt-policy")).session is a  # the same: reused
    assert len(cache) == 0


def _transport(**params):
    from types import SimpleNamespace

    from mta.delivery.smtp import SMTPTransport
    from tests.unit.test_smtpclient import clientSettings

    clock = Clock()
    transport = SimpleNamespace(settings=clientSettings(**params),
                                cache=ConnectionCache(clock, idleLimit=2, reuseLimit=300, countLimit=0))
    for name in ("_cacheKey", "_tlsReuse", "_keep"):
        setattr(transport, name, getattr(SMTPTransport, name).__get__(transport))
    return transport, clock


def test_transportKeysByTlsPolicy():
    may, _ = _transport(smtp_tls_security_level="may")
    encrypt, _ = _transport(smtp_tls_security_level="encrypt")
    same, _ = _transport(smtp_tls_security_level="may")
    assert may._cacheKey("d.example") != encrypt._cacheKey("d.example")
    assert may._cacheKey("d.example") == same._cacheKey("d.example")
    assert may._cacheKey("d.example") != may._cacheKey("d.example", identity="alice")
    assert may._cacheKey("d.example", "key-a") != may._cacheKey("d.example", "key-b")  # SitePolicy.reuseKey
    assert may._cacheKey("d.example", "key-a") == ("d.example", "key-a")


def test_tlsConnectionsAreCachedOnlyWithConnectionReuse():
    from types import SimpleNamespace

    for reuse, cachedTls in ((True, True), (False, False)):
        transport, clock = _transport(smtp_tls_connection_reuse=reuse)
        key = transport._cacheKey("d.example")
        tls, plain = FakeSession(), FakeSession()
        tls.tlsActive, plain.tlsActive = True, False
        transport._keep(key, tls, "remote", clock.seconds(), 1)
        assert (transport.cache.take(key) is not None) is cachedTls
        assert tls.quits == (0 if cachedTls else 1)  # not cached: QUIT at once (Postfix's "no")
        transport._keep(key, plain, "remote", clock.seconds(), 1)
        assert transport.cache.take(key).session is plain  # plaintext connections are cached either way
    # The policy's connection_reuse= (SitePolicy.connectionReuse) overrides the parameter.
    transport, clock = _transport(smtp_tls_connection_reuse=False)
    site = SimpleNamespace(reuseKey="site-key", connectionReuse=True)
    tls = FakeSession()
    tls.tlsActive = True
    transport._keep(transport._cacheKey("d.example", site.reuseKey), tls, "remote", clock.seconds(), 1, site=site)
    assert transport.cache.take(("d.example", "site-key")).session is tls


def test_realSitePoliciesKeyTheCache():
    import attrs

    from mta.delivery.tlspolicy import SitePolicy

    transport, clock = _transport(smtp_tls_security_level="may")
    base = transport.settings.tls
    may = SitePolicy(tls=base, domain="d.example")
    encrypt = SitePolicy(tls=attrs.evolve(base, level="encrypt"), domain="d.example", source="smtp_tls_policy_maps")
    a = FakeSession()
    a.tlsActive = True
    transport._keep(transport._cacheKey("d.example", encrypt.reuseKey), a, "remote", clock.seconds(), 1, site=encrypt)
    assert transport.cache.take(transport._cacheKey("d.example", may.reuseKey)) is None  # the policy differs
    same = SitePolicy(tls=attrs.evolve(base, level="encrypt"), domain="d.example", source="smtp_tls_policy_maps")
    assert transport.cache.take(transport._cacheKey("d.example", same.reuseKey)).session is a  # an equal policy
    # connection_reuse=no in the policy: a TLS connection is not cached (QUIT)
    off = attrs.evolve(encrypt, connectionReuse=False)
    b = FakeSession()
    b.tlsActive = True
    transport._keep(transport._cacheKey("d.example", off.reuseKey), b, "remote", clock.seconds(), 1, site=off)
    assert b.quits == 1 and len(transport.cache) == 0
