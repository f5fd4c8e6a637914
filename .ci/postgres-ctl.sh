#!/usr/bin/env bash
# Control the throwaway PostgreSQL server started by .ci/services.sh.
#
#   .ci/postgres-ctl.sh start     start it again (same data dir, same port); waits until it accepts connections
#   .ci/postgres-ctl.sh stop      fast shutdown (clients are disconnected); waits until it is down
#   .ci/postgres-ctl.sh kill      immediate shutdown (simulates a crash; crash recovery on next start)
#   .ci/postgres-ctl.sh restart   stop + start
#   .ci/postgres-ctl.sh status    exit 0 if it accepts connections, 1 if not
#   .ci/postgres-ctl.sh psql ...  run psql against the test database (extra args are passed through)
#
# The state (data dir, port, ...) is read from the KEY=VALUE file named by $SHOP_CI_STATE,
# which .ci/services.sh writes and exports. Must run as root (or as the postgres user).
set -euo pipefail

die() { echo "postgres-ctl: $*" >&2; exit 1; }

: "${SHOP_CI_STATE:?SHOP_CI_STATE is not set; source .ci/services.sh first}"
[ -r "$SHOP_CI_STATE" ] || die "state file $SHOP_CI_STATE is missing (services already stopped?)"
# shellcheck disable=SC1090
. "$SHOP_CI_STATE"
: "${SHOP_CI_PG_BIN:?}" "${SHOP_CI_PG_DATA:?}" "${SHOP_CI_PG_PORT:?}" "${SHOP_CI_PG_LOG:?}" "${SHOP_CI_PG_DB:?}"

TIMEOUT="${SHOP_CI_PG_TIMEOUT:-60}"

as_postgres() {
  # cd / so that postgres never trips over an unreadable cwd
  if [ "$(id -u)" = 0 ]; then
    (cd / && runuser -u postgres -- "$@")
  elif [ "$(id -un)" = postgres ]; then
    (cd / && "$@")
  else
    die "must run as root or postgres"
  fi
}

accepting() {
  "$SHOP_CI_PG_BIN/pg_isready" -q -h 127.0.0.1 -p "$SHOP_CI_PG_PORT" -d "$SHOP_CI_PG_DB" -U postgres -t 2
}

pid_running() {
  # pg_ctl status: 0 = running, 3 = not running, 4 = no data dir
  as_postgres "$SHOP_CI_PG_BIN/pg_ctl" -D "$SHOP_CI_PG_DATA" status >/dev/null 2>&1
}

now_ms() { local t=${EPOCHREALTIME/[.,]/}; echo $((t / 1000)); }

do_start() {
  local t0; t0=$(now_ms)
  if pid_running; then
    echo "postgres-ctl: already running (port $SHOP_CI_PG_PORT)"
  elif ! as_postgres "$SHOP_CI_PG_BIN/pg_ctl" -D "$SHOP_CI_PG_DATA" -l "$SHOP_CI_PG_LOG" \
        -w -t "$TIMEOUT" start >/dev/null; then
    echo "postgres-ctl: start FAILED; last lines of $SHOP_CI_PG_LOG:" >&2
    tail -n 30 "$SHOP_CI_PG_LOG" >&2 || true
    exit 1
  fi
  # pg_ctl -w already waited for "ready to accept connections"; double-check over TCP.
  local deadline=$(( $(now_ms) + TIMEOUT * 1000 ))
  until accepting; do
    if [ "$(now_ms)" -ge "$deadline" ]; then
      echo "postgres-ctl: not accepting connections on 127.0.0.1:$SHOP_CI_PG_PORT after ${TIMEOUT}s" >&2
      tail -n 30 "$SHOP_CI_PG_LOG" >&2 || true
      exit 1
    fi
    sleep 0.2
  done
  local t1; t1=$(now_ms)
  echo "postgres-ctl: up on 127.0.0.1:$SHOP_CI_PG_PORT ($(( (t1 - t0) / 1000 )).$(printf '%03d' $(( (t1 - t0) % 1000 )))s)"
}

do_stop() {
  local mode="${1:-fast}" t0; t0=$(now_ms)
  if ! pid_running; then
    echo "postgres-ctl: already stopped"
    return 0
  fi
  as_postgres "$SHOP_CI_PG_BIN/pg_ctl" -D "$SHOP_CI_PG_DATA" -m "$mode" -w -t "$TIMEOUT" stop >/dev/null \
    || die "pg_ctl stop -m $mode failed (see $SHOP_CI_PG_LOG)"
  local t1; t1=$(now_ms)
  echo "postgres-ctl: stopped ($mode, $(( (t1 - t0) / 1000 )).$(printf '%03d' $(( (t1 - t0) % 1000 )))s)"
}

cmd="${1:-}"
[ $# -gt 0 ] && shift
case "$cmd" in
  start)   do_start ;;
  stop)    do_stop fast ;;
  kill)    do_stop immediate ;;
  restart) do_stop fast; do_start ;;
  status)
    if accepting; then echo "postgres-ctl: running on 127.0.0.1:$SHOP_CI_PG_PORT"; exit 0
    else echo "postgres-ctl: not accepting connections on 127.0.0.1:$SHOP_CI_PG_PORT"; exit 1; fi ;;
  psql)    exec "$SHOP_CI_PG_BIN/psql" -h 127.0.0.1 -p "$SHOP_CI_PG_PORT" -U postgres -d "$SHOP_CI_PG_DB" "$@" ;;
  *)       echo "usage: $0 {start|stop|kill|restart|status|psql [args...]}" >&2; exit 2 ;;
esac
