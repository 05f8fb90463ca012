"""mta.config.types - parameter value types, as postconf(5) defines them.

Each type turns the expanded text of a parameter into a Python value, or
raises ValueError with a short reason that the loader prefixes with the file,
section, key and line.

SECURITY
    Values come from configuration files: untrusted in shape.  Every parser
    rejects what it does not understand instead of guessing.

CONFIGURATION
    None.
"""

import ipaddress
import os
import re

import attrs


def splitList(text, separators=", \t\r\n"):
    """
    Split a Postfix list: items separated by commas and/or white space.

    Braces group, as in Postfix's mystrtokq(): C{inline:{ a=1, b=2 }} is one
    item.  An unbalanced brace raises ValueError.
    """
    items = []
    current = []
    depth = 0
    for ch in text:
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth < 0:
                raise ValueError("unbalanced '}'")
        if depth == 0 and ch in separators:
            if current:
                items.append("".join(current))
                current = []
            continue
        current.append(ch)
    if depth:
        raise ValueError("unbalanced '{'")
    if current:
        items.append("".join(current))
    return tuple(items)


@attrs.frozen
class String:
    name = "string"

    def parse(self, text):
        return text.strip()


@attrs.frozen
class Path:
    """A file or directory name; a relative one is taken from the start-up directory."""

    name = "path"

    def parse(self, text):
        text = text.strip()
        if not text:
            raise ValueError("an empty path")
        return os.path.abspath(text)


@attrs.frozen
class Integer:
    minimum: int = 0
    maximum: int | None = None
    name = "integer"

    def parse(self, text):
        text = text.strip()
        if not re.fullmatch(r"-?[0-9]+", text):
            raise ValueError(f"{text!r} is not an integer")
        value = int(text)
        if value < self.minimum:
            raise ValueError(f"{value} is below the minimum {self.minimum}")
        if self.maximum is not None and value > self.maximum:
            raise ValueError(f"{value} is above the maximum {self.maximum}")
        return value


_SIZE_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}


@attrs.frozen
class Size:
    """A byte count; an optional k, m or g suffix multiplies by 1024**n."""

    name = "size"

    def parse(self, text):
        match = re.fullmatch(r"([0-9]+)([kmg]?)b?", text.strip().lower())
        if not match:
            raise ValueError(f"{text.strip()!r} is not a size in bytes (e.g. 10240000 or 10m)")
        return int(match.group(1)) * _SIZE_UNITS[match.group(2)]


_TIME_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


@attrs.frozen
class Time:
    """A duration: a number with an optional unit s, m, h, d or w.

    Without a unit, C{unit} applies (each Postfix time parameter has its own
    default unit).  The value is in seconds, a float.
    """

    unit: str = "s"
    name = "time"

    def parse(self, text):
        match = re.fullmatch(r"([0-9]+(?:\.[0-9]+)?)\s*([smhdw]?)", text.strip().lower())
        if not match:
            raise ValueError(f"{text.strip()!r} is not a time (a number with unit s, m, h, d or w)")
        return float(match.group(1)) * _TIME_UNITS[match.group(2) or self.unit]


@attrs.frozen
class Boolean:
    name = "boolean"

    def parse(self, text):
        value = text.strip().lower()
        if value in ("yes", "true"):
            return True
        if value in ("no", "false"):
            return False
        raise ValueError(f"{text.strip()!r} is not yes or no")


@attrs.frozen
class Choice:
    choices: tuple
    name = "choice"

    def parse(self, text):
        value = text.strip().lower()
        if value not in self.choices:
            raise ValueError(f"{text.strip()!r} is not one of {', '.join(self.choices)}")
        return value


