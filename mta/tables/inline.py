"""mta.tables.inline - inline:{ key=value, { key = text, with commas } }.

As Postfix's inline table: entries inside braces, separated by commas or
white space; an entry whose value holds white space or commas is itself in
braces.  Keys are case-insensitive.  static:value answers every key.

SECURITY
    Keys are untrusted and only compared.

CONFIGURATION
    None of their own.
"""

from twisted.internet.defer import succeed
from zope.interface import implementer

from mta.config.types import splitList
from mta.interfaces import ILookupTable
from mta.tables import TableError


def _unbrace(text):
    text = text.strip()
    if text.startswith("{") and text.endswith("}"):
        return text[1:-1].strip()
    return text


@implementer(ILookupTable)
class InlineTable:
    pattern = False

    def __init__(self, name):
        self.spec = f"inline:{name}"
        text = name.strip()
        if not (text.startswith("{") and text.endswith("}")):
            raise TableError(f"{self.spec}: expected inline:{{ key=value, ... }}")
        self._entries = {}
        try:
            items = splitList(text[1:-1])
        except ValueError as e:
            raise TableError(f"{self.spec}: {e}") from None
        for item in items:
            key, eq, value = _unbrace(item).partition("=")
            if not eq or not key.strip():
                raise TableError(f"{self.spec}: entry {item!r} is not key=value")
            self._entries.setdefault(key.strip().lower(), value.strip())

    def lookup(self, key):
        return succeed(self._entries.get(key.lower()))


@implementer(ILookupTable)
class StaticTable:
    pattern = False

    def __init__(self, name):
        self.spec = f"static:{name}"
        self._value = _unbrace(name)

    def lookup(self, key):
        return succeed(self._value)
