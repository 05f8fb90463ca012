"""run(coroutine): the result of a coroutine that finishes without the reactor (fakes, Clock), or its exception."""

from twisted.internet.defer import Deferred


def run(coroutine):
    results = []
    Deferred.fromCoroutine(coroutine).addBoth(results.append)
    assert len(results) == 1, "the coroutine waited on something that never came"
    if hasattr(results[0], "raiseException"):
        results[0].raiseException()
    return results[0]
