"""Every parameter in the schema, and every value of an enumerated one, has a consumer.

A parameter that nothing reads promises more than the code does; so does a
value of an enumerated parameter (a Choice or ChoiceList) that no code acts
on.  A parameter's consumer is the settings class that declares it
(mta.config.settings: each class lists the parameters it reads, load()
builds every class, and services take their settings objects, never the
parameter scope), or another parameter whose default uses it (``$mydomain``
in mydestination's).  A value of an enumerated parameter must compile to
settings of its own (see test_every_enumerated_value_has_a_consumer).
Nothing under mta/ outside mta.config reads a parameter by name.
"""

import pathlib
import re

import pytest

from mta.config import load, types as T
from mta.config.schema import PARAMETERS, PATTERNS
from mta.config.settings import allClasses

ROOT = pathlib.Path(__file__).resolve().parents[2] / "mta"
CONFIG = ROOT / "config"
DEFAULTS = " ".join(
    [p.default for p in PARAMETERS if isinstance(p.default, str)] + [default for _, _, default, _ in PATTERNS]
)
DECLARED = {name for cls in allClasses() for name in cls.parameters()}
SERVICES = {
    path: path.read_text(encoding="utf-8")
    for path in sorted(ROOT.rglob("*.py"))
    if CONFIG not in path.parents
}


@pytest.mark.parametrize("parameter", PARAMETERS, ids=lambda p: p.name)
def test_every_parameter_has_a_consumer(parameter):
    if parameter.name in DECLARED:
        return
    assert re.search(r"\$\{?%s\b" % re.escape(parameter.name), DEFAULTS), (
        f"{parameter.name}: no settings class declares it and no other parameter's default uses it"
    )


def test_no_service_reads_a_parameter_by_name():
    """Services take their settings objects: no params[...], scope[...] or config[...] outside mta.config."""
    reads = re.compile(r"""\b(params|scope|config|main)\[\s*f?["'][a-z0-9_]+""")
    found = [f"{path.relative_to(ROOT.parent)}:{n}: {line.strip()}"
             for path, text in SERVICES.items()
             for n, line in enumerate(text.splitlines(), 1) if reads.search(line)]
    assert not found, "\n".join(found)


def test_every_transport_family_has_a_consumer():
    declared = {p.pattern for cls in allClasses() for p in cls.patterns()}
    for pattern, _, _, _ in PATTERNS:
        assert pattern.pattern in declared, pattern.pattern


# Values the schema accepts but load() refuses as "not implemented yet": none now (the client's
# TLS levels dane-only and fingerprint are built); a value added here must fail at load.
NOT_YET = set()
# Values that load only with another parameter set: those lines are added.
NEEDS = {(f"{p}_tls_security_level", "fingerprint"): f"{p}_tls_fingerprint_cert_match = ab:cd\n" for p in ("smtp", "lmtp")}

ENUMERATED = [
    (parameter, value)
    for parameter in PARAMETERS
    if isinstance(parameter.type, (T.Choice, T.ChoiceList))
    for value in parameter.type.choices
    if (parameter.name, value) not in NOT_YET
]


def compiledWith(name, value):
    """Every settings object, [main] and listener, of a configuration that sets C{name} = C{value}."""
    config = load("<test>", f"[main]\n{name} = {value}\n{NEEDS.get((name, value), '')}")
    objects = dict(vars(config.settings))
    objects.update({f"listener.{k}": v for k, v in vars(config.listeners[0].settings).items()})
    return objects


@pytest.mark.parametrize("parameter, value", ENUMERATED, ids=lambda x: getattr(x, "name", x))
def test_every_enumerated_value_has_a_consumer(parameter, value):
    """
    Each value compiles to settings of its own (a value that means another
    is listed in the declaring class's ALIASES, e.g.
    smtpd_forbid_bare_newline's yes for reject), so the services, which see
    only the settings, can tell every value from the others.
    """
    assert parameter.name in DECLARED, f"{parameter.name}: no settings class declares it"
    aliases = {}
    for cls in allClasses():
        aliases.update(getattr(cls, "ALIASES", {}).get(parameter.name, {}))
    canonical = aliases.get(value, value)
    mine = compiledWith(parameter.name, value)
    for other in parameter.type.choices:
        if aliases.get(other, other) != canonical and (parameter.name, other) not in NOT_YET:
            assert compiledWith(parameter.name, other) != mine, (
                f"{parameter.name}: {value} and {other} compile to the same settings"
            )
