"""mta.interfaces - every interface that plugins and test fakes implement.

Plugins are found with twisted.plugin.getPlugins(IxxxFactory, mta.plugins) and
chosen by the prefix the configuration names (``texthash:/etc/mta/access``,
``lmtp``, ...).  Interfaces for restrictions, content filters and transports
are declared here as the issues that use them land.

SECURITY
    Implementations receive untrusted keys (addresses and names from the
    network); they must not interpret them beyond a lookup.

CONFIGURATION
    None.
"""

from zope.interface import Attribute, Interface


class ILookupTable(Interface):
    """A Postfix-style lookup table (access(5), virtual(5), transport(5))."""

    spec = Attribute("The table's specification as configured, e.g. 'texthash:/etc/mta/virtual'.")

    def lookup(key):
        """
        Look up C{key} (a str).

        @return: a Deferred that fires with the value (str) or None when the
            key is not in the table.  A table that cannot answer now fails the
            Deferred with L{mta.tables.TableTemporaryError}; callers turn that
            into a 4xx reply, never a 5xx.
        """


class ILookupTableFactory(Interface):
    """A plugin that opens lookup tables of one type."""

    tableType = Attribute("The prefix before the colon in a table spec, e.g. 'texthash'.")
    description = Attribute("One line for documentation.")

    def openTable(name, clock):
        """
        Open the table named C{name} (the text after C{type:}).

        @param clock: an IReactorTime, for tables that poll or expire.
        @return: an L{ILookupTable}.
        @raise mta.tables.TableError: the table cannot be opened (missing
            file, syntax error); the message names the file and line.
        """
