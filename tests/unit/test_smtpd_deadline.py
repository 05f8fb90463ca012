"""mta.smtpd.deadline: Postfix's per-request deadline, on a Clock."""

import pytest
from twisted.internet.task import Clock

from mta.smtpd.deadline import RequestDeadline


def make(timeout=10, rate=500):
    clock = Clock()
    fired = []
    deadline = RequestDeadline(clock, timeout, rate, lambda: fired.append(clock.seconds()))
    return clock, deadline, fired


def test_theBudgetIsSpentOnlyWhileWaitingForTheClient():
    clock, deadline, fired = make()
    deadline.start()
    deadline.waiting(True)
    clock.advance(6)
    deadline.waiting(False)  # the server works (a slow lookup, a commit)
    clock.advance(100)
    assert fired == [] and deadline.remaining == 4
    deadline.waiting(True)
    clock.advance(3.9)
    assert fired == []
    clock.advance(0.2)
    assert fired == [pytest.approx(110.1)]


def test_commandBytesEarnNothing():
    clock, deadline, fired = make()
    deadline.start()
    deadline.waiting(True)
    for _ in range(9):
        clock.advance(1)
        deadline.received(1)
    assert fired == []
    clock.advance(1)
    assert fired == [10]


def test_contentEarnsTimeAtTheMinimumRateButNeverMoreThanTheTimeout():
    clock, deadline, fired = make(timeout=10, rate=500)
    deadline.start(content=True)
    deadline.waiting(True)
    for _ in range(100):  # 500 bytes a second: each second costs one and earns one
        clock.advance(1)
        deadline.received(500)
    assert fired == [] and deadline.remaining == 10
    clock.advance(5)
    deadline.received(50000)  # a burst earns at most a full budget back
    assert deadline.remaining == 10


def test_aTricklingClientIsCutOffAfterAboutTheTimeout():
    clock, deadline, fired = make(timeout=10, rate=500)
    deadline.start(content=True)
    deadline.waiting(True)
    while not fired:
        clock.advance(1)
        if not fired:
            deadline.received(1)
    # Each second costs 1 and earns 1/500: the budget lasts 10 / (1 - 1/500) seconds.
    assert 10 < fired[0] <= 11


def test_aNewRequestStartsWithAFullBudget():
    clock, deadline, fired = make()
    deadline.start()
    deadline.waiting(True)
    clock.advance(9)
    deadline.start()
    clock.advance(9)
    assert fired == []
    deadline.stop()
    clock.advance(100)
    assert fired == []


class CountingClock(Clock):
    """A Clock that counts the calls scheduled, reset and cancelled."""

    def __init__(self):
        super().__init__()
        self.scheduled = 0

    def callLater(self, delay, f, *args, **kw):
        self.scheduled += 1
        return super().callLater(delay, f, *args, **kw)


def test_oneTimerServesManyRequestsAndStillFiresOnTime():
    clock = CountingClock()
    fired = []
    deadline = RequestDeadline(clock, 10, 500, lambda: fired.append(clock.seconds()))
    for _ in range(1000):  # a busy session: a command, the server's work, the reply, the next one
        deadline.start()
        deadline.waiting(True)
        clock.advance(0.001)
        deadline.received(20)
        deadline.waiting(False)
        clock.advance(0.001)
    assert fired == [] and clock.scheduled == 1  # no reactor call per read or reply
    deadline.start()
    deadline.waiting(True)
    clock.advance(9.9)
    assert fired == []
    clock.advance(0.2)
    assert fired == [pytest.approx(2 + 10.1, abs=0.01)]  # seen at the advance that passed it
    assert clock.getDelayedCalls() == []


def test_aTimerFiringWhileTheServerWorksDoesNothing():
    clock, deadline, fired = make(timeout=10)
    deadline.start()
    deadline.waiting(True)
    clock.advance(2)
    deadline.waiting(False)
    clock.advance(60)  # the timer set for t=10 fires during a slow lookup
    assert fired == [] and clock.getDelayedCalls() == []
    deadline.waiting(True)
    clock.advance(7.9)
    assert fired == []
    clock.advance(0.2)
    assert fired == [pytest.approx(70.1)]
