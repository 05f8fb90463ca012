"""mta.delivery.smtpquirks - ServerQuirks: the per-server controls of an SMTP/LMTP client session (EHLO keywords by address, PIX workarounds, early replies in TLS).

NAME
    ServerQuirks - mixed into mta.delivery.smtpclient.SMTPClientSession:
    what smtp(8) decides about one server from its address and its
    greeting, as Postfix's smtp_proto.c does.

DESCRIPTION
    EHLO keywords (smtp_discard_ehlo_keywords,
    smtp_discard_ehlo_keyword_address_maps; lmtp_discard_lhlo_keywords,
    lmtp_discard_lhlo_keyword_address_maps): the tables are searched in
    order with the server's IP address (the socket path for LMTP over a
    UNIX socket); the first value found, a list of keywords separated by
    commas or white space, replaces smtp_discard_ehlo_keywords for that
    server (Postfix: "ehlo_words = maps_find(...) or
    var_smtp_ehlo_dis_words").  The keywords are compared in upper case;
    unless the list holds the pseudo keyword silent-discard, the mail log
    says "discarding EHLO keywords: PIPELINING DSN".  A table that cannot
    answer defers the recipients with 4.3.0 "local data error while
    talking to NAME[ADDR]" (the data class of notify_classes), after the
    warning "smtp_discard_ehlo_keyword_address_maps map lookup error for
    ADDR" (under the queue id, as every line of the session).

    PIX workarounds (smtp_pix_workarounds, smtp_pix_workaround_maps,
    smtp_pix_workaround_delay_time, smtp_pix_workaround_threshold_time):
    a 2xx greeting made of nothing but the characters "2", "0", space, "*"
    and line breaks (a CISCO PIX "smtp fixup" hides the banner behind
    asterisks: "220 ********") turns the workarounds on for the session:
    those of the first smtp_pix_workaround_maps entry for the server's
    address, else smtp_pix_workarounds (unknown names in a table value are
    ignored, as Postfix's NAME_MASK_IGNORE; a table that cannot answer is
    ignored too: "best effort only").  delay_dotcrlf is dropped when the
    message has been queued for less than
    smtp_pix_workaround_threshold_time (its arrival time against the
    injected clock).  The log says "QUEUEID: enabling PIX workarounds:
    disable_esmtp delay_dotcrlf for NAME[ADDR]:PORT".

        disable_esmtp   HELO instead of EHLO (SMTP; LMTP always sends LHLO)
        delay_dotcrlf   after the content (and its last line end), wait
                        smtp_pix_workaround_delay_time, then send "."

    smtp_tls_block_early_mail_reply = yes (CVE-2009-3555, a man in the
    middle that prepends commands to the TLS session): when, inside TLS,
    server input is waiting at the moment MAIL FROM would go out, the
    recipients are deferred with 4.7.0 "unexpected server message" and
    the warning "server NAME[ADDR] violates smtp_tls_block_early_mail_reply
    policy"; the connection is dropped.  With the default no, a complete
    reply that nobody asked for is still a protocol error (4.5.0) at any
    time (mta.delivery.smtpconnection), only a partial line waits to be
    judged with the reply it is part of.

SECURITY
    Table values are configuration; the greeting and the server's address
    are untrusted and only compared or used as lookup keys.

CONFIGURATION
    The parameters above (and their lmtp_ twins), read through
    mta.config.settings.client; the tables are opened with the
    generation's mta.tables.Tables (the transport sets C{tables}).

DEVIATIONS
    smtp_tls_block_early_mail_reply looks at what the client has read and
    not used (a partial reply line), not at the socket (Postfix peeks the
    kernel buffer).  The delay_dotcrlf wait does not block other
    deliveries (Postfix's smtp process sleeps).
"""

import re

from twisted.internet.task import deferLater
from mta.delivery.smtpconnection import _Broken
from mta.tables import TableTemporaryError

__all__ = ["PIX_WORKAROUNDS", "ServerQuirks", "isPixGreeting"]

PIX_WORKAROUNDS = ("disable_esmtp", "delay_dotcrlf")  # Postfix's pix_bug_table order
_PIX_CHARACTERS = frozenset("20 *\t\n")
SILENT = "SILENT-DISCARD"


