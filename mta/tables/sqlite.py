"""mta.tables.sqlite - sqlite:/etc/mta/x.cf, an SQLite database file (sqlite_table(5)).

The file names the database and the query (see mta.tables.sql for the
format, the escapes and result_format):

    dbpath = /etc/mta/virtual.sqlite
    query = SELECT destination FROM aliases WHERE address = '%s'

Parameters: dbpath (required), query (or the legacy table, select_field,
where_field, additional_conditions), result_format, domain,
expansion_limit.  As Postfix, only the first column of each row counts.

The database is opened read-only at open, and the query prepared there
(EXPLAIN, with empty parameters), so a missing file, a missing table or an
SQL syntax error is a TableError that ``mta-config --check`` reports.
Lookups run on adbapi's thread pool (one thread, one connection made at the
first lookup, check_same_thread off), never in the reactor; an SQL error
at lookup (a table dropped since) is a temporary error, as Postfix's "SQL
step failed".  The connection is closed after 60 s without lookups and at
close(); the next lookup opens it again, so a replaced database file is
seen then.

SECURITY
    Keys are bound as parameters (mta.tables.sql); the database is opened
    read-only (mode=ro).

CONFIGURATION
    None in mta.ini; the parameters above, in the table's file.

DEVIATIONS
    Those of mta.tables.sql.  Postfix's prepare failure at lookup is fatal;
    here it is found at open, and at lookup it is a temporary error.  A
    lookup stuck on a lock gives up after sqlite's busy timeout (5 s) and
    the query_timeout (mta's own parameter, default 30 s) interrupts the
    query.
"""

import sqlite3
from urllib.parse import quote

from mta.tables import TableError, printable
from mta.tables.sql import Server, SqlTable, _Pool
from mta.tables.sqlconfig import COMMON, Dialect

DIALECT = Dialect("?", strings="'", identifiers={'"': '"', "`": "`", "[": "]"}, backslash=False)


class SqliteTable(SqlTable):
    tableType = "sqlite"
    dialect = DIALECT
    driver = "sqlite3"
    allColumns = False
    known = COMMON + ("dbpath", "query_timeout")

    def __init__(self, name, reactor, tables=None):
        super().__init__(name, reactor, tables)
        self.retryInterval = 0  # one local file: no server to stay away from

    def makeServers(self, config):
        self.dbpath = config.get("dbpath", required=True, minimum=1)
        self._uri = f"file:{quote(self.dbpath)}?mode=ro"
        self._check(config)
        return [Server(self.dbpath, ((), {"database": self._uri, "uri": True, "check_same_thread": False,
                                          "timeout": 5.0}))]

    def _check(self, config):
        try:
            db = sqlite3.connect(self._uri, uri=True)
        except sqlite3.Error as e:
            raise TableError(f"{config.where('dbpath')}: cannot open database {printable(self.dbpath)}: {e}") from None
        try:
            db.execute("EXPLAIN " + self.sql, ("",) * len(self.paramTemplates))
        except sqlite3.Error as e:
            where = config.where("query") if "query" in config else config.path
            raise TableError(f"{where}: SQL prepare failed: {e}") from None
        finally:
            db.close()

    def makePool(self, server):
        return _Pool(self.driver, cp_min=1, cp_max=1, cp_reactor=self._reactor, cp_noisy=False,
                     **server.connectArgs[1])

    def interrupt(self, connection):
        try:
            connection.interrupt()
        except Exception:
            pass
