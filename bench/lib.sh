# Shared by the bench scripts (source it from the repository root with WORK set to a scratch
# directory): the release build, the server configuration, a server pinned to core 0 on a
# free port, and a throwaway PostgreSQL cluster. The load generator runs on core 1 (`load`).

# Builds the server and the load generator and takes a copy of both into $WORK/bin (a
# checkout sharing the target directory may rebuild them meanwhile); sets BIN and LOAD.
bench_build() {
  cargo build --release -q -p dialogue -p loadgen
  local target=${CARGO_TARGET_DIR:-$PWD/target} name
  mkdir -p "$WORK/bin"
  for name in dialogue dialogue-load; do
    cp -l "$target/release/$name" "$WORK/bin/" 2>/dev/null || cp "$target/release/$name" "$WORK/bin/"
  done
  BIN=$WORK/bin/dialogue
  LOAD=$WORK/bin/dialogue-load
  # The floor (../shared/floor, or FLOOR_DIR): a minimal Socket.IO fan-out server measured in
  # the same runs; FLOOR stays empty when its sources are not there.
  FLOOR=
  local floor_dir=${FLOOR_DIR:-../shared/floor}
  if [ -f "$floor_dir/Cargo.toml" ]; then
    cargo build --release -q --manifest-path "$floor_dir/Cargo.toml" --target-dir "$target/floor"
    cp "$target/floor/release/sio-limit" "$WORK/bin/"
    FLOOR=$WORK/bin/sio-limit
  else
    echo "bench: no floor server at $floor_dir (set FLOOR_DIR); its rows are left out" >&2
  fi
}

# Starts the floor server pinned to core 0 on a free port, as start_server does the product
# (one thread: the product runs one room thread there too); sets SERVER, PORT,
# URL and adds the pid to SERVERS.
start_floor() {
  PORT=$(free_port)
  URL=http://127.0.0.1:$PORT
  taskset -c 0 "$FLOOR" --port "$PORT" --threads 1 >>"$WORK/floor-$PORT.log" 2>&1 &
  SERVER=$!
  SERVERS+=("$SERVER")
  local _
  for _ in $(seq 100); do
    (: </dev/tcp/127.0.0.1/"$PORT") 2>/dev/null && return 0
    sleep 0.1
  done
  echo "the floor server did not listen; its log:" >&2
  tail -20 "$WORK/floor-$PORT.log" >&2
  return 1
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# The benchmark configuration: one room thread, no rate limits; rooms general,
# deep, scan, and soak0 … soak{$1 - 1}.
write_config() { # $1 = file, $2 = soak rooms (default 100), $3 = durability (default stored)
  {
    echo "database: { durability: ${3:-stored} }"
    cat <<'YAML'
server: { host: 127.0.0.1, port: 0, roomThreads: 1 }
limits: { historyRequestsPerMinute: 0, triggersPerSecond: 0 }
events:
  message:
    schema:
      type: object
      required: [text, username]
      properties: { text: { type: string }, username: { type: string } }
    history: { enabled: true, limit: 100 }
rooms:
  general: { name: General, events: [message] }
  deep: { name: Deep, events: [message] }
  scan: { name: Scan, events: [message] }
YAML
    for ((r = 0; r < ${2:-100}; r++)); do
      echo "  soak$r: { name: Soak $r, events: [message] }"
    done
  } >"$1"
}

# Running: the process exists and is not a zombie.
running() {
  local state
  state=$(sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f1) || return 1
  [ -n "$state" ] && [ "$state" != Z ]
}

# Waits for GET /readyz to answer 200 (up to $2 tenths of a second).
wait_ready() { # $1 = port, $2 = tries
  local _
  for _ in $(seq "${2:-600}"); do
    [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$1/readyz")" = 200 ] && return 0
    sleep 0.1
  done
  return 1
}

# The command line that starts the server in the background on $PORT, with its log in
# $SERVER_LOG and its pid written to $2.
server_cmd() { # $1 = database url, $2 = pid file
  printf 'DATABASE_URL=%q PORT=%q RUST_LOG=%q taskset -c 0 %q serve --config %q >>%q 2>&1 & echo $! >%q' \
    "$1" "$PORT" "${SERVER_LOG_LEVEL:-warn}" "$BIN" "$CONFIG" "$SERVER_LOG" "$2"
}

# Starts the server on a free port against database $1 and waits until it is ready; sets
# SERVER (pid), PORT, URL, SERVER_LOG and adds the pid to SERVERS.
start_server() { # $1 = database url
  PORT=$(free_port)
  URL=http://127.0.0.1:$PORT
  SERVER_LOG=$WORK/server-$PORT.log
  DATABASE_URL="$1" PORT=$PORT RUST_LOG=${SERVER_LOG_LEVEL:-warn} \
    taskset -c 0 "$BIN" serve --config "$CONFIG" >>"$SERVER_LOG" 2>&1 &
  SERVER=$!
  SERVERS+=("$SERVER")
  if ! wait_ready "$PORT"; then
    echo "the server did not become ready; its log:" >&2
    tail -20 "$SERVER_LOG" >&2
    return 1
  fi
}

# SIGTERM (a graceful shutdown), then SIGKILL after 30 s.
stop_pid() { # $1 = pid
  local pid=$1 _
  running "$pid" || { wait "$pid" 2>/dev/null || true; return 0; }
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 300); do
    running "$pid" || break
    sleep 0.1
  done
  running "$pid" && kill -KILL "$pid" 2>/dev/null
  wait "$pid" 2>/dev/null || true
}

