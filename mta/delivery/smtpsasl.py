"""mta.delivery.smtpsasl - SMTP AUTH in the SMTP/LMTP client (Postfix's smtp_sasl_glue.c, smtp_sasl_proto.c).

NAME
    SaslClient  one per transport: the password maps, the mechanism
                filter's tables and the 535 cache, opened once
    SaslAuth    mixed into mta.delivery.smtpclient.SMTPClientSession: the
                login after the final EHLO (after STARTTLS and the second
                EHLO when TLS is used)

DESCRIPTION
    With smtp_sasl_auth_enable = yes, when the server's EHLO reply offers
    AUTH (also the old "AUTH=..." form; several AUTH lines are joined):

    1. The offered mechanisms pass smtp_sasl_mechanism_filter when it is
       set (names, !name, type:table; first match decides, no match
       drops).  None left: "warning: HOST[ADDR]:PORT offered no supported
       AUTH mechanisms: '...'".
    2. The credentials, from smtp_sasl_password_maps, keys tried in
       Postfix's order (smtp_sasl_passwd_lookup()): with
       smtp_sender_dependent_authentication the sender address, then its
       @domain (not for the null sender); then the remote host name; then
       the next-hop destination as written ("[mail.isp.example]:587",
       "example.com"), all in lower case.  The value is
       "user:password", split at the first
       smtp_sasl_password_result_delimiter.  No entry: no AUTH, the mail
       goes out unauthenticated (Postfix: "we talk to each other like
       strangers").  A table that cannot answer defers with 4.3.0 "local
       data error while talking to HOST[ADDR]".
    3. No mechanism left after the filter: 4.7.0 "SASL authentication
       failed: server HOST[ADDR] offered no compatible authentication
       mechanisms for this type of connection security".
    4. The 535 cache (smtp_sasl_auth_cache_name, mta.delivery.saslcache):
       a login refused before gives "SASL [CACHED] authentication failed;
       server HOST said: REPLY" without trying.
    5. The mechanism: the first of PLAIN, LOGIN, OAUTHBEARER, XOAUTH2
       that is offered, passed the filter, and is allowed by the security
       options in force: smtp_sasl_security_options without TLS,
       smtp_sasl_tls_verified_security_options under TLS with a verified
       (matched) server certificate, smtp_sasl_tls_security_options under
       other TLS.  All four send the secret as it is, so noplaintext (the
       default) rules them all out (mta.delivery.saslmech): credentials
       never go out in plaintext unless the options say so.  None:
       "warning: SASL authentication failure: No worthy mechs found" and
       4.7.0 "SASL authentication failed; cannot authenticate to server
       HOST[ADDR]: no mechanism available".
    6. AUTH MECH [initial response], the 334 challenges answered (a bad
       challenge: "*", then 4.7.0 "... cannot authenticate to server
       HOST[ADDR]: bad protocol / cancel"; more than 100 rounds: 4.3.0
       "authentication protocol loop").  235: authenticated (a log line
       says as whom, with which mechanism), session.saslIdentity is set.
       Any other reply: "SASL authentication failed; server HOST[ADDR]
       said: 535 5.7.8 ...", with the server's enhanced code, made 4.x.x
       by smtp_sasl_auth_soft_bounce = yes (the default); a 535 goes into
       the 535 cache.  A 4xx defers, a 5xx (soft bounce off) bounces.

    Every failure above is for this host: the recipients deferred by it
    may be tried at the next one, as after Postfix's smtp_sess_fail(),
    and the connection is not cached.

    OAUTH (XOAUTH2, OAUTHBEARER): the password-map value is
    "user:TOKEN", the bearer token in place of the password; set
    smtp_sasl_mechanism_filter = xoauth2 (or oauthbearer) for such a
    destination, since the password mechanisms are preferred whenever the
    server offers them.  The token expires: serve the map from a program
    that renews it (a socketmap: table) rather than a file.

    MAIL FROM gets AUTH=<> only with smtp_send_dummy_mail_auth = yes in an
    authenticated session, as Postfix (2.9 and later).

CONNECTION CACHE
    session.saslIdentity is None, or (user, mechanism) once
    authenticated.  With smtp_sender_dependent_authentication, Postfix
    adds the sender to the cache label of a connection;
    SaslClient.cacheLabel(request) gives that part (the sender, or None
    when the credentials cannot depend on it), and mta.delivery.smtp
    keys its cache on (destination, label), so a connection logged in
    with one sender's credentials never carries another sender's mail.

SECURITY
    Credentials are sent only by a mechanism the options in force allow
    (noplaintext without TLS by default).  AUTH command lines and the
    responses to challenges never reach the session transcript or a log
    ("AUTH PLAIN <hidden>").  Challenges are decoded strictly and bounded
    (mta.delivery.saslmech).  A password map value with a line end or NUL
    is refused ("local data error").

CONFIGURATION
    mta.config.settings.clientsasl.ClientSasl (``settings.sasl``):
    smtp_sasl_auth_enable, smtp_sasl_password_maps,
    smtp_sasl_password_result_delimiter,
    smtp_sender_dependent_authentication, smtp_sasl_mechanism_filter,
    smtp_sasl_security_options, smtp_sasl_tls_security_options,
    smtp_sasl_tls_verified_security_options, smtp_sasl_auth_soft_bounce,
    smtp_sasl_auth_cache_name, smtp_sasl_auth_cache_time, smtp_sasl_type,
    smtp_send_dummy_mail_auth, and the lmtp_ twins.

DEVIATIONS
    * Mechanisms are built in (PLAIN, LOGIN, XOAUTH2, OAUTHBEARER);
      smtp_sasl_type accepts cyrus only, and there is no smtp_sasl_path.
      Cyrus picks the "best" mechanism; mta prefers PLAIN, LOGIN, then
      the token mechanisms.
    * Sender keys are the address and @domain (Postfix's mail_addr_find
      also tries user+ext forms and, for local domains, the bare user).
    * lmtp_sender_dependent_authentication works for LMTP too (Postfix
      documents it, but its code looks up senders only in SMTP mode).
    * A bad challenge is answered with "*" (RFC 4954) before the
      deferral; Postfix leaves the dialog half-done and closes.
    * The 535 cache is an SQLite file with salted hashes
      (mta.delivery.saslcache).
"""

