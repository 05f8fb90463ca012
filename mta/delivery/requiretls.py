"""mta.delivery.requiretls - REQUIRETLS (RFC 8689) and "TLS-Required: No" in the SMTP and LMTP client.

NAME
    parsePolicy(items)           smtp_requiretls_policy -> a tuple of actions and table specs
    RequireTlsPolicy(settings, tables)
                                 one per TlsPolicy: apply(site, request, destination)
    demand(site, envelope)       the action in force for one delivery ("disable" when none)
    beforeStarttls(session, tx)  the hook after the first EHLO (STARTTLS not offered)
    afterStarttlsFailure(tx, demand, namaddr)
                                 a TLS failure of a REQUIRETLS message is a bounce (5.7.10)
    beforeMail(session, tx)      the hook before MAIL FROM: verified TLS and REQUIRETLS offered
    ACTIONS

DESCRIPTION
    A message received with MAIL FROM ... REQUIRETLS (mta.model.Envelope
    .requiretls) is delivered under the action of smtp_requiretls_policy
    (lmtp_requiretls_policy), Postfix 3.11's names and actions:

      enforce                 only over TLS whose server certificate is
                              matched (levels verify, secure, fingerprint,
                              dane-only, dane with usable TLSA records, or
                              an MTA-STS enforce policy), to a server that
                              offers REQUIRETLS after STARTTLS; MAIL FROM
                              then carries REQUIRETLS.
      opportunistic+starttls  TLS is required (no plaintext), certificate
                              and REQUIRETLS support are not; REQUIRETLS is
                              sent when offered.
      opportunistic           REQUIRETLS is sent when the server offers it
                              inside TLS; otherwise the mail goes as if
                              REQUIRETLS had not been requested.
      disable                 as if REQUIRETLS had not been requested.

    The policy is a list of actions and type:table lookups, searched in
    order with the next-hop domain (no [ ], no :port), then its parent
    domains as ".parent"; the first action found applies.  Without a
    match: enforce (Postfix's implicit default).

    Failures, as Postfix's smtp_connect.c and smtp_proto.c word them:

      5.7.10 "Sender requested REQUIRETLS, but my configured TLS security
             level 'may' disables certificate matching" (enforce, before
             any connection; the destination's level, after smtp_tls_policy_
             maps, MTA-STS and DANE, cannot verify a certificate)
      5.7.30 "Sender requested REQUIRETLS, but TLS service was not offered
             by host X" (no STARTTLS in the EHLO reply)
      5.7.10 "Sender requested REQUIRETLS, but TLS failed with host X: ..."
             (handshake failure or a certificate the policy refuses)
      5.7.30 "Sender requested REQUIRETLS, but no server was found that
             supports REQUIRETLS. The last attempted server was X"

    A failure at one host tries the next MX host (as Postfix's
    SMTP_MISC_FAIL_SOFT_NON_FINAL); when none is left the mail bounces, it
    is never deferred for ever and never sent in plaintext.

    "TLS-Required: No" (Envelope.tls_required_no, tls_required_enable):
    the delivery is made at level may whatever smtp_tls_security_level,
    smtp_tls_policy_maps, MTA-STS or DANE say (forDestination: source
    "tls-required"), so a TLS policy failure never stops it; REQUIRETLS
    wins over the header (RFC 8689: with both, the REQUIRETLS parameter
    takes precedence; the header stays in the message).

SECURITY
    The flags come from the queue file (mta.queue.fileformat), set by the
    SMTP server only from a MAIL FROM inside TLS; table answers are
    checked against the four action words (anything else defers with
    4.7.10 "REQUIRETLS policy configuration error", as in Postfix).

CONFIGURATION
    requiretls_enable, tls_required_enable, smtp_requiretls_policy,
    lmtp_requiretls_policy (mta.config.settings.client).

DEVIATIONS
    The default smtp_requiretls_policy is "enforce"; Postfix's default
    lists inline:/cidr: exceptions (opportunistic for $mydomain, localhost
    and numeric next hops), which need table types mta does not have.
    Table lookups query the ".parent" forms with every table type (Postfix:
    not with regexp:, pcre:, socketmap:, tcp:).  LMTP over a UNIX socket
    uses the fixed actions of lmtp_requiretls_policy (tables are not asked
    with $myhostname).  Postfix's "tls=level/requiretls" delivery-log
    field is not written; the decisions are log lines of their own and
    the 5.7.x texts.  requiretls_esmtp_header (Require-TLS-ESMTP: yes) and
    sendmail -Orequiretls=yes are not implemented.
"""

import attrs
from twisted.logger import Logger

