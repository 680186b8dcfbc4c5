#!/usr/bin/env bash
# Runs the whole test suite against real local services: brings them up with
# services.sh, removes what killed test runs left behind (databases and
# roles ttsq_test_*, templates ttsq_template_* but the newest, RabbitMQ
# queues ttsq-test-* and idle ttsq-bench-*, buckets ttsq-test-* of the local
# S3 server), then runs
# every test of the workspace. Extra arguments go to `cargo nextest run` (or
# `cargo test` where nextest is missing), e.g. `deploy/local/test.sh -p ttsq-store`.
#
# The tests read:
#   TTSQ_TEST_DATABASE_URL  admin URL; each test creates its own database, a
#                           clone of a template this role migrated and owns
#                           (crates/ttsq-test-db), and its own service
#                           role (LOGIN, granted as `ttsq migrate --grant-to`
#                           grants), which the test's stack connects as
#   TTSQ_TEST_AMQP_URL      RabbitMQ; each test uses its own queue prefix
#   TTSQ_S3_ENDPOINT, TTSQ_S3_ACCESS_KEY_ID, TTSQ_S3_SECRET_ACCESS_KEY
#   TTSQ_TEST_PYTHON        a python with `openai`, `schemathesis`,
#                           `standardwebhooks`, `httpx`, `pytest`,
#                           `pytest-asyncio` and the SDK of clients/python
#                           (made here)
#   TTSQ_TEST_CHROMIUM      a Chromium binary (Debian's `chromium`, installed
#                           here when missing)
# all defaulting to the local services; values already set are kept.
#
# TTSQ_TEST_NO_CLEANUP=1 skips the removal of leftovers: the removal drops
# every ttsq_test_* database and role, including those of a test run going on
# right now in another terminal.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$HERE/../.." && pwd)"
cd "$REPO_ROOT"

say() { printf '==> %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

as_root() {
    if [[ $EUID -eq 0 ]]; then
        "$@"
    elif command -v sudo >/dev/null; then
        sudo "$@"
    else
        die "need root for: $* (run as root or install sudo)"
    fi
}

"$HERE/services.sh"
export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"

: "${TTSQ_TEST_DATABASE_URL:=postgres://postgres@127.0.0.1:5432/postgres}"
: "${TTSQ_TEST_AMQP_URL:=amqp://guest:guest@127.0.0.1:5672/%2f}"
: "${TTSQ_S3_ENDPOINT:=http://127.0.0.1:8014}"
: "${TTSQ_S3_ACCESS_KEY_ID:=ttsq}"
: "${TTSQ_S3_SECRET_ACCESS_KEY:=ttsq-local-secret}"
export TTSQ_TEST_DATABASE_URL TTSQ_TEST_AMQP_URL TTSQ_S3_ENDPOINT TTSQ_S3_ACCESS_KEY_ID TTSQ_S3_SECRET_ACCESS_KEY

# --- leftovers of earlier runs ----------------------------------------------

# Runs the statements after `list` (SQL with `%s` for the quoted name), one
# after the other, for each name `list` (SQL) returns; `what` names them in
# messages.
drop_each() {
    local what="$1" list="$2"
    shift 2
    local psql=(psql -w -X -q -h 127.0.0.1 -p 5432 -U postgres -d postgres -v ON_ERROR_STOP=1 -At)
    local names name drop statements
    names="$("${psql[@]}" -c "$list")"
    [[ -n "$names" ]] || return 0
    say "dropping $(wc -l <<<"$names") leftover test $what(s)…"
    while IFS= read -r name; do
        statements=()
        for drop in "$@"; do
            # shellcheck disable=SC2059 # the statement is the format
            statements+=(-c "$(printf "$drop" "\"$name\"")")
        done
        "${psql[@]}" "${statements[@]}" </dev/null ||
            say "could not drop $what $name (continuing)"
    done <<<"$names"
}

drop_test_databases() {
    drop_each database "select datname from pg_database where datname like 'ttsq\_test\_%'" \
        "drop database if exists %s with (force)"
}

# The migrated templates the test databases are cloned from
# (ttsq_template_<hash of the migrations>, see crates/ttsq-test-db): all but
# the newest, which is most likely the current migrations' and saves the
# next run migrating it again. A changed migration gets a template of its
# own, and the one it replaces goes at the run after. A template must be
# unmarked before it can be dropped.
drop_old_templates() {
    drop_each template "select datname from pg_database where datname like 'ttsq\_template\_%' order by oid desc offset 1" \
        "alter database %s is_template false" "drop database if exists %s with (force)"
}

# Each test's service role; roles are cluster-wide, so they outlive the
# databases. Dropped after those, which held their privileges.
drop_test_roles() {
    drop_each role "select rolname from pg_roles where rolname like 'ttsq\_test\_%'" \
        "drop role if exists %s"
}

# Test queues, and the queues of benchmark runs that were killed (those no
# process consumes from). Every quorum queue holds a few of the broker's file
# descriptors, which are few (about 900 where the broker runs with the
# default limit of 1024 open files): left to pile up over runs, they end up
# keeping the broker from accepting connections.
delete_test_queues() {
    local queues queue
    queues="$(as_root rabbitmqctl -q list_queues --no-table-headers name consumers |
        awk '$1 ~ /^ttsq-test-/ || ($1 ~ /^ttsq-bench-/ && $2 == 0) { print $1 }' || true)"
    [[ -n "$queues" ]] || return 0
    say "deleting $(wc -l <<<"$queues") leftover test queue(s)…"
    while IFS= read -r queue; do
        # </dev/null: rabbitmqctl would otherwise eat the rest of the list.
        as_root rabbitmqctl -q delete_queue "$queue" </dev/null >/dev/null ||
            say "could not delete queue $queue (continuing)"
    done <<<"$queues"
}

