# shellcheck shell=bash
# Throwaway PostgreSQL + RabbitMQ for the test suite (Debian packages, no systemd).
#
# Meant to be *sourced* (bash only), e.g. from .ci/run:
#
#     source .ci/services.sh           # installs if needed, starts both, exports the variables below
#     trap shop_ci_services_stop EXIT
#
# Exports:
#   TEST_POSTGRES_URL   postgresql+psycopg://postgres@127.0.0.1:<port>/shop_test  (trust auth, superuser)
#   TEST_AMQP_URL       amqp://guest:guest@127.0.0.1:<port>//
#   SHOP_CI_STATE       KEY=VALUE state file read by .ci/postgres-ctl.sh and .ci/rabbitmq-ctl.sh
#   SHOP_CI_POSTGRES_CTL, SHOP_CI_RABBITMQ_CTL   absolute paths of those two scripts
#
# Defines:
#   shop_ci_services_start   (called automatically when sourced, unless SHOP_CI_SERVICES_NO_AUTOSTART=1)
#   shop_ci_services_stop    stops both servers, removes the temp dir (keep it with SHOP_CI_KEEP_TMP=1),
#                            unsets the variables. Idempotent, always returns 0 => safe in an EXIT trap
#                            (bash keeps the script's exit status across an EXIT trap).
#
# Knobs: SHOP_CI_PG_TIMEOUT (60), SHOP_CI_RABBIT_TIMEOUT (90), SHOP_CI_KEEP_TMP (unset).
#
# Everything lives in one `mktemp -d /tmp/shop-ci.XXXXXX` dir and uses ports that are free at start-up
# and outside the kernel's ephemeral range (so an outgoing connection can't steal them while a server
# is stopped by a test). RabbitMQ gets its own epmd on its own port, so a stale epmd/rabbit from an
# earlier run (or a system one on 4369/5672) never interferes, and no stale process needs killing.
# Sourcing must not leave the caller with `set -e` / `set -u` problems: every step is checked explicitly.

SHOP_CI_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
SHOP_CI_POSTGRES_CTL="$SHOP_CI_DIR/postgres-ctl.sh"
SHOP_CI_RABBITMQ_CTL="$SHOP_CI_DIR/rabbitmq-ctl.sh"
export SHOP_CI_POSTGRES_CTL SHOP_CI_RABBITMQ_CTL

_shop_ci_now_ms() { local t=${EPOCHREALTIME/[.,]/}; echo $((t / 1000)); }
_shop_ci_fmt_since() { local d=$(( $(_shop_ci_now_ms) - $1 )); printf '%d.%03ds' $((d / 1000)) $((d % 1000)); }
_shop_ci_log() { printf '[ci-services] %s\n' "$*" >&2; }

_shop_ci_have_packages() {
  compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || return 1
  command -v rabbitmq-server >/dev/null 2>&1 || [ -x /usr/sbin/rabbitmq-server ] || return 1
  [ -x /usr/lib/rabbitmq/bin/rabbitmq-server ] || return 1
}

_shop_ci_install() {
  local t0 log rc=0 made_policy=""
  if _shop_ci_have_packages; then
    _shop_ci_log "postgresql + rabbitmq-server already installed"
    return 0
  fi
  if [ "$(id -u)" != 0 ]; then
    _shop_ci_log "ERROR: postgresql/rabbitmq-server missing and not root, cannot apt-get install"
    return 1
  fi
  t0=$(_shop_ci_now_ms)
  log=$(mktemp /tmp/shop-ci-apt.XXXXXX.log) || return 1
  _shop_ci_log "installing postgresql rabbitmq-server via apt-get (log: $log)"
  # Don't let the packages' maintainer scripts start system-wide servers (5432/5672/4369):
  # we run our own private instances.
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod 755 /usr/sbin/policy-rc.d && made_policy=1
  fi
  DEBIAN_FRONTEND=noninteractive apt-get -q -o DPkg::Lock::Timeout=300 update >>"$log" 2>&1 || rc=$?
  if [ "$rc" = 0 ]; then
    DEBIAN_FRONTEND=noninteractive apt-get -q -y -o DPkg::Lock::Timeout=300 install postgresql rabbitmq-server \
      >>"$log" 2>&1 || rc=$?
  fi
  if [ -n "$made_policy" ]; then rm -f /usr/sbin/policy-rc.d; fi
  if [ "$rc" != 0 ] || ! _shop_ci_have_packages; then
    _shop_ci_log "ERROR: apt-get failed (rc=$rc); last lines of $log:"
    tail -n 30 "$log" >&2
    return 1
  fi
  rm -f "$log"
  _shop_ci_log "packages installed in $(_shop_ci_fmt_since "$t0")"
}

