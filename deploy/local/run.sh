#!/usr/bin/env bash
# Runs ttsq on this machine, without Docker: brings up the local services,
# builds the binary, migrates, makes sure a demo tenant has a key, starts the
# API and workers, and prints how to call them. Ctrl-C stops ttsq; the
# services keep running. See --help.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$HERE/../.." && pwd)"

usage() {
    cat <<'EOF'
Usage: deploy/local/run.sh [--workers N] [--logs]

Runs ttsq locally against PostgreSQL, RabbitMQ and s3s-fs on 127.0.0.1
(installed and started by deploy/local/services.sh when missing).

  -w, --workers N   start `ttsq api` plus N `ttsq worker` processes
                    (default: one `ttsq all`, API and worker in one process)
  -l, --logs        after start-up, follow the processes' logs in this terminal
  -h, --help        show this help

Environment:
  TTSQ_PROFILE      `release` (default) or `debug`: the cargo profile to build
  TTSQ_HOME         state directory (default <repo>/.ttsq): demo API key,
                    logs of this run in logs/, s3s-fs data
  TTSQ_*            ttsq's own settings (see .env.example); a .env file at the
                    repository root is read too, without overriding variables
                    already set

Ctrl-C (or SIGTERM) stops the ttsq processes gracefully and waits for them;
a second Ctrl-C kills them. PostgreSQL, RabbitMQ and s3s-fs stay up.
Running it again is safe: migrations are idempotent and the demo key is reused.
EOF
}

say() { printf '==> %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

WORKERS=""
FOLLOW_LOGS=0
while (($# > 0)); do
    case "$1" in
    -w | --workers)
        (($# >= 2)) || die "$1 needs a number"
        WORKERS="$2"
        shift 2
        ;;
    --workers=*)
        WORKERS="${1#*=}"
        shift
        ;;
    -l | --logs)
        FOLLOW_LOGS=1
        shift
        ;;
    -h | --help)
        usage
        exit 0
        ;;
    *)
        usage >&2
        die "unknown argument: $1"
        ;;
    esac
done
[[ -z "$WORKERS" || "$WORKERS" =~ ^[0-9]+$ ]] || die "--workers takes a whole number, got '$WORKERS'"

cd "$REPO_ROOT"

