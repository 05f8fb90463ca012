"""mta.config - the configuration: schema, INI loader, value types, compiled settings.

    schema.py     every parameter: name, type, default, one-line doc
    types.py      the value types (postconf(5)) and the restriction-list syntax
    loader.py     the INI reader, $name expansion, checks, findConfig()
    settings/     the compile step: one frozen settings class per service
    errors.py     ConfigError
    docs.py       etc/mta.ini and the README's parameter table, from the schema

mta.config is the lowest floor: it imports nothing else of mta.
"""

from mta.config.loader import (
    CONFIG_ENVIRONMENT,
    DEFAULT_CONFIG,
    Config,
    ConfigError,
    ConfigNotFound,
    ConfigSource,
    Listener,
    Location,
    Scope,
    findConfig,
    load,
    loadConfig,
    openTables,
    readIni,
)
from mta.config.schema import BY_NAME, PARAMETERS, Parameter

__all__ = [
    "BY_NAME", "CONFIG_ENVIRONMENT", "DEFAULT_CONFIG", "PARAMETERS", "Config", "ConfigError", "ConfigNotFound", "ConfigSource",
    "Listener", "Location", "Parameter", "Scope", "findConfig", "load", "loadConfig", "openTables", "readIni",
]
