"""mta.delivery.tlspolicy - the TLS policy of one delivery: per destination, then per host.

NAME
    SitePolicy                 the effective TLS policy of one destination
                               (and, after forHost(), of one host)
    TlsPolicy(settings, resolver, clock, tables)
                               one per SMTPTransport: resolves SitePolicy
    parsePolicyEntry(text, base, settings)
                               one smtp_tls_policy_maps value -> ClientTls
    fingerprintMatches(x509, fingerprints, digest)
    TlsResult                  what a TLS attempt achieved (for TLS-RPT)

DESCRIPTION
    forDestination(nexthop, destination, request) starts from the
    transport's ClientTls (smtp_tls_security_level and the rest) and then,
    as Postfix's smtp_tls_policy.c does:

      * smtp_tls_policy_maps, looked up by the next-hop destination as
        routed: "[host]:port", "[host]" and "host:port" once, verbatim; a
        domain, then its parent domains as ".parent.domain"
        ("mail.example.com", ".example.com", ".com").  The value is a
        level and attributes:

            secure match=example.com:.example.com protocols=>=TLSv1.2
            fingerprint match=3D:95:34:...  match=...
            may ciphers=medium exclude=3DES servername=hostname
            encrypt connection_reuse=yes

        match= (verify/secure: names; fingerprint: digests; colon- or
        repeated-attribute separated), protocols=, ciphers= (a grade),
        exclude=, servername=, connection_reuse=.  An entry that cannot be
        parsed (unknown level or attribute) makes the destination's
        delivery defer with 4.7.5 "TLS policy lookup error" and a warning
        naming the table, as Postfix does (TLS_LEV_INVALID); a table that
        cannot answer defers with 4.3.0.
      * MTA-STS (self.sts, mta.delivery.mtasts) when no map entry applies
        and the destination is MX-routed (not a [literal] next hop).
      * REQUIRETLS (the message's envelope; mta.delivery.requiretls): the
        smtp_requiretls_policy action is kept in site.requiretls; under
        enforce a level that cannot match a certificate fails with
        5.7.10 (a bounce), here or after DANE in forHost(); under
        opportunistic+starttls may becomes encrypt.  A "TLS-Required: No"
        message without REQUIRETLS is delivered at level may with no
        MTA-STS or DANE (source "tls-required").

    forHost() also applies the obsolete smtp_tls_per_site when there are
    no smtp_tls_policy_maps (with both, per-site is ignored with Postfix's
    warning): the next-hop domain, then the server's host name, NONE /
    MAY / MUST_NOPEERMATCH / MUST combined as Postfix's tls_site_lookup()
    (mta.delivery.tlspersite); an unknown value is ignored with a warning.

    hostAllowed(site, host) gives a reason to skip an MX host (MTA-STS
    enforce: the MX name matches no policy pattern).  forHost(site, host)
    asks DANE (self.dane) for the host's TLSA records; without DANE the
    level "dane" is "may" and "dane-only" defers.

    judge(site, verdict, connection, host) refines the certificate verdict
    of mta.delivery.smtptls.ClientTLS.judge(): under "fingerprint" the
    server's certificate (or its public key) must match one of the match=
    digests (smtp_tls_fingerprint_digest), whatever its chain and names;
    the verdict is then "Verified".

    context(tls) gives the ClientTLS of a ClientTls (one per distinct
    policy, built once).  reuseKey on a SitePolicy is what a cached
    connection must match to be reused for another delivery.

SECURITY
    Table values are configuration but may come from a policy server over
    socketmap: every value is parsed strictly and a bad one defers the
    mail; nothing from a lookup is passed to the TLS library unparsed
    (ciphers go through compileCipherList, protocols through
    parseProtocols, names are lower-cased host names, digests hex).

CONFIGURATION
    smtp_tls_policy_maps, smtp_tls_per_site, smtp_tls_fingerprint_cert_match,
    smtp_tls_fingerprint_digest (and the lmtp_ twins), with the rest of
    ClientTls (mta.config.settings.client).

DEVIATIONS
    The tafile= attribute (DANE trust anchors from a file) is refused as
    unknown; enable_rpk= is accepted and ignored (raw public keys are not
    used).
"""

