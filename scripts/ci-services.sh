#!/usr/bin/env bash
# Installs (if missing) and starts the services the report/ledger tests need:
#   * a throwaway PostgreSQL server on 127.0.0.1 (Debian's postgresql package), run as the
#     postgres user, with a test database;
#   * Debian's chromium, for the headless check of the HTML report;
#   * a throwaway redis-server on 127.0.0.1 (no persistence), for the shared-state tests;
#   * Debian's haproxy (installed, not started: the fleet test runs its own).
# Idempotent: a second run reuses the running server. Logs go to stderr; stdout is only
# `export NAME=value` lines (also written to $CI_SERVICES_DIR/env), so CI can do
#     eval "$(scripts/ci-services.sh)"
# Exports: TEST_POSTGRES_URL, TEST_POSTGRES_RESTART (a script restarting the server),
#          TEST_CHROMIUM (the browser binary), TEST_REDIS_URL, TEST_REDIS_STOP and
#          TEST_REDIS_START (scripts stopping and starting the Redis server, for fault tests).
# Settings: CI_SERVICES_DIR (default /tmp/atlas-ci-services), CI_PG_PORT (default 55432),
#           CI_REDIS_PORT (default 56379).
# Stop and remove everything:  scripts/ci-services.sh --stop
set -euo pipefail

STATE="${CI_SERVICES_DIR:-/tmp/atlas-ci-services}"
PORT="${CI_PG_PORT:-55432}"
REDIS_PORT="${CI_REDIS_PORT:-56379}"
DB=atlas_test
log() { echo "ci-services: $*" >&2; }

as_postgres() {
    if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

pg_bin() { ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1; }

if [ "${1:-}" = "--stop" ]; then
    if [ -x "$STATE/stop-redis.sh" ]; then "$STATE/stop-redis.sh" || true; fi
    if [ -n "$(pg_bin)" ] && [ -f "$STATE/pgdata/PG_VERSION" ]; then
        as_postgres "$(pg_bin)/pg_ctl" -D "$STATE/pgdata" -m fast -w stop >&2 || true
    fi
    rm -rf "$STATE"
    exit 0
fi

need=()
[ -n "$(pg_bin)" ] || need+=(postgresql)
command -v chromium >/dev/null 2>&1 || need+=(chromium)
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
# haproxy, the fleet test's load balancer (tests/test_fleet.py); Debian puts it in /usr/sbin.
[ -x /usr/sbin/haproxy ] || command -v haproxy >/dev/null 2>&1 || need+=(haproxy)
if [ "${#need[@]}" -gt 0 ]; then
    log "installing ${need[*]}"
    SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >&2
fi
PGBIN="$(pg_bin)"
[ -n "$PGBIN" ] || { log "no PostgreSQL binaries after install"; exit 1; }

mkdir -p "$STATE"
chmod 755 "$STATE"
[ "$(id -u)" = 0 ] && chown postgres "$STATE"
if [ ! -f "$STATE/pgdata/PG_VERSION" ]; then
    log "initdb in $STATE/pgdata"
    as_postgres "$PGBIN/initdb" -D "$STATE/pgdata" -U postgres -A trust --no-sync -E UTF8 >&2
fi
# Loopback only, socket in the state folder; fsync off: a throwaway test server.
PGOPTS="-p $PORT -k $STATE -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200"
if ! as_postgres "$PGBIN/pg_ctl" -D "$STATE/pgdata" status >/dev/null 2>&1; then
    log "starting PostgreSQL on 127.0.0.1:$PORT"
    as_postgres "$PGBIN/pg_ctl" -D "$STATE/pgdata" -o "$PGOPTS" -l "$STATE/postgres.log" -w -t 60 start >&2
fi
if ! "$PGBIN/psql" -h 127.0.0.1 -p "$PORT" -U postgres -tAc "SELECT 1 FROM pg_database WHERE datname='$DB'" | grep -q 1; then
    "$PGBIN/createdb" -h 127.0.0.1 -p "$PORT" -U postgres "$DB"
fi

cat > "$STATE/restart-postgres.sh" <<RESTART
#!/usr/bin/env bash
# Restarts the CI PostgreSQL server (fast shutdown: open connections are cut).
set -euo pipefail
if [ "\$(id -u)" = 0 ]; then RUN="runuser -u postgres --"; else RUN=""; fi
\$RUN "$PGBIN/pg_ctl" -D "$STATE/pgdata" -o "$PGOPTS" -l "$STATE/postgres.log" -m fast -w -t 60 restart >&2
RESTART
chmod 755 "$STATE/restart-postgres.sh"

# Redis: loopback only, no RDB or AOF files, daemonized with its pidfile in the state folder.
# The start script is also what the fault tests run to bring it back after a stop.
REDIS_SERVER="$(command -v redis-server)"
cat > "$STATE/start-redis.sh" <<START
#!/usr/bin/env bash
# Starts the CI Redis server unless it is running; waits until it answers.
set -euo pipefail
if [ -f "$STATE/redis.pid" ] && kill -0 "\$(cat "$STATE/redis.pid")" 2>/dev/null; then exit 0; fi
"$REDIS_SERVER" --bind 127.0.0.1 --port $REDIS_PORT --save "" --appendonly no --daemonize yes \\
    --pidfile "$STATE/redis.pid" --logfile "$STATE/redis.log" --dir "$STATE" >&2
for _ in \$(seq 100); do
    if (exec 3<>/dev/tcp/127.0.0.1/$REDIS_PORT) 2>/dev/null; then exit 0; fi
    sleep 0.05
done
echo "redis-server did not start on 127.0.0.1:$REDIS_PORT (see $STATE/redis.log)" >&2
exit 1
START
cat > "$STATE/stop-redis.sh" <<STOP
#!/usr/bin/env bash
# Stops the CI Redis server (SIGTERM; no data is kept) and waits until it has exited.
set -euo pipefail
[ -f "$STATE/redis.pid" ] || exit 0
pid="\$(cat "$STATE/redis.pid")"
kill "\$pid" 2>/dev/null || true
for _ in \$(seq 100); do
    kill -0 "\$pid" 2>/dev/null || { rm -f "$STATE/redis.pid"; exit 0; }
    sleep 0.05
done
echo "redis-server \$pid did not stop" >&2
exit 1
STOP
chmod 755 "$STATE/start-redis.sh" "$STATE/stop-redis.sh"
log "starting redis-server on 127.0.0.1:$REDIS_PORT (if not running)"
"$STATE/start-redis.sh"

cat > "$STATE/env" <<ENV
export TEST_POSTGRES_URL=postgresql://postgres@127.0.0.1:$PORT/$DB
export TEST_POSTGRES_RESTART=$STATE/restart-postgres.sh
export TEST_CHROMIUM=$(command -v chromium)
export TEST_REDIS_URL=redis://127.0.0.1:$REDIS_PORT/0
export TEST_REDIS_STOP=$STATE/stop-redis.sh
export TEST_REDIS_START=$STATE/start-redis.sh
ENV
cat "$STATE/env"