@attrs.frozen
class ChoiceList:
    """A list whose every item is one of C{choices} (folded to lower case).

    C{minimum}: the fewest items allowed (0: may be empty).  Duplicates are
    dropped, the order is kept.
    """

    choices: tuple
    minimum: int = 0
    name = "choice list"

    def parse(self, text):
        items = []
        for item in splitList(text):
            value = item.lower()
            if value not in self.choices:
                raise ValueError(f"{item!r} is not one of {', '.join(self.choices)}")
            if value not in items:
                items.append(value)
        if len(items) < self.minimum:
            raise ValueError(f"needs at least {self.minimum} of {', '.join(self.choices)}")
        return tuple(items)


@attrs.frozen
class List:
    """Items separated by commas or white space; braces group."""

    name = "list"

    def parse(self, text):
        return splitList(text)


@attrs.frozen
class TableSpec:
    """A lookup table specification, C{type:name}."""

    type: str
    name: str

    def __str__(self):
        return f"{self.type}:{self.name}"


def parseTableSpec(text):
    match = re.fullmatch(r"([a-z][a-z0-9_-]*):(.+)", text.strip(), re.S)
    if not match:
        raise ValueError(f"{text.strip()!r} is not a lookup table (type:name)")
    return TableSpec(match.group(1), match.group(2))


@attrs.frozen
class Tables:
    """A list of lookup tables, C{type:name}, searched in order."""

    name = "tables"

    def parse(self, text):
        return tuple(parseTableSpec(item) for item in splitList(text))


@attrs.frozen
class SaslPath:
    """smtpd_sasl_path: a socket (a path, unix:PATH or inet:HOST:PORT) or a table (type:name).

    A one-item tuple: (TableSpec,) for a table, so that --check opens it;
    else (text,).  mta.config.settings.sasl decides which fits smtpd_sasl_type.
    """

    name = "SASL path"

    def parse(self, text):
        value = text.strip()
        if not value:
            raise ValueError("empty")
        if re.match(r"[a-z][a-z0-9_-]*:", value) and not value.startswith(("inet:", "unix:")):
            return (parseTableSpec(value),)
        return (value,)


@attrs.frozen
class RewriteClients:
    """local_header_rewrite_clients: permit_* names and check_address_map type:table.

    The value is a tuple of lower-case names and TableSpecs (a TableSpec
    stands for check_address_map of it; a bare type:table, such as
    static:all, means the same, as in Postfix).  Unknown names are refused.
    """

    NAMES = ("permit_inet_interfaces", "permit_mynetworks", "permit_sasl_authenticated",
             "permit_tls_clientcerts", "permit_tls_all_clientcerts")
    name = "client list"

    def parse(self, text):
        items = splitList(text)
        result = []
        i = 0
        while i < len(items):
            item = items[i]
            word = item.lower()
            if word == "check_address_map":
                if i + 1 >= len(items):
                    raise ValueError("check_address_map needs a type:table argument")
                result.append(parseTableSpec(items[i + 1]))
                i += 2
                continue
            if ":" in item:
                result.append(parseTableSpec(item))
            elif word in self.NAMES:
                result.append(word)
            else:
                raise ValueError(f"{item!r} is not one of {', '.join(self.NAMES)}, check_address_map type:table")
            i += 1
        return tuple(result)


@attrs.frozen
class PostscreenAccess:
    """postscreen_access_list: permit_mynetworks and type:table items, in order.

    A tuple of "permit_mynetworks" and TableSpecs (opened at load, so a bad
    table file is reported by --check); other words are refused.
    """

    name = "access list"

    def parse(self, text):
        result = []
        for item in splitList(text):
            if ":" in item:
                result.append(parseTableSpec(item))
            elif item.lower() == "permit_mynetworks":
                result.append("permit_mynetworks")
            else:
                raise ValueError(f"{item!r} is not permit_mynetworks or type:table")
        return tuple(result)


_LABEL = re.compile(r"[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?")


