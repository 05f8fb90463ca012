"""mta.smtpd.deadline - the per-request deadline (smtpd_per_request_deadline).

Postfix's smtp_stream(3) deadline, for an event-driven session.  Each
request - a command line, the content of a DATA, the content of one BDAT
chunk - starts with a budget of smtpd_timeout seconds.  The budget is spent
only while the session waits for the client (input that has not arrived,
or replies the client does not read), never while the server works on a
command (a table lookup, the queue's fsync, a tarpit delay): Postfix's
deadline, too, counts only the time spent in read and write calls.  While
message content arrives, each read of N bytes adds N/smtpd_min_data_rate
seconds to the budget, never beyond smtpd_timeout.  When the budget is
spent, C{expired()} is called.

So a client trickling a byte a second cannot hold a session: a command
line must arrive within smtpd_timeout, and message content must keep up
an average of smtpd_min_data_rate bytes a second (from a full budget, a
client at 1 byte/s is cut off after about smtpd_timeout seconds).

SECURITY
    The clock is the only input; nothing here reads the network.

CONFIGURATION
    smtpd_timeout (the budget), smtpd_min_data_rate (bytes per second of
    content that earn one second); used when smtpd_per_request_deadline =
    yes (mta's default; Postfix's is no, see mta.smtpd.protocol).
"""


class RequestDeadline:
    def __init__(self, clock, timeout, minDataRate, expired):
        self._clock = clock
        self._timeout = timeout
        self._minDataRate = minDataRate
        self._expired = expired
        self._budget = timeout
        self._rate = 0  # bytes per second that earn a second; 0 outside message content
        self._since = None  # waiting for the client since this time, or None
        self._call = None

    @property
    def remaining(self):
        """The budget left now, in seconds."""
        if self._since is None:
            return self._budget
        return self._budget - (self._clock.seconds() - self._since)

    def start(self, content=False):
        """A new request starts: a full budget; C{content}: message content earns time."""
        self._budget = self._timeout
        self._rate = self._minDataRate if content else 0
        if self._since is not None:
            self._since = self._clock.seconds()
            self._schedule()

    def received(self, count):
        """C{count} bytes arrived: charge the wait, credit the content."""
        self._charge()
        if self._rate:
            self._budget = min(self._timeout, self._budget + count / self._rate)
        if self._since is not None:
            self._schedule()

    def waiting(self, clientsTurn):
        """The session waits for the client (True) or the server works (False)."""
        if clientsTurn and self._since is None:
            self._since = self._clock.seconds()
            self._schedule()
        elif not clientsTurn and self._since is not None:
            self._charge()
            self._since = None  # the timer stays: when it fires early it is set again (_fire)

    def stop(self):
        self._since = None
        self._cancel()

    def _charge(self):
        if self._since is not None:
            now = self._clock.seconds()
            self._budget -= now - self._since
            self._since = now

    def _schedule(self):
        # The deadline only moves later while a session runs (a wait uses up
        # budget at the clock's pace; a new request or content adds budget),
        # so a timer that is already set can only fire early: _fire() then
        # sets it again for what is left.  No reactor call per read or reply.
        if self._call is None or not self._call.active():
            self._call = self._clock.callLater(max(0.0, self._budget), self._fire)

    def _cancel(self):
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None

    def _fire(self):
        self._call = None
        if self._since is None:
            return  # the server's turn: the next wait sets a timer again
        left = self.remaining
        if left > 0:
            self._call = self._clock.callLater(left, self._fire)
            return
        self._since = None
        self._budget = 0
        self._expired()
