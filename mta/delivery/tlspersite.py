"""mta.delivery.tlspersite - the obsolete smtp_tls_per_site values and how Postfix combines them (pure functions).

NAME
    perSiteLevel(value)                   a per-site value -> a security level
    combinePerSite(siteLevel, value)      one more lookup result, in Postfix's precedence
    perSitePolicy(globalLevel, results)   the level for one delivery

DESCRIPTION
    smtp_tls_per_site (lmtp_tls_per_site) tables are looked up by the
    next-hop destination and then by the server's host name (when it
    differs); the lookups are the TLS policy's (mta.delivery.tlspolicy).
    These functions are Postfix's smtp_tls_policy.c tls_site_lookup():

        NONE              none
        MAY               may
        MUST_NOPEERMATCH  encrypt
        MUST              verify

    (case-insensitive; anything else is ValueError: Postfix warns
    "unknown TLS policy" and defers with 4.7.0 "client TLS configuration
    problem").  Of two results, NONE overrides MAY (the more specific
    wins), MAY overrides nothing but "not found", and MUST_NOPEERMATCH and
    MUST override anything weaker.  A per-site MAY does not lower a
    stronger global level (smtp_tls_security_level or the older
    smtp_enforce_tls); any other per-site result replaces the global one.

SECURITY
    Table values are configuration; they are only compared.

CONFIGURATION
    None here: the TLS policy passes the values it found.
"""

__all__ = ["PER_SITE_LEVELS", "combinePerSite", "perSiteLevel", "perSitePolicy"]

PER_SITE_LEVELS = {"none": "none", "may": "may", "must_nopeermatch": "encrypt", "must": "verify"}
# Postfix's TLS_LEV_* order, for the comparisons of tls_site_lookup().
_ORDER = {None: -1, "none": 0, "may": 1, "encrypt": 2, "fingerprint": 3, "dane": 5, "dane-only": 6, "verify": 7,
          "secure": 8}


def perSiteLevel(value):
    """The security level of one smtp_tls_per_site value; ValueError for an unknown one."""
    level = PER_SITE_LEVELS.get(str(value).strip().lower())
    if level is None:
        raise ValueError(f"unknown TLS policy {value!r} (NONE, MAY, MUST_NOPEERMATCH or MUST)")
    return level


def combinePerSite(siteLevel, value):
    """C{siteLevel} (None: nothing found yet) after one more lookup result C{value} (None: not found)."""
    if value is None:
        return siteLevel
    level = perSiteLevel(value)
    current = _ORDER[siteLevel]
    if level == "none":
        return "none" if current <= _ORDER["may"] else siteLevel
    if level == "may":
        return "may" if current < _ORDER["none"] else siteLevel
    return level if current < _ORDER[level] else siteLevel


def perSitePolicy(globalLevel, results):
    """
    The level of one delivery: C{results} are the per-site values found
    for the next hop and then the host name (None where not found), in
    that order; the global level when none was found.
    """
    site = None
    for value in results:
        site = combinePerSite(site, value)
    if site is None:
        return globalLevel
    if site == "may" and _ORDER[globalLevel] > _ORDER["may"]:
        return globalLevel
    return site
