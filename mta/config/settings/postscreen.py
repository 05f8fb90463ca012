"""mta.config.settings.postscreen - PostscreenSettings: the connection screen (mta.smtpd.postscreen), per listener.

The parameters of this area (mta.config.schema), each read by exactly the
settings class that needs it (a parameter may be read by several areas):

    postscreen_enable, postscreen_access_list, postscreen_denylist_action
    (older: postscreen_blacklist_action, through its default),
    postscreen_greet_banner, postscreen_greet_wait, postscreen_greet_action,
    postscreen_greet_ttl, postscreen_dnsbl_sites, postscreen_dnsbl_threshold,
    postscreen_dnsbl_allowlist_threshold (older:
    postscreen_dnsbl_whitelist_threshold), postscreen_dnsbl_action,
    postscreen_dnsbl_reply_map, postscreen_dnsbl_min_ttl,
    postscreen_dnsbl_max_ttl (its default: postscreen_dnsbl_ttl),
    postscreen_dnsbl_timeout, postscreen_cache_map,
    postscreen_cache_retention_time, postscreen_cache_cleanup_interval,
    postscreen_command_time_limit, postscreen_command_count_limit,
    postscreen_helo_required, postscreen_disable_vrfy_command,
    postscreen_pipelining_enable, postscreen_pipelining_action,
    postscreen_pipelining_ttl, postscreen_non_smtp_command_enable,
    postscreen_non_smtp_command_action, postscreen_non_smtp_command_ttl,
    postscreen_forbidden_commands, postscreen_bare_newline_enable,
    postscreen_bare_newline_action, postscreen_bare_newline_ttl,
    postscreen_client_connection_count_limit, postscreen_pre_queue_limit,
    postscreen_post_queue_limit, myhostname,
    smtpd_banner, soft_bounce

postscreen_dnsbl_sites is compiled here into DnsblSite(spec, weight)
items: ``domain[=pattern][*weight]`` with Postfix's A-record pattern
(mta.config.types.DnsxlSpec) and an integer weight, 1 by default.
postscreen_cache_map becomes (kind, path): ("memory", None) when empty,
("sqlite", path) for sqlite:path or btree:path.

SECURITY
    None: values were parsed and checked by mta.config.types.

CONFIGURATION
    As listed above.

DEVIATIONS
    See mta.smtpd.postscreen.
"""

import re

import attrs

from mta.config.settings import Settings, setting, settingsClass
from mta.config.types import DnsxlSpec, parseDnsxl

__all__ = ["DnsblSite", "PostscreenSettings"]


@attrs.frozen
class DnsblSite:
    """One postscreen_dnsbl_sites item: the list (domain and pattern) and its weight."""

    spec: DnsxlSpec
    weight: int = 1

    def __str__(self):
        return f"{self.spec}*{self.weight}"


def parseSite(text):
    """'domain[=pattern][*weight]' -> DnsblSite; ValueError."""
    body, star, weight = str(text).rpartition("*") if "*" in str(text) else (str(text), "", "")
    if star:
        if not re.fullmatch(r"-?[0-9]+", weight.strip()):
            raise ValueError(f"{text!r}: the weight after * must be an integer")
        return DnsblSite(parseDnsxl(body), int(weight))
    return DnsblSite(parseDnsxl(body))


def _sites(items):
    return tuple(parseSite(item) for item in items)


def _upper(items):
    return frozenset(item.upper() for item in items)


def _cacheMap(text):
    text = text.strip()
    if not text:
        return ("memory", None)
    kind, colon, path = text.partition(":")
    if not colon or kind.lower() not in ("sqlite", "btree") or not path.strip():
        raise ValueError(f"{text!r}: expected empty (in memory), sqlite:/path or btree:/path")
    return ("sqlite", path.strip())


@settingsClass
class PostscreenSettings(Settings):
    """What one listener's screen (mta.smtpd.postscreen) reads of its scope, converted."""

    enabled: bool = setting("postscreen_enable")
    hostname: str = setting("myhostname")  # the dummy engine's 250 and 421 texts
    banner: str = setting("smtpd_banner")  # the dummy engine's 220
    accessList: tuple = setting("postscreen_access_list")  # "permit_mynetworks" and TableSpecs
    denylistAction: str = setting("postscreen_denylist_action")
    greetBanner: str = setting("postscreen_greet_banner")  # the 220- teaser; "": none
    greetWait: float = setting("postscreen_greet_wait")  # 0: no pregreet test
    greetAction: str = setting("postscreen_greet_action")
    greetTTL: float = setting("postscreen_greet_ttl")
    dnsblSites: tuple = setting("postscreen_dnsbl_sites", _sites)  # DnsblSite items
    dnsblThreshold: int = setting("postscreen_dnsbl_threshold")
    dnsblAllowlistThreshold: int = setting("postscreen_dnsbl_allowlist_threshold")
    dnsblAction: str = setting("postscreen_dnsbl_action")
    dnsblReplyMap: tuple = setting("postscreen_dnsbl_reply_map")  # TableSpecs
    dnsblMinTTL: float = setting("postscreen_dnsbl_min_ttl")
    dnsblMaxTTL: float = setting("postscreen_dnsbl_max_ttl")
    dnsblTimeout: float = setting("postscreen_dnsbl_timeout")
    cacheMap: tuple = setting("postscreen_cache_map", _cacheMap)  # ("memory", None) or ("sqlite", path)
    cacheRetention: float = setting("postscreen_cache_retention_time")
    cacheCleanupInterval: float = setting("postscreen_cache_cleanup_interval")
    commandTimeLimit: float = setting("postscreen_command_time_limit")
    commandCountLimit: int = setting("postscreen_command_count_limit")
    heloRequired: bool = setting("postscreen_helo_required")
    disableVrfy: bool = setting("postscreen_disable_vrfy_command")
    # -- the deep protocol tests (the dummy engine after the 220)
    pipeliningEnable: bool = setting("postscreen_pipelining_enable")
    pipeliningAction: str = setting("postscreen_pipelining_action")
    pipeliningTTL: float = setting("postscreen_pipelining_ttl")
    nonSmtpEnable: bool = setting("postscreen_non_smtp_command_enable")
    nonSmtpAction: str = setting("postscreen_non_smtp_command_action")
    nonSmtpTTL: float = setting("postscreen_non_smtp_command_ttl")
    forbiddenCommands: frozenset = setting("postscreen_forbidden_commands", _upper)  # upper-case verbs
    bareNewlineEnable: bool = setting("postscreen_bare_newline_enable")
    bareNewlineAction: str = setting("postscreen_bare_newline_action")
    bareNewlineTTL: float = setting("postscreen_bare_newline_ttl")
    connectionLimit: int = setting("postscreen_client_connection_count_limit")  # per address; 0: any
    preQueueLimit: int = setting("postscreen_pre_queue_limit")
    postQueueLimit: int = setting("postscreen_post_queue_limit")
    softBounce: bool = setting("soft_bounce")

    @classmethod
    def extraParameters(cls):
        """The older names, read through the defaults of the new ones."""
        return ("postscreen_blacklist_action", "postscreen_dnsbl_whitelist_threshold", "postscreen_dnsbl_ttl")

    def check(self, scope):
        if self.dnsblMinTTL > self.dnsblMaxTTL:
            raise ValueError(f"{scope.where('postscreen_dnsbl_min_ttl')}: postscreen_dnsbl_min_ttl is above "
                             "postscreen_dnsbl_max_ttl")


LISTENER = {"postscreen": PostscreenSettings}
