"""mta.tables.mysql - mysql:/etc/mta/x.cf, a MySQL or MariaDB database (mysql_table(5)).

    hosts = unix:/run/mysqld/mysqld.sock, inet:db.example.com:3306
    user = mta
    password = secret
    dbname = mail
    query = SELECT goto FROM alias WHERE address = '%s'

Parameters: hosts (default localhost), user, password, dbname (required),
query (or the legacy table, select_field, where_field,
additional_conditions), result_format, domain, expansion_limit, charset
(default utf8mb4), retry_interval and idle_interval (60 s),
require_result_set (yes: a statement that returns no result set is an
error), option_file and option_group (default client), tls_key_file,
tls_cert_file, tls_CAfile, tls_CApath, tls_ciphers, tls_verify_cert, and
mta's own connect_timeout (10 s) and query_timeout (30 s).  The query,
escapes and server handling are mta.tables.sql's; every column of every
row is a value; a query returning more than one result set with data is
an error, as Postfix.

Hosts, as Postfix's dict_mysql: ``unix:/path/to/socket``, ``inet:host:port``
or ``host:port`` or ``host`` (port 3306); ``localhost`` means the UNIX
socket (MySQL's way), here Debian's /run/mysqld/mysqld.sock.  Tried in
random order, a failed one skipped for retry_interval seconds.

Through PyMySQL (pure Python) on adbapi's thread pool (at most 4
connections per host entry), connecting at the first lookup.
connect_timeout bounds the connection, query_timeout each read and write
of the query (PyMySQL's socket timeouts, so the waiting thread returns).
Connection refused, authentication failure, SQL error, timeout: a warning
and TableTemporaryError; after a server restart the other entry of the same
host reconnects at once.

SECURITY
    Keys are bound as parameters (PyMySQL's escaping for the connection's
    character set, mta.tables.sql); the password is never logged.  TLS with
    tls_CAfile or tls_CApath verifies the server's certificate, and with
    tls_verify_cert = yes its name too.

CONFIGURATION
    None in mta.ini; the parameters above, in the table's file.

DEVIATIONS
    Those of mta.tables.sql.  option_group is read from option_file only
    (libmysqlclient also reads the default my.cnf files when a group is
    set).  Timeouts are mta's.
"""

from mta.tables.sql import Server, SqlTable
from mta.tables.sqlconfig import COMMON, NETWORK, Dialect, parseHost, splitHosts

DIALECT = Dialect("%s", strings="'\"", identifiers={"`": "`"}, backslash=True)

DEFAULT_SOCKET = "/run/mysqld/mysqld.sock"

TLS = ("tls_key_file", "tls_cert_file", "tls_CAfile", "tls_CApath", "tls_ciphers", "tls_verify_cert")


class MysqlTable(SqlTable):
    tableType = "mysql"
    dialect = DIALECT
    driver = "pymysql"
    singleResult = True
    known = COMMON + NETWORK + ("charset", "require_result_set", "option_file", "option_group") + TLS

    def makeServers(self, config):
        self.requireResultSet = config.getBool("require_result_set", True)
        where = config.where("hosts")
        common = {
            "user": config.get("user", ""),
            "password": config.get("password", ""),
            "database": config.get("dbname", required=True, minimum=1),
            "charset": config.get("charset", "utf8mb4", minimum=1),
            "connect_timeout": self.connectTimeout,
            "read_timeout": self.queryTimeout,
            "write_timeout": self.queryTimeout,
        }
        optionFile = config.get("option_file")
        if optionFile:
            common["read_default_file"] = optionFile
            common["read_default_group"] = config.get("option_group", "client") or "client"
        ssl = {}
        for name, key in (("tls_CAfile", "ca"), ("tls_CApath", "capath"), ("tls_cert_file", "cert"),
                          ("tls_key_file", "key"), ("tls_ciphers", "cipher")):
            value = config.get(name)
            if value:
                ssl[key] = value
        verify = config.getBool("tls_verify_cert", None)
        if verify is not None:
            ssl["check_hostname"] = verify
        if ssl:
            common["ssl"] = ssl
        servers = []
        for host in splitHosts(config):
            kind, address, port = parseHost(where, host, 3306)
            kwargs = dict(common)
            if kind == "inet" and address.lower() == "localhost":
                kind, address = "unix", DEFAULT_SOCKET
            if kind == "unix":
                kwargs["unix_socket"] = address
            else:
                kwargs["host"], kwargs["port"] = address, port
            servers.append(Server(host, ((), kwargs)))
        return servers
