"""mta.workers.commands - the AMP commands between the master and its worker processes.

One AMP connection per worker, over a socketpair the master makes when it
starts the worker (the worker's descriptor 3).  Worker to master:

    Ready(index, pid)                the worker listens; the master stops
                                     accepting on the shared sockets itself
    Committed(ids)                   new mail durable in incoming/: the queue
                                     manager takes it up (no answer; one box
                                     per reactor turn of the worker)
    ClientConnect(listener, address) -> count, rate
    ClientDisconnect(listener, address)    (no answer)
    ClientEvent(listener, address, kind, count) -> rate
                                     the anvil (mta.smtpd.anvil): sessions
                                     open and connections, MAIL, RCPT, new
                                     TLS sessions and AUTH per client in its
                                     window, kept by the master for every
                                     process (the smtpd_client_*_limit
                                     parameters)
    FlushSite(domain) -> count       ETRN: the queue manager's flushSite
    VerifyQuery(address) -> status, text
                                     reject_unverified_*: the verify service
                                     (mta.verify), which may send a probe

Master to worker:

    Retire()                         stop accepting, finish the open
                                     sessions, then exit (a reload)
    ReopenLog()                      open maillog_file again (a reload, also a
                                     refused one: log rotation); no answer

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


class ClientConnect(amp.Command):
    arguments = [(b"listener", amp.Unicode()), (b"address", amp.Unicode())]
    response = [(b"count", amp.Integer()), (b"rate", amp.Integer())]


class ClientDisconnect(amp.Command):
    arguments = [(b"listener", amp.Unicode()), (b"address", amp.Unicode())]
    requiresAnswer = False


class ClientEvent(amp.Command):
    """C{kind}: one of mta.smtpd.anvil.EVENTS; C{count} false: only look (anvil's status)."""

    arguments = [(b"listener", amp.Unicode()), (b"address", amp.Unicode()), (b"kind", amp.Unicode()),
                 (b"count", amp.Boolean())]
    response = [(b"rate", amp.Integer())]


class FlushSite(amp.Command):
    arguments = [(b"domain", amp.Unicode())]
    response = [(b"count", amp.Integer())]


class VerifyQuery(amp.Command):
    arguments = [(b"address", amp.Unicode())]
    response = [(b"status", amp.Integer()), (b"text", amp.Unicode())]


class Retire(amp.Command):
    arguments = []
    response = []


class ReopenLog(amp.Command):
    arguments = []
    requiresAnswer = False
