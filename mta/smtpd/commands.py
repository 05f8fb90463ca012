"""mta.smtpd.commands - the SMTP commands and the message transaction of smtpd(8).

SMTPCommands is the half of the session (mta.smtpd.protocol.SMTPServer)
that knows the commands: HELO, EHLO, MAIL, RCPT, DATA, BDAT, RSET, NOOP,
QUIT, HELP, VRFY and ETRN, the envelope they build and the message content
they hand to the queue.  Each smtp_VERB(arg) returns a Reply, a coroutine
of one, or None when it answered itself (354, BDAT chunks); the session
sends the replies in order and keeps time.  The envelope is built in the
session's Transaction, the client's HELO/EHLO in its SessionState
(mta.smtpd.session); _resetTransaction() starts a fresh Transaction at
RSET, HELO/EHLO and the end of a message.

Message content goes through mta.smtpd.data: DATA through a DataReader
(end of data, dot-unstuffing), BDAT through a ContentReader that lives
across the chunks of a transaction, so both get the same line-end,
line-length and size checks.  DATA returns to command mode at its real end
(CRLF "." CRLF) only; a fatal content error (a bare newline under reject)
replies and disconnects.

Each refusal marks its notify_classes error class as Postfix's smtpd does
(self._fault("protocol", reply); mta.smtpd.chat lists which is which), for
the postmaster's transcript notices.

SECURITY
    Everything a client sends is untrusted: paths and parameters are
    parsed strictly (mta.address), a HELO name longer than a domain may be
    (255 octets) is refused, table failures answer 4xx.

CONFIGURATION
    See mta.smtpd.protocol and mta.smtpd.factory.  requiretls_enable: the
    EHLO keyword REQUIRETLS (RFC 8689) inside TLS only, and MAIL FROM's
    REQUIRETLS taken there (kept in the envelope, mta.model.Envelope).
    smtpd_client_message_rate_limit (MAIL) and
    smtpd_client_recipient_rate_limit (RCPT): counted by the listener's
    anvil (mta.smtpd.anvil) after the command's own syntax check, as
    Postfix does; past the limit 450 4.7.1 and a warning line.

DEVIATIONS
    A HELO/EHLO name over 255 octets is refused at once with the reply of
    Postfix's reject_invalid_helo_hostname ("501 5.5.2 <name...>: Helo
    command rejected: Invalid name", the name cut to 64 characters so the
    reply stays short); Postfix's helo_cmd takes any name that fits the
    line and refuses it only with that restriction, at RCPT time under
    smtpd_delay_reject.  A bare-newline reject in BDAT content closes the
    session, as in DATA (Postfix answers at the end of the chunk).  A
    non-final BDAT chunk is answered with the transaction's bytes so far
    (Postfix: the chunk's own size); BDAT LAST with "Ok: queued as ID"
    (Postfix adds the size).  BINARYMIME exists (Postfix has none).
    MAIL FROM ... REQUIRETLS in plaintext gets "555 5.5.4 Unsupported
    option: REQUIRETLS not offered" (Postfix: "Unsupported option:
    REQUIRETLS"); RFC 8689 defines no reply for it.  With BDAT,
    smtpd_data_restrictions are judged at the end of the last chunk, with
    the end-of-data ones (Postfix: at the first chunk); a refusal then
    removes the queue file, and nothing is queued either way.
"""

import attrs
from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.logger import Logger

from mta.address import (
    MAX_DOMAIN,
    NonAsciiPathError,
    ParameterError,
    PathError,
    SizeExceeded,
    parseDomain,
    parseMailParameters,
    parsePath,
    parseRcptParameters,
    splitPathAndParameters,
)
from mta.maillog import sanitize
from mta.model import Address, Recipient, Reply
from mta.smtpd import data as D
from mta.smtpd.message import IncomingTransaction, chooseHeaderRewrite
from mta.smtpd.peername import PeerName
from mta.smtpd.session import Transaction
from mta.tables import TableTemporaryError

log = Logger()

R_OK = Reply(250, "2.0.0", "Ok")


def _given(path, allowNull, smtputf8):
    """
    The address as the client gave it (what the restriction replies name and
    reject_non_fqdn_* judge), before mta.rewrite qualified it; None if it
    cannot be parsed alone.
    """
    try:
        return parsePath(path, allowNull, smtputf8)
    except PathError:
        pass
    try:  # no domain (RCPT TO:<user>): parsed with a stand-in domain, then without it
        address = parsePath(f"<{path[1:-1]}@domain.invalid>", allowNull, smtputf8)
    except PathError:
        return None
    return Address(address.local, "")


