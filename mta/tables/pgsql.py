"""mta.tables.pgsql - pgsql:/etc/mta/x.cf, a PostgreSQL database (pgsql_table(5)).

    hosts = inet:db1.example.com:5432, unix:/run/postgresql
    user = mta
    password = secret
    dbname = mail
    query = SELECT goto FROM alias WHERE address = '%s' AND active

Parameters: hosts (default localhost), user, password, dbname (required
unless every host is a postgresql:// URI), query (or the legacy
select_function, or table, select_field, where_field,
additional_conditions), result_format, domain, expansion_limit, encoding
(default UTF8), retry_interval and idle_interval (60 s), and mta's own
connect_timeout (10 s) and query_timeout (30 s).  The query, escapes and
server handling are mta.tables.sql's; every column of every row is a value.

Hosts, as Postfix's dict_pgsql: ``inet:host:port`` or ``host:port`` or
``host`` (port 5432), ``unix:/directory`` or ``/directory`` (libpq's socket
directory, as PGHOST), or a ``postgresql://`` / ``postgres://`` URI passed
to libpq whole.  They are tried in random order, one connected server
used at a time; a failed one is skipped for retry_interval seconds.

Through psycopg2 (libpq) on adbapi's thread pool (at most 4 connections
per host entry), connecting at the first lookup, so ``mta-config --check``
needs no server.  Each connection sets statement_timeout to query_timeout,
so the server ends a slow query; a server that stops answering is cut off
after connect_timeout + query_timeout (the connection's socket is shut down
so that the waiting thread returns).  Connection refused, authentication
failure, SQL error, timeout: a warning and TableTemporaryError.  After a
server restart, the stale connection fails and the other entry of the same
host (Postfix lists a single host twice) reconnects at once.

SECURITY
    Keys are bound as parameters (psycopg2's quoting, mta.tables.sql).  The
    password is passed to libpq, never logged.

CONFIGURATION
    None in mta.ini; the parameters above, in the table's file.

DEVIATIONS
    Those of mta.tables.sql.  Postfix's libpq waits without a timeout
    unless the URI sets connect_timeout; mta sets connect_timeout and
    statement_timeout (in a URI's own options, the URI's connect_timeout
    wins).
"""

import re

from mta.tables import TableError
from mta.tables.sql import Server, SqlTable
from mta.tables.sqlconfig import COMMON, NETWORK, Dialect, legacyQuery, parseHost, splitHosts

DIALECT = Dialect("%s", strings="'", identifiers={'"': '"'}, backslash=False)

_URI = re.compile(r"postgres(ql)?://", re.I)


class PgsqlTable(SqlTable):
    tableType = "pgsql"
    dialect = DIALECT
    driver = "psycopg2"
    known = COMMON + NETWORK + ("encoding", "select_function")

    def legacyQuery(self, config):
        function = config.get("select_function")
        if function is not None:
            return f"SELECT {function}('%s')"
        return legacyQuery(config)

    def makeServers(self, config):
        where = config.where("hosts")
        user = config.get("user", "")
        password = config.get("password", "")
        dbname = config.get("dbname", "")
        encoding = config.get("encoding", "UTF8", minimum=1)
        common = {
            "connect_timeout": self.connectTimeout,
            "options": f"-c statement_timeout={self.queryTimeout * 1000}",
            "client_encoding": encoding,
            "application_name": "mta",
        }
        servers = []
        for host in splitHosts(config):
            if _URI.match(host):
                servers.append(Server(host.split("@")[-1], ((host,), dict(common))))
                continue
            if not dbname:
                raise TableError(f"{config.path}: host target '{host}' requires the dbname setting")
            kind, address, port = parseHost(where, host, 5432)
            kwargs = dict(common, dbname=dbname)
            if user:
                kwargs["user"] = user
            if password:
                kwargs["password"] = password
            if kind == "unix":
                kwargs["host"] = address
            else:
                kwargs["host"], kwargs["port"] = address, port
            servers.append(Server(host, ((), kwargs)))
        return servers
