"""The import graph of mta/: no circle between modules, and no import from a lower floor to a higher one.

The floors come from the design's Layout (/work/shared/design.md, the
README's Design section), lowest first:

    0  mta.config                 INI loading, schema, typed settings: imports nothing of
                                  mta but itself (and the root package, which only holds
                                  __version__)
    1  mta.address, mta.model,    value types, path parsing, plugin interfaces, mail-log
       mta.interfaces,            lines; and the mta.plugins package itself (the namespace
       mta.maillog, mta.plugins   that getPlugins searches; its plugin modules are floor 5)
    2  mta.tables                 lookup tables and the list matchers
    3  mta.routing, mta.rewrite,  trivial-rewrite: the address resolver and router, address
       mta.addrlist               rewriting and header address lists
    4  mta.smtpd, mta.queue,      the services and what they share
       mta.delivery, mta.cleanup,
       mta.bounce, mta.transcript,
       mta.tls, mta.verify
    5  mta.generation, mta.service, mta.listeners, mta.tap, mta.control, mta.cli,
       mta.workers, mta.testing,  the daemon and its worker processes, the tools, the
       mta.plugins.*              plugin modules, the fakes

A module may import from its own floor or any floor below.  Every import
counts, at module level or inside a function (a lazy import is still a
dependency), except that a package's __init__ may import its own
submodules: a package contains them (a registry such as
mta.config.settings, re-exports such as mta.config), and Python imports a
package before any of its submodules anyway.  A module that the table
below does not place fails the test: give it a floor here.
"""

import ast
import functools
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "mta"

# Most specific prefix wins; "mta.plugins" alone is the package, "mta.plugins." its modules.
FLOORS = {
    "mta": 0,
    "mta.config": 0,
    "mta.address": 1,
    "mta.model": 1,
    "mta.interfaces": 1,
    "mta.maillog": 1,
    "mta.tlskeys": 1,
    "mta.plugins": 1,
    "mta.tables": 2,
    "mta.routing": 3,
    "mta.rewrite": 3,
    "mta.addrlist": 3,
    "mta.sasl": 3,
    "mta.smtpd": 4,
    "mta.queue": 4,
    "mta.delivery": 4,
    "mta.cleanup": 4,
    "mta.bounce": 4,
    "mta.transcript": 4,
    "mta.tls": 4,
    "mta.verify": 4,
    "mta.generation": 5,
    "mta.service": 5,
    "mta.listeners": 5,
    "mta.tap": 5,
    "mta.control": 5,
    "mta.workers": 5,
    "mta.cli": 5,
    "mta.testing": 5,
    "mta.plugins.": 5,
}


def modules():
    """Module name -> (path, is a package __init__)."""
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        isPackage = parts[-1] == "__init__"
        if isPackage:
            parts.pop()
        found[".".join(parts)] = (path, isPackage)
    return found


MODULES = modules()


def _known(name):
    """The module C{name} names (itself, or the nearest enclosing module or package)."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def importsOf(name):
    """[(imported module, line)] of module C{name}: every import of mta, at any depth of the code."""
    path, isPackage = MODULES[name]
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    package = name if isPackage else name.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            # "from mta.queue import tools" imports the module mta.queue.tools.
            targets = [f"{module}.{alias.name}" if f"{module}.{alias.name}" in MODULES else module
                       for alias in node.names]
        else:
            continue
        for target in targets:
            if target != "mta" and not target.startswith("mta."):
                continue
            known = _known(target)
            if known is not None and known != name:
                found.append((known, node.lineno))
    return found


def containment(source, target):
    """Is this the import of a package's own submodule by the package's __init__?"""
    return MODULES[source][1] and target.startswith(source + ".")


@functools.lru_cache(maxsize=None)
def graph():
    """Module -> {imported module: first line}, containment imports left out."""
    edges = {}
    for name in MODULES:
        edges[name] = {}
        for target, line in importsOf(name):
            if not containment(name, target):
                edges[name].setdefault(target, line)
    return edges


def floor(name):
    best = None
    for prefix, level in FLOORS.items():
        if prefix.endswith("."):
            matches = name.startswith(prefix)
        else:
            matches = name == prefix or name.startswith(prefix + ".")
        if matches and (best is None or len(prefix) > len(best[0])):
            best = (prefix, level)
    return None if best is None else best[1]


def cycles(edges):
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index, low, stack, onStack, found = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        onStack.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in onStack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                onStack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return sorted(found)


def test_every_module_has_a_floor():
    unplaced = [name for name in MODULES if floor(name) is None]
    assert unplaced == [], f"give these modules a floor in tests/unit/test_layers.py FLOORS: {unplaced}"


def test_no_import_circle():
    found = cycles(graph())
    assert found == [], "import circles (each a set of modules that import each other): " + "; ".join(
        " <-> ".join(c) for c in found
    )


def test_no_import_from_a_lower_floor_to_a_higher_one():
    edges = graph()
    upward = []
    for source, targets in sorted(edges.items()):
        for target, line in sorted(targets.items()):
            if floor(target) is not None and floor(source) is not None and floor(target) > floor(source):
                upward.append(f"{MODULES[source][0].relative_to(ROOT)}:{line}: {source} (floor {floor(source)}) "
                              f"imports {target} (floor {floor(target)})")
    assert upward == [], "upward imports:\n" + "\n".join(upward)


def test_the_configuration_imports_nothing_of_mta_but_itself():
    outside = []
    for source, targets in sorted(graph().items()):
        if source == "mta.config" or source.startswith("mta.config."):
            outside += [f"{source} imports {t}" for t in targets if t != "mta.config" and not t.startswith("mta.config.")]
    assert outside == []


# -- the checker itself ------------------------------------------------------------------------


def test_the_checker_sees_lazy_and_from_imports():
    """importsOf reads imports inside functions and 'from package import module'; containment is left out."""
    assert any(t == "mta.plugins" for t, _ in importsOf("mta.tables"))  # tableFactories() imports it lazily
    assert any(t == "mta.queue.tools" for t, _ in importsOf("mta.queue.manager"))  # from mta.queue import tools
    assert not any(t == "mta.config.settings.routing" for t in graph()["mta.config.settings"])  # containment


def test_the_checker_finds_a_circle_and_an_upward_import():
    edges = {"a": {"b": 1}, "b": {"c": 1}, "c": {"a": 1}, "d": {"a": 1}}
    assert cycles(edges) == [["a", "b", "c"]]
    assert floor("mta.config.settings.routing") == 0
    assert floor("mta.plugins") == 1 and floor("mta.plugins.mta_tables") == 5
    assert floor("mta.queue.manager") == 4 > floor("mta.routing") == 3 > floor("mta.tables") == 2
