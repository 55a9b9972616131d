#!/usr/bin/env bash
# Runs every benchmark BENCHMARKS.md records, each next to its baseline in the same run,
# RUNS times where the figure is noisy (medians go in BENCHMARKS.md). Takes about 15 minutes
# on 2 cores after the release build; needs wrk (apt-get install wrk) for the HTTP figures.
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

wrk_run() {
  wrk -t2 -c64 -d10s --latency -H "Authorization: Bearer bench-api-key-0123456789" "$1" \
    | grep -E "Requests/sec|  99%|  50%"
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
  echo "## proxy: bare axum API direct vs through /v1/proxy, wrk -t2 -c64 -d10s, RUST_LOG=warn"
  rm -f "$OUT/proxy.db"*
  TOKENWARDEN_BENCH_KEY="$KEY" "$BIN/examples/bench_generate" "sqlite://$OUT/proxy.db" 1000 bench > /dev/null
  "$BIN/examples/baseline_http" 127.0.0.1:8435 > /dev/null &
  BASE_PID=$!
  until curl -s -o /dev/null "http://127.0.0.1:8435/api/items"; do sleep 0.02; done
  API_BASE_URL="http://127.0.0.1:8435/api" start_server "$OUT/proxy.db" 8434 "$KEY"
  PROXIED="http://127.0.0.1:8434/v1/proxy/user-0000500/bench/acct/items"
  [[ "$(curl -s -H "Authorization: Bearer bench-api-key-0123456789" "$PROXIED")" == *'"items"'* ]] \
    || { echo "the proxy does not answer $PROXIED"; exit 1; }
  # A floor beside it: hyper alone forwarding to the same API (examples/proxy_floor.rs).
  "$BIN/examples/proxy_floor" 127.0.0.1:8436 127.0.0.1:8435 /floor /api 2> /dev/null &
  FLOOR_PID=$!
  until curl -s -o /dev/null "http://127.0.0.1:8436/floor/items"; do sleep 0.02; done
  for i in $(seq "$RUNS"); do
    echo "-- run $i: direct"; wrk_run "http://127.0.0.1:8435/api/items"
    echo "-- run $i: floor"; wrk_run "http://127.0.0.1:8436/floor/items"
    echo "-- run $i: proxy"; wrk_run "$PROXIED"
  done | tee "$OUT/proxy.txt"
  kill "$SERVER_PID" "$BASE_PID" "$FLOOR_PID"
  wait "$SERVER_PID" "$BASE_PID" "$FLOOR_PID" 2> /dev/null || true
  # Per run: added p50 (ms) and throughput ratio; then their medians.
  awk '
    function ms(v) { if (v ~ /us$/) return v / 1000; if (v ~ /ms$/) return v + 0; return v * 1000 }
    /^-- run/ { side = $4 }
    /  50%/ { p50[side] = ms($2) }
    /Requests\/sec/ {
      rps[side] = $2
      if (side == "floor") {
        m++; floor_added[m] = p50["floor"] - p50["direct"]; floor_ratio[m] = rps["floor"] / rps["direct"]
      }
      if (side == "proxy") {
        n++; added[n] = p50["proxy"] - p50["direct"]; ratio[n] = rps["proxy"] / rps["direct"]
        printf "run %d: added p50 %.3f ms, throughput %.0f/%.0f = %.2f\n", n, added[n], rps["proxy"], rps["direct"], ratio[n]
      }
    }
    function median(a, k,   i, j, t) {
      for (i = 1; i <= k; i++) for (j = i + 1; j <= k; j++) if (a[j] < a[i]) { t = a[i]; a[i] = a[j]; a[j] = t }
      return (k % 2) ? a[(k + 1) / 2] : (a[k / 2] + a[k / 2 + 1]) / 2
    }
    END {
      printf "median of %d runs: added p50 %.3f ms (target <= 1), throughput ratio %.2f (target >= 0.50)\n", n, median(added, n), median(ratio, n)
      printf "floor (hyper alone), median of %d runs: added p50 %.3f ms, throughput ratio %.2f\n", m, median(floor_added, m), median(floor_ratio, m)
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
    wrk -t2 -c64 -d10s --latency -s "$OUT/random.lua" \
      -H "Authorization: Bearer bench-api-key-0123456789" "http://127.0.0.1:8432" \
      | grep -E "Requests/sec|  99%|  50%|Non-2xx"
    echo "RSS after load: $(awk '/VmRSS/ {print $2, $3}' "/proc/$SERVER_PID/status")"
    kill "$SERVER_PID"; wait "$SERVER_PID" 2> /dev/null || true
  done | tee "$OUT/scale.txt"
fi