# A .env at the root, as docker compose would read it: KEY=VALUE lines; the
# environment wins over the file.
if [[ -f .env ]]; then
    say "reading .env"
    while IFS= read -r line || [[ -n "$line" ]]; do
        [[ "$line" =~ ^[[:space:]]*(#|$) ]] && continue
        if [[ "$line" =~ ^[[:space:]]*(export[[:space:]]+)?([A-Za-z_][A-Za-z0-9_]*)=(.*)$ ]]; then
            key="${BASH_REMATCH[2]}" value="${BASH_REMATCH[3]}"
            if [[ "$value" =~ ^\"(.*)\"$ || "$value" =~ ^\'(.*)\'$ ]]; then
                value="${BASH_REMATCH[1]}"
            fi
            [[ -n "${!key+set}" ]] || export "$key=$value"
        else
            say "ignoring a line of .env that is not KEY=VALUE: $line"
        fi
    done <.env
fi

# Not exported: ttsq refuses TTSQ_* variables it does not know.
TTSQ_HOME="${TTSQ_HOME:-$REPO_ROOT/.ttsq}"
mkdir -p "$TTSQ_HOME"
TTSQ_HOME="$(cd "$TTSQ_HOME" && pwd)"
LOG_DIR="$TTSQ_HOME/logs"
KEY_FILE="$TTSQ_HOME/demo-api-key"
PIDS_FILE="$TTSQ_HOME/run.pids"
mkdir -p "$LOG_DIR"

# Where the API listens and where clients reach it.
LISTEN="${TTSQ_SERVER_LISTEN:-127.0.0.1:8080}"
API_URL="${TTSQ_SERVER_PUBLIC_URL:-http://127.0.0.1:8080}"
API_URL="${API_URL%/}"
listen_host="${LISTEN%:*}" listen_port="${LISTEN##*:}"
case "$listen_host" in "" | 0.0.0.0 | "[::]") listen_host=127.0.0.1 ;; esac
LOCAL_URL="http://$listen_host:$listen_port"
# The API's operations endpoints (/metrics, /health, the detailed /ready).
OPS_LISTEN="${TTSQ_SERVER_OPS_LISTEN:-127.0.0.1:9463}"
ops_host="${OPS_LISTEN%:*}"
case "$ops_host" in "" | 0.0.0.0 | "[::]") ops_host=127.0.0.1 ;; esac
OPS_URL="http://$ops_host:${OPS_LISTEN##*:}"

GRACE=$((${TTSQ_WORKER_SHUTDOWN_GRACE_SECS:-30} + 10))
HAVE_CURL=0
command -v curl >/dev/null && HAVE_CURL=1

api_answers() {
    if ((HAVE_CURL)); then
        curl -fsS -o /dev/null --max-time 2 "$LOCAL_URL/health" 2>/dev/null
    else
        timeout 2 bash -c "exec 3<>/dev/tcp/${listen_host//[\[\]]/}/$listen_port" 2>/dev/null
    fi
}

if timeout 2 bash -c "exec 3<>/dev/tcp/${listen_host//[\[\]]/}/$listen_port" 2>/dev/null; then
    msg="something already listens on $LISTEN (the API's address)"
    [[ -s "$PIDS_FILE" ]] && msg+="; an earlier run.sh may still run: kill $(paste -sd ' ' "$PIDS_FILE")"
    die "$msg"
fi

# --- services, build, migrate -----------------------------------------------

TTSQ_HOME="$TTSQ_HOME" "$HERE/services.sh"

command -v cargo >/dev/null || die "cargo is missing; install Rust with rustup (https://rustup.rs)"
PROFILE="${TTSQ_PROFILE:-release}"
case "$PROFILE" in
release) build_args=(--release) ;;
debug | dev) build_args=() PROFILE=debug ;;
*) die "TTSQ_PROFILE must be release or debug, got '$PROFILE'" ;;
esac
say "building ttsq ($PROFILE)…"
cargo build "${build_args[@]}" -p ttsq
target_dir="${CARGO_TARGET_DIR:-$REPO_ROOT/target}"
BIN="$target_dir/$PROFILE/ttsq"
[[ -x "$BIN" ]] || die "the build left no binary at $BIN"

# ttsq refuses unknown TTSQ_* variables: drop the scripts' own from its environment.
UNSET_ARGS=()
while IFS= read -r var; do
    case "$var" in
    TTSQ_HOME | TTSQ_PROFILE | TTSQ_SERVICES_TIMEOUT | TTSQ_TEST_*) UNSET_ARGS+=(-u "$var") ;;
    esac
done < <(compgen -e)
ttsq() { env "${UNSET_ARGS[@]}" "$BIN" "$@"; }

# Two database roles, as in production (docs/operations.md, "Database roles"):
# the local superuser postgres owns the schema and migrates; the api and the
# workers connect as `ttsq` (services.sh creates it), which may only add and
# read usage ledger and audit rows. A TTSQ_DATABASE_URL of your own is used
# for both instead.
if [[ -n "${TTSQ_DATABASE_URL:-}" ]]; then
    say "migrating the database (TTSQ_DATABASE_URL is set: one role migrates and serves)…"
    ttsq migrate
else
    say "migrating the database as postgres, granting the service role ttsq…"
    env "${UNSET_ARGS[@]}" TTSQ_DATABASE_URL=postgres://postgres@127.0.0.1:5432/ttsq \
        "$BIN" migrate --grant-to ttsq
    export TTSQ_DATABASE_URL=postgres://ttsq:ttsq-local@127.0.0.1:5432/ttsq
fi

# --- the demo tenant's key ----------------------------------------------------

