"""Installing mta: `pip install .` and `pip install -e .` into a fresh virtual
environment, and twistd finding the mta plugin in both.

twisted/plugins is a namespace shared with Twisted: twistd finds plugins by
scanning twisted.plugins.__path__, which Twisted extends with the
twisted/plugins directory of every sys.path entry.  A normal install copies
twisted/plugins/mta_plugin.py into site-packages/twisted/plugins/; an editable
install must put the checkout itself on sys.path (setup.cfg's package_dir makes
setuptools do that with a .pth file), else twistd does not know "mta".

Each test installs a copy of this checkout with one more plugin module beside
mta_plugin.py, offering a ServiceMaker under a name no other installation has:
twistd listing that name proves that it scanned this installation's
twisted/plugins, and not only the one of an mta already installed on the machine
(scripts/test installs one, and the virtual environment sees it because it
sees every package of the Python running the tests, which spares downloading
Twisted).  That installed
mta_plugin.py, in Twisted's own plugin directory, comes first on
twisted.plugins.__path__ and so shadows a module of the same name elsewhere;
that is why the probe has a name of its own, and why the test checks that the
directory holding this installation's mta_plugin.py is on the path.  pip builds
the package as the README's commands do (in an isolated build environment,
with setuptools from the package index).
"""

import os
import shutil
import subprocess
import sys
import uuid

import pytest

from tests.integration.daemon import ROOT, TWISTD

pytestmark = [pytest.mark.integration, pytest.mark.slow]

IGNORED = shutil.ignore_patterns(".git", "__pycache__", "*.pyc", "*.egg-info", "build", "dist", "var",
                                 ".venv", "venv", "dropin.cache", ".pytest_cache")


def checkoutCopy(tmp_path):
    """A copy of the checkout with a plugin module that offers twistd PROBE; (path, probe)."""
    copy = tmp_path / "checkout"
    shutil.copytree(ROOT, copy, ignore=IGNORED)
    probe = "mtaprobe" + uuid.uuid4().hex[:8]
    (copy / "twisted" / "plugins" / f"{probe}.py").write_text(
        "from twisted.application.service import ServiceMaker\n\n"
        f'probe = ServiceMaker("{probe}", "mta.tap", "probe of this installation", "{probe}")\n')
    return copy, probe


def environment():
    """The environment without anything that would put a checkout on sys.path."""
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    env.pop("MTA_CONFIG", None)
    return env


def makeVenv(venv):
    """
    A virtual environment that also sees the packages of the Python running
    the tests.  Not --system-site-packages: when the tests run in a virtual
    environment themselves (as the README advises where pip refuses to install
    into the system Python), that would give the base Python's packages, without
    Twisted; a .pth file naming this Python's site directories gives them all.
    """
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    python = str(venv / "bin" / "python")
    done = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True, timeout=60)
    sites = [p for p in sys.path if os.path.basename(p) in ("site-packages", "dist-packages") and os.path.isdir(p)]
    with open(os.path.join(done.stdout.strip(), "tests-parent.pth"), "w") as f:
        f.write("".join(p + "\n" for p in sites))
    return python


def install(tmp_path, editable):
    copy, probe = checkoutCopy(tmp_path)
    python = makeVenv(tmp_path / "venv")
    done = subprocess.run([python, "-m", "pip", "install", "-q", "--disable-pip-version-check",
                           *(["-e"] if editable else []), str(copy)],
                          cwd=tmp_path, env=environment(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    return copy, probe, python


def run(python, *args, cwd):
    return subprocess.run([python, *args], cwd=cwd, env=environment(), capture_output=True, text=True, timeout=120)


def twistdSeesThePlugin(python, probe, cwd):
    helped = run(python, "-c", TWISTD, "--help", cwd=cwd)
    assert helped.returncode == 0, helped.stderr
    commands = helped.stdout.split("Commands:", 1)[1]
    assert f"{probe}" in commands and "probe of this installation" in commands, helped.stdout
    assert "A mail transfer agent modelled on Postfix." in commands
    for name in ("mta", probe):
        helped = run(python, "-c", TWISTD, name, "--help", cwd=cwd)
        assert helped.returncode == 0, helped.stderr
        assert helped.stdout.startswith(f"Usage: twistd [options] {name} [-c FILE]\n"), helped.stdout
        assert "--config=" in helped.stdout


def where(python, module, cwd):
    done = run(python, "-c", f"import {module}; print({module}.__file__)", cwd=cwd)
    assert done.returncode == 0, done.stderr
    return os.path.realpath(done.stdout.strip())


def pluginPath(python, cwd):
    """twisted.plugins.__path__ in the environment, as real paths."""
    done = run(python, "-c", "import os, twisted.plugins as p; print('\\n'.join(map(os.path.realpath, p.__path__)))",
               cwd=cwd)
    assert done.returncode == 0, done.stderr
    return done.stdout.split()


def test_editableInstall(tmp_path):
    """pip install -e: the code and the plugin module are the checkout's own files."""
    copy, probe, python = install(tmp_path, editable=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    twistdSeesThePlugin(python, probe, elsewhere)
    assert where(python, "mta", elsewhere) == os.path.realpath(copy / "mta" / "__init__.py")
    plugins = os.path.realpath(copy / "twisted" / "plugins")
    assert plugins in pluginPath(python, elsewhere) and os.path.isfile(os.path.join(plugins, "mta_plugin.py"))
    # An edit in the checkout is live: that is what the editable install is for.
    module = copy / "twisted" / "plugins" / f"{probe}.py"
    module.write_text(module.read_text().replace("probe of this", "edited probe of this"))
    assert "edited probe of this installation" in run(python, "-c", TWISTD, "--help", cwd=elsewhere).stdout
    assert (tmp_path / "venv" / "bin" / "mta-sendmail").exists()


def test_normalInstall(tmp_path):
    """pip install .: the plugin module is copied into the environment's twisted/plugins."""
    copy, probe, python = install(tmp_path, editable=False)
    shutil.rmtree(copy)  # an installed package needs no checkout
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    twistdSeesThePlugin(python, probe, elsewhere)
    site = os.path.realpath(tmp_path / "venv")
    assert where(python, "mta", elsewhere).startswith(site + os.sep)
    [plugins] = [p for p in pluginPath(python, elsewhere) if p.startswith(site + os.sep)]
    assert os.path.isfile(os.path.join(plugins, "mta_plugin.py"))
    for script in ("mta-config", "mta-queue", "mta-sendmail"):
        assert (tmp_path / "venv" / "bin" / script).exists()
    done = run(str(tmp_path / "venv" / "bin" / "mta-config"), "-d", "message_size_limit", cwd=elsewhere)
    assert (done.returncode, done.stdout) == (0, "message_size_limit = 10240000\n")
    # The Deployment's links: the installed script run as "mailq" is sendmail -bp (mta-queue list),
    # which here reports the queue that its configuration names and that does not exist.
    os.symlink(tmp_path / "venv" / "bin" / "mta-sendmail", elsewhere / "mailq")
    (tmp_path / "mta.ini").write_text(f"[main]\nqueue_directory = {tmp_path}/nosuch\n")
    done = subprocess.run([str(elsewhere / "mailq")], cwd=elsewhere,
                          env={**environment(), "MTA_CONFIG": str(tmp_path / "mta.ini")},
                          capture_output=True, text=True, timeout=120)
    assert (done.returncode, done.stdout) == (1, ""), done
    assert done.stderr == (f"mta-queue: no queue directory {tmp_path}/nosuch "
                           f"(configuration: {tmp_path}/mta.ini (from $MTA_CONFIG))\n")
