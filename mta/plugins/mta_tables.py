"""The lookup table types that ship with mta."""

from twisted.plugin import IPlugin
from zope.interface import implementer

from mta.interfaces import ILookupTableFactory


@implementer(IPlugin, ILookupTableFactory)
class _Factory:
    def __init__(self, tableType, description, opener):
        self.tableType = tableType
        self.description = description
        self._opener = opener

    def openTable(self, name, clock):
        return self._opener(name, clock)


def _texthash(name, clock):
    from mta.tables.texthash import TextHashTable

    return TextHashTable(name, clock)


def _inline(name, clock):
    from mta.tables.inline import InlineTable

    return InlineTable(name)


def _static(name, clock):
    from mta.tables.inline import StaticTable

    return StaticTable(name)


def _socketmap(name, reactor):
    from mta.tables.socketmap import SocketmapTable

    return SocketmapTable(name, reactor)


def _regexp(name, clock):
    from mta.tables.regexp import RegexpTable

    return RegexpTable("regexp", name, clock)


def _pcre(name, clock):
    from mta.tables.regexp import RegexpTable

    return RegexpTable("pcre", name, clock)


def _cidr(name, clock):
    from mta.tables.cidr import CidrTable

    return CidrTable(name, clock)
def _tcp(name, reactor):
    from mta.tables.tcp import TcpTable

    return TcpTable(name, reactor)


def _ldap(name, reactor):
    from mta.tables.ldap import LdapTable

    return LdapTable(name, reactor)
def _lmdb(name, clock):
    from mta.tables.lmdb import LmdbTable

    return LmdbTable(name, clock)


def _fail(name, clock):
    from mta.tables.simple import FailTable

    return FailTable(name)


def _unix(name, reactor):
    from mta.tables.simple import UnixTable

    return UnixTable(name, reactor)


def _unionmap(name, clock):
    from mta.tables.composite import UnionTable

    return UnionTable(name, clock)


def _pipemap(name, clock):
    from mta.tables.composite import PipeTable

    return PipeTable(name, clock)


texthash = _Factory("texthash", "A flat 'key value' file, read at start and when it changes.", _texthash)
inline = _Factory("inline", "Entries in the configuration: inline:{ key=value, ... }.", _inline)
static = _Factory("static", "The same value for every key: static:value.", _static)
socketmap = _Factory("socketmap", "A Sendmail-style socketmap server: socketmap:inet:host:port:name or unix:/path:name.",
                     _socketmap)
regexp = _Factory("regexp", "POSIX regular expressions, regexp_table(5): /pattern/flags result, if/endif.", _regexp)
pcre = _Factory("pcre", "Perl-compatible regular expressions, pcre_table(5): /pattern/flags result, if/endif.", _pcre)
cidr = _Factory("cidr", "Network addresses, cidr_table(5): network/prefix result, if/endif.", _cidr)


def _sql(module, cls):
    def opener(name, reactor):
        import importlib

        return getattr(importlib.import_module(f"mta.tables.{module}"), cls)(name, reactor)

    return opener


sqlite = _Factory("sqlite", "An SQLite database: sqlite:/etc/mta/file.cf names dbpath and query (sqlite_table(5)).",
                  _sql("sqlite", "SqliteTable"))
pgsql = _Factory("pgsql", "A PostgreSQL database: pgsql:/etc/mta/file.cf names hosts, dbname and query "
                 "(pgsql_table(5)).", _sql("pgsql", "PgsqlTable"))
mysql = _Factory("mysql", "A MySQL or MariaDB database: mysql:/etc/mta/file.cf names hosts, dbname and query "
                 "(mysql_table(5)).", _sql("mysql", "MysqlTable"))
tcp = _Factory("tcp", "A tcp_table(5) server: tcp:host:port.", _tcp)
ldap = _Factory("ldap", "An LDAP directory, settings in a file: ldap:/etc/mta/ldap-aliases.cf.", _ldap)
lmdb = _Factory("lmdb", "An LMDB database built by mta-postmap or postmap: lmdb:/path reads /path.lmdb.", _lmdb)
fail = _Factory("fail", "Every lookup fails with a temporary error: fail:name.", _fail)
unix = _Factory("unix", "The system's users or groups: unix:passwd.byname, unix:group.byname.", _unix)
unionmap = _Factory("unionmap", "Every component's values joined with commas: unionmap:{type:name, ...}.", _unionmap)
pipemap = _Factory("pipemap", "Each component's value is the next one's key: pipemap:{type:name, ...}.", _pipemap)