# Prints a new key for tenant `demo`, creating the tenant when it does not exist.
new_demo_key() {
    local err="$TTSQ_HOME/tenant-create.err" key
    if key="$(ttsq tenant create demo 2>"$err")" && [[ -n "$key" ]]; then
        say "created tenant demo" && printf '%s\n' "$key"
    elif key="$(ttsq key create demo 2>>"$err")" && [[ -n "$key" ]]; then
        say "tenant demo exists; made a new key for it" && printf '%s\n' "$key"
    else
        cat "$err" >&2
        die "could not create tenant demo nor a key for it"
    fi
}

save_demo_key() {
    (umask 077 && printf '%s\n' "$1" >"$KEY_FILE")
}

if [[ -s "$KEY_FILE" ]]; then
    say "reusing the demo API key in $KEY_FILE"
else
    save_demo_key "$(new_demo_key)"
fi
API_KEY="$(head -n1 "$KEY_FILE")"

# --- the ttsq processes -----------------------------------------------------

PIDS=()
NAMES=()
TAIL_PID=""
STOPPING=0

start_process() {
    local name="$1"
    shift
    # setsid: Ctrl-C reaches only this script, which then sends one SIGTERM.
    setsid env "${UNSET_ARGS[@]}" "$BIN" "$@" </dev/null >"$LOG_DIR/$name.log" 2>&1 &
    PIDS+=("$!")
    NAMES+=("$name")
    printf '%s\n' "${PIDS[@]}" >"$PIDS_FILE"
    say "started ttsq $* as $name (pid $!, log $LOG_DIR/$name.log)"
}

alive() { kill -0 "$1" 2>/dev/null; }