import hashlib

import attrs
from twisted.logger import Logger

from mta.config.settings.client import TLS_LEVELS
from mta.delivery.nexthop import validHostname
from mta.delivery.requiretls import RequireTlsPolicy
from mta.delivery.smtptls import ClientTLS, TlsVerdict, dotParents, nexthopDomain

__all__ = ["PolicyError", "SitePolicy", "TlsPolicy", "TlsResult", "fingerprintMatches", "parsePolicyEntry",
           "policyKeys"]

log = Logger()

_ATTRIBUTES = frozenset({"match", "ciphers", "protocols", "exclude", "servername", "connection_reuse", "enable_rpk"})
_GRADES = ("high", "medium", "low", "export", "null")


class PolicyError(Exception):
    """A TLS policy entry that cannot be used; the delivery defers with its text."""

    def __init__(self, text, dsn="4.7.5"):
        super().__init__(text)
        self.text = text
        self.dsn = dsn


@attrs.frozen
class TlsResult:
    """What one TLS attempt achieved, for TLS-RPT: success, or RFC 8460's failure type and a detail."""

    success: bool
    failureType: str | None = None
    detail: str = ""
    # The RFC 8460 policy type when the site does not tell it: "sts" for a failed MTA-STS policy
    # fetch or an invalid policy (the site then has no sts); None: from the site (sts, tlsa or none).
    policyType: str | None = None


@attrs.frozen
class SitePolicy:
    """The effective TLS policy of one delivery to one destination (see the module docstring)."""

    tls: object  # mta.config.settings.client.ClientTls, the effective one
    source: str = "transport"  # transport, smtp_tls_policy_maps, mta-sts, dane, requiretls
    domain: str = ""  # the policy domain: the next-hop domain, lower case
    connectionReuse: bool = True
    fingerprints: tuple = ()  # fingerprint level: lower-case hex digests, no colons
    sts: object = None  # an MTA-STS policy when one applies
    tlsa: tuple = ()  # DANE: the host's usable TLSA records
    mxSecure: bool = False  # DANE: the MX RRset was validated
    failure: object = None  # a PolicyError: the destination cannot be delivered to now
    requiretls: str = ""  # REQUIRETLS (mta.delivery.requiretls): the action for this message; "": none

    @property
    def reuseKey(self):
        """What a cached connection must have been made under to be reused (hashable)."""
        sts = getattr(self.sts, "id", None) if self.sts is not None else None
        return (self.tls, self.fingerprints, self.source, sts, self.tlsa, self.requiretls)


def policyKeys(nexthop):
    """Postfix's smtp_tls_policy_maps keys for a next hop as routed: verbatim, or the domain then ".parents"."""
    name = (nexthop or "").strip().lower()
    if not name:
        return []
    if name.startswith("[") or ":" in name or not validHostname(name.rstrip(".")):
        return [name]
    return dotParents(name.rstrip("."))


def _normalizeDigest(text):
    value = text.strip().lower().replace(":", "")
    if not value or len(value) % 2 or any(c not in "0123456789abcdef" for c in value):
        raise PolicyError(f"malformed fingerprint {text!r}")
    return value


