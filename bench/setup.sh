#!/bin/sh
# Install what bench/run.py needs, idempotently: Debian's postfix package,
# which brings the postfix daemons and the smtp-source / smtp-sink load tools
# (/usr/sbin/smtp-source, /usr/sbin/smtp-sink on Debian); and matplotlib,
# for the plot that bench/growth.py draws (with the Python that runs the
# benchmarks: $PYTHON, default python3; from PyPI with its pip).
#
# - Installs only what is missing; runs `apt-get update` only when the first
#   install attempt fails (stale or missing package lists).
# - Waits up to 10 minutes for another apt/dpkg run to release its locks.
# - On a fresh install, preseeds "No configuration": the system Postfix is
#   not needed (the benchmark runs its own private instance). Whatever the
#   package did, the system Postfix daemon is not left running on port 25.
#
# Usage: sudo sh bench/setup.sh        (run as root)
set -eu

export DEBIAN_FRONTEND=noninteractive
APT_OPTS="-y -q --no-install-recommends -o DPkg::Lock::Timeout=600"

say() { echo "bench/setup.sh: $*"; }

if [ "$(id -u)" -ne 0 ]; then
    say "must run as root (apt-get, and run.py starts a Postfix master)" >&2
    exit 1
fi

find_tool() {
    for d in /usr/sbin /usr/bin /usr/lib/postfix/sbin /usr/libexec/postfix; do
        if [ -x "$d/$1" ]; then echo "$d/$1"; return 0; fi
    done
    return 1
}

have_all() {
    find_tool postfix >/dev/null && find_tool postqueue >/dev/null &&
        find_tool smtp-source >/dev/null && find_tool smtp-sink >/dev/null &&
        id postfix >/dev/null 2>&1
}

if have_all; then
    say "postfix already installed"
else
    if ! dpkg-query -W -f='${Status}' postfix 2>/dev/null | grep -q "install ok installed"; then
        # Fresh install: no system mail configuration, so nothing to start.
        echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
        echo "postfix postfix/mailname string localhost" | debconf-set-selections
    fi
    say "installing postfix"
    # shellcheck disable=SC2086
    if ! apt-get install $APT_OPTS postfix; then
        say "install failed; updating the package lists and trying again"
        apt-get update -q -o DPkg::Lock::Timeout=600
        # shellcheck disable=SC2086
        apt-get install $APT_OPTS postfix
    fi
fi

# Never leave the system Postfix running (it would hold port 25 and compete
# for the CPU and the disk).  Only the default instance is touched here.
if postfix status >/dev/null 2>&1; then
    say "stopping the system Postfix daemon"
    postfix stop || true
fi
if [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
    systemctl stop postfix.service >/dev/null 2>&1 || true
fi

# bench/policy.py's peers: Postfix's pgsql: map type, and the private dnsmasq,
# postgrey and PostgreSQL it starts (never the system services: stopped if a
# package started them).
POLICY_PKGS=""
for p in postfix-pgsql dnsmasq postgrey postgresql; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || POLICY_PKGS="$POLICY_PKGS $p"
done
if [ -n "$POLICY_PKGS" ]; then
    say "installing$POLICY_PKGS (bench/policy.py)"
    # shellcheck disable=SC2086
    if ! apt-get install $APT_OPTS $POLICY_PKGS; then
        apt-get update -q -o DPkg::Lock::Timeout=600
        # shellcheck disable=SC2086
        apt-get install $APT_OPTS $POLICY_PKGS
    fi
    if [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
        for s in dnsmasq postgrey postgresql; do systemctl stop "$s.service" >/dev/null 2>&1 || true; done
    fi
else
    say "postfix-pgsql, dnsmasq, postgrey and postgresql already installed"
fi

# bench/growth.py draws its PNG with matplotlib (the Agg backend: no display).
PYTHON=${PYTHON:-python3}
if "$PYTHON" -c "import matplotlib" 2>/dev/null; then
    say "matplotlib already installed"
else
    say "installing matplotlib for $PYTHON (bench/growth.py's plot)"
    "$PYTHON" -m pip install -q "matplotlib>=3.5"
fi

if ! have_all; then
    say "postfix, postqueue, smtp-source or smtp-sink still missing" >&2
    exit 1
fi
say "postfix $(postconf -h mail_version 2>/dev/null || echo '?'):" \
    "$(find_tool smtp-source), $(find_tool smtp-sink)"