# Sends SIGTERM to every ttsq process, waits up to GRACE seconds, then kills.
stop_processes() {
    local pid deadline=$((SECONDS + GRACE)) left
    for pid in "${PIDS[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    while :; do
        left=()
        for pid in "${PIDS[@]}"; do
            alive "$pid" && left+=("$pid")
        done
        ((${#left[@]} == 0)) && break
        if ((SECONDS >= deadline)); then
            say "still running after ${GRACE}s, killing: ${left[*]}"
            kill -KILL "${left[@]}" 2>/dev/null || true
            break
        fi
        sleep 0.2
    done
    [[ -z "$TAIL_PID" ]] || kill "$TAIL_PID" 2>/dev/null || true
    wait 2>/dev/null || true
    rm -f "$PIDS_FILE"
}

services_note() {
    say "PostgreSQL, RabbitMQ and s3s-fs keep running (deploy/local/services.sh started them if they were down)."
}

on_signal() {
    if ((STOPPING)); then
        say "second interrupt: killing ttsq"
        kill -KILL "${PIDS[@]}" 2>/dev/null || true
        rm -f "$PIDS_FILE"
        exit 130
    fi
    STOPPING=1
    printf '\n' >&2
    say "stopping ttsq (SIGTERM; up to ${GRACE}s, Ctrl-C again to kill)…"
    stop_processes
    say "ttsq stopped."
    services_note
    exit 0
}

# An error in this script must not leave ttsq running behind it.
on_exit() {
    local status=$?
    if ((STOPPING == 0 && ${#PIDS[@]} > 0)); then
        STOPPING=1
        stop_processes
    fi
    return "$status"
}

# Exits when one of the ttsq processes has died, showing the end of its log.
check_processes() {
    local i
    for i in "${!PIDS[@]}"; do
        if ! alive "${PIDS[$i]}"; then
            local status=0 how
            wait "${PIDS[$i]}" 2>/dev/null || status=$?
            # 127: `wait -n` below already collected the status.
            case "$status" in 127) how="exited" ;; *) how="exited with status $status" ;; esac
            say "ttsq ${NAMES[$i]} $how; the end of $LOG_DIR/${NAMES[$i]}.log:"
            tail -n 30 "$LOG_DIR/${NAMES[$i]}.log" >&2 || true
            STOPPING=1
            stop_processes
            services_note
            exit 1
        fi
    done
}

# Set only now: until ttsq runs, Ctrl-C may simply end this script.
trap on_signal INT TERM
trap on_exit EXIT

if [[ -z "$WORKERS" ]]; then
    start_process ttsq all
else
    start_process api api
    for ((i = 1; i <= WORKERS; i++)); do
        # Each worker serves /metrics, /health and /ready on its own port:
        # 9464, 9465, … (the API's are on server.ops_listen, 9463)
        TTSQ_WORKER_METRICS_LISTEN="127.0.0.1:$((9463 + i))" start_process "worker-$i" worker
    done
    ((WORKERS > 0)) || say "no workers: normal-priority jobs will wait in the queue"
fi

say "waiting for the API on $LOCAL_URL…"
deadline=$((SECONDS + 120))
until api_answers; do
    check_processes
    ((SECONDS < deadline)) || die "the API did not answer on $LOCAL_URL within 120s; see $LOG_DIR"
    sleep 0.5
done

# A key kept from an earlier run is stale if the database was reset since.
if ((HAVE_CURL)); then
    code="$(curl -sS -o /dev/null -w '%{http_code}' --max-time 10 \
        -H "Authorization: Bearer $API_KEY" "$LOCAL_URL/v1/usage" || true)"
    if [[ "$code" == 401 ]]; then
        say "the saved demo key is no longer valid (database reset?); making a new one"
        save_demo_key "$(new_demo_key)"
        API_KEY="$(head -n1 "$KEY_FILE")"
    fi
fi

cat <<EOF

ttsq is running at $API_URL ($(
    if [[ -z "$WORKERS" ]]; then echo "one 'ttsq all' process"; else echo "api + $WORKERS worker(s)"; fi
)); logs in $LOG_DIR/.
Demo tenant API key (also in $KEY_FILE):

    $API_KEY

Paste into another terminal:

    export TTSQ_URL=$API_URL TTSQ_API_KEY=\$(cat '$KEY_FILE')

    # High priority: synthesized inline, the audio comes straight back.
    curl -sS -X POST "\$TTSQ_URL/v1/tts/jobs" -H "Authorization: Bearer \$TTSQ_API_KEY" \\
      -H 'Content-Type: application/json' \\
      -d '{"text":"Hello from ttsq","dialect":"en-gb","priority":"high","format":"wav"}' -o hello.wav

    # Normal priority: queued for a worker; wait for it, then fetch the audio.
    TASK_ID=\$(curl -sS -X POST "\$TTSQ_URL/v1/tts/jobs" -H "Authorization: Bearer \$TTSQ_API_KEY" \\
      -H 'Content-Type: application/json' \\
      -d '{"text":"Queued through RabbitMQ and a worker","dialect":"en-us","format":"wav"}' \\
      | sed -n 's/.*"task_id": *"\\([^"]*\\)".*/\\1/p'); echo "\$TASK_ID"
    curl -sS "\$TTSQ_URL/v1/tts/jobs/\$TASK_ID?wait=30" -H "Authorization: Bearer \$TTSQ_API_KEY"; echo
    curl -sSL "\$TTSQ_URL/v1/tts/jobs/\$TASK_ID/audio" -H "Authorization: Bearer \$TTSQ_API_KEY" -o queued.wav
    # (-L follows the 302 to a presigned S3 URL; add ?inline=1 to get the bytes from the API instead)

    aplay hello.wav queued.wav    # or any audio player

Metrics and each dependency's readiness are off the public port, on
$OPS_URL/metrics and $OPS_URL/ready$(
    if [[ -n "$WORKERS" ]] && ((WORKERS > 0)); then echo " (workers: 127.0.0.1:9464 and up)"; fi
).

Ctrl-C stops ttsq; PostgreSQL, RabbitMQ and s3s-fs stay up.

EOF

if ((FOLLOW_LOGS)); then
    logs=()
    for name in "${NAMES[@]}"; do logs+=("$LOG_DIR/$name.log"); done
    tail -n +1 -F "${logs[@]}" 2>/dev/null &
    TAIL_PID=$!
fi

# Sleep until a signal arrives (the trap stops everything) or a process dies.
while :; do
    wait -n || true
    ((STOPPING)) || check_processes
done
