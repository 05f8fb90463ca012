"""mta.tables.cidr - cidr:/path, Postfix's network address table.

The format of cidr_table(5), one rule per logical line (continuation lines
and '#' comments as in every Postfix table), tried in order; the first that
matches gives the answer:

    192.168.1.1             result    one address (all bits)
    192.168.0.0/16          result    a network
    2001:db8::/32           result    IPv6
    [2001:db8::1]/128       result    brackets are allowed
    !192.168.0.0/16         result    every address of that family outside it
    if 10.0.0.0/8                     the rules up to the matching endif apply
    if !10.0.0.0/8                    only to addresses (not) in it; nests
    endif

An IPv4 rule never matches an IPv6 key and the other way round (so
``::ffff:1.2.3.4`` matches only IPv6 rules); ``0.0.0.0/0`` and ``::/0``
match every address of their family.  Keys that are not an IP address in
inet_pton(3) form (no leading zeros in IPv4, no zone such as ``%eth0``)
match nothing: the answer is None.  The inline form is ``cidr:{ {net
result}, ... }``.  The file is read again when it changes (see
mta.tables.patternfile).

SECURITY
    Keys come from the network; they are parsed as addresses, never
    interpreted otherwise; each lookup is a walk over the rules.

CONFIGURATION
    None of its own.

DEVIATIONS
    A network with host bits set (``10.1.2.3/8``) is, as in Postfix, logged
    with its correction ("non-null host address bits in "10.1.2.3/8",
    perhaps you should use "10.0.0.0/8" instead") and the rule skipped.
    Every other error Postfix warns about and skips (a bad address or mask,
    a rule with no result, text after endif, endif without if, if without
    endif) refuses the whole file in mta: TableError with file and line.
    So an ``if`` skipped for host bits leaves its ``endif`` unmatched, which
    refuses the file (Postfix warns and runs the block's rules unconditionally).
    An empty mask (``10.0.0.0/``) is a bad mask value (Postfix reads it as /0).
"""

import ipaddress

from twisted.internet.defer import succeed
from twisted.logger import Logger
from zope.interface import implementer

from mta.interfaces import ILookupTable
from mta.tables import TableError
from mta.tables.patternfile import ENDIF, IF, MATCH, PatternFileTable, firstMatch, nestRules

log = Logger()


class SkippedRule(Exception):
    """A rule Postfix skips with a warning (host bits set)."""


def _isAlnum(ch):
    return ch.isascii() and ch.isalnum()


def parseAddress(text):
    """An address as inet_pton() parses it (':' decides the family), or None."""
    if "%" in text or not text:
        return None
    try:
        return ipaddress.IPv6Address(text) if ":" in text else ipaddress.IPv4Address(text)
    except ValueError:
        return None


def parseNetwork(text):
    """A cidr_table pattern as Postfix's cidr_match_parse(); ValueError, or SkippedRule for host bits."""
    pattern = text
    if pattern.startswith("["):
        inner, bracket, rest = pattern[1:].partition("]")
        if not bracket:
            raise ValueError(f"missing ']' character after \"[{inner}\"")
        if rest and not rest.startswith("/"):
            raise ValueError(f'garbage after "[{inner}]"')
        pattern = inner + rest
    address, slash, mask = pattern.partition("/")
    if slash:
        bits = 128 if ":" in address else 32
        if not (mask.isascii() and mask.isdigit()):
            problem = "bad mask value"
        elif int(mask) > bits:
            problem = "bad mask length"
        elif parseAddress(address) is None:
            problem = "bad network value"
        else:
            problem = None
        if problem:
            raise ValueError(f'{problem} in "{address}/{mask}"')
        try:
            return ipaddress.ip_network(f"{parseAddress(address)}/{int(mask)}", strict=True)
        except ValueError:
            network = ipaddress.ip_network(f"{parseAddress(address)}/{int(mask)}", strict=False)
            raise SkippedRule(f'non-null host address bits in "{address}/{mask}", '
                              f'perhaps you should use "{network.network_address}/{network.prefixlen}" instead') from None
    ip = parseAddress(address)
    if ip is None:
        raise ValueError(f'bad address pattern: "{address}"')
    return ipaddress.ip_network(ip)


class _Rule:
    def __init__(self, op, line, network=None, positive=True, value=None):
        self.op = op
        self.line = line
        self.network = network
        self.positive = positive
        self.value = value
        self.end = None

    def test(self, ip):
        if ip.version != self.network.version:
            return False
        return (ip in self.network) == self.positive

    def answer(self, ip):
        return self.value if self.test(ip) else None


def _negations(text):
    positive = True
    i = 0
    while i < len(text) and (text[i] == "!" or text[i].isspace()):
        if text[i] == "!":
            positive = not positive
        i += 1
    return positive, text[i:]


def _parseLine(where, line, text):
    if text[:2].lower() == "if" and not (len(text) > 2 and _isAlnum(text[2])):
        positive, rest = _negations(text[2:])
        if not rest:
            raise ValueError("no address pattern")
        return _Rule(IF, line, parseNetwork(rest.strip()), positive)
    if text[:5].lower() == "endif" and not (len(text) > 5 and _isAlnum(text[5])):
        if text[5:].strip():
            raise ValueError("garbage after ENDIF")
        return _Rule(ENDIF, line)
    positive, rest = _negations(text)
    parts = rest.split(None, 1)
    if not parts:
        raise ValueError("no address pattern")
    network = parseNetwork(parts[0])
    value = parts[1].strip() if len(parts) > 1 else ""
    if not value:
        raise ValueError("no lookup result")
    return _Rule(MATCH, line, network, positive, value)


def parseCidrTable(where, lines):
    rules = []
    for number, text in lines:
        if not text:
            continue
        try:
            rules.append(_parseLine(where, number, text))
        except SkippedRule as e:
            log.warn("cidr map {where}, line {line}: {reason}: skipping this rule", where=where, line=number,
                     reason=str(e))
        except ValueError as e:
            raise TableError(f"{where}:{number}: {e}") from None
    return nestRules(where, rules)


@implementer(ILookupTable)
class CidrTable(PatternFileTable):
    """cidr:/path and cidr:{ {net result}, ... }."""

    def __init__(self, name, clock):
        super().__init__("cidr", name, clock, parseCidrTable)

    def lookup(self, key):
        rules = self.currentRules()
        ip = parseAddress(key)
        if ip is None:
            return succeed(None)
        return succeed(firstMatch(rules, ip))
