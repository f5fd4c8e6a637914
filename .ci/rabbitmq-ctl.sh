#!/usr/bin/env bash
# shellcheck disable=SC2016  # single-quoted `bash -c` snippets get their args as $1 on purpose
# Control the throwaway RabbitMQ node started by .ci/services.sh.
#
#   .ci/rabbitmq-ctl.sh start     start the node (same data dir, same ports); waits until AMQP answers
#   .ci/rabbitmq-ctl.sh stop      graceful shutdown (SIGTERM); waits until the node is gone
#   .ci/rabbitmq-ctl.sh kill      SIGKILL the node (simulates a crash)
#   .ci/rabbitmq-ctl.sh restart   stop + start
#   .ci/rabbitmq-ctl.sh status    exit 0 if the AMQP port answers, 1 if not
#   .ci/rabbitmq-ctl.sh ctl ...   run rabbitmqctl against the node, e.g. `ctl list_queues name messages`
#
# The state (dirs, ports) is read from the KEY=VALUE file named by $SHOP_CI_STATE,
# which .ci/services.sh writes and exports. Must run as root.
set -euo pipefail

die() { echo "rabbitmq-ctl: $*" >&2; exit 1; }

: "${SHOP_CI_STATE:?SHOP_CI_STATE is not set; source .ci/services.sh first}"
[ -r "$SHOP_CI_STATE" ] || die "state file $SHOP_CI_STATE is missing (services already stopped?)"
# shellcheck disable=SC1090
. "$SHOP_CI_STATE"
: "${SHOP_CI_RABBIT_DIR:?}" "${SHOP_CI_RABBIT_PORT:?}" "${SHOP_CI_RABBIT_DIST_PORT:?}" \
  "${SHOP_CI_EPMD_PORT:?}" "${SHOP_CI_RABBIT_NODENAME:?}"
[ "$(id -u)" = 0 ] || die "must run as root"

D="$SHOP_CI_RABBIT_DIR"
PORT="$SHOP_CI_RABBIT_PORT"
PID_FILE="$D/rabbit.pid"          # beam.smp pid, written by the node early during boot
LAUNCHER_FILE="$D/launcher.pid"   # pid of the runuser process that wraps rabbitmq-server
LOG="$D/log/rabbit.log"
CONSOLE_LOG="$D/log/console.log"
TIMEOUT="${SHOP_CI_RABBIT_TIMEOUT:-90}"
RABBIT_LIB=/usr/lib/rabbitmq/bin

# Everything the node and the CLI need, passed through `env -i` so that nothing from the
# caller's environment (or /etc/rabbitmq/*) leaks in.
RENV=(
  PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
  LANG=C.UTF-8 LC_ALL=C.UTF-8
  HOME="$D"                                   # the Erlang cookie lives in $D/.erlang.cookie
  RABBITMQ_NODENAME="$SHOP_CI_RABBIT_NODENAME"
  RABBITMQ_NODE_IP_ADDRESS=127.0.0.1
  RABBITMQ_NODE_PORT="$PORT"
  RABBITMQ_DIST_PORT="$SHOP_CI_RABBIT_DIST_PORT"
  ERL_EPMD_PORT="$SHOP_CI_EPMD_PORT"          # private epmd => no clash with any other node/epmd
  ERL_EPMD_ADDRESS=127.0.0.1
  RABBITMQ_MNESIA_BASE="$D/mnesia"
  RABBITMQ_LOG_BASE="$D/log"
  RABBITMQ_LOGS="$LOG"
  RABBITMQ_PID_FILE="$PID_FILE"
  RABBITMQ_CONFIG_FILE="$D/rabbitmq.conf"
  RABBITMQ_ADVANCED_CONFIG_FILE="$D/advanced.config"
  RABBITMQ_CONF_ENV_FILE="$D/rabbitmq-env.conf"
  RABBITMQ_ENABLED_PLUGINS_FILE="$D/enabled_plugins"
  RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}"
)

as_rabbit() { (cd "$D" && runuser -u rabbitmq -- env -i "${RENV[@]}" "$@"); }

now_ms() { local t=${EPOCHREALTIME/[.,]/}; echo $((t / 1000)); }
fmt_since() { local d=$(( $(now_ms) - $1 )); printf '%d.%03ds' $((d / 1000)) $((d % 1000)); }

# alive PID: process exists and is not a zombie
alive() {
  local stat
  stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
  stat=${stat##*) }
  [ "${stat:0:1}" != Z ]
}

# PID of the running beam.smp of our node, or nothing
node_pid() {
  local pid
  [ -s "$PID_FILE" ] || return 1
  pid=$({ tr -dc 0-9 <"$PID_FILE"; } 2>/dev/null) || return 1
  [ -n "$pid" ] && alive "$pid" && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = beam.smp ] || return 1
  echo "$pid"
}

# PID of the still-running launcher (runuser -> sh rabbitmq-server -> beam.smp), or nothing
launcher_pid() {
  local pid
  [ -s "$LAUNCHER_FILE" ] || return 1
  pid=$({ tr -dc 0-9 <"$LAUNCHER_FILE"; } 2>/dev/null) || return 1
  [ -n "$pid" ] && alive "$pid" && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = runuser ] || return 1
  echo "$pid"
}