@attrs.frozen
class DomainList:
    """Domain names, and lookup tables (type:name) whose keys are domains.

    Names are folded to lower case and stripped of a trailing dot.
    """

    name = "domains"

    def parse(self, text):
        result = []
        for item in splitList(text):
            if ":" in item or item.startswith("/"):
                if item.startswith("/"):
                    raise ValueError(f"{item!r}: a file name needs a table type, e.g. texthash:{item}")
                result.append(parseTableSpec(item))
                continue
            domain = item.lower().rstrip(".")
            labels = (domain[1:] if domain.startswith(".") else domain).split(".")
            if not all(_LABEL.fullmatch(label) for label in labels):
                raise ValueError(f"{item!r} is not a domain name")
            result.append(domain)
        return tuple(result)


def parseNetwork(item):
    """One mynetworks entry: an address or CIDR block, IPv6 in [] or bare."""
    text = item
    if text.startswith("["):
        match = re.fullmatch(r"\[([0-9a-fA-F:.]+)\](/[0-9]+)?", text)
        if not match:
            raise ValueError(f"{item!r} is not an address or network")
        text = match.group(1) + (match.group(2) or "")
    try:
        return ipaddress.ip_network(text, strict=True)
    except ValueError as e:
        if "has host bits set" in str(e):
            raise ValueError(f"{item!r} has host bits set (Postfix would also refuse it)") from None
        raise ValueError(f"{item!r} is not an address or network") from None


@attrs.frozen
class Networks:
    """Network blocks (127.0.0.0/8, [::1]/128) and lookup tables."""

    name = "networks"

    def parse(self, text):
        result = []
        for item in splitList(text):
            if re.match(r"[a-z][a-z0-9_-]*:", item) and not item.startswith("["):
                try:
                    ipaddress.ip_network(item, strict=False)
                except ValueError:
                    result.append(parseTableSpec(item))
                    continue
            result.append(parseNetwork(item))
        return tuple(result)


# The restrictions a list may name (mta.smtpd.restrictions implements each), and
# whether the name takes a type:table argument (the next item of the list).
RESTRICTION_NAMES = {
    "permit": False,
    "reject": False,
    "defer": False,
    "permit_mynetworks": False,
    "permit_auth_destination": False,
    "reject_unauth_destination": False,
    "defer_unauth_destination": False,
    "reject_unlisted_recipient": False,
    "reject_non_fqdn_recipient": False,
    "reject_non_fqdn_sender": False,
    "check_client_access": True,
    "check_reverse_client_hostname_access": True,
    # the client's name (mta.smtpd.peername); reject_unknown_client is Postfix's older name
    "reject_unknown_client_hostname": False,
    "reject_unknown_client": False,
    "reject_unknown_reverse_client_hostname": False,
    "defer_if_permit": False,
    "defer_if_reject": False,
    "warn_if_reject": False,
    "reject_multi_recipient_bounce": False,
    "check_policy_service": "policy",  # mta.smtpd.policyclient
    "reject_unlisted_sender": False,
    # the servers (MX, NS) or addresses (A) of a name, in a table (mta.smtpd.dnschecks)
    "check_client_a_access": True,
    "check_client_mx_access": True,
    "check_client_ns_access": True,
    "check_reverse_client_a_access": True,
    "check_reverse_client_mx_access": True,
    "check_reverse_client_ns_access": True,
    "check_helo_a_access": True,
    "check_helo_mx_access": True,
    "check_helo_ns_access": True,
    "check_sender_a_access": True,
    "check_sender_mx_access": True,
    "check_sender_ns_access": True,
    "check_recipient_a_access": True,
    "check_recipient_mx_access": True,
    "check_recipient_ns_access": True,
    # the HELO name and the address domains (mta.smtpd.dnschecks); the _hostname names are Postfix's older ones
    "reject_invalid_helo_hostname": False,
    "reject_invalid_hostname": False,
    "reject_non_fqdn_helo_hostname": False,
    "reject_non_fqdn_hostname": False,
    "reject_unknown_helo_hostname": False,
    "reject_unknown_hostname": False,
    "reject_unknown_sender_domain": False,
    "reject_unknown_recipient_domain": False,
    # DNS lists (mta.smtpd.dnsxl): an argument domain[=pattern]; reject_rbl is Postfix's older name
    "reject_rbl_client": "dnsxl",
    "reject_rbl": "dnsxl",
    "permit_dnswl_client": "dnsxl",
    "reject_rhsbl_client": "dnsxl",
    "reject_rhsbl_reverse_client": "dnsxl",
    "reject_rhsbl_helo": "dnsxl",
    "reject_rhsbl_sender": "dnsxl",
    "reject_rhsbl_recipient": "dnsxl",
    "permit_rhswl_client": "dnsxl",
    "check_sender_access": True,
    "check_recipient_access": True,
    "check_etrn_access": True,
    "check_helo_access": True,
    "permit_tls_clientcerts": False,
    "permit_tls_all_clientcerts": False,
    "check_ccert_access": True,
    # SASL AUTH (mta.smtpd.auth): the login, and smtpd_sender_login_maps
    "permit_sasl_authenticated": False,
    "reject_sender_login_mismatch": False,
    "reject_known_sender_login_mismatch": False,
    "reject_authenticated_sender_login_mismatch": False,
    "reject_unauthenticated_sender_login_mismatch": False,
    "check_sasl_access": True,
    # the rest of smtpd(8)'s controls (mta.smtpd.restrictions)
    "sleep": "number",
    "reject_unauth_pipelining": False,
    "permit_inet_interfaces": False,
    "reject_plaintext_session": False,
    "reject_unverified_recipient": False,  # address verification (mta.smtpd.verifycheck)
    "reject_unverified_sender": False,
}