# Print N distinct TCP ports that are free right now, preferably below the ephemeral port range.
_shop_ci_free_ports() {
  local n="$1"
  if command -v python3 >/dev/null 2>&1; then
    python3 - "$n" <<'PY' && return 0
import random, socket, sys
n = int(sys.argv[1])
try:
    lo, hi = map(int, open('/proc/sys/net/ipv4/ip_local_port_range').read().split())
except Exception:
    lo, hi = 32768, 60999
cand = (10000, lo - 1) if lo > 12000 else ((hi + 1, 65535) if hi < 63000 else None)
out, tries = [], 0
while len(out) < n:
    tries += 1
    if cand and tries < 5000:
        p = random.randint(*cand)
    else:
        s = socket.socket(); s.bind(('127.0.0.1', 0)); p = s.getsockname()[1]; s.close()
    if p in out:
        continue
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.bind(('0.0.0.0', p))  # no SO_REUSEADDR: fails if anything uses the port, even TIME_WAIT
    except OSError:
        continue
    finally:
        s.close()
    out.append(p)
print(' '.join(map(str, out)))
PY
  fi
  # Fallback without python: random ports nobody answers on.
  local out=() p
  while [ "${#out[@]}" -lt "$n" ]; do
    p=$(( 10000 + RANDOM % 20000 ))
    case " ${out[*]} " in *" $p "*) continue ;; esac
    # shellcheck disable=SC2016
    if ! timeout 1 bash -c 'exec 3<>"/dev/tcp/127.0.0.1/$1"' _ "$p" 2>/dev/null; then out+=("$p"); fi
  done
  echo "${out[*]}"
}

_shop_ci_fail() {
  _shop_ci_log "ERROR: $*"
  _shop_ci_log "cleaning up what was started"
  shop_ci_services_stop
  return 1
}

