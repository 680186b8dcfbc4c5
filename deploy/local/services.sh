#!/usr/bin/env bash
# Brings up the local services ttsq needs, installing what is missing:
#   PostgreSQL  127.0.0.1:5432  trust auth for user postgres, database `ttsq`,
#                               login role `ttsq` (password `ttsq-local`): the
#                               service role run.sh serves as
#   RabbitMQ    127.0.0.1:5672  guest/guest, all feature flags enabled
#   s3s-fs      127.0.0.1:8014  access key `ttsq`, secret `ttsq-local-secret`
# plus espeak-ng, the embedded provider's synthesizer, and libopus (with its
# headers and pkg-config, which the build links the Opus encoder with).
#
# Idempotent and quick when everything already runs: a service is started only
# when its port does not answer, a package is installed only when its program
# is missing. Execute it or source it; either way it changes nothing in the
# calling shell (ttsq refuses unknown TTSQ_* variables, so TTSQ_HOME is never
# exported from here).
#
# Environment:
#   TTSQ_HOME               state directory (default <repo>/.ttsq): s3s-fs data
#                           in $TTSQ_HOME/s3, its log and pid file beside it
#   TTSQ_SERVICES_TIMEOUT   seconds to wait for each service (default 90)

# Sourced: run in a child bash so `set -e` and the helpers stay out of the
# caller's shell.
if [[ "${BASH_SOURCE[0]}" != "$0" ]]; then
    bash "${BASH_SOURCE[0]}" "$@"
    return
fi

set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
TTSQ_HOME="${TTSQ_HOME:-$REPO_ROOT/.ttsq}"
mkdir -p "$TTSQ_HOME"
TTSQ_HOME="$(cd "$TTSQ_HOME" && pwd)"
TIMEOUT="${TTSQ_SERVICES_TIMEOUT:-90}"
LOG_HINT=

# The local values; they match the defaults in crates/ttsq-config/src/defaults.toml.
PG_PORT=5432
PG_DATABASE=ttsq
PG_SERVICE_ROLE=ttsq
PG_SERVICE_PASSWORD=ttsq-local
AMQP_PORT=5672
S3_PORT=8014
S3_ACCESS_KEY=ttsq
S3_SECRET_KEY=ttsq-local-secret
S3S_FS_VERSION=0.14.1

# Debian keeps rabbitmq-server and friends in sbin; cargo installs into ~/.cargo/bin.
CARGO_BIN="${CARGO_HOME:-$HOME/.cargo}/bin"
export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin:$CARGO_BIN"

