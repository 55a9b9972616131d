#!/usr/bin/env bash
# Runs every benchmark BENCHMARKS.md records, each next to its baseline in the same run,
# RUNS times where the figure is noisy (medians go in BENCHMARKS.md). Takes about 15 minutes
# on 2 cores after the release build; needs wrk (apt-get install wrk) for the HTTP figures,
# and runs nginx beside the proxy as a reference when it is installed (apt-get install nginx-light).
#
#   bench/run.sh                 # everything
#   bench/run.sh fast scheduler  # only some: fast http concurrency outage scheduler webhooks scale
#                                # restart proxy
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/tokenwarden-target}"
RUNS="${RUNS:-3}"
BIN="$CARGO_TARGET_DIR/release"
OUT="${BENCH_OUT:-$(mktemp -d /tmp/tokenwarden-bench.XXXXXX)}"
mkdir -p "$OUT"
WANT="${*:-fast http concurrency outage scheduler webhooks scale restart proxy}"
want() { [[ " $WANT " == *" $1 "* ]]; }

echo "# machine: $(nproc) cores, $(free -g | awk '/Mem:/ {print $2}') GiB, $(uname -sr), $(date -u +%F)"
echo "# output: $OUT"
cargo build --release --locked -p tokenwarden-server --bin tokenwarden --example baseline_http \
  --example bench_restart --example proxy_floor
cargo build --release --locked -p tokenwarden --examples

if want fast; then
  echo "## in-process fast path (criterion)"
  cargo bench --locked -p tokenwarden --bench fast_path -- --warm-up-time 2 --measurement-time 5 \
    2>&1 | grep -E "^fast_path|time:" | tee "$OUT/fast.txt"
fi

if want concurrency; then
  echo "## 1,000 concurrent callers on one expired token"
  for i in $(seq "$RUNS"); do "$BIN/examples/bench_concurrency" 1000; done | tee "$OUT/concurrency.txt"
fi

if want scheduler; then
  # Rounds (median reported) run inside one process, side by side with the baseline.
  echo "## scheduler throughput vs durable single-row commits (SQLite)"
  BENCH_ROUNDS="${RUNS}" "$BIN/examples/bench_scheduler" 2000 | tee "$OUT/scheduler.txt"
  if [[ -n "${TOKENWARDEN_TEST_POSTGRES_URL:-}" ]]; then
    echo "## scheduler throughput vs durable single-row commits (PostgreSQL)"
    BENCH_ROUNDS="${RUNS}" "$BIN/examples/bench_scheduler" 2000 "$TOKENWARDEN_TEST_POSTGRES_URL" \
      | tee "$OUT/scheduler_pg.txt"
  fi
fi

if want webhooks; then
  # Outbox off vs on in alternating rounds of scheduled refreshes (successful, then failing
  # with one event each), then one worker delivering 10,000 events to a local receiver.
  # 6,000 connections and at least 11 pairs: single pairs spread by ±20% on 2 cores, and
  # medians of 5 pairs moved by ±5 points from run to run.
  WEBHOOK_ROUNDS=$(( RUNS > 11 ? RUNS : 11 ))
  echo "## webhooks: outbox cost on scheduled refreshes, delivery throughput (SQLite)"
  BENCH_ROUNDS="$WEBHOOK_ROUNDS" "$BIN/examples/bench_webhooks" 6000 | tee "$OUT/webhooks.txt"
  if [[ -n "${TOKENWARDEN_TEST_POSTGRES_URL:-}" ]]; then
    echo "## webhooks: outbox cost on scheduled refreshes, delivery throughput (PostgreSQL)"
    BENCH_ROUNDS="$WEBHOOK_ROUNDS" "$BIN/examples/bench_webhooks" 6000 \
      "$TOKENWARDEN_TEST_POSTGRES_URL" | tee "$OUT/webhooks_pg.txt"
  fi
fi

if want outage; then
  echo "## 30 s provider outage, 100 callers, breaker on vs off"
  "$BIN/examples/bench_outage" 30 | tee "$OUT/outage.txt"
fi

if want restart; then
  # kill -9 while 64 refreshes are in flight, restart on the same file: time from spawn to
  # the first refreshed token of a connection that was mid-refresh, beside /readyz.
  echo "## restart after kill -9 during refreshes, 100,000 connections in SQLite"
  BENCH_ROUNDS="${RUNS}" "$BIN/examples/bench_restart" 100000 64 | tee "$OUT/restart.txt"
fi