from twisted.logger import Logger

from mta.delivery.saslcache import AuthCache
from mta.delivery.saslmech import MECHANISMS, SaslError, acceptable, b64decode, b64encode
from mta.tables import TableTemporaryError

__all__ = ["Credentials", "SaslAuth", "SaslClient"]

log = Logger()

_STAGE = "performing the AUTH handshake"
_MAX_STEPS = 100


class Credentials:
    """A user name and secret from smtp_sasl_password_maps, and the key that found them."""

    def __init__(self, user, password, key):
        self.user = user
        self.password = password
        self.key = key

    def __repr__(self):  # never the password
        return f"Credentials({self.user!r}, key={self.key!r})"


class SaslClient:
    """
    The transport's SASL state: C{policy} (a ClientSasl), its tables opened
    with C{tables} (mta.tables.Tables), the 535 cache, C{lmtp}.
    """

    def __init__(self, policy, tables, clock, lmtp=False):
        self.policy = policy
        self.lmtp = lmtp
        self.passwordMaps = [tables.open(spec) for spec in policy.passwordMaps]
        self.filter = tuple((negated, kind, tables.open(value) if kind == "table" else value)
                            for negated, kind, value in policy.mechanismFilter)
        self.cache = AuthCache(policy.cachePath, policy.cacheTime, clock) if policy.cachePath else None

    def close(self):
        if self.cache is not None:
            self.cache.close()

    def cacheLabel(self, request):
        """The part of a connection-cache key that the credentials may depend on: the sender, or None."""
        if self.policy.active and self.policy.senderDependent:
            return request.envelope.sender.lower()
        return None

    def passwordKeys(self, sender, hostName, destination):
        """The smtp_sasl_password_maps keys, in Postfix's order (see the module docstring)."""
        keys = []
        if self.policy.senderDependent and sender:
            sender = sender.lower()
            keys.append(sender)
            local, at, domain = sender.rpartition("@")
            if at and domain:
                keys.append(f"@{domain}")
        for key in (hostName, destination):
            if key and key.lower() not in keys:
                keys.append(key.lower())
        return keys

    async def credentials(self, sender, hostName, destination):
        """Credentials for this delivery, or None; TableTemporaryError and ValueError (a bad value) propagate."""
        for key in self.passwordKeys(sender, hostName, destination):
            for table in self.passwordMaps:
                value = await table.lookup(key)
                if value is None:
                    continue
                if any(c in value for c in "\r\n\0"):
                    raise ValueError(f"the smtp_sasl_password_maps value of {key!r} holds a line end or NUL")
                user, _, password = value.partition(self.policy.delimiter)
                return Credentials(user.strip(), password, key)
        return None

    async def filterMechanisms(self, offered):
        """The offered mechanisms (upper case, in order) that pass smtp_sasl_mechanism_filter."""
        if not self.filter:
            return list(offered)
        kept = []
        for name in offered:
            for negated, kind, value in self.filter:
                if kind == "name":
                    matched = value == name
                else:
                    matched = await value.lookup(name.lower()) is not None or \
                        await value.lookup(name) is not None
                if matched:
                    if not negated:
                        kept.append(name)
                    break
        return kept

    @staticmethod
    def choose(mechanisms, options):
        """The mechanism to use among C{mechanisms} under C{options}, or None."""
        for name in MECHANISMS:
            if name in mechanisms and acceptable(name, options):
                return name
        return None