stop_server() { stop_pid "$SERVER"; }

# Stops every server in SERVERS.
stop_servers() {
  local pid
  for pid in "${SERVERS[@]}"; do stop_pid "$pid"; done
  SERVERS=()
}
SERVERS=()

# The load generator, pinned to core 1.
load() { taskset -c 1 "$LOAD" "$@"; }

# A throwaway PostgreSQL cluster in $WORK/pg (as the postgres user when running as root);
# sets PGPORT. Fails when the server binaries are missing.
pg_start() {
  PGBIN=$(dirname "$(ls /usr/lib/postgresql/*/bin/pg_ctl 2>/dev/null | sort -V | tail -1)")
  [ -x "$PGBIN/pg_ctl" ] || return 1
  PGDATA=$WORK/pg/data
  PGPORT=$(free_port)
  mkdir -p "$PGDATA"
  if [ "$(id -u)" = 0 ]; then
    chmod o+x "$WORK"
    chown -R postgres "$WORK/pg"
    AS="runuser -u postgres --"
  else
    AS=""
  fi
  $AS "$PGBIN/initdb" -D "$PGDATA" -U postgres --auth=trust --no-sync >/dev/null
  $AS "$PGBIN/pg_ctl" -D "$PGDATA" -o "-p $PGPORT -k $WORK/pg -c listen_addresses=127.0.0.1" \
    -l "$WORK/pg/pg.log" -w start >/dev/null
}

# Creates database $1 in the throwaway cluster and prints its URL.
pg_createdb() {
  $AS "$PGBIN/psql" -h 127.0.0.1 -p "$PGPORT" -U postgres -qc "CREATE DATABASE $1" >/dev/null
  echo "postgres://postgres@127.0.0.1:$PGPORT/$1"
}

pg_dropdb() {
  $AS "$PGBIN/psql" -h 127.0.0.1 -p "$PGPORT" -U postgres -q \
    -c "SET client_min_messages = warning" -c "DROP DATABASE IF EXISTS $1" >/dev/null
}

pg_stop() {
  [ -n "${PGDATA:-}" ] && [ -d "$PGDATA" ] || return 0
  $AS "$PGBIN/pg_ctl" -D "$PGDATA" -m fast stop >/dev/null 2>&1 || true
}
