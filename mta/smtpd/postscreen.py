"""mta.smtpd.postscreen - screen a connection before smtpd sees it, as postscreen(8).

With postscreen_enable = yes a listener's connections are first owned by
a PostscreenServer (SMTPServerFactory.buildProtocol).  It runs Postfix's
tests before the SMTP handshake; a client that passes is handed, on the
same transport, to the listener's normal SMTP session
(mta.smtpd.protocol.SMTPServer, made by the factory and given the
transport with makeConnection; it then behaves exactly as without the
screen, its 220 greeting completing the 220- teaser).  A client that
fails goes to the dummy SMTP engine (enforce) or is disconnected (drop).

In Postfix's order:

1. ``CONNECT from [addr]:port to [addr]:port``; past
   postscreen_client_connection_count_limit connections of the client
   being screened, 421 4.7.0 Error: too many connections; past
   postscreen_pre_queue_limit connections being screened, or
   postscreen_post_queue_limit sessions of passed clients, 421 4.3.2 and
   a close.
2. postscreen_access_list, in order: permit_mynetworks, or a table looked
   up with the client address whose result is permit (``ALLOWLISTED``:
   handed over at once), reject (``DENYLISTED``, then
   postscreen_denylist_action: drop answers 521 5.3.2 and closes, enforce
   sends the client to the dummy engine with 550 5.3.2 for its
   recipients, ignore goes on) or dunno (the next item).  A table that
   cannot answer ends the list (a warning), as Postfix does.
3. The cache (mta.smtpd.pscache): when every enabled test has an
   unexpired pass, ``PASS OLD`` and the hand-over.
4. The tests still to do, concurrently: the pregreet test (the
   ``220-$postscreen_greet_banner`` teaser, then postscreen_greet_wait
   seconds; a client that talks first is ``PREGREET n after t from
   [addr]:port: text``, then postscreen_greet_action: drop answers 521
   5.5.1 Protocol error, enforce sends it to the dummy engine with 550
   5.5.1, ignore only logs) and the DNSBL test (every list of
   postscreen_dnsbl_sites asked at once, each within
   postscreen_dnsbl_timeout; the weights of the lists whose A records
   match are added up; a list that has not answered when the wait ends
   counts as not listed).  The wait is postscreen_greet_wait with the
   pregreet test, else until the lists have answered (at most
   postscreen_dnsbl_timeout).  A score at or above
   postscreen_dnsbl_threshold is ``DNSBL rank N for [addr]:port`` and
   postscreen_dnsbl_action (drop: 521 5.7.1, enforce: 550 5.7.1 "Service
   unavailable; client [addr] blocked using DOMAIN", the domain of the
   heaviest matching list, or its name in postscreen_dnsbl_reply_map).  A
   negative score at or below postscreen_dnsbl_allowlist_threshold (when
   that is below 0) passes the other tests too, and ends the wait.
5. A client that passed every test it had to do is ``PASS NEW`` (the
   first time) and recorded in the cache: the pregreet pass for
   postscreen_greet_ttl, the DNSBL pass for the lists' DNS TTL (the
   smallest, of the listings for a failure and of the other answers for a
   pass) clamped to postscreen_dnsbl_min_ttl .. postscreen_dnsbl_max_ttl.
   A test failed under "ignore" is neither a pass nor a failure: it runs
   again at the next connection.
6. The deep protocol tests, when enabled (postscreen_pipelining_enable,
   postscreen_non_smtp_command_enable, postscreen_bare_newline_enable:
   all no by default, as in Postfix): a client that has them to do meets
   the dummy engine after the 220, which fails it for ``COMMAND
   PIPELINING`` (a command sent before the reply to the one before, BDAT
   excepted), ``NON-SMTP COMMAND`` (a header line such as "Subject:", or
   one of postscreen_forbidden_commands) or ``BARE NEWLINE`` (a command
   line ending in a bare LF), each with its action (drop: 521, enforce:
   550 5.5.1 to RCPT, ignore: counted as passed for the shortest test
   TTL); the tests still pending pass at its first RCPT, which is answered
   450 4.3.2 Service currently unavailable: as with Postfix the client
   must connect again, and is PASS OLD then (its passes are cached for
   postscreen_*_ttl, 30 days).

The dummy engine (enforce) answers like postscreen's: 220 $smtpd_banner
(not after a failed pregreet test), HELO/EHLO (250; EHLO lists SIZE,
VRFY, ETRN, ENHANCEDSTATUSCODES, 8BITMIME, DSN, SMTPUTF8, CHUNKING, never
PIPELINING or STARTTLS), MAIL (250 2.1.0 Ok), every RCPT the enforced
reply, logged as ``NOQUEUE: reject: RCPT from [addr]:port: 550 5.7.1
...; from=<s>, to=<r>, proto=ESMTP, helo=<h>``, DATA and BDAT (an error
reply and a close), RSET and NOOP (250 2.0.0 Ok), VRFY (the enforced
reply, or 502 5.5.1 with postscreen_disable_vrfy_command), ETRN (458),
QUIT (221 2.0.0 Bye), others (502 5.5.2).  Each command has
postscreen_command_time_limit (then ``COMMAND TIME LIMIT`` and 421 4.4.2
... timeout exceeded); past postscreen_command_count_limit commands,
``COMMAND COUNT LIMIT`` and 421.  Nothing is ever queued.  A session that
ends without the hand-over logs ``DISCONNECT [addr]:port``; a client that
leaves first ``HANGUP after t from [addr]:port in tests before SMTP
handshake`` (or after).

Lines go to the listener's mail log as program ``postscreen``.

SIZE
    About 600 lines with this page, and one job: the screen's tests and
    their verdict.  The dummy engine (mta.smtpd.psengine, where the deep
    tests look at the commands) and the cache (mta.smtpd.pscache) are
    modules of their own, and so is the DNSBL score (mta.smtpd.psdnsbl).

SECURITY
    Everything the client sends before the hand-over is untrusted: the
    pregreet bytes are only counted and logged (escaped, at most 100),
    dummy-engine lines are bounded (line_length_limit; longer: ``COMMAND
    LENGTH LIMIT`` and a close), every wait has a timer, and a failure of
    a table or a DNS server never refuses a client (a list that cannot be
    asked counts as not listed; a failing access table ends the list).  A
    bug in a test is logged and answered 421 4.3.2, it never hangs the
    connection.  Bytes a passing client sent early (only possible under
    postscreen_greet_action = ignore) are given to the SMTP session as
    input, as Postfix's smtpd reads them from the socket.

CONFIGURATION
    postscreen_enable (no), postscreen_access_list (permit_mynetworks),
    postscreen_denylist_action (postscreen_blacklist_action: ignore),
    postscreen_greet_banner ($smtpd_banner), postscreen_greet_wait (mta:
    0s), postscreen_greet_action (ignore), postscreen_greet_ttl (1d),
    postscreen_dnsbl_sites, postscreen_dnsbl_threshold (1),
    postscreen_dnsbl_allowlist_threshold
    (postscreen_dnsbl_whitelist_threshold: 0), postscreen_dnsbl_action
    (ignore), postscreen_dnsbl_reply_map, postscreen_dnsbl_ttl (1h),
    postscreen_dnsbl_min_ttl (60s), postscreen_dnsbl_max_ttl
    ($postscreen_dnsbl_ttl), postscreen_dnsbl_timeout (10s),
    postscreen_cache_map (mta: empty, in memory),
    postscreen_cache_retention_time (7d), postscreen_cache_cleanup_interval
    (12h), postscreen_command_time_limit (300s),
    postscreen_command_count_limit (20), postscreen_helo_required
    ($smtpd_helo_required), postscreen_disable_vrfy_command
    ($disable_vrfy_command), postscreen_pipelining_enable (no),
    postscreen_pipelining_action (enforce), postscreen_pipelining_ttl (30d),
    postscreen_non_smtp_command_enable (no),
    postscreen_non_smtp_command_action (drop),
    postscreen_non_smtp_command_ttl (30d), postscreen_forbidden_commands
    ($smtpd_forbidden_commands), postscreen_bare_newline_enable (no),
    postscreen_bare_newline_action (ignore), postscreen_bare_newline_ttl
    (30d), postscreen_client_connection_count_limit
    ($smtpd_client_connection_count_limit), postscreen_pre_queue_limit (100),
    postscreen_post_queue_limit (100); mta.config.settings.postscreen.

DEVIATIONS
    Postfix runs postscreen as its own master.cf service in front of smtpd;
    mta has the listener option postscreen_enable, settable in [main] or a
    [listener:NAME], and screens in the process that runs the sessions (a
    worker process screens its own connections; the in-memory cache and
    the queue limits are per process).  postscreen_greet_wait is shared
    with smtpd's in-session early-talker test and keeps mta's default 0s
    (Postfix: 6s): with 0 the screen does no pregreet test; set it (e.g.
    6s) to have one.  The in-session test is off for a session that the
    screen handed over.  postscreen_cache_map: see mta.smtpd.pscache.
    With only deep tests to do, the screen does not wait
    postscreen_greet_wait before the engine's 220 (Postfix does).
    postscreen_allowlist_interfaces, postscreen_command_filter,
    postscreen_reject_footer, STARTTLS in the dummy engine and the
    upstream proxy protocol are not built; a listener in
    smtpd_tls_wrappermode is not screened.  DNS lists are asked by mta's
    DNS client (no dnsblog(8)); an IPv6 client is asked by its nibbles, as
    Postfix's dnsblog does.  The hand-over to smtpd is a protocol switch
    on the same transport, not a descriptor passed between processes, so
    "all server ports are busy" means the listener's open SMTP sessions in
    this process.  postscreen_client_connection_count_limit counts the
    client's connections in the screen of this listener and process (the
    passed sessions are smtpd's: smtpd_client_connection_count_limit).
"""