shop_ci_services_start() {
  local t0 t pg_bin base ports pg_port amqp_port dist_port epmd_port state pgd rd db=shop_test
  t0=$(_shop_ci_now_ms)
  if [ -n "${SHOP_CI_STATE:-}" ] && [ -f "$SHOP_CI_STATE" ]; then
    _shop_ci_log "services from a previous start are still registered ($SHOP_CI_STATE); stopping them first"
    shop_ci_services_stop
  fi
  if [ "$(id -u)" != 0 ]; then _shop_ci_log "ERROR: must run as root (needs runuser)"; return 1; fi
  _shop_ci_install || return 1

  pg_bin=$(printf '%s\n' /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
  [ -x "$pg_bin/initdb" ] || { _shop_ci_log "ERROR: no initdb under /usr/lib/postgresql/*/bin"; return 1; }
  if ! getent hosts localhost >/dev/null; then
    _shop_ci_log "ERROR: 'localhost' does not resolve (needed for the rabbit@localhost node name)"
    return 1
  fi

  ports=$(_shop_ci_free_ports 4) || { _shop_ci_log "ERROR: could not pick free ports"; return 1; }
  read -r pg_port amqp_port dist_port epmd_port <<<"$ports"
  base=$(mktemp -d /tmp/shop-ci.XXXXXX) || return 1
  chmod 755 "$base"
  state="$base/state.env"
  pgd="$base/pg"
  rd="$base/rabbit"
  {
    printf '%s=%q\n' \
      SHOP_CI_BASE "$base" \
      SHOP_CI_PG_BIN "$pg_bin" \
      SHOP_CI_PG_DATA "$pgd/data" \
      SHOP_CI_PG_LOG "$pgd/postgres.log" \
      SHOP_CI_PG_PORT "$pg_port" \
      SHOP_CI_PG_DB "$db" \
      SHOP_CI_RABBIT_DIR "$rd" \
      SHOP_CI_RABBIT_PORT "$amqp_port" \
      SHOP_CI_RABBIT_DIST_PORT "$dist_port" \
      SHOP_CI_EPMD_PORT "$epmd_port" \
      SHOP_CI_RABBIT_NODENAME rabbit@localhost
  } >"$state" || { rm -rf "$base"; return 1; }
  export SHOP_CI_STATE="$state"
  _shop_ci_log "state $state (postgres :$pg_port, amqp :$amqp_port, dist :$dist_port, epmd :$epmd_port)"

  # --- RabbitMQ: prepare the dir and kick off the (slow) boot in the background -----------------
  mkdir -p "$rd/mnesia" "$rd/log" || { _shop_ci_fail "mkdir $rd"; return 1; }
  cat >"$rd/rabbitmq.conf" <<'EOF'
loopback_users.guest = true
disk_free_limit.absolute = 50MB
log.file.level = info
EOF
  echo '[].' >"$rd/enabled_plugins"
  : >"$rd/rabbitmq-env.conf"
  (umask 077 && head -c 30 /dev/urandom | base64 | tr -dc 'A-Za-z0-9' >"$rd/.erlang.cookie")
  chmod 400 "$rd/.erlang.cookie"
  if ! chown -R rabbitmq:rabbitmq "$rd"; then _shop_ci_fail "chown rabbitmq $rd (is the rabbitmq user missing?)"; return 1; fi
  local rabbit_out="$base/rabbitmq-start.out" rabbit_job
  bash "$SHOP_CI_RABBITMQ_CTL" start >"$rabbit_out" 2>&1 </dev/null &
  rabbit_job=$!

  # --- PostgreSQL (meanwhile) ---------------------------------------------------------------------
  t=$(_shop_ci_now_ms)
  if ! { mkdir -p "$pgd" && chown postgres:postgres "$pgd"; }; then
    wait "$rabbit_job"; _shop_ci_fail "mkdir $pgd"; return 1
  fi
  if ! (cd / && runuser -u postgres -- "$pg_bin/initdb" -D "$pgd/data" -U postgres -A trust -E UTF8 \
          --locale=C --no-sync >"$base/initdb.log" 2>&1); then
    tail -n 20 "$base/initdb.log" >&2
    wait "$rabbit_job"; _shop_ci_fail "initdb failed"; return 1
  fi
  cat >>"$pgd/data/postgresql.conf" <<EOF

# --- shop CI ---
listen_addresses = '127.0.0.1'
port = $pg_port
unix_socket_directories = '$pgd'
max_connections = 200
# fsync/full_page_writes off only matter for an OS crash; a killed postgres loses nothing.
# (synchronous_commit stays on: with it off, "postgres-ctl.sh kill" would lose recent commits.)
fsync = off
full_page_writes = off
EOF
  _shop_ci_log "postgres: initdb $(_shop_ci_fmt_since "$t")"
  t=$(_shop_ci_now_ms)
  if ! bash "$SHOP_CI_POSTGRES_CTL" start >&2; then
    wait "$rabbit_job"; _shop_ci_fail "postgres did not start"; return 1
  fi
  if ! "$pg_bin/createdb" -h 127.0.0.1 -p "$pg_port" -U postgres "$db"; then
    wait "$rabbit_job"; _shop_ci_fail "createdb $db failed"; return 1
  fi
  export TEST_POSTGRES_URL="postgresql+psycopg://postgres@127.0.0.1:$pg_port/$db"
  _shop_ci_log "postgres: started + database $db created in $(_shop_ci_fmt_since "$t")"

  # --- wait for RabbitMQ --------------------------------------------------------------------------
  t=$(_shop_ci_now_ms)
  local rc=0
  wait "$rabbit_job" || rc=$?
  cat "$rabbit_out" >&2
  if [ "$rc" != 0 ]; then _shop_ci_fail "rabbitmq did not start (rc=$rc)"; return 1; fi
  export TEST_AMQP_URL="amqp://guest:guest@127.0.0.1:$amqp_port//"
  _shop_ci_log "rabbitmq: ready (waited another $(_shop_ci_fmt_since "$t") after postgres)"

  _shop_ci_log "TEST_POSTGRES_URL=$TEST_POSTGRES_URL"
  _shop_ci_log "TEST_AMQP_URL=$TEST_AMQP_URL"
  _shop_ci_log "services up in $(_shop_ci_fmt_since "$t0")"
}

shop_ci_services_stop() {
  local t0 base="" epmd_port=""
  local state="${SHOP_CI_STATE:-}"
  if [ -z "$state" ] || [ ! -f "$state" ]; then
    unset SHOP_CI_STATE TEST_POSTGRES_URL TEST_AMQP_URL
    return 0
  fi
  t0=$(_shop_ci_now_ms)
  # shellcheck disable=SC1090
  base=$( . "$state" 2>/dev/null; echo "${SHOP_CI_BASE:-}" ) || true
  # shellcheck disable=SC1090
  epmd_port=$( . "$state" 2>/dev/null; echo "${SHOP_CI_EPMD_PORT:-}" ) || true
  local ok=1
  SHOP_CI_STATE="$state" bash "$SHOP_CI_RABBITMQ_CTL" stop >&2 || { ok=""; _shop_ci_log "WARNING: rabbitmq stop failed"; }
  SHOP_CI_STATE="$state" bash "$SHOP_CI_POSTGRES_CTL" stop >&2 || { ok=""; _shop_ci_log "WARNING: postgres stop failed"; }
  # our private epmd (started by the node itself); only answers if no node is registered any more
  if [ -n "$epmd_port" ]; then
    timeout 10 epmd -port "$epmd_port" -kill >/dev/null 2>&1 || true
  fi
  if [ -n "$base" ] && [ -d "$base" ]; then
    if [ -n "${SHOP_CI_KEEP_TMP:-}" ]; then
      _shop_ci_log "keeping $base (SHOP_CI_KEEP_TMP set)"
    elif [ -z "$ok" ]; then
      _shop_ci_log "keeping $base (something may still be running; retry: SHOP_CI_STATE=$state .ci/rabbitmq-ctl.sh stop)"
    else
      rm -rf -- "$base" || true
    fi
  fi
  unset SHOP_CI_STATE TEST_POSTGRES_URL TEST_AMQP_URL
  _shop_ci_log "services stopped in $(_shop_ci_fmt_since "$t0")"
  return 0
}

if [ -z "${SHOP_CI_SERVICES_NO_AUTOSTART:-}" ]; then
  shop_ci_services_start || return 1
fi