from mta.config.settings.client import REQUIRETLS_ACTIONS as ACTIONS
from mta.config.settings.client import parseRequireTlsPolicy as parsePolicy
from mta.delivery.smtptls import dotParents, nexthopDomain

__all__ = ["ACTIONS", "RequireTlsPolicy", "afterStarttlsFailure", "beforeMail", "beforeStarttls", "demand",
           "parsePolicy"]

log = Logger()

ENFORCE, STARTTLS, OPPORTUNISTIC, DISABLE = ACTIONS
# Levels whose certificate check is a match (Postfix's TLS_MUST_MATCH); dane needs usable TLSA.
MATCHING_LEVELS = frozenset({"verify", "secure", "fingerprint", "dane-only"})


class PolicyConfigError(Exception):
    """A smtp_requiretls_policy item or table answer that is not an action."""


class RequireTlsError(Exception):
    """A destination or host REQUIRETLS cannot use (SitePolicy.failure, as tlspolicy.PolicyError): text, dsn."""

    def __init__(self, text, dsn="5.7.10"):
        super().__init__(text)
        self.text = text
        self.dsn = dsn


def _domainKeys(destination):
    """The lookup keys of a next hop: the domain without [ ] or :port (alone when bracketed), then ".parent" domains."""
    name = nexthopDomain((destination or "").strip())
    if not name:
        return []
    return [name] if destination.strip().startswith("[") else dotParents(name)


class RequireTlsPolicy:
    """smtp_requiretls_policy for one transport (see the module docstring)."""

    def __init__(self, settings, tables=None):
        self.enabled = getattr(settings, "requiretlsEnable", True)
        self.tlsRequiredEnable = getattr(settings, "tlsRequiredEnable", True)
        self.items = getattr(settings, "requiretlsPolicy", (ENFORCE,))
        self._tables = {}
        for item in self.items:
            if item not in ACTIONS and tables is not None:
                self._tables[item] = tables.open(item)

    def fixedAction(self):
        """The first fixed action of the list (no tables asked): for LMTP over UNIX sockets."""
        for item in self.items:
            if item in ACTIONS:
                return item
        return ENFORCE

    async def action(self, destination):
        """The action for C{destination} (a next hop as routed); PolicyConfigError for a bad answer."""
        from mta.tables import TableTemporaryError

        for item in self.items:
            if item in ACTIONS:
                return item
            table = self._tables.get(item)
            if table is None:
                continue
            for key in _domainKeys(destination):
                try:
                    value = await table.lookup(key)
                except TableTemporaryError as e:
                    raise PolicyConfigError(f"smtp_requiretls_policy: lookup of {key!r} in {item} failed: {e}")
                if value is not None:
                    word = value.strip().lower()
                    if word not in ACTIONS:
                        raise PolicyConfigError(f"smtp_requiretls_policy: {item} returned {value!r} for {key!r}, "
                                                "not a REQUIRETLS action")
                    return word
        return ENFORCE

    async def apply(self, site, request, destination):
        """
        The site of C{destination} for this message: "TLS-Required: No"
        lowers it to may; REQUIRETLS sets site.requiretls to the action and
        fails it (5.7.10) when enforce meets a level that cannot match.
        """
        envelope = getattr(request, "envelope", None)
        if envelope is None or site.failure is not None:
            return site
        if envelope.requiretls and self.enabled:
            try:
                action = await self.action(destination)
            except PolicyConfigError as e:
                log.warn("{text}", text=str(e))
                return attrs.evolve(site, failure=RequireTlsError("REQUIRETLS policy configuration error", "4.7.10"))
            site = attrs.evolve(site, requiretls=action)
            daneLater = site.tls.level == "dane" or getattr(site.tls, "configuredLevel", "") in ("dane", "dane-only")
            if action == ENFORCE and not daneLater and not canMatch(site):
                # Postfix's smtp_get_effective_tls_level: refused before any connection.
                return attrs.evolve(site, failure=_levelFailure(site, "disables certificate matching"))
            if action == STARTTLS and site.tls.level in ("none", "may", "dane"):
                # opportunistic+starttls: no plaintext; the level says so (and its mandatory protocols).
                level = "encrypt" if site.tls.level != "dane" else "dane"
                site = attrs.evolve(site, tls=attrs.evolve(site.tls, level=level), source="requiretls")
            if action == STARTTLS and site.tls.level == "none":
                return attrs.evolve(site, failure=_levelFailure(site, "disables encryption"))
            return site
        if envelope.tls_required_no and self.tlsRequiredEnable:
            # RFC 8689 5: no TLS policy enforcement; TLS when offered, else plaintext.
            tls = attrs.evolve(site.tls, level="may") if site.tls.level != "none" else site.tls
            return attrs.evolve(site, tls=tls, source="tls-required", sts=None, fingerprints=())
        return site

    def checkHost(self, site):
        """After DANE (forHost): under enforce, a host whose level cannot match fails with 5.7.10."""
        if site.failure is not None or site.requiretls != ENFORCE:
            return site
        if canMatch(site):
            return site
        return attrs.evolve(site, failure=_levelFailure(site, "disables certificate matching"))