# A restriction name of the form a bare identifier that is not in RESTRICTION_NAMES may be a
# restriction class (smtpd_restriction_classes): parseRestrictions keeps it, and the settings
# (mta.config.settings.routing) refuse it unless a class of that name is defined.
_CLASS_NAME = re.compile(r"[a-z_][a-z0-9_.-]*")

# A bare type:table item in a list is the stage's own check_*_access (Postfix's def_acl).
STAGE_ACCESS = "access"


@attrs.frozen
class DnsxlSpec:
    """
    The argument of reject_rbl_client and its kin: a DNS list domain and,
    after "=", the A-record pattern that counts as listed (Postfix's
    ip_match syntax, each octet a number or [n;m..k], e.g. 127.0.0.[2..11]);
    C{octets}: per octet, the tuple of (low, high) ranges.
    """

    domain: str
    pattern: str | None = None
    octets: tuple | None = None

    def __str__(self):
        return self.domain + (f"={self.pattern}" if self.pattern else "")

    def matches(self, address):
        """Does the A record C{address} (dotted text) count as listed?"""
        if self.octets is None:
            return True
        parts = address.split(".")
        if len(parts) != 4 or not all(p.isdigit() for p in parts):
            return False
        return all(any(lo <= int(p) <= hi for lo, hi in ranges) for p, ranges in zip(parts, self.octets))


def _octetRanges(field, pattern):
    def number(text):
        if not text.isdigit() or int(text) > 255:
            raise ValueError(f"{pattern!r}: {text!r} is not an octet (0-255)")
        return int(text)

    if field.startswith("[") and field.endswith("]"):
        ranges = []
        for item in re.split(r"[;,]", field[1:-1]):
            low, dots, high = item.strip().partition("..")
            lo, hi = number(low.strip()), (number(high.strip()) if dots else None)
            if hi is not None and hi < lo:
                raise ValueError(f"{pattern!r}: the range {item!r} is empty")
            ranges.append((lo, lo if hi is None else hi))
        return tuple(ranges)
    value = number(field)
    return ((value, value),)


