"""mta.tables - lookup tables behind ILookupTable, opened by type:name.

A table type is a plugin (ILookupTableFactory in mta.plugins); mta ships
texthash, inline, static, socketmap, regexp, pcre, cidr, sqlite, pgsql,
mysql, ldap, tcp, lmdb, fail, unionmap, pipemap and unix (see their
modules).  lookupAddress() is Postfix's search order for addresses, shared
by every address table; tableKeys() cuts a key list to the whole key for a
pattern table.

SECURITY
    Lookup keys come from the network; they are only compared, never
    interpreted.  Table files are configuration: a syntax error names the
    file and line.

CONFIGURATION
    Every parameter of type 'tables' or 'domains' names tables.
"""

# Twisted's plugin machinery is imported when tables are opened, not here:
# the configuration loader imports this module, and short-lived tools should
# not pay for it.


class TableError(Exception):
    """A table cannot be opened or read; the message says where and why."""


class TableTemporaryError(Exception):
    """A table cannot answer now; the caller must answer 4xx and retry later."""


def printable(text, limit=200):
    """Postfix's printable(): everything outside printable ASCII as '?', cut to C{limit} (for logs, errors)."""
    return "".join(c if " " <= c <= "~" else "?" for c in text[:limit])


def tableFactories():
    from twisted.plugin import getPlugins

    import mta.plugins
    from mta.interfaces import ILookupTableFactory

    return {f.tableType: f for f in getPlugins(ILookupTableFactory, mta.plugins)}


class Tables:
    """Opens each table spec once and shares it between parameters."""

    # What open() raises for a table that cannot be opened (mta.config.openTables reports it).
    openErrors = (TableError,)

    def __init__(self, clock):
        self._clock = clock
        self._open = {}
        self._factories = None

    def close(self):
        """
        Close every table opened here that has ILookupTable's optional
        close() (connections, thread pools, files); a Deferred that fires
        when all have, whatever each one answered.
        """
        from twisted.internet.defer import DeferredList, maybeDeferred

        closing = [maybeDeferred(table.close) for table in self._open.values()
                   if callable(getattr(table, "close", None))]
        return DeferredList(closing, consumeErrors=True)

    def open(self, spec):
        """Open the table for C{spec} (a TableSpec or 'type:name')."""
        key = str(spec)
        if key in self._open:
            return self._open[key]
        tableType, _, name = key.partition(":")
        if self._factories is None:
            self._factories = tableFactories()
        factory = self._factories.get(tableType)
        if factory is None:
            known = ", ".join(sorted(self._factories))
            raise TableError(f"{key}: unsupported table type '{tableType}' (known: {known})")
        table = factory.openTable(name, self._clock)
        self._open[key] = table
        return table


def addressKeys(address, delimiter="", local=False):
    """
    The keys to try for C{address}, in Postfix's order (virtual(5)):
    user+ext@domain, user@domain, then for local domains user+ext and
    user, then @domain.  C{delimiter} holds recipient_delimiter characters.
    """
    address = address.lower()
    localPart, at, domain = address.rpartition("@")
    if not at:
        localPart, domain = address, ""
    base = localPart
    if delimiter and localPart not in ("postmaster", "mailer-daemon"):
        positions = [localPart.find(c) for c in delimiter if c in localPart]
        cut = min(positions, default=-1)
        if cut > 0:
            base = localPart[:cut]
    keys = []
    if domain:
        keys.append(f"{localPart}@{domain}")
        if base != localPart:
            keys.append(f"{base}@{domain}")
    if local or not domain:
        keys.append(localPart)
        if base != localPart:
            keys.append(base)
    if domain:
        keys.append(f"@{domain}")
    return keys


def tableKeys(table, keys):
    """
    C{keys} (a list, the whole key first, then its partial forms) as
    C{table} should be asked them: a pattern table (regexp, pcre, cidr:
    ILookupTable.pattern) gets the whole key only, as Postfix asks such
    tables no partial keys.
    """
    return keys[:1] if getattr(table, "pattern", False) else keys


async def lookupAddress(table, address, delimiter="", local=False):
    """
    Search C{table} for C{address} in Postfix's order; return the first
    (key, value) found, or None.  TableTemporaryError propagates.
    """
    for key in tableKeys(table, addressKeys(address, delimiter, local)):
        value = await table.lookup(key)
        if value is not None:
            return key, value
    return None
