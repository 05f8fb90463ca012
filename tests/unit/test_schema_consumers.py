"""Every parameter in the schema, and every value of an enumerated one, has a consumer.

A parameter that nothing reads promises more than the code does; so does a
value of an enumerated parameter (a Choice or ChoiceList) that no code
compares against.  The check is static: the consumer is a module under mta/
(the schema and the doc generator excepted) that names the parameter as a
string, or as an f-string whose first two words may be fields (the client
reads smtp_helo_timeout as ``f"{p}_{hello}_timeout"``); a parameter may also be consumed through another
parameter's default (``$mydomain`` in mydestination's).  For an enumerated
parameter, each of its values must appear as a string in a module of the
package of a module that reads the parameter.
"""

import pathlib
import re

import pytest

from mta.config import types as T
from mta.config.schema import PARAMETERS, PATTERNS

ROOT = pathlib.Path(__file__).resolve().parents[2] / "mta"
SKIP = {ROOT / "config" / "schema.py", ROOT / "config" / "docs.py"}
SOURCES = {path: path.read_text(encoding="utf-8") for path in sorted(ROOT.rglob("*.py")) if path not in SKIP}
DEFAULTS = " ".join(
    [p.default for p in PARAMETERS if isinstance(p.default, str)] + [default for _, _, default, _ in PATTERNS]
)


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


def consumers(name):
    patterns = [p for p in (_quoted(name), _prefixed(name)) if p is not None]
    return [path for path, text in SOURCES.items() if any(p.search(text) for p in patterns)]


@pytest.mark.parametrize("parameter", PARAMETERS, ids=lambda p: p.name)
def test_every_parameter_has_a_consumer(parameter):
    if consumers(parameter.name):
        return
    assert re.search(r"\$\{?%s\b" % re.escape(parameter.name), DEFAULTS), (
        f"{parameter.name}: no module under mta/ reads it, and no other parameter's default uses it"
    )


ENUMERATED = [
    (parameter, value)
    for parameter in PARAMETERS
    if isinstance(parameter.type, (T.Choice, T.ChoiceList))
    for value in parameter.type.choices
]


@pytest.mark.parametrize("parameter, value", ENUMERATED, ids=lambda x: getattr(x, "name", x))
def test_every_enumerated_value_has_a_consumer(parameter, value):
    readers = consumers(parameter.name)
    assert readers, f"{parameter.name}: no module under mta/ reads it"
    # The value is acted on by a reader, or by a module of a reader's package.
    packages = {path.parent for path in readers}
    near = [path for path in SOURCES if path.parent in packages]
    assert any(_quoted(value).search(SOURCES[path]) for path in near), (
        f"{parameter.name} = {value}: no module beside {', '.join(str(p.relative_to(ROOT.parent)) for p in readers)} "
        f"acts on this value"
    )