def parseDnsxl(text):
    """'domain[=pattern]' -> DnsxlSpec; ValueError."""
    if isinstance(text, DnsxlSpec):
        return text
    domain, equals, pattern = str(text).partition("=")
    domain = domain.strip().lower().rstrip(".")
    labels = domain.split(".")
    if not domain or not all(_LABEL.fullmatch(label) for label in labels) or ":" in domain:
        raise ValueError(f"{text!r} is not a DNS list domain (domain[=d.d.d.d])")
    if not equals:
        return DnsxlSpec(domain)
    pattern = pattern.strip()
    fields = re.findall(r"\[[^\]]*\]|[^.\[\]]+", pattern)  # a [] sequence may hold ".."
    if len(fields) != 4 or ".".join(fields) != pattern:
        raise ValueError(f"{text!r}: the pattern needs four octets, as 127.0.0.[2..11]")
    return DnsxlSpec(domain, pattern.strip(), tuple(_octetRanges(f, pattern) for f in fields))


@attrs.frozen
class PolicySpec:
    """check_policy_service's server: inet:host:port (host may be [IPv6]) or unix:path."""

    kind: str  # "inet" or "unix"
    address: str  # host, or path
    port: int = 0

    def __str__(self):
        if self.kind == "unix":
            return f"unix:{self.address}"
        host = f"[{self.address}]" if ":" in self.address else self.address
        return f"inet:{host}:{self.port}"


def parsePolicy(text):
    """'inet:host:port' or 'unix:path' -> PolicySpec; ValueError."""
    if isinstance(text, PolicySpec):
        return text
    text = str(text).strip()
    kind, _, rest = text.partition(":")
    if kind == "unix" and rest:
        return PolicySpec("unix", rest)
    if kind == "inet" and rest:
        host, _, port = rest.rpartition(":")
        host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
        if host and port.isdigit() and 0 < int(port) < 65536:
            return PolicySpec("inet", host, int(port))
    raise ValueError(f"{text!r} is not a policy server (inet:host:port or unix:path)")


def parseRestrictions(items):
    """
    A restriction list's items (names, and a table after each check_*_access)
    as ((name, TableSpec or None), ...); ValueError if a name is unknown or a
    table is missing.
    """
    result = []
    items = list(items)
    i = 0
    while i < len(items):
        item = items[i]
        if isinstance(item, TableSpec) or (isinstance(item, str) and re.match(r"[a-z][a-z0-9_-]*:.", item.strip())):
            # type:table alone: the stage's check_*_access (STAGE_ACCESS)
            result.append((STAGE_ACCESS, item if isinstance(item, TableSpec) else parseTableSpec(item)))
            i += 1
            continue
        name = item.lower() if isinstance(item, str) else item
        if name not in RESTRICTION_NAMES:
            if isinstance(name, str) and _CLASS_NAME.fullmatch(name):  # perhaps a restriction class
                result.append((name, None))
                i += 1
                continue
            raise ValueError(unknownRestriction(item))
        argument = None
        if RESTRICTION_NAMES[name] == "number":
            if i + 1 >= len(items) or not str(items[i + 1]).isdigit():
                raise ValueError(f"{name} needs a number of seconds")
            argument = int(items[i + 1])
            i += 1
        elif RESTRICTION_NAMES[name] == "policy":
            if i + 1 >= len(items) or isinstance(items[i + 1], TableSpec) and items[i + 1].type not in ("inet", "unix"):
                raise ValueError(f"{name} needs a server argument (inet:host:port or unix:path)")
            argument = parsePolicy(items[i + 1])
            i += 1
        elif RESTRICTION_NAMES[name] == "dnsxl":
            if i + 1 >= len(items) or isinstance(items[i + 1], TableSpec):
                raise ValueError(f"{name} needs a DNS list domain argument (domain[=d.d.d.d])")
            argument = parseDnsxl(items[i + 1])
            i += 1
        elif RESTRICTION_NAMES[name]:
            if i + 1 >= len(items):
                raise ValueError(f"{name} needs a table argument (type:name)")
            argument = items[i + 1]
            if not isinstance(argument, TableSpec):
                argument = parseTableSpec(str(argument))
            i += 1
        result.append((name, argument))
        i += 1
    return tuple(result)