# Each test has its own bucket (ttsq-test-<id>) on the local S3 server,
# which keeps a bucket as a folder of its data directory, and each object's
# metadata in files `.bucket-<base64 of the bucket>.object-…` beside them,
# which it leaves there when the object is deleted ("ttsq-test" is
# dHRzcS10ZXN0 in base64).
delete_test_buckets() {
    local data="${TTSQ_HOME:-$REPO_ROOT/.ttsq}/s3"
    compgen -G "$data/ttsq-test-*" >/dev/null || compgen -G "$data/.bucket-dHRzcS10ZXN0*" >/dev/null ||
        return 0
    say "deleting leftover test buckets…"
    rm -rf "$data"/ttsq-test-* "$data"/.bucket-dHRzcS10ZXN0*
}

if [[ "${TTSQ_TEST_NO_CLEANUP:-}" == 1 ]]; then
    say "TTSQ_TEST_NO_CLEANUP=1: keeping leftover test databases, queues and buckets"
else
    drop_test_databases
    drop_old_templates
    drop_test_roles
    delete_test_queues
    delete_test_buckets
fi

# --- Python tools of the client tests ------------------------------------------
# crates/ttsq/tests/it/clients.rs drives the API with the official `openai` SDK
# and fuzzes it with schemathesis; crates/ttsq/tests/it/webhooks.rs verifies
# real deliveries with the Standard Webhooks reference library
# (`standardwebhooks`, pinned: a test of interoperability should not move
# under it); crates/ttsq/tests/it/python_sdk.rs runs the Python SDK's pytest
# suite (httpx, pytest, pytest-asyncio) against a live stack. All from PyPI,
# in a venv made once (again when a pin changes), with the SDK of
# clients/python installed editable (again when its pyproject.toml changes).

STANDARDWEBHOOKS_VERSION=1.1.0
PYTOOLS=('openai>=1,<4' 'schemathesis>=4,<5' "standardwebhooks==$STANDARDWEBHOOKS_VERSION"
    'httpx>=0.27,<1' 'pytest>=8,<9' 'pytest-asyncio>=0.24,<2')