# Starts `tokenwarden serve` on a config over database $1 and waits for /healthz; sets
# SERVER_PID and STARTUP (seconds until healthy). Not to be called in $(…): it sets globals.
start_server() {
  local db="$1" port="$2" key="$3"
  cat > "$OUT/config.toml" <<TOML
listen = "127.0.0.1:$port"
database_url = "sqlite://$db"
[encryption]
active_key = "k1"
keys = { k1 = "$key" }
[auth]
api_keys = ["bench-api-key-0123456789"]
[scheduler]
enabled = false
[providers.bench]
kind = "oauth2"
client_id = "bench"
client_secret = "bench-secret"
token_url = "http://127.0.0.1:9/token"
${API_BASE_URL:+api_base_url = \"$API_BASE_URL\"}
TOML
  local t0; t0=$(date +%s.%N)
  RUST_LOG="${SERVER_LOG:-warn}" "$BIN/tokenwarden" serve --config "$OUT/config.toml" > "$OUT/serve.log" 2>&1 &
  SERVER_PID=$!
  until curl -sf "http://127.0.0.1:$port/healthz" > /dev/null; do sleep 0.02; done
  STARTUP=$(echo "$(date +%s.%N) - $t0" | bc)
}

# The load every HTTP figure is taken with: 2 threads, 64 connections, 10 s, with the API key
# (then any more options, and the URL).
wrk_load() {
  wrk -t2 -c64 -d10s --latency -H "Authorization: Bearer bench-api-key-0123456789" "$@"
}

wrk_run() {
  wrk_load "$1" | grep -E "Requests/sec|  99%|  50%"
}

if want http || want scale || want proxy; then
  command -v wrk > /dev/null || { echo "wrk missing: apt-get install -y wrk"; exit 1; }
  KEY=$("$BIN/tokenwarden" keys generate | tail -n1)
fi

if want http; then
  # Twice: with warn (no access log) and with the default info level, which writes one
  # access-log line per request; the baseline runs beside each.
  for level in warn info; do
    echo "## HTTP fast path (RUST_LOG=$level): tokenwarden serve vs bare axum, wrk -t2 -c64 -d10s"
    rm -f "$OUT/http.db"*
    TOKENWARDEN_BENCH_KEY="$KEY" "$BIN/examples/bench_generate" "sqlite://$OUT/http.db" 1000 bench > /dev/null
    SERVER_LOG="$level" start_server "$OUT/http.db" 8430 "$KEY"
    "$BIN/examples/baseline_http" 127.0.0.1:8431 > /dev/null &
    BASE_PID=$!
    until curl -s -o /dev/null "http://127.0.0.1:8431/"; do sleep 0.02; done
    PATH_="/v1/users/user-0000500/connections/bench/acct/access-token"
    for i in $(seq "$RUNS"); do
      echo "-- run $i: baseline"; wrk_run "http://127.0.0.1:8431$PATH_"
      echo "-- run $i: tokenwarden"; wrk_run "http://127.0.0.1:8430$PATH_"
    done | tee "$OUT/http-$level.txt"
    kill "$SERVER_PID" "$BASE_PID"; wait "$SERVER_PID" "$BASE_PID" 2> /dev/null || true
  done
fi

if want proxy; then
  # The bare axum server is the provider's API: called straight, and through tokenwarden's
  # proxy (a cached token, a header added, the call forwarded, the answer streamed back).
  # Beside them, in every run: a floor (hyper alone forwarding, examples/proxy_floor.rs) and,
  # when installed (apt-get install -y nginx-light), nginx as a reference proxy. Each side's
  # CPU per request is read from /proc for the proxy, the API and wrk: on two shared cores
  # the throughput ratio is the direct side's total CPU per request over the proxied one's.
  echo "## proxy: bare axum API direct vs through /v1/proxy, wrk -t2 -c64 -d10s, RUST_LOG=warn"
  rm -f "$OUT/proxy.db"*
  TOKENWARDEN_BENCH_KEY="$KEY" "$BIN/examples/bench_generate" "sqlite://$OUT/proxy.db" 1000 bench > /dev/null
  "$BIN/examples/baseline_http" 127.0.0.1:8435 > /dev/null &
  BASE_PID=$!
  # Whatever stops the script, the processes it started go with it (nginx above all, which
  # would keep its port for the next run).
  PROXY_PIDS="$BASE_PID"
  trap 'kill $PROXY_PIDS 2> /dev/null || true' EXIT
  until curl -s -o /dev/null "http://127.0.0.1:8435/api/items"; do sleep 0.02; done
  API_BASE_URL="http://127.0.0.1:8435/api" start_server "$OUT/proxy.db" 8434 "$KEY"
  PROXY_PIDS="$PROXY_PIDS $SERVER_PID"
  PROXIED="http://127.0.0.1:8434/v1/proxy/user-0000500/bench/acct/items"
  [[ "$(curl -s -H "Authorization: Bearer bench-api-key-0123456789" "$PROXIED")" == *'"items"'* ]] \
    || { echo "the proxy does not answer $PROXIED"; exit 1; }
  "$BIN/examples/proxy_floor" 127.0.0.1:8436 127.0.0.1:8435 /floor /api > /dev/null 2>&1 &
  FLOOR_PID=$!
  PROXY_PIDS="$PROXY_PIDS $FLOOR_PID"
  until curl -s -o /dev/null "http://127.0.0.1:8436/floor/items"; do sleep 0.02; done
  SIDES="direct floor proxy"
  if command -v nginx > /dev/null; then
    # Forwarding only: no key, no token lookup; kept-alive HTTP/1.1 to the API, no log.
    # In the foreground of a child process, its files and temp folders under $OUT.
    mkdir -p "$OUT/nginx-temp"
    cat > "$OUT/nginx.conf" <<NGINX
daemon off;
worker_processes 2;
pid $OUT/nginx.pid;
error_log $OUT/nginx-error.log warn;
events { worker_connections 1024; }
http {
  access_log off;
  client_body_temp_path $OUT/nginx-temp/body;
  proxy_temp_path $OUT/nginx-temp/proxy;
  fastcgi_temp_path $OUT/nginx-temp/fastcgi;
  uwsgi_temp_path $OUT/nginx-temp/uwsgi;
  scgi_temp_path $OUT/nginx-temp/scgi;
  upstream api { server 127.0.0.1:8435; keepalive 128; }
  server {
    listen 127.0.0.1:8437;
    location /nginx/ {
      proxy_pass http://api/api/;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Authorization "Bearer nginx-token";
    }
  }
}
NGINX
    nginx -p "$OUT" -e "$OUT/nginx-error.log" -c "$OUT/nginx.conf" < /dev/null &
    NGINX_PID=$!
    PROXY_PIDS="$PROXY_PIDS $NGINX_PID"
    until curl -s -o /dev/null "http://127.0.0.1:8437/nginx/items"; do
      kill -0 "$NGINX_PID" 2> /dev/null || { echo "nginx did not start: $OUT/nginx-error.log"; exit 1; }
      sleep 0.02
    done
    SIDES="direct nginx floor proxy"
  else
    echo "(nginx not installed: no reference side; apt-get install -y nginx-light adds it)"
  fi
  TICK_US=$(( 1000000 / $(getconf CLK_TCK) ))
  # User and system clock ticks the processes have used so far.
  cpu_ticks() {
    local total=0 pid fields
    for pid in "$@"; do
      read -ra fields < <(cut -d')' -f2 "/proc/$pid/stat")
      total=$(( total + fields[11] + fields[12] ))
    done
    echo "$total"
  }
  # One side of a run: wrk's figures, then CPU per request of that side's own process(es),
  # the API and wrk.
  side_run() {
    local side="$1" url pids api0 side0 api1 side1 out requests wrk_us
    case "$side" in
      direct) url="http://127.0.0.1:8435/api/items"; pids="" ;;
      nginx) url="http://127.0.0.1:8437/nginx/items"; pids=$(pgrep -P "$NGINX_PID" || true) ;;
      floor) url="http://127.0.0.1:8436/floor/items"; pids="$FLOOR_PID" ;;
      proxy) url="$PROXIED"; pids="$SERVER_PID" ;;
    esac
    api0=$(cpu_ticks "$BASE_PID"); side0=$(cpu_ticks $pids)
    out=$( { TIMEFORMAT="wrk cpu %U %S"; time wrk_load "$url"; } 2>&1 )
    api1=$(cpu_ticks "$BASE_PID"); side1=$(cpu_ticks $pids)
    echo "-- run $i: $side"
    grep -E "Requests/sec|  99%|  50%|Non-2xx" <<< "$out"
    requests=$(awk '/requests in/ {print $1}' <<< "$out")
    wrk_us=$(awk '/^wrk cpu/ {printf "%d", ($3 + $4) * 1000000}' <<< "$out")
    awk -v r="$requests" -v s=$(( (side1 - side0) * TICK_US )) -v a=$(( (api1 - api0) * TICK_US )) \
      -v w="$wrk_us" 'BEGIN { if (r <= 0) r = 1; printf "cpu per request: side %.1f us, api %.1f us, wrk %.1f us\n", s / r, a / r, w / r }'
  }
  for i in $(seq "$RUNS"); do
    for side in $SIDES; do side_run "$side"; done
  done | tee "$OUT/proxy.txt"
  kill $PROXY_PIDS
  wait $PROXY_PIDS 2> /dev/null || true
  trap - EXIT
  # Per run and side: added p50 (ms) and throughput ratio against that run's direct side;
  # then medians per side, with each process's median CPU per request.
  awk '
    function ms(v) { if (v ~ /us$/) return v / 1000; if (v ~ /ms$/) return v + 0; return v * 1000 }
    function median(a, k,   i, j, t) {
      for (i = 1; i <= k; i++) for (j = i + 1; j <= k; j++) if (a[j] < a[i]) { t = a[i]; a[i] = a[j]; a[j] = t }
      return (k % 2) ? a[(k + 1) / 2] : (a[k / 2] + a[k / 2 + 1]) / 2
    }
    /^-- run/ { run = $3 + 0; side = $4; if (!(side in seen)) { seen[side] = 1; order[++sides] = side } }
    /  50%/ { p50[side] = ms($2) }
    /Requests\/sec/ {
      rps[side] = $2
      if (side != "direct") {
        n[side]++; added[side, n[side]] = p50[side] - p50["direct"]; ratio[side, n[side]] = rps["direct"] > 0 ? rps[side] / rps["direct"] : 0
        printf "run %d, %s: added p50 %.3f ms, throughput %.0f/%.0f = %.2f\n", run, side, added[side, n[side]], rps[side], rps["direct"], ratio[side, n[side]]
      }
    }
    /^cpu per request/ { c[side]++; sc[side, c[side]] = $5; ac[side, c[side]] = $8; wc[side, c[side]] = $11 }
    END {
      for (k = 1; k <= sides; k++) {
        s = order[k]
        for (j = 1; j <= c[s]; j++) { x[j] = sc[s, j]; y[j] = ac[s, j]; z[j] = wc[s, j] }
        cpu = sprintf("CPU per request (median): %s %.1f us, API %.1f us, wrk %.1f us", s, median(x, c[s]), median(y, c[s]), median(z, c[s]))
        if (s == "direct") { printf "direct: %s\n", cpu; continue }
        for (j = 1; j <= n[s]; j++) { x[j] = added[s, j]; y[j] = ratio[s, j] }
        target = (s == "proxy") ? " (targets: added p50 <= 1 ms, ratio >= 0.50)" : ""
        printf "%s, median of %d runs: added p50 %.3f ms, throughput ratio %.2f%s; %s\n", s, n[s], median(x, n[s]), median(y, n[s]), target, cpu
      }
    }
  ' "$OUT/proxy.txt" | tee -a "$OUT/proxy.txt"