def canMatch(site):
    """Will a TLS connection under this site's policy have a matched server certificate?"""
    level = site.tls.level
    if level in MATCHING_LEVELS:
        return True
    if level == "dane":
        return bool(site.tlsa)
    return site.sts is not None and getattr(site.sts, "mode", None) == "enforce" and site.tls.mustMatch


def _levelFailure(site, what):
    return RequireTlsError(f"Sender requested REQUIRETLS, but my configured TLS security level "
                       f"'{site.tls.level}' {what}", "5.7.10")


def demand(site, envelope, settings=None):
    """The REQUIRETLS action in force for this delivery: site.requiretls, or "disable"."""
    if envelope is None or not envelope.requiretls:
        return DISABLE
    if settings is not None and not getattr(settings, "requiretlsEnable", True):
        return DISABLE
    action = getattr(site, "requiretls", "") or ""
    if not action:  # not resolved by forDestination (LMTP over a UNIX socket): the fixed action
        action = RequireTlsPolicy(settings).fixedAction() if settings is not None else ENFORCE
    return action


def beforeStarttls(session, tx):
    """
    After the first EHLO: under enforce and opportunistic+starttls a
    server without STARTTLS is a 5.7.30 bounce (next MX first); False
    when this host will not do (the results are recorded).
    """
    action = demand(session.site, tx.request.envelope, session.settings)
    if action not in (ENFORCE, STARTTLS) or session.tlsActive:
        return True
    if session.esmtp and "STARTTLS" in session.extensions:
        return True
    text = f"Sender requested REQUIRETLS, but TLS service was not offered by host {tx.host.namaddr}"
    _note(session, text)
    tx.local(tx.pending(), "bounced", "5.7.30", text, retry=True)
    return False


def afterStarttlsFailure(session, tx):
    """
    STARTTLS was refused, failed, or gave a certificate the policy
    refuses: for a REQUIRETLS message (enforce, opportunistic+starttls)
    the deferrals recorded at this host become 5.7.10 bounces, still
    tried at the next MX host.
    """
    action = demand(session.site, tx.request.envelope, session.settings)
    if action not in (ENFORCE, STARTTLS):
        return
    for index, result in list(tx.results.items()):
        if result.status == "deferred":
            text = f"Sender requested REQUIRETLS, but TLS failed with host {tx.host.namaddr}: {result.text}"
            tx.results[index] = attrs.evolve(result, status="bounced", dsn="5.7.10", text=text)
            tx.retry.add(index)


def beforeMail(session, tx):
    """
    Before MAIL FROM: whether to send REQUIRETLS (True/False), or None
    when this host will not do (5.7.10/5.7.30 recorded, next MX first).
    """
    action = demand(session.site, tx.request.envelope, session.settings)
    if action == DISABLE:
        return False
    namaddr = tx.host.namaddr
    offered = session.tlsActive and "REQUIRETLS" in session.extensions
    verdict = session.tlsVerdict
    verified = session.tlsActive and verdict is not None and verdict.failure is None and (
        verdict.trust == "Verified" or (verdict.matched and canMatch(session.site)))
    if action in (ENFORCE, STARTTLS) and not session.tlsActive:
        text = f"Sender requested REQUIRETLS, but TLS service was not offered by host {namaddr}"
        tx.local(tx.pending(), "bounced", "5.7.30", text, retry=True)
        return None
    if action == ENFORCE and not verified:
        text = (f"Sender requested REQUIRETLS, but the server certificate of host {namaddr} was not verified "
                f"(TLS security level '{session.site.tls.level}')")
        tx.local(tx.pending(), "bounced", "5.7.10", text, retry=True)
        return None
    if action == ENFORCE and not offered:
        text = ("Sender requested REQUIRETLS, but no server was found that supports REQUIRETLS. "
                f"The last attempted server was {namaddr}")
        tx.local(tx.pending(), "bounced", "5.7.30", text, retry=True)
        return None
    if not offered:
        _note(session, f"Sender requested REQUIRETLS, but REQUIRETLS support was not offered by host {namaddr}")
    return offered


def _note(session, text):
    note = getattr(session, "_note", None)
    if note is not None:
        note(text)
    else:
        log.info("{text}", text=text)