# The broker answers an AMQP 0-9-1 protocol header with a Connection.Start method frame
# (first byte 0x01) only once it is fully booted.
amqp_ready() {
  timeout 5 bash -c '
    exec 3<>"/dev/tcp/127.0.0.1/$1" || exit 1
    printf "AMQP\x00\x00\x09\x01" >&3
    IFS= read -r -d "" -t 3 -N 1 _b <&3
  ' _ "$PORT" 2>/dev/null
}

port_open() { timeout 2 bash -c 'exec 3<>"/dev/tcp/127.0.0.1/$1"' _ "$PORT" 2>/dev/null; }

show_logs() {
  echo "---- tail $CONSOLE_LOG ----" >&2; tail -n 30 "$CONSOLE_LOG" >&2 2>/dev/null || true
  echo "---- tail $LOG ----" >&2; tail -n 40 "$LOG" >&2 2>/dev/null || true
}

do_start() {
  local t0 launcher="" pid deadline
  t0=$(now_ms)
  if amqp_ready; then
    echo "rabbitmq-ctl: already running on 127.0.0.1:$PORT"
    return 0
  fi
  if pid=$(node_pid) || pid=$(launcher_pid); then
    echo "rabbitmq-ctl: node (pid $pid) is booting, waiting for it"
  else
    rm -f "$PID_FILE" "$LAUNCHER_FILE"
    if port_open; then
      die "something else listens on 127.0.0.1:$PORT but does not speak AMQP"
    fi
    mkdir -p "$D/log" && chown rabbitmq:rabbitmq "$D/log"
    echo "==== start $(date -Is) ====" >>"$CONSOLE_LOG"
    # setsid + redirects: fully detached from the caller's terminal, pipes and job table.
    ( cd "$D" && exec setsid runuser -u rabbitmq -- env -i "${RENV[@]}" "$RABBIT_LIB/rabbitmq-server" \
        >>"$CONSOLE_LOG" 2>&1 </dev/null ) &
    launcher=$!
    echo "$launcher" >"$LAUNCHER_FILE"
  fi
  deadline=$(( t0 + TIMEOUT * 1000 ))
  until amqp_ready; do
    if [ -n "$launcher" ] && ! alive "$launcher" && ! node_pid >/dev/null; then
      echo "rabbitmq-ctl: rabbitmq-server exited during startup" >&2
      show_logs; exit 1
    fi
    if [ "$(now_ms)" -ge "$deadline" ]; then
      echo "rabbitmq-ctl: AMQP not answering on 127.0.0.1:$PORT after ${TIMEOUT}s" >&2
      show_logs; exit 1
    fi
    sleep 0.25
  done
  echo "rabbitmq-ctl: up on 127.0.0.1:$PORT ($(fmt_since "$t0"))"
}

do_stop() {
  local sig="${1:-TERM}" t0 pid lpid deadline killed=""
  t0=$(now_ms)
  pid=$(node_pid) || pid=""
  lpid=$(launcher_pid) || lpid=""
  if [ -z "$pid" ] && [ -z "$lpid" ]; then
    if amqp_ready; then die "AMQP answers on $PORT but no live node pid in $PID_FILE"; fi
    echo "rabbitmq-ctl: already stopped"
    return 0
  fi
  # SIGTERM = graceful shutdown (rabbit_prelaunch_sighandler), SIGKILL = crash.
  if [ -n "$pid" ]; then
    kill "-$sig" "$pid" 2>/dev/null || true
  else
    # Very early in the boot (no pid file yet): runuser forwards SIGTERM down to the node.
    kill -TERM "$lpid" 2>/dev/null || true
  fi
  deadline=$(( t0 + TIMEOUT * 1000 ))
  while pid=$(node_pid) || pid=$(launcher_pid); do
    if [ "$(now_ms)" -ge "$deadline" ] && [ -z "$killed" ]; then
      echo "rabbitmq-ctl: node still alive after ${TIMEOUT}s, sending SIGKILL" >&2
      if p=$(node_pid); then kill -KILL "$p" 2>/dev/null || true; fi
      if p=$(launcher_pid); then kill -KILL "$p" 2>/dev/null || true; fi
      killed=1
      deadline=$(( $(now_ms) + 10000 ))
    elif [ "$(now_ms)" -ge "$deadline" ]; then
      die "could not stop the node (pid $pid)"
    fi
    sleep 0.1
  done
  [ "$sig" = KILL ] || rm -f "$PID_FILE"
  echo "rabbitmq-ctl: stopped (SIG$sig, $(fmt_since "$t0"))"
}

cmd="${1:-}"
[ $# -gt 0 ] && shift
case "$cmd" in
  start)   do_start ;;
  stop)    do_stop TERM ;;
  kill)    do_stop KILL ;;
  restart) do_stop TERM; do_start ;;
  status)
    if amqp_ready; then echo "rabbitmq-ctl: running on 127.0.0.1:$PORT"; exit 0
    else echo "rabbitmq-ctl: not answering on 127.0.0.1:$PORT"; exit 1; fi ;;
  ctl)     as_rabbit "$RABBIT_LIB/rabbitmqctl" "$@" ;;
  *)       echo "usage: $0 {start|stop|kill|restart|status|ctl [rabbitmqctl args...]}" >&2; exit 2 ;;
esac