fi

if want scale; then
  echo "## scale: 1,000,000 connections in SQLite vs 1,000"
  for n in 1000 1000000; do
    rm -f "$OUT/scale.db"*
    TOKENWARDEN_BENCH_KEY="$KEY" "$BIN/examples/bench_generate" "sqlite://$OUT/scale.db" "$n" bench
    echo "-- $n connections: database $(du -h "$OUT/scale.db" | cut -f1)"
    start_server "$OUT/scale.db" 8432 "$KEY"
    echo "start-up to healthy: ${STARTUP}s"
    echo "RSS after start: $(awk '/VmRSS/ {print $2, $3}' "/proc/$SERVER_PID/status")"
    # Spread requests over many connections: a Lua script picks a random user per request.
    cat > "$OUT/random.lua" <<LUA
math.randomseed(os.time())
request = function()
  return wrk.format("GET", string.format("/v1/users/user-%07d/connections/bench/acct/access-token", math.random(0, $n - 1)))
end
LUA
    wrk_load -s "$OUT/random.lua" "http://127.0.0.1:8432" \
      | grep -E "Requests/sec|  99%|  50%|Non-2xx"
    echo "RSS after load: $(awk '/VmRSS/ {print $2, $3}' "/proc/$SERVER_PID/status")"
    kill "$SERVER_PID"; wait "$SERVER_PID" 2> /dev/null || true
  done | tee "$OUT/scale.txt"
fi
