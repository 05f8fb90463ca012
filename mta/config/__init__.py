"""mta.config - the configuration: schema, INI loader, value types."""

from mta.config.loader import Config, ConfigError, Listener, Location, Scope, load, openTables, readIni
from mta.config.schema import BY_NAME, PARAMETERS, Parameter

__all__ = ["BY_NAME", "PARAMETERS", "Config", "ConfigError", "Listener", "Location", "Parameter", "Scope", "load", "openTables", "readIni"]