def expansionFilter(text):
    """
    smtpd_expansion_filter's characters, with Postfix's C escapes (\\t, \\n,
    \\r, \\\\, \\ooo octal): a frozenset; ValueError for a bad escape.
    """
    chars = set()
    i = 0
    while i < len(text):
        ch = text[i]
        if ch != "\\":
            chars.add(ch)
            i += 1
            continue
        match = re.match(r"[0-7]{1,3}", text[i + 1:])
        if match:
            chars.add(chr(int(match.group(0), 8)))
            i += 1 + len(match.group(0))
            continue
        escaped = {"t": "\t", "n": "\n", "r": "\r", "\\": "\\", "b": "\b", "f": "\f", "v": "\v", "a": "\a"}
        if i + 1 >= len(text) or text[i + 1] not in escaped:
            raise ValueError(f"bad escape {text[i:i + 2]!r} (use \\t, \\n, \\r, \\\\ or \\ooo octal)")
        chars.add(escaped[text[i + 1]])
        i += 2
    return frozenset(chars)


def unknownRestriction(name):
    return f"unknown restriction {str(name)!r} (known: {', '.join(sorted(RESTRICTION_NAMES))})"


def restrictionNames(pairs):
    """The names in parsed pairs that are neither restrictions nor a bare table: restriction classes to be."""
    return [name for name, _ in pairs if name != STAGE_ACCESS and name not in RESTRICTION_NAMES]


@attrs.frozen
class Restrictions:
    """A restriction list (smtpd_*_restrictions): names, and tables after check_*_access."""

    name = "restrictions"

    def parse(self, text):
        pairs = parseRestrictions(splitList(text))
        flat = []
        for name, argument in pairs:
            if name != STAGE_ACCESS:
                flat.append(name)
            if argument is not None:
                flat.append(str(argument) if isinstance(argument, int) else argument)
        return tuple(flat)


@attrs.frozen
class AnvilStoreSpec:
    """anvil_store's Redis server: redis:HOST:PORT[/DB] (HOST may be [IPv6]) or redis:unix:/path[/DB]."""

    kind: str  # "inet" or "unix"
    address: str  # host, or socket path
    port: int = 0
    db: int = 0

    def __str__(self):
        db = f"/{self.db}" if self.db else ""
        if self.kind == "unix":
            return f"redis:unix:{self.address}{db}"
        host = f"[{self.address}]" if ":" in self.address else self.address
        return f"redis:{host}:{self.port}{db}"


@attrs.frozen
class AnvilStore:
    """anvil_store: empty (this process's memory: None) or a Redis server (AnvilStoreSpec)."""

    name = "anvil store"

    def parse(self, text):
        text = text.strip()
        if not text:
            return None
        usage = f"{text!r} is not an anvil store (empty, redis:HOST:PORT[/DB] or redis:unix:/path[/DB])"
        kind, _, rest = text.partition(":")
        if kind != "redis" or not rest or re.search(r"[\x00-\x20\x7f]", rest):
            raise ValueError(usage)
        db = 0
        head, slash, tail = rest.rpartition("/")
        if slash and re.fullmatch(r"[0-9]{1,5}", tail) and head not in ("", "unix:"):
            rest, db = head, int(tail)
        if rest.startswith("unix:"):
            path = rest[len("unix:"):]
            if not path.startswith("/"):
                raise ValueError(usage)
            return AnvilStoreSpec("unix", path, 0, db)
        host, _, port = rest.rpartition(":")
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
            try:
                ipaddress.IPv6Address(host)
            except ValueError:
                raise ValueError(usage) from None
        elif not re.fullmatch(r"[A-Za-z0-9._-]+", host):
            raise ValueError(usage)
        if not (port.isdigit() and 0 < int(port) < 65536):
            raise ValueError(usage)
        return AnvilStoreSpec("inet", host, int(port), db)
