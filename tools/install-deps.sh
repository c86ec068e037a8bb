#!/usr/bin/env bash
# Installs what Lockstep's demo and tests need on a Debian machine: Debian packages (as root) and the Python
# package with its test extras. Idempotent; `make` runs it once per change of pyproject.toml or this file.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}

apt_packages=(prometheus prometheus-alertmanager prometheus-node-exporter iproute2 iptables gcc g++ ninja-build make)
missing=()
for p in "${apt_packages[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" -eq 0 ]; then
    echo "installing Debian packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "${missing[@]}" >/dev/null
  else
    echo "missing Debian packages: ${missing[*]} — install them as root: apt-get install ${missing[*]}" >&2
    exit 1
  fi
fi
# The Debian packages start services on the default ports; the demo and tests run their own instances.
if [ "$(id -u)" -eq 0 ]; then
  for s in prometheus prometheus-alertmanager prometheus-node-exporter; do
    systemctl stop "$s" >/dev/null 2>&1 || service "$s" stop >/dev/null 2>&1 || true
  done
fi

echo "installing lockstep with its test extras (pip; torch 2.13.0 CPU build)"
"$PYTHON" -m pip install -q --disable-pip-version-check -e '.[test]'
# The probe's compiled all-reduce kernel, against the torch just installed (agent/probe/compiled.py; into
# $LOCKSTEP_PROBE_KERNEL_DIR, default ~/.cache/lockstep/probe-kernel): the tests and benchmarks use it.
"$PYTHON" -m agent.probe.compiled --build