def parsePolicyEntry(text, base, settings, where="smtp_tls_policy_maps", warn=None):
    """
    One smtp_tls_policy_maps value ("secure match=... protocols=...") as
    (ClientTls, fingerprints, connectionReuse or None); PolicyError when it
    cannot be used.  C{base} is the transport's ClientTls, C{settings} the
    ClientSettings (for the cipher grades).
    """
    from mta.config.settings.tls import compileCipherList, parseProtocols

    words = text.replace(",", " ").split()
    if not words:
        raise PolicyError(f"{where}: empty TLS policy")
    level = words[0].lower()
    if level not in TLS_LEVELS:
        raise PolicyError(f"{where}: invalid TLS security level {words[0]!r}")
    if level == "none":
        # Postfix ignores (with a warning) the attributes of an entry that disables TLS.
        if len(words) > 1 and warn is not None:
            warn(f"{where}: ignoring attributes {' '.join(words[1:])!r} with TLS disabled")
        return attrs.evolve(base, level="none", configuredLevel="none"), (), None
    matches, values = [], {}
    for word in words[1:]:
        name, eq, value = word.partition("=")
        name = name.lower()
        if not eq or name not in _ATTRIBUTES:
            raise PolicyError(f"{where}: unknown TLS policy attribute {word!r}")
        if not value and name != "enable_rpk":
            raise PolicyError(f"{where}: attribute {name!r} has an empty value")
        if name == "match":
            if level == "fingerprint":
                matches.append(value)
            else:
                matches.extend(v for v in value.split(":") if v)
        elif name in values:
            raise PolicyError(f"{where}: duplicate TLS policy attribute {name!r}")
        else:
            values[name] = value
    changes = {"level": level, "configuredLevel": level}
    fingerprints = ()
    if level == "fingerprint":
        digests = []
        for item in matches:
            # A fingerprint itself holds colons: "AA:BB:..." is one digest; several are separated by "|"
            # or repeated match= attributes, as Postfix documents.
            digests.extend(_normalizeDigest(d) for d in item.split("|") if d)
        if not digests:
            digests = [_normalizeDigest(d) for d in base.fingerprintCertMatch]
        if not digests:
            raise PolicyError(f"{where}: fingerprint level without match= digests")
        fingerprints = tuple(digests)
    elif matches:
        if level not in ("verify", "secure"):
            raise PolicyError(f"{where}: match= is not allowed with level {level}")
        names = tuple(m.lower() for m in matches)
        changes["verifyCertMatch" if level == "verify" else "secureCertMatch"] = names
    if "protocols" in values:
        try:
            span = parseProtocols(values["protocols"].replace(":", " ").split())
        except ValueError as e:
            raise PolicyError(f"{where}: protocols={values['protocols']}: {e}") from None
        changes["protocolRange"] = changes["mandatoryProtocolRange"] = span
    if "ciphers" in values or "exclude" in values:
        grade = values.get("ciphers", "").lower()
        if grade and grade not in _GRADES:
            raise PolicyError(f"{where}: ciphers={grade}: not a cipher grade ({', '.join(_GRADES)})")
        excluded = tuple(e for e in values.get("exclude", "").split(":") if e)
        for field, default in (("cipherList", settings.tlsCiphers), ("mandatoryCipherList", settings.tlsMandatoryCiphers)):
            chosen = grade or default
            compiled = compileCipherList(getattr(settings, f"{chosen}Cipherlist"), excluded)
            if compiled is None:
                raise PolicyError(f"{where}: the cipher grade {chosen!r} less {' '.join(excluded)!r} selects no cipher")
            changes[field] = compiled
    if "servername" in values:
        name = values["servername"].strip().lower()
        if name not in ("hostname", "nexthop") and not validHostname(name.rstrip(".")):
            raise PolicyError(f"{where}: servername={values['servername']}: not a server name")
        changes["serverName"] = name
    reuse = None
    if "connection_reuse" in values:
        word = values["connection_reuse"].lower()
        if word not in ("yes", "no"):
            raise PolicyError(f"{where}: connection_reuse={values['connection_reuse']}: yes or no")
        reuse = word == "yes"
    return attrs.evolve(base, **changes), fingerprints, reuse


def fingerprintMatches(x509, fingerprints, digest):
    """Does the certificate (pyOpenSSL X509) or its public key have one of the C{fingerprints} under C{digest}?"""
    from cryptography.hazmat.primitives import serialization

    if x509 is None or not fingerprints:
        return False
    cert = x509.to_cryptography()
    der = cert.public_bytes(serialization.Encoding.DER)
    spki = cert.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    wanted = set(fingerprints)
    return any(hashlib.new(digest, blob).hexdigest() in wanted for blob in (der, spki))


