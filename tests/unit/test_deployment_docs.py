"""The README's Quick start and Deployment sections and the files in etc/ agree
with each other and with the code: the two Quick start commands, the Python
version, the CI entry point, the unit's paths, the log rotation's path, and the
generator named in etc/mta.ini and the README."""

import configparser
import os
import re
import shlex

from mta.config import DEFAULT_CONFIG
from mta.config.docs import REGENERATE
from mta.config.loader import CONFIG_ENVIRONMENT

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def read(*path):
    with open(os.path.join(ROOT, *path), encoding="utf-8") as f:
        return f.read()


def section(title):
    """The text of the README section '## TITLE', up to the next '## '."""
    text = read("README.md")
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start:end if end >= 0 else None]


def codeBlocks(text):
    """The indented code blocks of C{text}, each as a list of lines."""
    blocks, current = [], []
    for line in text.splitlines():
        if line.startswith("    ") and line.strip():
            current.append(line.strip())
        elif current and not line.strip():
            continue
        elif current:
            blocks.append(current)
            current = []
    if current:
        blocks.append(current)
    return blocks


def test_quickStartIsTheTwoCommands():
    quick = section("Quick start")
    blocks = codeBlocks(quick)
    assert blocks[0] == ["pip install . && twistd -n mta", "scripts/test"]
    assert "Python 3.11 or later" in quick
    assert "externally-managed-environment" in quick and "PEP 668" in quick
    assert ["python3 -m venv ~/mta-venv && . ~/mta-venv/bin/activate"] in blocks


def test_pythonVersionAgreesWithSetupCfg():
    setup = configparser.ConfigParser()
    setup.read(os.path.join(ROOT, "setup.cfg"))
    assert setup["options"]["python_requires"] == ">=3.11"
    assert setup["options"]["package_dir"].split() == ["=", "."]  # the editable install's plugin path


def test_ciRunsTheReadmesTestCommand():
    assert read(".ci", "run").rstrip().splitlines()[-1] == "exec scripts/test -q"
    assert os.access(os.path.join(ROOT, "scripts", "test"), os.X_OK)
    peers = re.search(r"^peers=\((.*)\)$", read("scripts", "test"), re.M).group(1).split()
    quick = " ".join(section("Quick start").split())
    for peer in peers:
        assert f"`{peer}`" in quick, peer


def test_theConfigurationLookupIsDocumented():
    running = " ".join(section("Running").split())
    assert f"`{CONFIG_ENVIRONMENT}`" in running and f"`{DEFAULT_CONFIG}`" in running
    assert "`mta-config --which`" in running


def test_deploymentNamesTheShippedFiles():
    deployment = " ".join(section("Deployment").split())
    assert "`cp etc/mta.service /etc/systemd/system/" in deployment
    assert "`cp etc/mta.logrotate /etc/logrotate.d/mta`" in deployment
    unit = read("etc", "mta.service")
    [execStart] = re.findall(r"^ExecStart=(.*)$", unit, re.M)
    argv = shlex.split(execStart)
    assert f"`{execStart}`" in deployment
    assert argv[0] == "/opt/mta/bin/twistd" and "`python3 -m venv /opt/mta" in deployment
    [environment] = re.findall(r"^Environment=(.*)$", unit, re.M)
    assert environment == f"{CONFIG_ENVIRONMENT}={DEFAULT_CONFIG}" and f"`Environment={environment}`" in deployment
    for line in ("User=mta", "Group=mta", "AmbientCapabilities=CAP_NET_BIND_SERVICE"):
        assert re.search(rf"^{line}$", unit, re.M) and f"`{line}`" in deployment
    logrotate = read("etc", "mta.logrotate")
    [rotated] = re.findall(r"^(/\S+) \{$", logrotate, re.M)
    assert rotated == "/var/log/mta/maillog" and f"`maillog_file = {rotated}`" in deployment
    assert "copytruncate" in logrotate and "copytruncate" in deployment


def test_theGeneratorIsNamedTheSameEverywhere():
    """etc/mta.ini and the README name the one generator, scripts/gen-docs, which exists."""
    assert REGENERATE == "scripts/gen-docs"
    assert os.access(os.path.join(ROOT, REGENERATE), os.X_OK)
    ini = read("etc", "mta.ini")
    assert f"`{REGENERATE}`" in ini.split("\n\n", 1)[0]  # in the header comment
    assert f"by `{REGENERATE}`" in section("Parameters")
    everything = read("README.md") + ini
    named = set(re.findall(r"scripts/[\w.-]+", everything))
    assert named <= {"scripts/gen-docs", "scripts/test"}, named
