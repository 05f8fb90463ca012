"""mta.tables.composite - unionmap:{t1, t2, ...} and pipemap:{t1, t2, ...}.

Postfix's dict_union and dict_pipe.  The name is a list of table specs in
braces, separated by commas or white space (braces group, so a component may
itself be inline:{...} or another unionmap:{...}).  The components are opened
at open, through a mta.tables.Tables of the composite's own (so a component
named twice is opened once); a component that cannot be opened raises
TableError naming the composite and the component.

unionmap asks every component, in order, for the key and joins the values
found with commas; not found in any (or only empty values) is None.
pipemap gives the key to the first component, its value to the second as the
key, and so on; the last value is the result, and a key not found at any
step is None.  A component that fails with TableTemporaryError fails the
lookup at once (Postfix stops at the first error too), with a message naming
the component.  As in Postfix, the first component decides whether the
composite is a pattern table (callers then ask it for the whole string
only).

SECURITY
    Keys are untrusted; they are passed to the components, which compare
    them.  Values of one pipemap step become keys of the next: each component
    must be safe for untrusted keys, as every table is.

CONFIGURATION
    None of their own.

DEVIATIONS
    Postfix refuses a composite opened for writing; mta's tables are
    read-only anyway.
"""

from twisted.internet.defer import Deferred, DeferredList, maybeDeferred
from zope.interface import implementer

from mta.config.types import splitList
from mta.interfaces import ILookupTable
from mta.tables import TableError, TableTemporaryError, Tables


def parseComponents(spec, name):
    """The component specs of C{name} ('{t1, t2, ...}'); TableError for bad syntax."""
    tableType = spec.partition(":")[0]
    usage = f"{spec}: bad syntax; need \"{tableType}:{{type:name...}}\""
    text = name.strip()
    if not (text.startswith("{") and text.endswith("}")):
        raise TableError(usage)
    try:
        whole = splitList(text, separators="")  # one balanced {...}, as Postfix's balpar()
        items = splitList(text[1:-1])
    except ValueError as e:
        raise TableError(f"{usage} ({e})") from None
    if len(whole) != 1 or not _balancedAsOne(text) or not items:
        raise TableError(usage)
    for item in items:
        head, colon, rest = item.partition(":")
        if not colon or not head or not rest:
            raise TableError(f"{usage}: {item!r} is not type:name")
    return items


def _balancedAsOne(text):
    """True when the '{' at the start closes at the very end ('{a} {b}' does not)."""
    depth = 0
    for position, ch in enumerate(text):
        depth += (ch == "{") - (ch == "}")
        if depth == 0:
            return position == len(text) - 1
    return False


class _Composite:
    tableType = None

    def __init__(self, name, clock, tables=None):
        self.spec = f"{self.tableType}:{name}"
        self._tables = Tables(clock) if tables is None else tables
        self.components = []
        for item in parseComponents(self.spec, name):
            try:
                self.components.append(self._tables.open(item))
            except TableError as e:
                where = "" if str(e).startswith(item) else f"{item}: "
                raise TableError(f"{self.spec}: {where}{e}") from None
        self.pattern = bool(getattr(self.components[0], "pattern", False))

    def lookup(self, key):
        return Deferred.fromCoroutine(self._lookup(key))

    async def _ask(self, component, key):
        try:
            return await maybeDeferred(component.lookup, key)
        except TableTemporaryError as e:
            raise TableTemporaryError(f"{self.spec}: {component.spec}: {e}") from None

    def close(self):
        results = []
        for component in {id(c): c for c in self.components}.values():
            close = getattr(component, "close", None)
            if close is not None:
                result = close()
                if isinstance(result, Deferred):
                    results.append(result)
        if results:
            return DeferredList(results, consumeErrors=True)
        return None


@implementer(ILookupTable)
class UnionTable(_Composite):
    tableType = "unionmap"

    async def _lookup(self, key):
        found = ""
        for component in self.components:
            value = await self._ask(component, key)
            if value is not None:
                if found:
                    found += ","
                found += value
        return found or None


@implementer(ILookupTable)
class PipeTable(_Composite):
    tableType = "pipemap"

    async def _lookup(self, key):
        query = key
        for component in self.components:
            query = await self._ask(component, query)
            if query is None:
                return None
        return query