setup_pytools() {
    local venv="${TTSQ_HOME:-$REPO_ROOT/.ttsq}/pytools"
    if ! "$venv/bin/python" -c "import openai, schemathesis, httpx, pytest, pytest_asyncio, importlib.metadata as m
assert m.version('standardwebhooks') == '$STANDARDWEBHOOKS_VERSION'" 2>/dev/null; then
        say "installing ${PYTOOLS[*]} into $venv (PyPI)…"
        rm -rf "$venv"
        mkdir -p "$(dirname "$venv")"
        if ! python3 -m venv "$venv" 2>/dev/null; then
            # Debian's python3 ships venv (with ensurepip) as a separate package.
            rm -rf "$venv"
            as_root apt-get update -qq &&
                as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
                    python3 python3-venv >/dev/null &&
                python3 -m venv "$venv" || die "cannot make a Python venv (install python3 and python3-venv)"
        fi
        "$venv/bin/python" -m pip install -q --disable-pip-version-check "${PYTOOLS[@]}" ||
            die "pip could not install ${PYTOOLS[*]}"
    fi
    # The SDK, editable: its sources are read from the tree, so only a
    # changed pyproject.toml (dependencies, metadata) needs a new install.
    local sdk="$REPO_ROOT/clients/python" stamp="$venv/ttsq-sdk.pyproject.sha256" want
    want="$(sha256sum "$sdk/pyproject.toml" | cut -d' ' -f1)"
    if [[ "$(cat "$stamp" 2>/dev/null)" != "$want" ]] || ! "$venv/bin/python" -c "import ttsq" 2>/dev/null; then
        say "installing the Python SDK (clients/python) into $venv…"
        "$venv/bin/python" -m pip install -q --disable-pip-version-check -e "$sdk" ||
            die "pip could not install clients/python"
        printf '%s\n' "$want" >"$stamp"
    fi
    export TTSQ_TEST_PYTHON="$venv/bin/python"
}
setup_pytools

# --- a browser for the reference page ----------------------------------------
# crates/ttsq/tests/it/docs.rs loads `GET /docs` in headless Chromium, checks
# its DOM and takes a screenshot. Debian's `chromium` package, installed once.

setup_chromium() {
    if [[ -n "${TTSQ_TEST_CHROMIUM:-}" ]] || command -v chromium >/dev/null; then
        return 0
    fi
    say "installing chromium (Debian) for the /docs browser test…"
    as_root apt-get update -qq &&
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
            chromium >/dev/null ||
        die "cannot install chromium (apt-get install chromium), which the /docs test needs"
}
setup_chromium
export TTSQ_TEST_CHROMIUM="${TTSQ_TEST_CHROMIUM:-$(command -v chromium)}"

# ttsq refuses TTSQ_* variables it does not know; keep the scripts' own out of the tests.
unset TTSQ_HOME TTSQ_PROFILE TTSQ_SERVICES_TIMEOUT TTSQ_TEST_NO_CLEANUP

# --- the tests ----------------------------------------------------------------

status=0
if cargo nextest --version >/dev/null 2>&1; then
    # nextest does not run doctests (the crate READMEs are crate docs); run
    # them first so that nextest's summary is the suite's closing line.
    if (($# == 0)); then
        say "cargo test --workspace --doc"
        cargo test --workspace --doc || status=$?
    fi
    say "cargo nextest run --workspace --no-fail-fast $*"
    cargo nextest run --workspace --no-fail-fast "$@" || status=$?
else
    say "cargo test --workspace --no-fail-fast $* (install cargo-nextest for a faster run)"
    cargo test --workspace --no-fail-fast "$@" || status=$?
fi

# What the shared services looked like after a failed run: a broker that
# stopped answering, a full disk or a saturated machine shows up here.
service_diagnostics() {
    say "state of the machine and the services after the failure:"
    uptime >&2 || true
    df -h "$REPO_ROOT" >&2 || true
    as_root timeout 20 rabbitmqctl -q status 2>&1 |
        grep -E -A3 'Alarms|File Descriptors|Total memory used' >&2 || true
    printf 'RabbitMQ connections open: %s, queues: %s\n' \
        "$(as_root timeout 20 rabbitmqctl -q list_connections --no-table-headers name 2>/dev/null | wc -l)" \
        "$(as_root timeout 20 rabbitmqctl -q list_queues --no-table-headers name 2>/dev/null | wc -l)" >&2 || true
    local log
    for log in /var/log/rabbitmq/rabbit@*.log /var/log/postgresql/postgresql-*.log; do
        [[ -f "$log" ]] || continue
        say "last errors in $log:"
        grep -iE 'error|fatal|panic|alarm|limit' "$log" | tail -n 15 >&2 || true
    done
}

if ((status == 0)); then
    say "all tests passed"
else
    service_diagnostics
    say "tests failed (exit status $status)"
fi
exit "$status"
