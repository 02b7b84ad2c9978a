#!/usr/bin/env bash
# A class larger than one app process, on one machine: a Dask scheduler and worker for the jobs, K
# `streamlit run app.py` processes on ports 8601.., and nginx in front of them on one port, sticky by a
# cookie of its own (see docs/PROXY.md). Everything stops with Ctrl-C.
#
#   scripts/serve_class.sh [K=2] [PORT=8600]
#
# Environment: PLAYGROUND_HOME (the one data folder every process shares; default as the app's),
# PLAYGROUND_DB_URL (PostgreSQL instead of SQLite), PLAYGROUND_SCHEDULER (a cluster of your own: then no
# scheduler or worker is started here), WORKERS (local Dask worker processes, default 1), LISTEN (nginx's
# address, default 127.0.0.1; 0.0.0.0 for a classroom), APP_PORT0 (the app processes listen on
# APP_PORT0+1 … APP_PORT0+K, default 8600), RUN_DIR (logs and nginx.conf, default a new
# temporary folder).
set -euo pipefail
cd "$(dirname "$0")/.."
K="${1:-2}" PORT="${2:-8600}" APP_PORT0="${APP_PORT0:-8600}"
RUN_DIR="${RUN_DIR:-$(mktemp -d /tmp/playground-class.XXXXXX)}"
mkdir -p "$RUN_DIR"
PIDS=()
stop() { trap - EXIT INT TERM; kill "${PIDS[@]}" 2>/dev/null || true; wait 2>/dev/null || true; exit; }
trap stop EXIT INT TERM

if [ -z "${PLAYGROUND_SCHEDULER:-}" ]; then      # one engine for every app process, not a LocalCluster each
  DASK_PORT="${DASK_PORT:-8786}"
  PYTHONPATH="$PWD" dask scheduler --host 127.0.0.1 --port "$DASK_PORT" --no-dashboard \
    >"$RUN_DIR/scheduler.log" 2>&1 & PIDS+=($!)
  PYTHONPATH="$PWD" MALLOC_ARENA_MAX=2 dask worker "tcp://127.0.0.1:$DASK_PORT" --nworkers "${WORKERS:-1}" \
    --nthreads 1 --no-dashboard >"$RUN_DIR/worker.log" 2>&1 & PIDS+=($!)
  export PLAYGROUND_SCHEDULER="tcp://127.0.0.1:$DASK_PORT"
fi

# One cookie secret for all: Streamlit signs only st.login's cookies with it (unused here; the XSRF check
# needs no secret), but its docs ask replicas to share it. From the environment, not the command line.
export STREAMLIT_SERVER_COOKIE_SECRET="${STREAMLIT_SERVER_COOKIE_SECRET:-$(python3 -c 'import secrets; print(secrets.token_hex(32))')}"
SERVERS=""
for i in $(seq 1 "$K"); do
  APP_PORT=$((APP_PORT0 + i))
  MALLOC_ARENA_MAX=2 PYTHONUNBUFFERED=1 python3 -m streamlit run app.py --server.headless true \
    --server.address 127.0.0.1 --server.port "$APP_PORT" --server.fileWatcherType none \
    >"$RUN_DIR/app-$APP_PORT.log" 2>&1 & PIDS+=($!)
  SERVERS="$SERVERS    server 127.0.0.1:$APP_PORT max_fails=0;   # a rejected request never takes a process out for everyone
"
done

cat >"$RUN_DIR/nginx.conf" <<CONF
daemon off;
worker_processes 1;
pid $RUN_DIR/nginx.pid;
error_log $RUN_DIR/nginx-error.log;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $RUN_DIR/body; proxy_temp_path $RUN_DIR/proxy; fastcgi_temp_path $RUN_DIR/fastcgi;
  uwsgi_temp_path $RUN_DIR/uwsgi; scgi_temp_path $RUN_DIR/scgi;
  client_max_body_size 100m;                  # the largest upload the app takes (a workspace import)
  map \$http_upgrade \$connection_upgrade { default upgrade; '' close; }
  # Sticky by a random id in a cookie of our own: one browser, one app process (its websocket session,
  # its /media downloads and its /_stcore/upload_file uploads live in that process's memory). A browser
  # without the cookie gets a fresh id, so laptops behind one NAT address still spread over the processes.
  map \$cookie_playground_backend \$sticky { '' \$request_id; default \$cookie_playground_backend; }
  map \$cookie_playground_backend \$sticky_cookie { '' "playground_backend=\$request_id; Path=/; HttpOnly; SameSite=Lax"; default ''; }
  upstream playground {
    hash \$sticky consistent;
$SERVERS  }
  server {
    listen ${LISTEN:-127.0.0.1}:$PORT;
    location / {
      proxy_pass http://playground;
      proxy_http_version 1.1;
      proxy_set_header Upgrade \$http_upgrade;          # the websocket of /_stcore/stream
      proxy_set_header Connection \$connection_upgrade;
      proxy_set_header Host \$host;
      proxy_set_header X-Forwarded-For \$remote_addr;   # the visitor's own address (replaced, never appended)
      proxy_set_header X-Forwarded-Proto \$scheme;
      proxy_read_timeout 1d; proxy_send_timeout 1d;     # a quiet websocket stays open through a lesson
      proxy_buffering off; proxy_request_buffering off;   # no temporary files: uploads and downloads stream
      add_header Set-Cookie \$sticky_cookie;
      add_header X-Playground-Backend \$upstream_addr;  # which process answered (for checks)
    }
  }
}
CONF
nginx -t -c "$RUN_DIR/nginx.conf" -p "$RUN_DIR" 2>>"$RUN_DIR/nginx-error.log"
nginx -c "$RUN_DIR/nginx.conf" -p "$RUN_DIR" & PIDS+=($!)

for i in $(seq 1 "$K"); do            # each answers its health check within two minutes, or all stop
  for _ in $(seq 240); do curl -sf "http://127.0.0.1:$((APP_PORT0 + i))/_stcore/health" >/dev/null && break; sleep 0.5; done
  curl -sf "http://127.0.0.1:$((APP_PORT0 + i))/_stcore/health" >/dev/null || { echo "app on $((APP_PORT0 + i)) did not start: $RUN_DIR" >&2; exit 1; }
done
echo "$K app processes behind http://${LISTEN:-127.0.0.1}:$PORT/ (jobs on $PLAYGROUND_SCHEDULER; logs in $RUN_DIR)"
wait