@attrs.define
class Chunk:
    """The BDAT chunk being read: bytes still to come, LAST, and the reply it gets instead of 250."""

    remaining: int
    last: bool
    error: Reply | None = None


class SMTPCommands:
    """The commands of an SMTP session; mixed into mta.smtpd.protocol.SMTPServer."""

    # -- transaction state --------------------------------------------------------

    def _resetTransaction(self):
        """A fresh transaction (RSET, HELO/EHLO, the end of a message): see mta.smtpd.session."""
        self.transaction.abort()
        self.transaction = Transaction()

    def _abortMessage(self):
        self.transaction.abort()

    def _logReject(self, stage, reply, recipient=None, action="reject", text=None):
        """Postfix's 'NOQUEUE: reject: RCPT from ...' line (or hold:, with C{text})."""
        session, senderAddress = self.session, self.transaction.sender
        sender = f" from=<{sanitize(senderAddress)}>" if senderAddress is not None else ""
        to = f" to=<{recipient}>" if recipient is not None else ""
        self.factory.maillog.emit(
            f"NOQUEUE: {action}: {stage} from {session.client}: {sanitize(text or str(reply))};"
            f"{sender}{to} proto={session.protocol} helo=<{session.helo or ''}>",
            client=session.client,
            status=action,
        )

    def _restrictionNote(self, address, stage="RCPT"):
        """What a restriction does besides deciding (RestrictionList.evaluate's note)."""

        def note(action, value):
            if action == "prepend":
                self.transaction.prepend.append(value)
            elif action == "reject_warning":
                self._logReject(stage, value, address, action="reject_warning")
            elif action == "warning":  # a configuration error met while evaluating
                self.factory.maillog.emit(f"warning: {sanitize(value)}", client=self.session.client)
            elif action in ("redirect", "bcc"):
                self._logReject(stage, None, address, action=action, text=f"triggers {action.upper()} {value}")
            else:  # warn, info, discard
                self._logReject(stage, None, address, action=action, text=value or "")

        return note

    def _request(self, recipient=None, recipientGiven=None, **more):
        """What the restrictions look at now (mta.smtpd.restrictions.Request)."""
        session, transaction = self.session, self.transaction
        more.setdefault("sender_given", transaction.senderGiven)
        more.setdefault("recipient_given", recipientGiven)
        host = self.transport.getHost() if self.transport is not None else None
        return self.factory.policy.request(
            session.clientAddress, session.helo, transaction.sender, recipient, tls=session.tls,
            login=(session.saslMethod, session.saslUsername),
            peer=PeerName(session.clientName, session.reverseClientName, session.nameStatus,
                          session.reverseNameStatus),
            recipients=len(transaction.recipients), attributes=self._policyAttributes,
            illegal_pipelining=session.illegalPipelining, server_address=getattr(host, "host", None), **more)

    def _takeEffects(self, evaluation):
        """A stage's HOLD, DISCARD, REDIRECT and BCC for the transaction (Postfix keeps the first HOLD)."""
        transaction = self.transaction
        if evaluation.hold is not None and transaction.hold is None:
            transaction.hold = evaluation.hold
        if evaluation.discard is not None and transaction.discard is None:
            transaction.discard = evaluation.discard
        if evaluation.redirect is not None:
            transaction.redirect = evaluation.redirect
        transaction.bcc.extend(b for b in evaluation.bcc if b not in transaction.bcc)

    def _carried(self, *stages):
        """The DEFER_IF_PERMIT that the session's earlier stages raised (without smtpd_delay_reject)."""
        for stage in stages:
            reply = self.session.deferIfPermit.get(stage)
            if reply is not None:
                return reply
        return None

    def _policyAttributes(self):
        """What check_policy_service sends beyond the request's own fields (Postfix's names)."""
        session, transaction = self.session, self.transaction
        tls = session.tls
        params = transaction.mailParams
        host = self.transport.getHost() if self.transport is not None else None
        peer = tls.peer if tls is not None else None
        return {
            "protocol_name": session.protocol, "client_port": session.clientPort,
            "server_address": getattr(host, "host", ""), "server_port": getattr(host, "port", ""),
            "instance": f"{id(self):x}.{id(transaction):x}", "size": getattr(params, "size", None) or 0,
            "encryption_protocol": tls.protocol if tls is not None else "",
            "encryption_cipher": tls.cipher if tls is not None else "",
            "encryption_keysize": tls.bits if tls is not None else "",
            "ccert_subject": getattr(peer, "subjectCN", "") or "", "ccert_issuer": getattr(peer, "issuerCN", "") or "",
            "ccert_fingerprint": getattr(peer, "fingerprint", "") or "",
            "ccert_pubkey_fingerprint": getattr(peer, "pkeyFingerprint", "") or "",
        }

    @property
    def ehloSettings(self):
        """The EHLO keywords' settings for this client (smtpd_discard_ehlo_keyword_address_maps)."""
        return self.session.ehloView or self.settings

    # -- commands -----------------------------------------------------------------

    def _hello(self, verb, arg, protocolName, lines):
        if not arg:
            return self._fault("protocol", Reply(501, "5.5.4", f"Syntax: {verb} hostname"))
        if len(arg.encode("utf-8")) > MAX_DOMAIN:
            # No domain is longer (RFC 5321 4.5.3.1.2); Postfix's reject_invalid_helo_hostname reply.
            reply = Reply(501, "5.5.2", f"<{sanitize(arg[:64])}...>: Helo command rejected: Invalid name")
            self._logReject(verb, reply)
            return self._fault("policy", reply)
        policy = self.factory.policy
        if not policy.delayReject and policy.heloRestrictions:  # smtpd_helo_restrictions now, not at RCPT
            return self._helloChecked(verb, sanitize(arg), protocolName, lines)
        return self._helloDone(sanitize(arg), protocolName, lines)

    def _helloDone(self, name, protocolName, lines):
        self._chatReset()
        self._resetTransaction()
        self.session.hello(name, protocolName)
        return Reply(250, "", "\n".join([self.hostname, *lines]))

    async def _helloChecked(self, verb, name, protocolName, lines):
        """Without smtpd_delay_reject: smtpd_helo_restrictions judge the name; refused, it is not taken."""
        session = self.session
        outcome = await self.factory.policy.checkSessionStage(
            "helo", attrs.evolve(self._request(), helo=name),
            self._carried("client"), note=self._restrictionNote(None, verb))
        if outcome.reply is not None:
            self._logReject(verb, outcome.reply)
            return self._fault(outcome.errorClass, outcome.reply)
        session.deferIfPermit["helo"] = outcome.evaluation.deferIfPermit
        session.stageEffects = outcome.evaluation
        return self._helloDone(name, protocolName, lines)

    def smtp_HELO(self, arg):
        return self._hello("HELO", arg, "SMTP", ())

    def smtp_EHLO(self, arg):
        if arg and self._authEnabled:  # the AUTH line may need the backend's mechanisms (mta.smtpd.auth)
            return self._ehloWithAuth(arg)
        return self._ehlo(arg, self.ehloSettings.ehloLines)

    async def _ehloWithAuth(self, arg):
        return self._ehlo(arg, await self._authEhloLines(self.ehloSettings.ehloLines))

    def _ehlo(self, arg, lines):
        settings = self.ehloSettings
        if self.session.tlsActive and settings.offerRequireTls:
            lines = (*lines, "REQUIRETLS")  # RFC 8689: only inside TLS, last as in Postfix
        reply = self._hello("EHLO", arg, "ESMTP", self._ehloKeywords(lines))  # + STARTTLS (mta.smtpd.starttls)
        if not isinstance(reply, Reply):  # smtpd_helo_restrictions are asked (without smtpd_delay_reject)
            return self._ehloAnswered(reply)
        if reply.code == 250 and settings.ehloDiscardLog:
            self.factory.maillog.emit(f"discarding EHLO keywords: {settings.ehloDiscardLog}")
        return reply

    async def _ehloAnswered(self, pending):
        reply = await pending
        if reply.code == 250 and self.ehloSettings.ehloDiscardLog:
            self.factory.maillog.emit(f"discarding EHLO keywords: {self.ehloSettings.ehloDiscardLog}")
        return reply

    def smtp_NOOP(self, arg):
        return R_OK

    def smtp_RSET(self, arg):
        if arg:
            return self._fault("protocol", Reply(501, "5.5.4", "Syntax: RSET"))
        self._chatReset()
        self._resetTransaction()
        return R_OK

    def smtp_QUIT(self, arg):
        return Reply(221, "2.0.0", "Bye")

    def smtp_HELP(self, arg):
        return Reply(214, "2.0.0", "Commands: HELO EHLO MAIL RCPT DATA BDAT RSET NOOP QUIT VRFY ETRN HELP")

    def smtp_VRFY(self, arg):
        if self.settings.disableVrfy:
            return self._fault("policy", Reply(502, "5.5.1", "VRFY command is disabled"))
        if not arg:
            return self._fault("protocol", Reply(501, "5.5.4", "Syntax: VRFY address"))
        try:
            address = parsePath(arg if arg.startswith("<") else f"<{arg}>", allowNull=False)
        except PathError as e:
            return self._fault("protocol", Reply(501, "5.1.3", f"Bad recipient address syntax: {e}"))
        return Reply(252, "2.0.0", f"<{address}>")

    async def smtp_ETRN(self, arg):
        """RFC 1985, with Postfix's replies and checks (smtpd.c etrn_cmd)."""
        factory, session = self.factory, self.session
        if self.settings.heloRequired and session.helo is None:
            return self._fault("policy", Reply(503, "", "Error: send HELO/EHLO first"))
        if self.transaction.sender is not None:
            return self._fault("protocol", Reply(503, "", "Error: MAIL transaction in progress"))
        words = arg.split()
        if len(words) != 1:
            return self._fault("protocol", Reply(500, "", "Syntax: ETRN domain"))
        site = words[0]
        if site[:1] in ("@", "#"):
            site = site[1:]  # RFC 1985's subdomain and queue forms are taken as the domain, as Postfix does
        try:
            site = parseDomain(site)
        except PathError:
            return self._fault("protocol", Reply(501, "", "Error: invalid parameter syntax"))
        outcome = await factory.policy.checkEtrn(self._request(etrn_domain=site), self._carried("helo", "client"),
                                                 note=self._restrictionNote(None, "ETRN"))
        reply, errorClass = outcome.reply, outcome.errorClass
        if reply is not None:
            self._logReject("ETRN", reply)
            return self._fault(errorClass, reply)
        try:
            eligible = await factory.policy.fastFlushDomains.matches(site)
        except TableTemporaryError:
            eligible = None
        if eligible is False:
            factory.maillog.emit(f"warning: reject: ETRN {sanitize(site[:100])}... from {self.session.client}")
            return Reply(459, "", f"<{site}>: service unavailable")
        if eligible is None or factory.flushSite is None:
            factory.maillog.emit("warning: unable to talk to fast flush service")
            return Reply(458, "", "Unable to queue messages")
        try:
            await maybeDeferred(factory.flushSite, site)
        except Exception:
            log.failure("smtpd: the flush of {site} failed", site=site)
            factory.maillog.emit("warning: unable to talk to fast flush service")
            return Reply(458, "", "Unable to queue messages")
        return Reply(250, "", "Queuing started")

    def _offered(self):
        if not self.session.extended:
            return frozenset()
        settings = self.ehloSettings
        offered = settings.offered | {"AUTH"} if self._authEnabled else settings.offered  # RFC 4954 5
        if self.session.tlsActive and settings.offerRequireTls:
            offered = offered | {"REQUIRETLS"}  # RFC 8689: never in plaintext (555 5.5.4 there, as Postfix)
        return offered

    def smtp_MAIL(self, arg):
        settings, transaction = self.settings, self.transaction
        if transaction.sender is not None:
            return self._fault("protocol", Reply(503, "5.5.1", "Error: nested MAIL command"))
        if settings.heloRequired and self.session.helo is None:
            return self._fault("policy", Reply(503, "5.5.1", "Error: send HELO/EHLO first"))
        if arg[:5].upper() != "FROM:":
            return self._fault("protocol", Reply(501, "5.5.4", "Syntax: MAIL FROM:<address>"))
        if settings.messageRateLimit:  # smtpd_client_message_rate_limit (mta.smtpd.anvil)
            return self._mailRateChecked(arg)
        return self._mailFrom(arg)

    async def _mailRateChecked(self, arg):
        rate = await self._rateExceeded("mail", self.settings.messageRateLimit)
        if rate is None:
            return self._mailFrom(arg)
        session = self.session
        self.factory.maillog.emit(f"warning: Message delivery request rate limit exceeded: {rate} from "
                                  f"{session.client} for service {self.factory.listenerName}", client=session.client)
        return self._fault("policy", Reply(450, "4.7.1", f"Error: too much mail from {session.clientAddress}"))

    def _mailFrom(self, arg):
        """MAIL past the checks of the command itself: the path and its parameters."""
        factory, settings, transaction = self.factory, self.settings, self.transaction
        try:
            path, params = splitPathAndParameters(arg[5:], strict=settings.strictEnvelopes)
            mailParams = parseMailParameters(params, sizeLimit=settings.sizeLimit, offered=self._offered())
            sender = factory.rewrite.parsePath(path, allowNull=True, smtputf8=mailParams.smtputf8)
            senderGiven = _given(path, True, mailParams.smtputf8)
        except SizeExceeded:
            reply = Reply(552, "5.3.4", "Message size exceeds fixed limit")
            self._logReject("MAIL", reply)
            return self._fault("policy", reply)
        except ParameterError as e:
            return self._fault("protocol", Reply(555, "5.5.4", f"Unsupported option: {e}"))
        except NonAsciiPathError as e:
            return Reply(553, "5.6.7", f"Bad sender address syntax: {e}")  # no class, as in Postfix
        except PathError as e:
            return self._fault("protocol", Reply(501, "5.1.7", f"Bad sender address syntax: {e}"))
        if not factory.enoughSpace(mailParams.size or 0):
            reply = Reply(452, "4.3.1", "Insufficient system storage")
            self._logReject("MAIL", reply)
            return self._fault("resource", reply)
        transaction.sender = sender
        transaction.senderGiven = senderGiven
        transaction.mailParams = mailParams
        policy = factory.policy
        effects = self.session.stageEffects
        if effects is not None:  # the client and HELO stages' HOLD, DISCARD, ... (without smtpd_delay_reject)
            self._takeEffects(effects)
        if not policy.delayReject and (policy.senderRestrictions or policy.settings.rejectUnlistedSender):
            return self._mailChecked()
        return chooseHeaderRewrite(self, Reply(250, "2.1.0", "Ok"))  # local_header_rewrite_clients

    async def _mailChecked(self):
        """Without smtpd_delay_reject: smtpd_sender_restrictions at MAIL FROM; refused, there is no sender."""
        outcome = await self.factory.policy.checkSessionStage(
            "sender", self._request(), self._carried("helo", "client"), note=self._restrictionNote(None, "MAIL"))
        if outcome.reply is not None:
            self._logReject("MAIL", outcome.reply)
            self._resetTransaction()
            return self._fault(outcome.errorClass, outcome.reply)
        self.session.deferIfPermit["sender"] = outcome.evaluation.deferIfPermit
        self._takeEffects(outcome.evaluation)
        result = chooseHeaderRewrite(self, Reply(250, "2.1.0", "Ok"))
        return await result if isinstance(result, Deferred) else result

    async def smtp_RCPT(self, arg):
        factory, settings, transaction = self.factory, self.settings, self.transaction
        if transaction.sender is None:
            return self._fault("protocol", Reply(503, "5.5.1", "Error: need MAIL command"))
        if arg[:3].upper() != "TO:":
            return self._fault("protocol", Reply(501, "5.5.4", "Syntax: RCPT TO:<address>"))
        transaction.rcptTried = True
        if settings.recipientRateLimit:  # smtpd_client_recipient_rate_limit (mta.smtpd.anvil)
            rate = await self._rateExceeded("rcpt", settings.recipientRateLimit)
            if rate is not None:
                session = self.session
                factory.maillog.emit(f"warning: Recipient address rate limit exceeded: {rate} from {session.client} "
                                     f"for service {factory.listenerName}", client=session.client)
                return self._fault("policy", Reply(450, "4.7.1", f"Error: too many recipients from "
                                                                 f"{session.clientAddress}"))
        utf8 = transaction.smtputf8
        try:
            path, params = splitPathAndParameters(arg[3:], strict=settings.strictEnvelopes, smtputf8=utf8)
            rcptParams = parseRcptParameters(params, offered=self._offered(), smtputf8=utf8)
            address = factory.rewrite.parsePath(path, allowNull=False, smtputf8=utf8)
            given = _given(path, False, utf8)
        except ParameterError as e:
            return self._fault("protocol", Reply(555, "5.5.4", f"Unsupported option: {e}"))
        except NonAsciiPathError as e:
            return Reply(553, "5.6.7", f"Bad recipient address syntax: {e}")  # no class, as in Postfix
        except PathError as e:
            return self._fault("protocol", Reply(501, "5.1.3", f"Bad recipient address syntax: {e}"))
        if len(transaction.recipients) >= settings.recipientLimit:
            transaction.overshoot += 1
            self._uncountedError = transaction.overshoot <= settings.overshootLimit
            if not self._uncountedError:  # past the overshoot limit: an error, and Postfix's policy class
                self._fault("policy")
            return Reply(452, "4.5.3", "Error: too many recipients")
        errorClass = "policy"
        if self.session.earlyTalker:
            reply, hold, errorClass = Reply(550, "5.5.1", "Protocol error"), None, "protocol"
        elif path[1:-1].lower() == "postmaster":  # bare: always accepted (RFC 5321 4.5.1), as in Postfix
            reply, hold = None, None
        else:
            outcome = await factory.policy.checkRecipient(
                self._request(address, given), note=self._restrictionNote(address),
                carried=self._carried("sender", "helo", "client"), discard=transaction.discard)
            reply, hold, errorClass = outcome.reply, outcome.hold, outcome.errorClass
            if reply is None:
                if hold is not None and transaction.hold is None:
                    self._logReject("RCPT", None, address, action="hold", text=hold)
                self._takeEffects(outcome.evaluation)
        if reply is not None:
            self._logReject("RCPT", reply, address)
            return self._fault(errorClass, reply)
        transaction.recipients.append(Recipient(str(address), rcptParams.orcpt, rcptParams.notify))
        return Reply(250, "2.1.5", "Ok")

    def _startMessage(self):
        """Open the queue file (with our Received header); a Reply on failure."""
        transaction = self.transaction
        if not transaction.recipients:
            if transaction.rcptTried:
                return Reply(554, "5.5.1", "Error: no valid recipients")  # no class: pipelining makes it normal
            return self._fault("protocol", Reply(503, "5.5.1", "Error: need RCPT command"))
        try:
            transaction.message = IncomingTransaction(self)
        except Exception as e:
            log.error("smtpd: cannot create a queue file: {error}", error=str(e))
            return self._fault("resource", Reply(451, "4.3.0", "Error: queue file write error"))
        return None

    def smtp_DATA(self, arg):
        if arg:
            return self._fault("protocol", Reply(501, "5.5.4", "Syntax: DATA"))
        transaction = self.transaction
        if transaction.sender is None:
            return self._fault("protocol", Reply(503, "5.5.1", "Error: need MAIL command"))
        if transaction.message is not None or transaction.bdatFailure is not None:
            return self._fault("protocol", Reply(503, "5.5.1", "Error: DATA after BDAT"))
        if transaction.mailParams.body == "BINARYMIME":
            return self._fault("protocol", Reply(503, "5.5.1", "Error: BODY=BINARYMIME requires BDAT"))
        if self.factory.policy.dataRestrictions and transaction.recipients:
            return self._dataChecked()
        return self._dataStart()

    async def _contentStage(self, stage, verb):
        """smtpd_data_restrictions (DATA, the first BDAT) or smtpd_end_of_data_restrictions: a refusal or None."""
        transaction = self.transaction
        recipients = transaction.recipients
        recipient = None
        if len(recipients) == 1:  # Postfix names the recipient only when there is one
            try:
                recipient = parsePath(f"<{recipients[0].address}>", allowNull=False, smtputf8=True)
            except PathError:
                recipient = None
        outcome = await self.factory.policy.checkContent(stage, self._request(recipient),
                                                         note=self._restrictionNote(None, verb),
                                                         discard=transaction.discard)
        if outcome.reply is not None:
            self._logReject(verb, outcome.reply)
            return self._fault(outcome.errorClass, outcome.reply)
        self._takeEffects(outcome.evaluation)
        return None

    async def _dataChecked(self):
        refusal = await self._contentStage("data", "DATA")
        if refusal is not None:
            return refusal
        if self._closing:
            return None
        return self._dataStart()

    def _dataStart(self):
        transaction, settings = self.transaction, self.settings
        failure = self._startMessage()
        if failure is not None:
            return failure
        transaction.reader = D.DataReader(
            transaction.message.write, settings.lineLimit, settings.sizeLimit, self.session.bareNewline
        )
        self._mode = "data"
        self._newRequest(content=True)
        self._reply(Reply(354, "", "End data with <CR><LF>.<CR><LF>"))
        return None

    def _dataStep(self):
        reader = self.transaction.reader
        consumed = reader.feed(self._buffer)
        if reader.fatal is not None:
            # A bare newline under reject: reply and disconnect, whatever came before.
            self._buffer = b""
            self._contentFatal("data", "DATA")
            return
        if consumed is None:
            self._buffer = b""
            return
        self._buffer = self._buffer[consumed:]
        self._endData()

    def _contentFatal(self, verb, where):
        self._abortMessage()
        self._count(verb, False)
        self._bareNewlineReject(where)

    def _contentReply(self, error, verb="data"):
        if error == D.TOO_BIG:
            # Postfix: cleanup's "message file too big" is the bounce class; BDAT's size check, policy.
            reply = Reply(552, "5.3.4", "Error: message file too big")
            return self._fault("bounce" if verb == "data" else "policy", reply)
        # Postfix has no such limit (it splits long lines): mta counts it a protocol error.
        reply = Reply(552, "5.3.4", f"Error: message line longer than {self.settings.lineLimit} bytes")
        return self._fault("protocol", reply)

    def _endData(self):
        """The real end of data (CRLF.CRLF): only here does DATA return to command mode."""
        reader, self.transaction.reader = self.transaction.reader, None
        assert reader.done
        self._mode = "command"
        self._newRequest()
        self._lastCommand = "END-OF-MESSAGE"
        self._resetAfterReply = True
        if reader.error is not None:
            reply = self._contentReply(reader.error)
            self._logReject("END-OF-MESSAGE", reply)
            self._resetTransaction()
            self._respond("data", reply)
            return
        self._endMessage("data")

    def _endMessage(self, verb):
        """Commit the message; the reply goes out when the queue file is safe."""
        transaction = self.transaction
        message = transaction.takeMessage()
        reply = message.finish()
        if reply is not None:
            message.abort()  # its queue file (and descriptor) go now, not at the next start
            self._logReject("END-OF-MESSAGE", reply)
            self._resetTransaction()
            self._respond(verb, self._fault("bounce", reply))  # too many hops: Postfix's bounce class
            return
        policy = self.factory.policy
        stages = []
        if verb == "bdat" and policy.dataRestrictions:  # BDAT: the DATA stage at the end (see DEVIATIONS)
            stages.append(("data", "BDAT"))
        if policy.endOfDataRestrictions:
            stages.append(("eod", "END-OF-MESSAGE"))
        if stages:
            self._respond(verb, Deferred.fromCoroutine(self._endOfDataChecked(message, stages)))
            return
        self._resetTransaction()
        self._commitMessage(verb, message, transaction)

    async def _endOfDataChecked(self, message, stages):
        """The content stages, then the commit (or the refusal, and the file is removed)."""
        transaction = self.transaction
        refusal = None
        for stage, verb in stages:
            refusal = await self._contentStage(stage, verb)
            if refusal is not None:
                break
        self._resetTransaction()
        if refusal is not None:
            message.abort()
            return refusal
        result = []
        self._commitMessage(None, message, transaction, result.append)
        return await result[0]

    def _commitMessage(self, verb, message, transaction, hand=None):
        """
        Make C{message} durable and answer (C{verb}; or give the Deferred of the
        reply to C{hand}).  The restrictions' DISCARD drops it (250 all the same,
        as Postfix), REDIRECT replaces its recipients, BCC adds some.
        """
        respond = hand or (lambda d: self._respond(verb, d))
        if transaction.discard is not None:
            message.abort()
            self.factory.maillog.emit(f"{message.queueId}: discard: {sanitize(transaction.discard)}",
                                      queue_id=message.queueId, client=self.session.client)
            respond(succeed(Reply(250, "2.0.0", f"Ok: queued as {message.queueId}")))
            return
        if transaction.redirect is not None or transaction.bcc:
            recipients = list(message.recipients)
            if transaction.redirect is not None:
                recipients = [Recipient(transaction.redirect, r.orcpt or f"rfc822;{r.address}", r.notify)
                              for r in recipients[:1]]
            recipients += [Recipient(b, None, ("NEVER",)) for b in transaction.bcc]
            message.setRecipients(recipients)
        d = message.commit()

        def committed(queueId):
            self.session.forgive()  # Postfix forgives a client that delivers mail
            return Reply(250, "2.0.0", f"Ok: queued as {queueId}")

        def failed(failure):
            log.error("smtpd: queue file write error: {error}", error=failure.getErrorMessage())
            return self._fault("resource", Reply(451, "4.3.0", "Error: queue file write error"))

        respond(d.addCallbacks(committed, failed))

    # -- BDAT (RFC 3030) -------------------------------------------------------

    def smtp_BDAT(self, arg):
        parts = arg.split()
        if not (1 <= len(parts) <= 2 and parts[0].isdigit() and len(parts[0]) <= 18) or (
            len(parts) == 2 and parts[1].upper() != "LAST"
        ):
            # The chunk's length is unknown, so the stream cannot be followed.
            self._count("bdat", False)
            self._fault("protocol")
            self._reply(Reply(501, "5.5.4", "Syntax: BDAT count [LAST]"))
            self._close()
            return None
        size = int(parts[0])
        chunk = self._chunk = Chunk(size, len(parts) == 2)
        transaction = self.transaction
        if not self.session.extended:
            chunk.error = self._fault("protocol", Reply(503, "5.5.1", "Error: send EHLO first"))
        elif transaction.sender is None:
            chunk.error = self._fault("protocol", Reply(503, "5.5.1", "Error: need MAIL command"))
        elif size == 0 and not chunk.last:
            # Postfix blocks empty chunks rather than count them as junk (smtpd.c bdat_cmd).
            queueId = transaction.queueId or "NOQUEUE"
            self.factory.maillog.emit(f"warning: {queueId}: null BDAT request from {self.session.client}")
            self._failBdat(Reply(551, "5.7.1", "Null BDAT request"))
        elif transaction.bdatFailure is not None:
            chunk.error = Reply(551, "5.0.0", f"Discarded {size} bytes after earlier error")
        elif transaction.message is None:
            failure = self._startMessage()
            if failure is not None:
                self._failBdat(failure)
            else:
                settings = self.settings
                binary = transaction.mailParams.body == "BINARYMIME"  # no lines, no line-end checks
                transaction.content = D.ContentReader(
                    transaction.message.write, settings.lineLimit, settings.sizeLimit, self.session.bareNewline,
                    binary=binary,
                )
        self._mode = "bdat"
        if size:
            self._newRequest(content=True)
        else:
            self._endChunk()
        return None

    def _failBdat(self, reply):
        """The transaction failed: this chunk gets C{reply}, later ones are discarded until LAST."""
        transaction = self.transaction
        self._chunk.error = transaction.bdatFailure = reply
        transaction.abort()
        transaction.content = None

    def _bdatStep(self):
        chunk, transaction = self._chunk, self.transaction
        take = min(chunk.remaining, len(self._buffer))
        if take == len(self._buffer):
            data, self._buffer = self._buffer, b""
        else:
            data, self._buffer = self._buffer[:take], self._buffer[take:]
        chunk.remaining -= take
        transaction.bdatBytes += take
        if chunk.error is None:
            transaction.content.write(data)
            if transaction.content.fatal is not None:
                self._contentFatal("bdat", "BDAT")
                return
        if chunk.remaining == 0:
            self._endChunk()

    def _endChunk(self):
        chunk, transaction = self._chunk, self.transaction
        self._mode = "command"
        self._newRequest()
        if chunk.last:
            self._lastCommand = "END-OF-MESSAGE"
            self._resetAfterReply = True
        content = transaction.content
        if chunk.error is None:
            if chunk.last:
                content.close()  # the last line may have no line end; a CR at the end is bare
                if content.fatal is not None:
                    self._contentFatal("bdat", "BDAT")
                    return
            if content.error is not None:
                self._failBdat(self._contentReply(content.error, "bdat"))
        if chunk.error is not None:
            if chunk.last and transaction.bdatFailure is not None:
                if transaction.bdatFailure.code >= 500:
                    self._logReject("END-OF-MESSAGE", transaction.bdatFailure)
                self._resetTransaction()
            self._respond("bdat", chunk.error)
            return
        if not chunk.last:
            self._respond("bdat", Reply(250, "2.0.0", f"Ok: {transaction.bdatBytes} bytes"))
            return
        self._endMessage("bdat")