class TlsPolicy:
    """One per SMTPTransport: resolves the SitePolicy of each destination and host (module docstring)."""

    dane = None  # an object with async forHost(site, host) -> SitePolicy (mta.delivery.dane)
    sts = None  # mta.delivery.mtasts.Sts: apply(site), hostAllowed(site, host), judge(...), enforcedTls(tls)
    reporter = None  # an object with record(site, host, TlsResult) (TLS-RPT)

    def __init__(self, settings, resolver=None, clock=None, tables=None, warn=None):
        self.settings = settings
        self.resolver = resolver
        self.clock = clock
        self.base = settings.tls
        self._baseFingerprints = tuple(_normalizeDigest(d) for d in self.base.fingerprintCertMatch)
        self._warn = warn or (lambda text: log.warn("{text}", text=text))
        specs = getattr(settings, "tlsPolicyMaps", ())
        self.maps = [tables.open(spec) for spec in specs] if specs and tables is not None else []
        # The obsolete smtp_tls_per_site (mta.delivery.tlspersite), only without smtp_tls_policy_maps (Postfix).
        perSite = getattr(settings, "tlsPerSite", ())
        prefix = "lmtp" if getattr(settings, "lmtp", False) else "smtp"
        if perSite and specs:
            self._warn(f"{prefix}_tls_per_site ignored when {prefix}_tls_policy_maps is not empty.")
            perSite = ()
        self.perSite = [tables.open(spec) for spec in perSite] if perSite and tables is not None else []
        self._prefix = prefix
        self._contexts = {}
        self._parsed = {}
        self.requiretls = RequireTlsPolicy(settings, tables)  # RFC 8689 (mta.delivery.requiretls)

    def context(self, tls):
        """The ClientTLS of a ClientTls, built once per distinct policy."""
        ctx = self._contexts.get(tls)
        if ctx is None:
            ctx = self._contexts[tls] = ClientTLS(tls)
        return ctx

    def default(self, nexthop=""):
        """The transport's own policy (no lookups): for LMTP over UNIX sockets and tests."""
        return SitePolicy(tls=self.base, domain=nexthopDomain(nexthop), connectionReuse=self.settings.tlsConnectionReuse)

    async def forDestination(self, nexthop, destination, request=None):
        """The SitePolicy of one destination as routed (C{destination}: the next-hop text)."""
        from mta.tables import TableTemporaryError

        site = self.default(destination)
        found = None
        for table in self.maps:
            for key in policyKeys(destination):
                try:
                    value = await table.lookup(key)
                except TableTemporaryError as e:
                    self._warn(f"smtp_tls_policy_maps: lookup of {key!r} failed: {e}")
                    return attrs.evolve(site, failure=PolicyError(f"TLS policy lookup for {destination} failed",
                                                                   "4.3.0"))
                if value is not None:
                    found = (key, value)
                    break
            if found:
                break
        if found is not None:
            key, value = found
            parsed = self._parsed.get(value)
            if parsed is None:
                try:
                    parsed = parsePolicyEntry(value, self.base, self.settings, warn=self._warn)
                except PolicyError as e:
                    self._warn(f"{e.text} (key {key!r}); deferring mail for {destination}")
                    return attrs.evolve(site, failure=PolicyError("TLS policy lookup error"))
                if len(self._parsed) > 1000:
                    self._parsed.clear()
                self._parsed[value] = parsed
            tls, fingerprints, reuse = parsed
            site = attrs.evolve(site, tls=tls, fingerprints=fingerprints, source="smtp_tls_policy_maps",
                                connectionReuse=site.connectionReuse if reuse is None else reuse)
        elif self.base.level == "fingerprint":
            site = attrs.evolve(site, fingerprints=self._baseFingerprints)
        elif self.sts is not None and getattr(nexthop, "kind", None) == "mx":
            site = await self._withSts(site)
        if request is not None:  # REQUIRETLS may raise the requirement, "TLS-Required: No" lower it
            site = await self.requiretls.apply(site, request, destination)
        return site

    async def _withSts(self, site):
        """MTA-STS: the mtasts work evolves the site (a hook; see mta.delivery.mtasts)."""
        apply = getattr(self.sts, "apply", None)
        return await apply(site) if apply is not None else site

    def hostAllowed(self, site, host):
        """A reason to skip C{host} under this site's policy (MTA-STS enforce), or None."""
        check = getattr(self.sts, "hostAllowed", None) if site.sts is not None else None
        return check(site, host) if check is not None else None

    async def forHost(self, site, host):
        """The site's policy for one host: smtp_tls_per_site, DANE's TLSA records, or "dane" as "may" without DANE."""
        return self.requiretls.checkHost(await self._forHost(site, host))

    async def _forHost(self, site, host):
        if site.failure is not None:
            return site
        if self.perSite and site.source == "transport":
            site = await self._withPerSite(site, host)
            if site.failure is not None:
                return site
        if self.dane is not None and site.tls.level in ("dane", "dane-only"):
            hostSite = await self.dane.forHost(site, host)
            if (hostSite.failure is None and not hostSite.tlsa and hostSite.tls.level in ("may", "encrypt")
                    and site.sts is not None and site.sts.mode == "enforce"):
                # No usable TLSA records: MTA-STS enforce where DANE would have fallen back (RFC 8461 2)
                hostSite = attrs.evolve(hostSite, tls=self.sts.enforcedTls(hostSite.tls), source="mta-sts")
            return hostSite
        if site.tls.level == "dane":
            if site.sts is not None and site.sts.mode == "enforce":
                return attrs.evolve(site, tls=self.sts.enforcedTls(site.tls), source="mta-sts")
            return attrs.evolve(site, tls=attrs.evolve(site.tls, level="may"))
        if site.tls.level == "dane-only":
            return attrs.evolve(site, failure=PolicyError("DANE is not available (smtp_tls_security_level = "
                                                          "dane-only)"))
        return site

    async def _withPerSite(self, site, host):
        """
        smtp_tls_per_site as Postfix's tls_site_lookup(): the next-hop
        destination's name, then the server's host name when it differs;
        the results combine by mta.delivery.tlspersite's precedence.  An
        unknown value is ignored with Postfix's warning.
        """
        from mta.delivery.tlspersite import combinePerSite, perSitePolicy
        from mta.tables import TableTemporaryError

        names = [(site.domain, "next-hop destination")]
        hostName = (host.name or "").lower().rstrip(".")
        if hostName and hostName != site.domain:
            names.append((hostName, "server hostname"))
        results = []
        for name, kind in names:
            value = None
            for table in self.perSite:
                try:
                    value = await table.lookup(name)
                except TableTemporaryError as e:
                    self._warn(f"{self._prefix}_tls_per_site: lookup of {name!r} failed: {e}")
                    return attrs.evolve(site, failure=PolicyError(f"TLS policy lookup for {name} failed", "4.3.0"))
                if value is not None:
                    break
            if value is not None:
                try:
                    combinePerSite(None, value)
                except ValueError:
                    self._warn(f"Table {self._prefix}_tls_per_site: ignoring unknown TLS policy '{value}' for "
                               f"{kind} {name}")
                    value = None
            results.append(value)
        level = perSitePolicy(self.base.level, results)
        if level == site.tls.level:
            return site
        return attrs.evolve(site, tls=attrs.evolve(site.tls, level=level, configuredLevel=level),
                            source=f"{self._prefix}_tls_per_site")

    def judge(self, site, verdict, connection, host):
        """Refine ClientTLS.judge()'s verdict by the site's policy: fingerprints, DANE, MTA-STS."""
        if site.tls.level == "fingerprint":
            digest = site.tls.fingerprintDigest
            if fingerprintMatches(connection.get_peer_certificate(), site.fingerprints, digest):
                return TlsVerdict("Verified", verdict.trusted, True)
            return TlsVerdict("Untrusted", verdict.trusted, False, "Server certificate not verified")
        for hook in (self.dane, self.sts):
            refine = getattr(hook, "judge", None)
            if refine is not None:
                verdict = refine(site, verdict, connection, host)
        return verdict

    def record(self, site, host, result, **details):
        """One TLS attempt's outcome, for TLS-RPT (C{details}: sendingIp)."""
        if self.reporter is not None:
            try:
                self.reporter.record(site, host, result, **details)
            except Exception:
                log.failure("TLS-RPT record failed")
