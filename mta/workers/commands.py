"""mta.workers.commands - the AMP commands between the master and its worker processes.

One AMP connection per worker, over a socketpair the master makes when it
starts the worker (the worker's descriptor 3).  Worker to master:

    Ready(index, pid)                the worker listens; the master stops
                                     accepting on the shared sockets itself
    Committed(ids)                   new mail durable in incoming/: the queue
                                     manager takes it up (no answer; one box
                                     per reactor turn of the worker)
    CountConnection(listener, address) -> count
    ReleaseConnection(listener, address)   (no answer)
    CountAuth(listener, address) -> count
                                     the anvil counts of
                                     smtpd_client_connection_count_limit and
                                     smtpd_client_auth_rate_limit, kept by
                                     the master for every process
    FlushSite(domain) -> count       ETRN: the queue manager's flushSite

Master to worker:

    Retire()                         stop accepting, finish the open
                                     sessions, then exit (a reload)

SECURITY
    Both ends are processes of the same daemon, as the same user; the
    arguments are still checked (sizes by AMP; queue ids by the queue
    manager, listener names against the configuration).

CONFIGURATION
    None.
"""

from twisted.protocols import amp


class Ready(amp.Command):
    arguments = [(b"index", amp.Integer()), (b"pid", amp.Integer())]
    response = []


class Committed(amp.Command):
    arguments = [(b"ids", amp.ListOf(amp.Unicode()))]
    requiresAnswer = False


class CountConnection(amp.Command):
    arguments = [(b"listener", amp.Unicode()), (b"address", amp.Unicode())]
    response = [(b"count", amp.Integer())]


class ReleaseConnection(amp.Command):
    arguments = [(b"listener", amp.Unicode()), (b"address", amp.Unicode())]
    requiresAnswer = False


class CountAuth(amp.Command):
    arguments = [(b"listener", amp.Unicode()), (b"address", amp.Unicode())]
    response = [(b"count", amp.Integer())]


class FlushSite(amp.Command):
    arguments = [(b"domain", amp.Unicode())]
    response = [(b"count", amp.Integer())]


class Retire(amp.Command):
    arguments = []
    response = []
