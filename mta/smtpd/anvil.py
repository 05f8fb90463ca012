"""mta.smtpd.anvil - per-client connection counts and event rates, as Postfix's anvil(8).

    anvil = Anvil(clock, unit)          # unit: anvil_rate_time_unit, seconds
    count, rate = anvil.connect(address)    # one more session: sessions open, connections in the window
    anvil.disconnect(address)
    rate = anvil.event(address, "mail")     # "mail", "rcpt", "newtls" or "auth": this one included
    rate = anvil.status(address, "newtls")  # the same, without counting one

One Anvil per listener (Postfix counts per service and client): the
listener's SMTP server factories share it across reloads
(mta.listeners.shareConnectionCounts), and with worker processes the
master's is the only one (mta.workers: the workers ask it).  With
anvil_store = redis:... the counts are in Redis instead, shared by several
machines (mta.smtpd.anvilstore.RedisAnvil, the factories' remoteAnvil).

Each client address has one window: it starts at the client's first
event and every rate is reset together once the window is older than
``unit`` (anvil.c, ANVIL_REMOTE_INCR_RATE).  An address with no session
open whose window has expired is forgotten; the table is swept when it
grows past PRUNE addresses, so it holds at most the clients seen within
one unit (plus those with a session open).

What the smtpd does with the answers (mta.smtpd.protocol, commands,
starttls, auth), with Postfix's replies and warnings::

    smtpd_client_connection_count_limit    421 4.7.0 HOST Error: too many connections from ADDR
    smtpd_client_connection_rate_limit     421 4.7.0 HOST Error: too many connections from ADDR
    smtpd_client_message_rate_limit        450 4.7.1 Error: too much mail from ADDR (at MAIL)
    smtpd_client_recipient_rate_limit      450 4.7.1 Error: too many recipients from ADDR (at RCPT)
    smtpd_client_new_tls_session_rate_limit
                                           454 4.7.0 Error: too many new TLS sessions from CLIENT
                                           (at STARTTLS), or 421 4.7.0 and a close after a
                                           handshake that was not a resumption
    smtpd_client_auth_rate_limit           450 4.7.1 Error: too many AUTH commands from ADDR

SECURITY
    Addresses are the peer's, never client input.  The table is bounded
    by the rate of new clients per unit (PRUNE keeps sweeps rare).

CONFIGURATION
    anvil_rate_time_unit (the listener's; a reload that changes it changes
    the shared Anvil's unit).

DEVIATIONS
    Postfix 3.10+'s smtpd_client_ipv4_prefix_length and
    smtpd_client_ipv6_prefix_length (counting IPv6 clients per /84) are
    not built: every address counts on its own, as in Postfix up to 3.9.
"""

import attrs

EVENTS = ("mail", "rcpt", "newtls", "auth")


@attrs.define
class _Client:
    start: float
    count: int = 0  # sessions open
    rate: int = 0  # connections in the window
    mail: int = 0
    rcpt: int = 0
    newtls: int = 0
    auth: int = 0


class Anvil:
    """The counts of one listener (see the module docstring)."""

    PRUNE = 10000  # past this many addresses, forgotten ones are swept out

    def __init__(self, clock, unit):
        self.clock = clock
        self.unit = unit
        self._clients = {}  # address -> _Client

    def __len__(self):
        return len(self._clients)

    def _client(self, address):
        """The client's entry, its window reset if it has expired (anvil's strict '<')."""
        now = self.clock.seconds()
        client = self._clients.get(address)
        if client is None:
            if len(self._clients) >= self.PRUNE:
                self._sweep(now)
            client = self._clients[address] = _Client(start=now)
        elif client.start + self.unit < now:
            client.start, client.rate, client.mail, client.rcpt, client.newtls, client.auth = now, 0, 0, 0, 0, 0
        return client

    def _sweep(self, now):
        self._clients = {a: c for a, c in self._clients.items() if c.count > 0 or c.start + self.unit >= now}

    def connect(self, address):
        """One more session from C{address}: (sessions open, connections in the window), this one included."""
        client = self._client(address)
        client.count += 1
        client.rate += 1
        return client.count, client.rate

    def disconnect(self, address):
        client = self._clients.get(address)
        if client is not None and client.count > 0:
            client.count -= 1

    def event(self, address, kind):
        """One more C{kind} event (EVENTS) from C{address}: the count in its window, this one included."""
        client = self._client(address)
        value = getattr(client, kind) + 1
        setattr(client, kind, value)
        return value

    def status(self, address, kind):
        """The count of C{kind} events from C{address} in its window, without counting one."""
        client = self._clients.get(address)
        if client is None or client.start + self.unit < self.clock.seconds():
            return 0
        return getattr(client, kind)

    def sessions(self, address):
        """Sessions open from C{address} (for tests and mta status)."""
        client = self._clients.get(address)
        return 0 if client is None else client.count


__all__ = ["EVENTS", "Anvil"]