say() { printf '==> %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# Runs a command as root: directly when we are root, else through sudo.
as_root() {
    if [[ $EUID -eq 0 ]]; then
        "$@"
    elif command -v sudo >/dev/null; then
        sudo "$@"
    else
        die "need root for: $* (run as root or install sudo)"
    fi
}

# Runs a command as the postgres system user (peer auth over the socket).
as_postgres() {
    if [[ $EUID -eq 0 ]]; then
        if command -v runuser >/dev/null; then
            runuser -u postgres -- "$@"
        else
            su postgres -s /bin/sh -c "$(printf '%q ' "$@")"
        fi
    elif command -v sudo >/dev/null; then
        sudo -u postgres "$@"
    else
        die "need root or sudo to run as user postgres: $*"
    fi
}

# True when something accepts TCP connections on 127.0.0.1:$1.
port_open() {
    timeout 2 bash -c "exec 3<>/dev/tcp/127.0.0.1/$1" 2>/dev/null
}

# True when systemd runs this machine (then services start through systemctl).
has_systemd() {
    [[ -d /run/systemd/system && "$(cat /proc/1/comm 2>/dev/null)" == systemd ]]
}

# Waits until `$2...` succeeds; fails naming service $1 and pointing at log $LOG_HINT.
wait_until() {
    local what="$1"
    shift
    local deadline=$((SECONDS + TIMEOUT))
    until "$@"; do
        if ((SECONDS >= deadline)); then
            die "$what is not ready after ${TIMEOUT}s${LOG_HINT:+; see $LOG_HINT}"
        fi
        sleep 0.5
    done
}

# --- installing ------------------------------------------------------------

APT_UPDATED=0
apt_install() {
    command -v apt-get >/dev/null ||
        die "missing $*, and this is not a Debian/Ubuntu machine: install it yourself"
    if ((APT_UPDATED == 0)); then
        say "apt-get update…"
        as_root apt-get update -qq
        APT_UPDATED=1
    fi
    say "installing $*…"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@"
}

postgres_server_installed() {
    compgen -G '/usr/lib/postgresql/*/bin/postgres' >/dev/null
}

install_missing_packages() {
    local missing=()
    if ! postgres_server_installed || ! command -v pg_lsclusters >/dev/null; then
        missing+=(postgresql)
    fi
    command -v rabbitmq-server >/dev/null || missing+=(rabbitmq-server)
    command -v espeak-ng >/dev/null || missing+=(espeak-ng)
    command -v pkg-config >/dev/null || missing+=(pkg-config)
    # The `opus` crate links the system libopus, found through pkg-config.
    if ! command -v pkg-config >/dev/null || ! pkg-config --exists opus; then
        missing+=(libopus-dev)
    fi
    if ((${#missing[@]} > 0)); then
        apt_install "${missing[@]}"
    fi
}

install_s3s_fs() {
    command -v s3s-fs >/dev/null && return
    command -v cargo >/dev/null || die "cargo is needed to install s3s-fs (https://rustup.rs)"
    say "installing s3s-fs $S3S_FS_VERSION with cargo (about 2 minutes)…"
    cargo install "s3s-fs@$S3S_FS_VERSION" --features binary --locked
}

# --- PostgreSQL ---------------------------------------------------------------

pg_ready() { pg_isready -q -h 127.0.0.1 -p "$PG_PORT" -t 2; }

pg_sql() {
    psql -w -X -q -h 127.0.0.1 -p "$PG_PORT" -U postgres -d postgres -v ON_ERROR_STOP=1 -Atc "$1"
}

start_postgres() {
    if port_open "$PG_PORT"; then
        say "PostgreSQL already answers on 127.0.0.1:$PG_PORT"
    else
        # The cluster on our port, as "version name"; create one if there is none.
        local cluster
        cluster="$(pg_lsclusters --no-header 2>/dev/null | awk -v p="$PG_PORT" '$3 == p { print $1, $2; exit }')"
        if [[ -z "$cluster" ]]; then
            local version
            version="$(find /usr/lib/postgresql -mindepth 1 -maxdepth 1 -printf '%f\n' | sort -n | tail -n1)"
            [[ -n "$version" ]] || die "PostgreSQL is installed but no server version was found in /usr/lib/postgresql"
            # `main` may exist on another port; then ours gets its own name.
            local name=main
            [[ ! -d "/etc/postgresql/$version/main" ]] || name=ttsq
            say "creating PostgreSQL $version cluster $name on port $PG_PORT…"
            as_root pg_createcluster --port "$PG_PORT" "$version" "$name" >/dev/null
            cluster="$version $name"
        fi
        local version="${cluster% *}" name="${cluster#* }"
        say "starting PostgreSQL $version/$name…"
        if has_systemd; then
            as_root systemctl start "postgresql@$version-$name"
        else
            as_root pg_ctlcluster --skip-systemctl-redirect "$version" "$name" start
        fi
        LOG_HINT="/var/log/postgresql/postgresql-$version-$name.log"
    fi
    wait_until "PostgreSQL (127.0.0.1:$PG_PORT)" pg_ready
    LOG_HINT=
    ensure_postgres_trust
    ensure_database
    ensure_service_role
}

# ttsq's default URL has no password: user postgres must be trusted on loopback.
ensure_postgres_trust() {
    pg_sql 'select 1' >/dev/null 2>&1 && return
    say "PostgreSQL refuses passwordless user postgres on 127.0.0.1; adding a trust rule for loopback…"
    # Over the socket of the cluster on our port, as the postgres system user (peer auth).
    local hba marker='# Added by ttsq deploy/local/services.sh'
    hba="$(as_postgres psql -X -p "$PG_PORT" -d postgres -Atc 'show hba_file')" ||
        die "cannot reach PostgreSQL as the postgres system user to find pg_hba.conf"
    if as_root grep -qF "$marker" "$hba"; then
        die "cannot connect as postgres@127.0.0.1:$PG_PORT without a password, although $hba has ttsq's trust rule"
    fi
    local rules=(
        "$marker: local development, user postgres on loopback without password."
        'host all postgres 127.0.0.1/32 trust'
        'host all postgres ::1/128 trust'
    )
    # pg_hba.conf is read top to bottom, so the rules go first. The file keeps
    # its owner and mode because it is rewritten in place.
    # shellcheck disable=SC2016 # $1 and $2 belong to the inner sh.
    as_root sh -c 'f="$1"; { printf "%s\n" "$2"; cat "$f"; } > "$f.ttsq-new" && cat "$f.ttsq-new" > "$f" && rm -f "$f.ttsq-new"' \
        sh "$hba" "$(printf '%s\n' "${rules[@]}")"
    say "added to $hba:"
    printf '    %s\n' "${rules[@]}" >&2
    as_postgres psql -X -q -p "$PG_PORT" -d postgres -Atc 'select pg_reload_conf()' >/dev/null
    sleep 1
    pg_sql 'select 1' >/dev/null ||
        die "still cannot connect as postgres@127.0.0.1:$PG_PORT without a password; check $hba"
}

ensure_database() {
    if [[ "$(pg_sql "select 1 from pg_database where datname = '$PG_DATABASE'")" != 1 ]]; then
        say "creating database $PG_DATABASE…"
        # Another run may create it at the same moment: only a still-missing database is an error.
        pg_sql "create database $PG_DATABASE" >/dev/null 2>&1 ||
            [[ "$(pg_sql "select 1 from pg_database where datname = '$PG_DATABASE'")" == 1 ]] ||
            die "cannot create database $PG_DATABASE"
    fi
}

# The role the api and workers connect as (docs/operations.md, "Database
# roles"); `ttsq migrate --grant-to ttsq`, run as postgres, grants it.
ensure_service_role() {
    if [[ "$(pg_sql "select 1 from pg_roles where rolname = '$PG_SERVICE_ROLE'")" != 1 ]]; then
        say "creating the service role $PG_SERVICE_ROLE…"
        pg_sql "create role $PG_SERVICE_ROLE login password '$PG_SERVICE_PASSWORD'" >/dev/null 2>&1 ||
            [[ "$(pg_sql "select 1 from pg_roles where rolname = '$PG_SERVICE_ROLE'")" == 1 ]] ||
            die "cannot create the role $PG_SERVICE_ROLE"
    fi
}

# --- RabbitMQ -----------------------------------------------------------------

# rabbitmqctl needs the node's Erlang cookie: root (or the rabbitmq user) only.
# $1 bounds the call in seconds; a wedged node must not hang this script.
rabbitmqctl_q() {
    local limit="$1"
    shift
    as_root timeout "$limit" rabbitmqctl -q "$@"
}

rabbitmq_node_running() { rabbitmqctl_q 20 ping >/dev/null 2>&1; }

rabbitmq_ready() { port_open "$AMQP_PORT"; }

start_rabbitmq() {
    LOG_HINT=/var/log/rabbitmq/
    if port_open "$AMQP_PORT"; then
        say "RabbitMQ already answers on 127.0.0.1:$AMQP_PORT"
    elif rabbitmq_node_running; then
        # The Erlang node is up but AMQP is not listening: it is booting, or its
        # application was stopped (`rabbitmqctl stop_app`).
        say "RabbitMQ node is running without AMQP; waiting for it…"
        rabbitmqctl_q "$TIMEOUT" --timeout "$TIMEOUT" await_startup >/dev/null 2>&1 || true
        port_open "$AMQP_PORT" || rabbitmqctl_q 60 start_app >/dev/null
    else
        say "starting RabbitMQ…"
        if has_systemd; then
            as_root systemctl start rabbitmq-server
        else
            # Every quorum queue and connection takes file descriptors; the
            # default limit of 1024 leaves the broker room for only ~800.
            (
                ulimit -n 65536 2>/dev/null || true
                as_root rabbitmq-server -detached
            )
        fi
    fi
    wait_until "RabbitMQ (127.0.0.1:$AMQP_PORT)" rabbitmq_ready
    rabbitmqctl_q "$TIMEOUT" --timeout "$TIMEOUT" await_startup >/dev/null ||
        die "RabbitMQ did not finish starting; see $LOG_HINT"
    # ttsq needs quorum queues and at-least-once dead-lettering, behind feature
    # flags that an upgraded node may still have off. Enabling is idempotent.
    rabbitmqctl_q 60 enable_feature_flag all >/dev/null ||
        die "cannot enable RabbitMQ feature flags (rabbitmqctl enable_feature_flag all)"
    LOG_HINT=
}

# --- s3s-fs -------------------------------------------------------------------

start_s3s_fs() {
    if port_open "$S3_PORT"; then
        say "S3 (s3s-fs) already answers on 127.0.0.1:$S3_PORT"
        return
    fi
    local data="$TTSQ_HOME/s3" log="$TTSQ_HOME/s3s-fs.log" pidfile="$TTSQ_HOME/s3s-fs.pid"
    mkdir -p "$data"
    say "starting s3s-fs on 127.0.0.1:$S3_PORT (data in $data)…"
    # setsid: its own session, so a Ctrl-C in this terminal (run.sh) leaves it running.
    setsid nohup s3s-fs --host 127.0.0.1 --port "$S3_PORT" \
        --access-key "$S3_ACCESS_KEY" --secret-key "$S3_SECRET_KEY" "$data" \
        </dev/null >>"$log" 2>&1 &
    local pid=$!
    echo "$pid" >"$pidfile"
    LOG_HINT="$log"
    s3s_fs_up() {
        kill -0 "$pid" 2>/dev/null || {
            tail -n 20 "$log" >&2 || true
            die "s3s-fs exited at start; see $log"
        }
        port_open "$S3_PORT"
    }
    wait_until "s3s-fs (127.0.0.1:$S3_PORT)" s3s_fs_up
    LOG_HINT=
}

# --- main ---------------------------------------------------------------------

install_missing_packages
install_s3s_fs
start_postgres
start_rabbitmq
start_s3s_fs
say "services ready: PostgreSQL :$PG_PORT (db $PG_DATABASE), RabbitMQ :$AMQP_PORT, S3 :$S3_PORT; state in $TTSQ_HOME"
