"""mta.config.errors - ConfigError, the one exception of a configuration that cannot be used.

Every problem found while a configuration is read, checked or compiled
(mta.config.loader, mta.config.settings) is a ConfigError whose str() is the
whole message for the user: file, line, section, key and reason.  It lives
in a module of its own so that the loader and the settings classes, which
both raise it, need not import each other.

SECURITY
    None: messages name configuration files and values, never client input.

CONFIGURATION
    None.
"""


class ConfigError(Exception):
    """A configuration problem; str() is the whole message for the user."""
