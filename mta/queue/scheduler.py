"""mta.queue.scheduler - deliveries by destination: concurrency and recipient limits, transports, results.

The queue manager (mta.queue.manager) routes a message's recipients and
hands each group, by (transport, nexthop), to the Scheduler, which

    - cuts it into deliveries of at most TRANSPORT_destination_recipient_limit
      recipients (default_destination_recipient_limit),
    - queues them per destination, (transport, nexthop), and runs at most
      TRANSPORT_destination_concurrency_limit of them at once
      (default_destination_concurrency_limit), so a dead destination only
      ever holds its own slots,
    - calls the transport (IDeliveryTransport.deliver) with a
      DeliveryRequest, and
    - turns its answer into one result per recipient: a recipient the
      transport did not answer for, or a transport that failed, is
      deferred 4.3.0 "delivery agent failed" (qmgr's own verdict, as
      Postfix's for a delivery agent that died).

Each finished delivery goes back to the manager in two steps:
onResults(message, batch, started) (record and log; batch is key ->
(target, result, program)), then, after the next waiting delivery of that
destination has been started, onDone(message) (the end of the attempt if
it was the message's last delivery).  A reload's reconfigure() gives the
new limits to every destination at once (a raised concurrency limit
starts waiting deliveries now, a lowered one lets those in progress end);
the transport of a delivery is looked up when it starts (the manager's
registry of the time).

SECURITY
    Transport answers are checked for shape (RecipientResult, an index of
    this delivery); anything else counts as no answer.

CONFIGURATION
    TRANSPORT_destination_concurrency_limit,
    TRANSPORT_destination_recipient_limit and their
    default_destination_* (mta.config.settings.qmgr.QmgrSettings).
"""

import collections

import attrs
from twisted.internet.defer import fail, maybeDeferred
from twisted.logger import Logger

from mta.model import DeliveryRequest, RecipientResult

__all__ = ["Destination", "Scheduler"]

log = Logger()


@attrs.define
class Destination:
    """One (transport, nexthop): its limit, the deliveries waiting ((message, targets)), those running."""

    transport: str
    nexthop: str
    limit: int
    pending: collections.deque = attrs.Factory(collections.deque)
    active: int = 0


class Scheduler:
    """
    The deliveries of one queue manager.  C{settings}: QmgrSettings (the
    limits); C{transports}: a callable name -> IDeliveryTransport or None;
    C{onResults}, C{onDone}: see the module docstring.  Attributes:
    C{destinations}, (transport, nexthop) -> Destination.
    """

    def __init__(self, settings, transports, clock, onResults, onDone):
        self.settings = settings
        self.transports = transports
        self.clock = clock
        self.onResults = onResults
        self.onDone = onDone
        self.destinations = {}

    def schedule(self, message, transport, nexthop, targets):
        """Queue deliveries of C{targets} ([(key, DeliveryRecipient)]) of C{message} to (transport, nexthop)."""
        limit = self.settings.recipientLimit(transport)
        for i in range(0, len(targets), limit):
            key = (transport, nexthop)
            destination = self.destinations.get(key)
            if destination is None:
                destination = self.destinations[key] = Destination(
                    transport, nexthop, self.settings.concurrencyLimit(transport))
            message.jobs += 1
            destination.pending.append((message, targets[i : i + limit]))
            self.dispatch(destination)

    def reconfigure(self, settings):
        """A reload: new limits, for every destination at once."""
        self.settings = settings
        for destination in list(self.destinations.values()):
            destination.limit = settings.concurrencyLimit(destination.transport)
            self.dispatch(destination)

    def dispatch(self, destination):
        """Start waiting deliveries of C{destination} while it is below its limit."""
        while destination.active < destination.limit and destination.pending:
            message, targets = destination.pending.popleft()
            destination.active += 1
            started = self.clock.seconds()
            try:
                queueFile = message.queueFile
                request = DeliveryRequest(
                    queue_id=message.queueId,
                    transport=destination.transport,
                    nexthop=destination.nexthop,
                    envelope=message.envelope,
                    recipients=tuple(target for _, target in targets),
                    path=message.path,
                    content_offset=queueFile.contentOffset,
                    content_length=queueFile.contentLength,
                    content=queueFile.content,
                )
                transport = self.transports(destination.transport)
                d = maybeDeferred(transport.deliver, request)
            except Exception:
                d = fail()
            d.addBoth(self._delivered, message, destination, targets, started)
            d.addErrback(lambda f: log.failure("qmgr: after a delivery", f))

    def _delivered(self, results, message, destination, targets, started):
        destination.active -= 1
        try:
            batch = self._collect(results, destination, targets)
        except Exception:
            log.failure("qmgr: {queue_id}: bad results from transport {transport}", queue_id=message.queueId,
                        transport=destination.transport)
            batch = {key: (target, RecipientResult(target.index, "deferred", "4.3.0", "delivery agent failed"), "qmgr")
                     for key, target in targets}
        try:
            self.onResults(message, batch, started)
        finally:
            try:
                self.dispatch(destination)
            finally:
                self.onDone(message)

    def _collect(self, results, destination, targets):
        """key -> (target, result, program) for one delivery; a missing answer defers."""
        byIndex = collections.defaultdict(list)
        if isinstance(results, list):
            for result in results:
                if isinstance(result, RecipientResult):
                    byIndex[result.index].append(result)
        else:
            log.failure("qmgr: transport {transport} failed", results, transport=destination.transport)
        batch = {}
        for key, target in targets:
            found = byIndex.get(target.index)
            if found:
                result, program = found.pop(0), destination.transport
            else:  # qmgr's own verdict, as Postfix's for a delivery agent that died
                result = RecipientResult(target.index, "deferred", "4.3.0", "delivery agent failed: no result")
                program = "qmgr"
            batch[key] = (target, result, program)
        return batch
