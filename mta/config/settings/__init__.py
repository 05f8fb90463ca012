"""mta.config.settings - the configuration compiled into typed settings, one frozen object per service.

Configuration flows one way.  The INI file is read and checked once
(mta.config.loader); then every service's settings object is built from it
here, at load (and at reload), so that every value that can be wrong fails
before anything starts, with the file, line, section and key.  A service
takes its settings object and never reads the parameter scope.

A settings class is an attrs frozen class whose fields are declared with
setting():

    @settingsClass
    class QmgrSettings(Settings):
        activeLimit: int = setting("qmgr_message_active_limit")
        deferTransports: frozenset = setting("defer_transports", frozenset)

Settings.build(scope) reads each declared parameter once (its typed value:
mta.config.types), passes it through the field's C{convert} (a ValueError
there is reported as a bad value of that parameter), and then calls the
class's check(scope) for rules that involve several parameters (raise
ValueError or ConfigError there; scope.where(name) gives the location).
parameters() lists what a class reads, so a test can prove that every
parameter of the schema has a consumer.

A field may also read a family of parameters named after a transport
(Postfix's TRANSPORT_destination_concurrency_limit): setting(pattern=P)
gives the mapping {transport: value} of every such parameter set in the
scope; the default (e.g. default_destination_concurrency_limit) is an
ordinary field beside it.

Where settings are built (compile()):

    Config.settings            MAIN_SETTINGS, from [main]
    Listener.settings          LISTENER_SETTINGS, from the listener's scope
                               ([main] with its overrides, as master.cf -o)

Each is a Compiled namespace: ``config.settings.qmgr``,
``listener.settings.smtpd``.

SECURITY
    None beyond the loader's: values were parsed by mta.config.types.

CONFIGURATION
    Every parameter, through the classes registered below.
"""

import attrs

from mta.config.errors import ConfigError
from mta.config.schema import BY_NAME

__all__ = ["Compiled", "Settings", "compile", "setting", "settingsClass"]


def setting(name=None, convert=None, *, pattern=None):
    """
    A settings field that reads the parameter C{name} (or, with C{pattern},
    every set parameter whose name matches the compiled regular expression
    C{pattern}, into a dict keyed by its first group), then C{convert}s it.
    """
    if (name is None) == (pattern is None):
        raise TypeError("setting() takes a parameter name or a pattern")
    return attrs.field(metadata={"parameter": name, "pattern": pattern, "convert": convert})


def settingsClass(cls):
    """Make C{cls} a frozen attrs class with keyword-only fields."""
    return attrs.frozen(kw_only=True)(cls)


class Settings:
    """The base of every settings class; see the module docstring."""

    @classmethod
    def parameters(cls):
        """The names of the parameters this class reads (patterns: their schema defaults' names too)."""
        names = []
        for field in attrs.fields(cls):
            name = field.metadata.get("parameter")
            if name is not None:
                names.append(name)
        names.extend(cls.extraParameters())
        return tuple(dict.fromkeys(names))

    @classmethod
    def patterns(cls):
        """The transport-named parameter families this class reads (compiled regular expressions)."""
        return tuple(f.metadata["pattern"] for f in attrs.fields(cls) if f.metadata.get("pattern") is not None)

    @classmethod
    def extraParameters(cls):
        """Parameters read by check() or by build() itself, beyond the fields: override when needed."""
        return ()

    @classmethod
    def build(cls, scope):
        """The settings of C{scope} (an mta.config.Scope); ConfigError with the location on a bad value."""
        values = {}
        for field in attrs.fields(cls):
            meta = field.metadata
            name, pattern = meta.get("parameter"), meta.get("pattern")
            if name is None and pattern is None:
                continue
            if pattern is not None:
                value = {}
                for key in scope.setNames():
                    match = pattern.fullmatch(key)
                    if match and key not in BY_NAME:  # default_destination_* are the defaults
                        value[match.group(1)] = _read(scope, key, meta["convert"])
                values[field.name] = value
            else:
                values[field.name] = _read(scope, name, meta["convert"])
        try:
            result = cls(**values)
            result.check(scope)
        except ConfigError:
            raise
        except ValueError as e:
            raise ConfigError(f"{scope.origin}: {e}") from None
        return result

    def check(self, scope):
        """Rules that involve several parameters: raise ConfigError (or ValueError) when broken."""


def _read(scope, name, convert):
    try:
        value = scope[name]
    except ValueError as e:
        raise ConfigError(f"{scope.where(name)}: {e}") from None
    if convert is None:
        return value
    try:
        return convert(value)
    except ValueError as e:
        raise ConfigError(f"{scope.where(name)}: {e}") from None


class Compiled:
    """The settings objects of one scope, by service name (attributes), read-only."""

    def __init__(self, values):
        self.__dict__.update(values)

    def __setattr__(self, name, value):
        raise AttributeError("compiled settings are read-only")

    def __repr__(self):
        return f"Compiled({', '.join(sorted(self.__dict__))})"


def _registry():
    """(MAIN_SETTINGS, LISTENER_SETTINGS): service name -> settings class."""
    from mta.config.settings import (client, cleanup, delivery, notices, postscreen, qmgr, routing, sasl, service,
                                     smtpd, tls, tlsrpt, verify)

    main, listener = {}, {}
    for module in (service, smtpd, postscreen, cleanup, routing, qmgr, notices, client, delivery, tls, sasl, tlsrpt,
                   verify):
        main.update(getattr(module, "MAIN", {}))
        listener.update(getattr(module, "LISTENER", {}))
    return main, listener


def mainSettings():
    return _registry()[0]


def listenerSettings():
    return _registry()[1]


def allClasses():
    main, listener = _registry()
    return tuple(dict.fromkeys([*main.values(), *listener.values()]))


def compile(scope, classes):
    """A Compiled namespace of C{classes} (service name -> settings class) built from C{scope}."""
    return Compiled({name: cls.build(scope) for name, cls in classes.items()})