import ipaddress

from twisted.internet.defer import Deferred
from twisted.internet.protocol import Protocol
from twisted.logger import Logger

from mta.maillog import sanitize
from mta.smtpd.psdnsbl import Dnsbl
from mta.smtpd.psengine import DummyEngine, formatDelay

log = Logger()

TESTS = ("pregreet", "dnsbl", "pipelining", "non_smtp", "bare_newline")
EARLY = ("pregreet", "dnsbl")  # before the 220, concurrently
DEEP = ("pipelining", "non_smtp", "bare_newline")  # in the dummy engine, after the 220
TEASER_DETAIL = "tests before SMTP handshake"
ENGINE_DETAIL = "tests after SMTP handshake"
PREGREET_SHOWN = 100  # characters of early input in the PREGREET line (Postfix's %.100s)


class Postscreen:
    """
    One listener's screen, shared by its connections: the settings, the
    access list's tables, the DNS lists, the cache of passed clients and
    the count of connections being screened.
    """

    def __init__(self, settings, factory, tables, dns, cache=None):
        from mta.smtpd.pscache import PostscreenCache

        self.settings = settings
        self.factory = factory
        self.clock = factory.clock
        self.maillog = factory.maillogs("postscreen")
        self.access = tuple(item if isinstance(item, str) else tables.open(item) for item in settings.accessList)
        self.dnsbl = Dnsbl(settings, dns, self.clock, [tables.open(t) for t in settings.dnsblReplyMap], self.maillog)
        if cache is None:
            kind, path = settings.cacheMap
            pool = None
            if path is not None and hasattr(self.clock, "getThreadPool"):
                pool = (self.clock, self.clock.getThreadPool())
            cache = PostscreenCache(self.clock, settings.cacheRetention, settings.cacheCleanupInterval, path, pool)
        self.cache = cache
        self.screening = set()  # PostscreenServer connections not handed over yet

    @property
    def pregreetEnabled(self):
        return self.settings.greetWait > 0

    @property
    def dnsblEnabled(self):
        return bool(self.settings.dnsblSites)

    def enabledTests(self):
        settings = self.settings
        return tuple(t for t, on in (("pregreet", self.pregreetEnabled), ("dnsbl", self.dnsblEnabled),
                                     ("pipelining", settings.pipeliningEnable),
                                     ("non_smtp", settings.nonSmtpEnable),
                                     ("bare_newline", settings.bareNewlineEnable)) if on)

    @property
    def minTTL(self):
        """psc_min_ttl: how long a deep test failed under "ignore" counts as passed."""
        settings = self.settings
        return min(settings.greetTTL, settings.dnsblMinTTL, settings.pipeliningTTL, settings.nonSmtpTTL,
                   settings.bareNewlineTTL)

    def deepTTL(self, test):
        settings = self.settings
        return {"pipelining": settings.pipeliningTTL, "non_smtp": settings.nonSmtpTTL,
                "bare_newline": settings.bareNewlineTTL}[test]

    async def accessVerdict(self, address, mynetworks):
        """postscreen_access_list: "permit", "reject" or None (dunno, or a table that failed)."""
        from mta.tables import TableError, TableTemporaryError

        try:
            key = str(ipaddress.ip_address(address.split("%", 1)[0]))
        except ValueError:
            return None
        for item in self.access:
            if item == "permit_mynetworks":
                if mynetworks is not None and await mynetworks.matches(address):
                    return "permit"
                continue
            try:
                value = await item.lookup(key)
            except (TableError, TableTemporaryError) as e:
                self.maillog.emit(f"warning: postscreen_access_list: table lookup error for {key}: {e} "
                                  "-- ignoring the remainder of this access list", level=_warn())
                return None
            if value is None:
                continue
            word = value.split(None, 1)[0].lower() if value.split() else ""
            if word in ("permit", "reject"):
                return word
            if word != "dunno":
                self.maillog.emit(f"warning: postscreen_access_list: unknown command: {sanitize(value)}",
                                  level=_warn())
        return None

    def close(self):
        self.cache.close()


