"""The in-process connection cache (scache): idle limit, reuse limit, count limit, per destination."""

from twisted.internet.defer import succeed
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