def isPixGreeting(reply):
    """Postfix's test: the greeting's text, code included, is only "2", "0", space, "*" and line breaks."""
    return all(c in _PIX_CHARACTERS for c in "\n".join(reply.lines))


def _words(value):
    return [w for w in re.split(r"[\s,]+", value.strip()) if w]


class _LookupFailed(Exception):
    """A table of the session could not answer."""


class ServerQuirks:
    """The per-server controls (see the module docstring); needs the session's settings, clock and log."""

    tables = None  # the generation's mta.tables.Tables; None: the *_maps are not searched
    pixFeatures = frozenset()  # the PIX workarounds in force for this session

    def _parameter(self, smtpName, lmtpName):
        return lmtpName if self.settings.lmtp else smtpName

    async def _lookupByAddress(self, specs, host):
        """Postfix's maps_find() by the server's address: the first value, or None."""
        if not specs or self.tables is None:
            return None
        for spec in specs:
            try:
                value = await self.tables.open(spec).lookup(host.address)
            except TableTemporaryError as e:
                raise _LookupFailed(str(e)) from None
            if value is not None:
                return value
        return None

    async def _ehloDiscards(self, tx):
        """The EHLO keywords to ignore from this server (upper case); None: deferred (recorded)."""
        s = self.settings
        parameter = self._parameter("smtp_discard_ehlo_keyword_address_maps", "lmtp_discard_lhlo_keyword_address_maps")
        try:
            value = await self._lookupByAddress(s.discardEhloKeywordMaps, tx.host)
        except _LookupFailed:
            self._warn(f"{parameter} map lookup error for {tx.host.address}")
            if tx.fault is not None:
                tx.fault("data")
            tx.local(tx.pending(), "deferred", "4.3.0", f"local data error while talking to {tx.host.namaddr}",
                     retry=True)
            return None
        words = frozenset(w.upper() for w in _words(value)) if value is not None else s.discardEhloKeywords
        shown = [w for w in sorted(words) if w != SILENT]
        if shown and SILENT not in words:
            self._note(f"discarding EHLO keywords: {' '.join(shown)}")
        return words

    async def _pixCheck(self, tx, greeting):
        """A PIX greeting: set C{pixFeatures} from the maps or smtp_pix_workarounds, and log them."""
        if not isPixGreeting(greeting):
            return
        s = self.settings
        try:
            value = await self._lookupByAddress(s.pixWorkaroundMaps, tx.host)
        except _LookupFailed:
            value = None  # Postfix: "Best effort only. Ignore errors."
        if value is not None:
            named = {w.lower() for w in _words(value)}
        else:
            named = set(s.pixWorkarounds)
        if not named:
            return
        features = {w for w in PIX_WORKAROUNDS if w in named}
        arrival = tx.request.envelope.arrival_time
        if "delay_dotcrlf" in features and arrival > self._clock.seconds() - s.pixThresholdTime:
            features.discard("delay_dotcrlf")
        names = " ".join(w for w in PIX_WORKAROUNDS if w in features)
        self._note(f"enabling PIX workarounds: {names} for {tx.host.relay}")
        self.pixFeatures = frozenset(features)

    async def _pixDelay(self, tail):
        """
        delay_dotcrlf: write the content's last line end, wait
        smtp_pix_workaround_delay_time (the deadline waits too), and give
        back the "." line to send; without it C{tail} as it is.
        """
        if "delay_dotcrlf" not in self.pixFeatures:
            return tail
        self.transport.write(tail[:-3])
        self.setTimeout(None)
        await deferLater(self._clock, self.settings.pixDelayTime, lambda: None)
        if self._failure is not None:
            raise _Broken(*self._failure)
        self.setTimeout(self.settings.dataXferTimeout)
        return tail[-3:]

    def _earlyReply(self, tx):
        """smtp_tls_block_early_mail_reply: True (recorded, connection dropped) if input waits before MAIL."""
        s = self.settings
        if not (s.tlsBlockEarlyMailReply and self.tlsActive and (self._replies or self._parser.buffered)):
            return False
        parameter = self._parameter("smtp_tls_block_early_mail_reply", "lmtp_tls_block_early_mail_reply")
        self._warn(f"server {tx.host.namaddr} violates {parameter} policy")
        tx.local(tx.pending(), "deferred", "4.7.0", "unexpected server message", retry=True)
        self._abort()
        self._fail("lost")
        return True

