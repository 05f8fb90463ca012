"""mta.delivery.smtpresults - what one SMTP or LMTP client delivery comes to: per-recipient results, worded as Postfix words them.

NAME
    RemoteHost      the server at the other end (name, address, port)
    SessionOutcome  what one SMTPClientSession.deliver() came to
    Transaction     the per-recipient results of one deliver() while it runs

DESCRIPTION
    A Transaction records one RecipientResult per recipient of the
    request, each with relay "host[address]:port" and, for what the server
    said, diagnostic "smtp; <reply>" and remote_mta "dns; host":

      * said(): a refusal the server gave ("host mx[192.0.2.1] said: 550
        5.1.1 <x@y>: unknown (in reply to RCPT TO command)");
      * refused(): the same with the caller's text ("host ... refused to
        talk to me: 421 ...");
      * local(): a failure found here, with no reply to quote ("lost
        connection with ...", "message size 9 exceeds size limit 5 of
        server ...");
      * sent(): a 2xx reply to the end of data.

    The status comes from the reply class (4 deferred, 5 bounced), the dsn
    from the reply's enhanced code when its class agrees, else X.0.0 (see
    mta.delivery.smtpreply); a reply of the wrong class (354 to RCPT, 250
    to DATA) is a "Protocol error: ..." with 5.5.0, as in Postfix.  A
    deferred recipient may be tried at the next host (SessionOutcome.retry)
    unless the caller says otherwise; a 421 reply, or a failure the caller
    marks so, is the reason the whole host failed (SessionOutcome.reason).

    The transcript glue: refused() tells the session's C{fault} callback
    (the transcript's error(), when notify_classes asks for transcripts)
    of the protocol class where Postfix's smtp_trouble.c does (a code that
    is not 4xx or 5xx, 555 or 500-509, a reply of the wrong class).

SECURITY
    Reply text was made printable by mta.delivery.smtpreply; nothing here
    adds anything from the network.

CONFIGURATION
    None.
"""

import attrs

from mta.model import RecipientResult

__all__ = ["RemoteHost", "SessionOutcome", "Transaction"]


@attrs.frozen
class RemoteHost:
    """The server at the other end, for texts: name, address, port (None: a UNIX socket)."""

    name: str
    address: str
    port: int | None = 25

    @property
    def namaddr(self):
        return f"{self.name}[{self.address}]"

    @property
    def relay(self):
        return self.namaddr if self.port is None else f"{self.namaddr}:{self.port}"


@attrs.frozen
class SessionOutcome:
    """
    What one deliver() came to.  C{results} has one RecipientResult per
    request recipient, in request order: what to record if no other host
    is tried.  C{retry} holds the indexes of the recipients that the caller
    may try at the next host instead (their results here are what to
    record when there is none); C{reason} says why this host failed as a
    whole, if it did.  C{reusable}: the connection is open and idle.
    C{successAction} is the DSN action of a "sent" result: "delivered"
    for LMTP with lmtp_assume_final when the server did not offer DSN,
    else "relayed"; C{dsnOffered} tells whether NOTIFY went to the server
    (so that it, not we, sends success notices).
    """

    results: tuple
    retry: frozenset = frozenset()
    reason: str | None = None
    reusable: bool = False
    dsnOffered: bool = False
    successAction: str = "relayed"

    @property
    def tryNextHost(self):
        return bool(self.retry)


class Transaction:
    """
    The per-recipient results of one deliver() (see the module docstring).

    @ivar request: the mta.model.DeliveryRequest.
    @ivar host: the L{RemoteHost}.
    @ivar fault: C{fault(errorClass)}, called for an error of a
        notify_classes class (the transcript's error()), or None.
    @ivar results: recipient index -> RecipientResult, as recorded.
    @ivar retry: the indexes that may be tried at the next host.
    @ivar reason: why this host failed as a whole, or None.
    @ivar dotSent: the final "." was written (RFC 1047 window: no retry).
    @ivar dirty: MAIL was sent and the transaction is not finished.
    """

    def __init__(self, request, host, fault=None):
        self.request = request
        self.host = host
        self.fault = fault
        self.results = {}
        self.retry = set()
        self.reason = None
        self.dotSent = False
        self.dirty = False

    def pending(self):
        return [r for r in self.request.recipients if r.index not in self.results]

    def record(self, rcpt, status, dsn, text, reply=None, retry=False):
        self.results[rcpt.index] = RecipientResult(
            rcpt.index,
            status,
            dsn,
            text,
            relay=self.host.relay,
            diagnostic=f"smtp; {reply.text}" if reply is not None else None,
            remote_mta=f"dns; {self.host.name}" if reply is not None else None,
        )
        if retry:
            self.retry.add(rcpt.index)

    def local(self, rcpts, status, dsn, text, retry=False, reason=True):
        """A failure found here (no server reply to quote) for C{rcpts}."""
        if reason and rcpts:
            self.reason = text
        for rcpt in rcpts:
            self.record(rcpt, status, dsn, text, retry=retry)

    def refused(self, rcpts, reply, text, dsn=None, reason=False):
        """A failure the server said: 4xx defers (retry elsewhere), 5xx bounces."""
        dsn = dsn or reply.dsn
        # Postfix's smtp_check_code(): a code that is not 4xx or 5xx, 555, or 500-509 (syntax
        # errors, most likely ours) is the protocol class, and so is a reply of the wrong class.
        code = reply.code
        if self.fault is not None and (dsn[0] not in "45" or not 400 <= code <= 599 or code == 555
                                       or 500 <= code < 510):
            self.fault("protocol")
        if dsn[0] not in "45":
            text = "Protocol error: " + text
            dsn = "5.5.0"
        status = "deferred" if dsn[0] == "4" else "bounced"
        if reason or reply.code == 421:  # 421: the server is closing the whole session
            self.reason = text
        for rcpt in rcpts:
            self.record(rcpt, status, dsn, text, reply, retry=status == "deferred")

    def said(self, rcpts, reply, command, dsn=None):
        text = f"host {self.host.namaddr} said: {reply.text} (in reply to {command})"
        self.refused(rcpts, reply, text, dsn)

    def sent(self, rcpt, reply):
        self.record(rcpt, "sent", reply.dsn, reply.text, reply)

    def outcome(self, reusable, dsnOffered, successAction):
        order = [self.results[r.index] for r in self.request.recipients]
        return SessionOutcome(
            tuple(order),
            frozenset(self.retry),
            self.reason,
            reusable,
            dsnOffered,
            successAction,
        )