def _warn():
    from twisted.logger import LogLevel

    return LogLevel.warn


class PostscreenServer(Protocol):
    """One screened connection, until the hand-over or the end."""

    def __init__(self, screen, addr=None):
        self.screen = screen
        self.settings = screen.settings
        self.factory = screen.factory
        self.clock = screen.clock
        self.addr = addr
        self.address = ""
        self.port = 0
        self.buffer = b""
        self.start = None
        self.closed = False  # the connection is gone, or we are closing it
        self.handedOver = False
        self.testName = TEASER_DETAIL
        self.noForward = False
        self.rcptReply = None
        self.passed = {}  # test -> expiry time of a pass in this session
        self.failed = set()
        self.new = True  # no cache entry
        self.pregreetFailed = False
        self._wake = None  # the Deferred the early wait sleeps on
        self._timer = None
        self.engine = None  # the DummyEngine, when enforced or for the deep tests
        self.skipped = set()  # deep tests not run again in this session (failed once)
        self.passNew = False  # this connection logged PASS NEW

    # -- logging -----------------------------------------------------------

    @property
    def client(self):
        return f"[{self.address}]:{self.port}"

    def emit(self, text):
        self.screen.maillog.emit(text, client=self.client)

    # -- connection ----------------------------------------------------------

    def connectionMade(self):
        peer, host = self.transport.getPeer(), self.transport.getHost()
        self.address = getattr(peer, "host", "") or ""
        self.port = getattr(peer, "port", 0) or 0
        self.start = self.clock.seconds()
        try:
            ipaddress.ip_address(self.address.split("%", 1)[0])
        except ValueError:  # not an IP client (a UNIX-domain listener): nothing to screen
            self.handOver()
            return
        self.screen.screening.add(self)
        self.emit(f"CONNECT from {self.client} to [{getattr(host, 'host', '')}]:{getattr(host, 'port', 0)}")
        settings = self.settings
        if settings.connectionLimit and sum(
                1 for other in self.screen.screening if other.address == self.address) > settings.connectionLimit:
            self.emit(f"NOQUEUE: reject: CONNECT from {self.client}: too many connections")
            self.drop("421 4.7.0 Error: too many connections")
            return
        if settings.postQueueLimit and len(self.factory.sessions) >= settings.postQueueLimit:
            self.emit(f"NOQUEUE: reject: CONNECT from {self.client}: all server ports busy")
            self.drop("421 4.3.2 All server ports are busy")
            return
        if settings.preQueueLimit and len(self.screen.screening) > settings.preQueueLimit:
            self.emit(f"reject: connect from {self.client}: all screening ports busy")
            self.drop("421 4.3.2 All screening ports are busy")
            return
        d = Deferred.fromCoroutine(self.screenConnection())
        d.addErrback(self._internalError)

    def _internalError(self, failure):
        log.failure("postscreen: error screening {client}", failure, client=self.client)
        if not self.closed and not self.handedOver:
            self.drop("421 4.3.2 Service currently unavailable")

    def dataReceived(self, data):
        if self.closed or self.handedOver:
            return
        if self.engine is not None:
            self.engine.dataReceived(data)
            return
        first = not self.buffer
        self.buffer += data
        if len(self.buffer) > 65536:  # a client that floods before the greeting: bounded
            self.buffer = self.buffer[:65536]
        if first and self._wake is not None:
            self._poke("input")

    def connectionLost(self, reason=None):
        if self.handedOver:
            return
        wasClosed, self.closed = self.closed, True
        self._cancelTimer()
        self.screen.screening.discard(self)
        if self.engine is not None:
            self.engine.stop()
        if not wasClosed:
            elapsed = formatDelay(self.clock.seconds() - self.start)
            self.emit(f"HANGUP after {elapsed} from {self.client} in {self.testName}")
            self.noForward = True
            self._poke("hangup")
            if self._wake is None:  # not in the early wait: conclude here
                self._verdict()
                self.emit(f"DISCONNECT {self.client}")

    def write(self, line):
        self.transport.write(line.encode("utf-8", "replace") + b"\r\n")

    def drop(self, reply=None):
        """Send C{reply}, log DISCONNECT and close (Postfix's PSC_DROP_SESSION_STATE and psc_conclude)."""
        if self.closed:
            return
        self.closed = True
        self._cancelTimer()
        self.screen.screening.discard(self)
        if self.engine is not None:
            self.engine.stop()
        self._verdict()
        if reply:
            self.write(reply)
        self.emit(f"DISCONNECT {self.client}")
        self.transport.loseConnection()

    # -- the early wait ---------------------------------------------------------

    def _poke(self, why):
        wake, self._wake = self._wake, None
        if wake is not None:
            wake.callback(why)

    def _cancelTimer(self):
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def _sleep(self, seconds):
        self._wake = Deferred()
        self._timer = self.clock.callLater(max(0.0, seconds), self._poke, "time")
        return self._wake

    # -- the tests ----------------------------------------------------------------

    async def screenConnection(self):
        screen, settings = self.screen, self.settings
        verdict = await screen.accessVerdict(self.address, getattr(self.factory.policy, "mynetworks", None))
        if self.closed:
            return
        if verdict == "permit":
            self.emit(f"ALLOWLISTED {self.client}")
            self.handOver()
            return
        if verdict == "reject":
            self.emit(f"DENYLISTED {self.client}")
            action = settings.denylistAction
            if action == "drop":
                self.failed.add("denylist")
                self.drop("521 5.3.2 Service currently unavailable")
                return
            if action == "enforce":
                self.failed.add("denylist")
                self.enforce("550 5.3.2 Service currently unavailable")
        todo = list(screen.enabledTests())
        cached = screen.cache.get(self.address) if not self.failed else None
        if cached is not None:
            self.new = False
            now = self.clock.seconds()
            todo = [t for t in todo if cached.get(t, 0) <= now]
            if not todo:
                self.emit(f"PASS OLD {self.client}")
                self.handOver()
                return
        self.todo = todo
        early = [t for t in todo if t in EARLY]
        if early:
            await self._earlyTests(early)
            if self.closed:
                return
        self.conclude()

    async def _earlyTests(self, todo):
        settings, screen = self.settings, self.screen
        pregreet = "pregreet" in todo
        if pregreet and settings.greetBanner:
            self.write(f"220-{settings.greetBanner}")
        score = screen.dnsbl.start(self.address) if "dnsbl" in todo else None
        if score is not None and not score.finished:
            score.done.addCallback(lambda _: self._poke("dnsbl"))
        deadline = self.start + (settings.greetWait if pregreet else settings.dnsblTimeout)
        pregreetDone = False
        while not self.closed:
            dnsblDone = score is None or score.finished
            if pregreet and not pregreetDone and self.buffer:
                pregreetDone = True
                self._pregreet()
                if self.closed:
                    return
            if dnsblDone and score is not None and self._allowlisted(score):
                pregreetDone = True
            if dnsblDone and (not pregreet or pregreetDone):
                break
            left = deadline - self.clock.seconds()
            if left <= 0:
                break
            await self._sleep(left)
            self._cancelTimer()
        if self.closed:
            return
        now = self.clock.seconds()
        if pregreet and "pregreet" not in self.failed and not self.pregreetFailed and "pregreet" not in self.passed:
            self.passed["pregreet"] = now + settings.greetTTL
        if score is not None:
            await self._dnsblVerdict(score, now)

    def _pregreet(self):
        settings = self.settings
        shown = sanitize(self.buffer[:PREGREET_SHOWN].decode("latin-1"))
        elapsed = formatDelay(self.clock.seconds() - self.start)
        self.emit(f"PREGREET {len(self.buffer)} after {elapsed} from {self.client}: {shown}")
        self.pregreetFailed = True
        action = settings.greetAction
        if action == "drop":
            self.failed.add("pregreet")
            self.drop("521 5.5.1 Protocol error")
        elif action == "enforce":
            self.failed.add("pregreet")
            self.enforce("550 5.5.1 Protocol error")
        # ignore: logged only; neither pass nor fail (tested again next time)

    def _allowlisted(self, score):
        """postscreen_dnsbl_allowlist_threshold: a low enough score passes the other tests."""
        threshold = self.settings.dnsblAllowlistThreshold
        if self.failed or threshold >= 0 or score.total >= self.settings.dnsblThreshold or score.total > threshold:
            return False
        if getattr(self, "_allowlistDone", False):
            return True
        self._allowlistDone = True
        expires = self.clock.seconds() + score.ttl
        for test in TESTS:
            if test != "dnsbl":
                self.passed[test] = max(self.passed.get(test, 0), expires)
        self.pregreetFailed = False
        return True

    async def _dnsblVerdict(self, score, now):
        settings = self.settings
        if not score.finished and self.settings.dnsblAllowlistThreshold < 0:
            self._allowlisted(score)
        if score.total < settings.dnsblThreshold:
            self.passed["dnsbl"] = now + score.ttl
            return
        self.emit(f"DNSBL rank {score.total} for {self.client}")
        action = settings.dnsblAction
        if action == "ignore":
            return
        self.failed.add("dnsbl")
        name = await self.screen.dnsbl.displayName(score.name or "")
        if self.closed:
            return
        if action == "drop":
            self.drop(f"521 5.7.1 Service unavailable; client [{self.address}] blocked using {name}")
        else:
            self.enforce(f"550 5.7.1 Service unavailable; client [{self.address}] blocked using {name}")

    def enforce(self, reply):
        """PSC_ENFORCE_SESSION_STATE: the dummy engine, with C{reply} for every recipient."""
        self.rcptReply = reply
        self.noForward = True

    def deepPending(self):
        """The deep tests this session still has to pass (not failed, not passed)."""
        return [t for t in getattr(self, "todo", []) if t in DEEP and t not in self.passed and t not in self.failed
                and t not in self.skipped]

    def passDeep(self):
        """RCPT in the dummy engine: every deep test still pending passes."""
        now = self.clock.seconds()
        for test in self.deepPending():
            self.passed[test] = now + self.screen.deepTTL(test)

    def failDeep(self, test, action, dropReply, enforceReply):
        """A deep test failed: its action; True when the session was dropped."""
        self.skipped.add(test)  # not tested again in this session
        self.passed.pop(test, None)
        if action == "drop":
            self.failed.add(test)
            self.drop(dropReply)
            return True
        if action == "enforce":
            self.failed.add(test)
            self.enforce(enforceReply)
        else:  # ignore: allowed until something expires
            self.passed[test] = self.clock.seconds() + self.screen.minTTL
        return False

    def _verdict(self):
        """psc_conclude's log and cache: PASS NEW/OLD when every test to do has passed, then the cache."""
        todo = getattr(self, "todo", [])
        if self.failed:
            self.passed = {}
        if self.passed and todo and all(t in self.passed for t in todo):
            # Postfix's pass_new_count: NEW for a client without a cache entry, once among its
            # connections in the screen at the same time.
            first = self.new and not any(other is not self and other.address == self.address and other.passNew
                                         for other in self.screen.screening)
            self.passNew = first
            self.emit(f"PASS {'NEW' if first else 'OLD'} {self.client}")
        self._record()

    def _record(self):
        """The cache update of psc_conclude: the passes of this session, when no test failed."""
        if self.failed or not self.passed:
            return
        self.screen.cache.update(self.address, self.passed)

    def conclude(self):
        """After the early tests: the dummy engine (enforced, or deep tests to do), else PASS and the hand-over."""
        if self.closed:
            return
        if self.noForward or self.deepPending():
            self.noForward = True  # a client in the deep tests must come back: 450 4.3.2 to RCPT
            self.startEngine()
            return
        self._verdict()
        self.handOver()

    # -- the outcomes ----------------------------------------------------------

    def handOver(self):
        """The client passed: the listener's SMTP session takes the transport (and any input read)."""
        if self.closed:
            return
        self.handedOver = True
        self._cancelTimer()
        self.screen.screening.discard(self)
        transport, buffered = self.transport, self.buffer
        self.buffer = b""
        session = self.factory.buildSession(self.addr)
        session.screened = True  # smtpd's own greet delay is off: the screen did the pregreet test
        transport.protocol = session
        session.makeConnection(transport)
        if buffered:
            session.dataReceived(buffered)

    def startEngine(self):
        self.testName = ENGINE_DETAIL
        self.start = self.clock.seconds()
        if self.rcptReply is None:
            self.rcptReply = "450 4.3.2 Service currently unavailable"
        self.engine = DummyEngine(self)
        self.engine.begin(greet=not self.pregreetFailed)
        if self.buffer:
            data, self.buffer = self.buffer, b""
            self.engine.dataReceived(data)
