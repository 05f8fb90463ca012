"""Every parameter in the schema, and every value of an enumerated one, has a consumer.

A parameter that nothing reads promises more than the code does; so does a
value of an enumerated parameter (a Choice or ChoiceList) that no code acts
on.  A parameter's consumer is the settings class that declares it
(mta.config.settings: each class lists the parameters it reads, and load()
builds every class), or another parameter whose default uses it
(``$mydomain`` in mydestination's).  Until every service takes its settings
object, a module under mta/ that names the parameter as a string (or as an
f-string whose first two words are fields, as the client reads
smtp_helo_timeout: ``f"{p}_{hello}_timeout"``) counts too.  A value of an
enumerated parameter must compile to settings of its own (see
test_every_enumerated_value_has_a_consumer).
"""

import pathlib
import re

import pytest

from mta.config import load, types as T
from mta.config.schema import PARAMETERS, PATTERNS
from mta.config.settings import allClasses

ROOT = pathlib.Path(__file__).resolve().parents[2] / "mta"
CONFIG = ROOT / "config"
DECLARATIONS = {CONFIG / "schema.py", CONFIG / "docs.py", CONFIG / "types.py"}
SOURCES = {
    path: path.read_text(encoding="utf-8")
    for path in sorted(ROOT.rglob("*.py"))
    if path not in DECLARATIONS and (CONFIG / "settings") not in path.parents
}
DEFAULTS = " ".join(
    [p.default for p in PARAMETERS if isinstance(p.default, str)] + [default for _, _, default, _ in PATTERNS]
)
DECLARED = {name for cls in allClasses() for name in cls.parameters()}


def _quoted(name):
    return re.compile(r"""["']%s["']""" % re.escape(name))


def _prefixed(name):
    """smtp_helo_timeout is also read as f"{p}_{hello}_timeout": the first two words may be fields."""
    words = name.split("_")
    if len(words) < 3:
        return None
    field = r"\{[a-z_.]+\}"
    head = "_".join(f"(?:{re.escape(w)}|{field})" for w in words[:2])
    return re.compile(r"""f["']%s_%s["']""" % (head, re.escape("_".join(words[2:]))))


def readers(name):
    patterns = [p for p in (_quoted(name), _prefixed(name)) if p is not None]
    return [path for path, text in SOURCES.items() if any(p.search(text) for p in patterns)]


@pytest.mark.parametrize("parameter", PARAMETERS, ids=lambda p: p.name)
def test_every_parameter_has_a_consumer(parameter):
    if parameter.name in DECLARED or readers(parameter.name):
        return
    assert re.search(r"\$\{?%s\b" % re.escape(parameter.name), DEFAULTS), (
        f"{parameter.name}: no settings class declares it, nothing under mta/ reads it, "
        "and no other parameter's default uses it"
    )


def test_every_transport_family_has_a_consumer():
    declared = {p.pattern for cls in allClasses() for p in cls.patterns()}
    for pattern, _, _, _ in PATTERNS:
        assert pattern.pattern in declared or any(
            re.search(r"_destination_(concurrency|recipient)_limit", text) for text in SOURCES.values()
        ), pattern.pattern


ENUMERATED = [
    (parameter, value)
    for parameter in PARAMETERS
    if isinstance(parameter.type, (T.Choice, T.ChoiceList))
    for value in parameter.type.choices
]


def compiledWith(name, value):
    """Every settings object, [main] and listener, of a configuration that sets C{name} = C{value}."""
    config = load("<test>", f"[main]\n{name} = {value}\n")
    objects = dict(vars(config.settings))
    objects.update({f"listener.{k}": v for k, v in vars(config.listeners[0].settings).items()})
    return objects


@pytest.mark.parametrize("parameter, value", ENUMERATED, ids=lambda x: getattr(x, "name", x))
def test_every_enumerated_value_has_a_consumer(parameter, value):
    """
    Declared in a settings class: each value compiles to settings of its own
    (a value that means another is listed in the class's ALIASES, e.g.
    smtpd_forbid_bare_newline's yes for reject).  Not yet declared: the
    value appears as a string in the package of a module that reads it.
    """
    if parameter.name in DECLARED:
        aliases = {}
        for cls in allClasses():
            aliases.update(getattr(cls, "ALIASES", {}).get(parameter.name, {}))
        canonical = aliases.get(value, value)
        mine = compiledWith(parameter.name, value)
        for other in parameter.type.choices:
            if aliases.get(other, other) != canonical:
                assert compiledWith(parameter.name, other) != mine, (
                    f"{parameter.name}: {value} and {other} compile to the same settings"
                )
        return
    found = readers(parameter.name)
    assert found, f"{parameter.name}: no settings class declares it and nothing under mta/ reads it"
    packages = {path.parent for path in found}
    assert any(_quoted(value).search(text) for path, text in SOURCES.items() if path.parent in packages), (
        f"{parameter.name} = {value}: no module beside {', '.join(str(p.relative_to(ROOT.parent)) for p in found)} "
        "acts on this value"
    )
