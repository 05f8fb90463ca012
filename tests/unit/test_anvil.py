"""mta.smtpd.anvil: per-client session counts and event rates, on a Clock."""

from twisted.internet.task import Clock

from mta.smtpd.anvil import Anvil


def test_sessions_and_connection_rate():
    clock = Clock()
    anvil = Anvil(clock, 60)
    assert anvil.connect("a") == (1, 1)
    assert anvil.connect("a") == (2, 2)
    assert anvil.connect("b") == (1, 1)
    anvil.disconnect("a")
    assert anvil.connect("a") == (2, 3)  # the rate counts connections, not open sessions
    anvil.disconnect("a")
    anvil.disconnect("a")
    anvil.disconnect("a")  # one too many: never below zero
    assert anvil.sessions("a") == 0
    assert anvil.connect("a") == (1, 4)


def test_one_window_per_client_resets_every_rate_together():
    clock = Clock()
    anvil = Anvil(clock, 60)
    anvil.connect("a")
    assert [anvil.event("a", "mail"), anvil.event("a", "mail"), anvil.event("a", "rcpt")] == [1, 2, 1]
    clock.advance(60)  # anvil's test is start + unit < now: still the same window
    assert anvil.event("a", "mail") == 3
    assert anvil.status("a", "rcpt") == 1
    clock.advance(1)
    assert anvil.status("a", "mail") == 0  # stale: not reported
    assert anvil.event("a", "rcpt") == 1 and anvil.status("a", "mail") == 0
    assert anvil.connect("a") == (2, 1)  # the open session still counts; the rate starts again


def test_status_counts_nothing():
    clock = Clock()
    anvil = Anvil(clock, 60)
    assert anvil.status("a", "newtls") == 0
    assert len(anvil) == 0
    assert anvil.event("a", "newtls") == 1
    assert anvil.status("a", "newtls") == 1
    assert anvil.event("a", "newtls") == 2


def test_forgotten_clients_are_swept_when_the_table_is_full():
    clock = Clock()
    anvil = Anvil(clock, 60)
    anvil.PRUNE = 3
    anvil.connect("open")  # a session stays open
    anvil.event("old", "auth")
    clock.advance(30)
    anvil.event("recent", "auth")
    clock.advance(31)  # "old" has expired, "recent" has not
    anvil.event("new", "auth")
    assert anvil.sessions("open") == 1
    assert sorted(anvil._clients) == ["new", "open", "recent"]


def test_a_reload_may_change_the_unit():
    clock = Clock()
    anvil = Anvil(clock, 60)
    anvil.event("a", "mail")
    anvil.unit = 10
    clock.advance(11)
    assert anvil.event("a", "mail") == 1
