"""mta.config - the configuration: schema, INI loader, value types."""

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