def offeredMechanisms(reply, extensions):
    """The AUTH mechanisms (upper case, once each, in order) of an EHLO reply: every AUTH and AUTH= line."""
    words = []
    lines = reply.lines[1:] if reply is not None else []
    for line in lines:
        text = line[4:].strip()
        head = text[:5].upper()
        if head in ("AUTH ", "AUTH="):
            words.extend(text[5:].replace("=", " ").split())
    if not words and "AUTH" in extensions:
        words = extensions["AUTH"].split()
    return list(dict.fromkeys(w.upper() for w in words))


class SaslAuth:
    """The SASL login steps (see the module docstring); needs a ClientConnection and the session's state."""

    sasl = None  # a SaslClient (the transport's); None: no SASL
    saslDestination = ""  # the next-hop as written, for the password lookup
    saslIdentity = None  # (user, mechanism) once authenticated
    ehloReply = None  # the last EHLO reply (for the AUTH lines)

    def _saslOptions(self):
        policy = self.sasl.policy
        if not self.tlsActive:
            return "smtp_sasl_security_options", policy.securityOptions
        verdict = getattr(self, "tlsVerdict", None)
        if verdict is not None and verdict.trusted and verdict.matched:  # Postfix's TLS_CERT_IS_MATCHED
            return "smtp_sasl_tls_verified_security_options", policy.tlsVerifiedSecurityOptions
        return "smtp_sasl_tls_security_options", policy.tlsSecurityOptions

    def saslMailParameter(self):
        """" AUTH=<>" for MAIL FROM (smtp_send_dummy_mail_auth in an authenticated session), else ""."""
        if self.sasl is not None and self.sasl.policy.dummyMailAuth and self.saslIdentity is not None:
            return " AUTH=<>"
        return ""

    async def _saslLogin(self, tx):
        """The login (see the module docstring): True to go on, False when this host failed (recorded)."""
        self.saslIdentity = None
        if self.sasl is None or not self.sasl.policy.active or not self.esmtp or "AUTH" not in self.extensions:
            return True
        host = tx.host
        namaddr = host.namaddr
        offered = offeredMechanisms(self.ehloReply, self.extensions)
        mechanisms = await self.sasl.filterMechanisms(offered)
        if not mechanisms:
            words = " ".join(offered)
            self._warn(f"{host.relay} offered no supported AUTH mechanisms: '{words}'" if words else
                       f"{host.relay} offered null AUTH mechanism list")
        sender = tx.request.envelope.sender if (not self.settings.lmtp or self.sasl.policy.senderDependent) else ""
        try:
            credentials = await self.sasl.credentials(sender, host.name, self.saslDestination)
        except (TableTemporaryError, ValueError) as e:
            what = "lmtp" if self.settings.lmtp else "smtp"
            self._warn(f"{tx.request.queue_id}: {what}_sasl_password_maps lookup error"
                       + (f": {e}" if isinstance(e, ValueError) else ""))
            tx.local(tx.pending(), "deferred", "4.3.0", f"local data error while talking to {namaddr}", retry=True)
            return False
        if credentials is None:
            self._saslNote(f"{host.relay}: no SASL credentials found; not authenticating")
            return True
        if not mechanisms:
            tx.local(tx.pending(), "deferred", "4.7.0", f"SASL authentication failed: server {namaddr} offered no "
                     "compatible authentication mechanisms for this type of connection security", retry=True)
            return False
        cache = self.sasl.cache
        if cache is not None:
            cached = cache.find(host.name, credentials.user, credentials.password)
            if cached is not None:
                dsn, text = cached
                if self.sasl.policy.softBounce and dsn[0] == "5":
                    dsn = "4" + dsn[1:]
                status = "deferred" if dsn[0] == "4" else "bounced"
                tx.local(tx.pending(), status, dsn, f"SASL [CACHED] authentication failed; server {host.name} "
                         f"said: {text}", retry=status == "deferred")
                return False
        optionsName, options = self._saslOptions()
        name = self.sasl.choose(mechanisms, options)
        if name is None:
            self._warn("SASL authentication failure: No worthy mechs found")
            self._saslNote(f"{host.relay}: no SASL mechanism among {' '.join(mechanisms)} is allowed by "
                           f"{optionsName} = {', '.join(sorted(options)) or '(empty)'}")
            return self._saslFailed(tx, "no mechanism available")
        return await self._saslDialog(tx, credentials, name)

    async def _saslDialog(self, tx, credentials, name):
        host = tx.host
        mechanism = MECHANISMS[name](credentials.user, credentials.password, host.name, host.port)
        timeout = self.settings.heloTimeout
        self._stage = _STAGE
        try:
            initial = mechanism.initial()
        except SaslError as e:
            return self._saslFailed(tx, str(e))
        if initial is None:
            line = f"AUTH {name}"
        else:
            line = f"AUTH {name} {b64encode(initial) or '='}"
        reply = await self._saslCommand(line, f"AUTH {name}" + (" <hidden>" if initial is not None else ""),
                                        timeout)
        steps = 0
        while reply.code == 334:
            steps += 1
            if steps > _MAX_STEPS:
                tx.local(tx.pending(), "deferred", "4.3.0", f"SASL authentication failed; authentication protocol "
                         f"loop with server {host.namaddr}", retry=True)
                await self._saslCommand("*", "*", timeout)
                return False
            try:
                response = mechanism.step(b64decode(reply.lines[-1][4:]))
            except SaslError as e:
                await self._saslCommand("*", "*", timeout)
                return self._saslFailed(tx, str(e))
            reply = await self._saslCommand(b64encode(response), "<hidden>", timeout)
        if reply.positive:
            self.saslIdentity = (credentials.user, name)
            self._saslNote(f"{host.relay}: SASL {name} authentication succeeded as {credentials.user}")
            return True
        policy = self.sasl.policy
        if reply.code == 535 and self.sasl.cache is not None:
            self.sasl.cache.store(host.name, credentials.user, credentials.password, reply.dsn, reply.text)
        dsn = reply.dsn
        if policy.softBounce and dsn[0] == "5":
            dsn = "4" + dsn[1:]
        tx.refused(tx.pending(), reply, f"SASL authentication failed; server {host.namaddr} said: {reply.text}",
                   dsn=dsn, reason=True)
        return False

    def _saslFailed(self, tx, why):
        tx.local(tx.pending(), "deferred", "4.7.0",
                 f"SASL authentication failed; cannot authenticate to server {tx.host.namaddr}: {why}", retry=True)
        return False

    async def _saslCommand(self, line, shown, timeout):
        """Send C{line}, putting C{shown} (no secrets) into the transcript; its reply."""
        transcript, self.transcript = self.transcript, None
        try:
            self._send(line.encode("utf-8") + b"\r\n", 1)
        finally:
            self.transcript = transcript
        if transcript is not None:
            transcript.sentLines(shown.encode("utf-8") + b"\r\n")
        return await self._read(timeout)

    def _saslNote(self, text):
        if self.maillog is not None:
            self.maillog.emit(text, self._queueId)
        else:
            log.info("{text}", text=text)
