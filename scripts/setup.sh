#!/usr/bin/env bash
# Install personafleet into .venv/ at the repository root, and check (or, as root with apt,
# install) the system prerequisites: Java 17 for TorchServe, espeak-ng for the embedded speech
# model, PostgreSQL 15 and Prometheus (unpacked into .venv/prometheus) for the tests.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null || PYTHON=python3
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
    echo "setup: Python 3.11 is required (found $("$PYTHON" --version 2>&1)); install python3.11 and re-run" >&2
    exit 1
fi

apt_install() {
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "setup: installing $* with apt-get"
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
    else
        echo "setup: missing $*; install it (Debian/Ubuntu: sudo apt-get install $*) and re-run" >&2
        exit 1
    fi
}

java_major() { java -version 2>&1 | sed -n 's/.*version "\([0-9]*\).*/\1/p' | head -n1; }
if ! command -v java >/dev/null || [ "$(java_major)" -lt 17 ]; then
    apt_install openjdk-17-jre-headless
fi

# espeak-ng reads Russian sentences aloud for `persona init-asr` (the embedded speech model).
if ! command -v espeak-ng >/dev/null; then
    apt_install espeak-ng
fi

if [ "${PERSONA_WITH_POSTGRES:-0}" = 1 ] && [ ! -x /usr/lib/postgresql/15/bin/initdb ]; then
    apt_install postgresql-15
fi

if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
# torch is pinned in pyproject.toml (torch==2.13.0, the CPU build on this kind of machine);
# installing it first in its own command keeps pip from ever resolving a CUDA build.
.venv/bin/python -m pip install -q "torch==2.13.0"
# setuptools reports every editable install as a warning ("Editable installation.": information
# only); filtered by its message so that a fresh set-up prints no warning line.
PYTHONWARNINGS="ignore:Editable installation" .venv/bin/python -m pip install -q -e ".[test]"
# The tests run a real Prometheus and promtool (dashboards, alert rules). Debian's package is
# unpacked into .venv/prometheus rather than installed: installing it starts a system daemon on
# 0.0.0.0:9090. Any Linux user can do this (apt-get download needs no root, only package lists).
if [ "${PERSONA_WITH_POSTGRES:-0}" = 1 ] && ! command -v prometheus >/dev/null \
        && [ ! -x .venv/prometheus/usr/bin/promtool ]; then
    echo "setup: unpacking Debian's prometheus package into .venv/prometheus"
    deb_dir=$(mktemp -d)
    if ! (cd "$deb_dir" && apt-get download prometheus >/dev/null 2>&1); then
        if [ "$(id -u)" = 0 ]; then apt-get update -qq; fi
        (cd "$deb_dir" && apt-get download prometheus >/dev/null) || {
            echo "setup: cannot fetch Debian's prometheus package; install prometheus (>= 2.42) so that" \
                 "prometheus and promtool are on PATH, and re-run" >&2; exit 1; }
    fi
    dpkg-deb -x "$deb_dir"/prometheus_*.deb .venv/prometheus
    rm -rf "$deb_dir"
fi
echo "setup: .venv ready ($(.venv/bin/persona --help >/dev/null && echo 'persona CLI ok'))"
