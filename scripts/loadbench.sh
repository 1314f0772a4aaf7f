#!/usr/bin/env bash
# HTTP load benchmark: an axum hello-world bare vs behind the whole palisade server stack, on loopback,
# driven by wrk. Checks the ARCHITECTURE goal: the stack keeps >= 95 % of bare throughput.
#
#   scripts/loadbench.sh                          # defaults: ~1.5 minutes after the build
#   RUNS=9 DURATION=4 scripts/loadbench.sh     # many short paired runs: sturdier on a noisy machine
#
# Environment (all optional):
#   DURATION     seconds of each measured wrk run          (default 10)
#   WARMUP       seconds of the unmeasured wrk run before  (default 2)
#   CONNECTIONS  wrk connections                           (default 32)
#   RUNS         measured runs per mode                    (default 3)
#   THREADS      tokio worker threads in the server        (default 1)
#   WRK_THREADS  wrk threads                               (default 1)
#   PIN          1: pin the server to CPU 0 and wrk to CPU 1 with taskset; 0: don't
#                (default 1 when THREADS=1, taskset exists and there are >= 2 CPUs)
#   NO_BUILD     1: use the server binary already built in target/release/examples (default 0)
#
# Why one server thread by default: this machine has 2 cores and the load generator runs on the same
# machine. One tokio worker plus one wrk thread gives each its own core, so the server is the
# bottleneck (its CPU column should read ~100 %) and req/s measures the server's per-request cost —
# exactly what the stack adds to. With 2 server threads the server and wrk would fight over the same
# two cores and the result would mostly measure the scheduler. On a bigger machine, raise THREADS and
# WRK_THREADS together and keep cores for wrk.
#
# Each run starts a fresh server, warms it up, then measures. Runs alternate the modes in ABBA order
# (bare, stack, stack, bare, ...) so slow drifts of machine noise hit both modes alike; the table
# reports medians. Besides req/s it reports the server's CPU time per request (the kernel's per-thread
# run time over the run divided by wrk's request count): it does not move when wrk is starved, only
# when the server itself is slowed (other work on its core, a hypervisor stealing the vCPU), so when
# the two ratios disagree, suspect the load generator. Other work on the machine ruins both: the
# script warns when the machine is busy before it starts; run it on a quiet machine.
#
# Exit status: 0 PASS, 1 FAIL (ratio under 95 %, or a run saw non-2xx responses or socket errors),
# 2 setup error. Not part of CI.
set -euo pipefail

DURATION=${DURATION:-10}
WARMUP=${WARMUP:-2}
CONNECTIONS=${CONNECTIONS:-32}
RUNS=${RUNS:-3}
THREADS=${THREADS:-1}
WRK_THREADS=${WRK_THREADS:-1}
GOAL_PERCENT=95

die() {
    echo "loadbench: $*" >&2
    exit 2
}

for v in DURATION WARMUP CONNECTIONS RUNS THREADS WRK_THREADS; do
    [[ ${!v} =~ ^[0-9]+$ ]] && ((${!v} >= 1)) || die "$v must be a positive integer (got '${!v}')"
done
((CONNECTIONS >= WRK_THREADS)) || die "CONNECTIONS ($CONNECTIONS) must be >= WRK_THREADS ($WRK_THREADS)"

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

# --- wrk ------------------------------------------------------------------------------------------
if ! command -v wrk >/dev/null 2>&1; then
    echo "loadbench: wrk not found, installing it from Debian's packages" >&2
    if [[ $(id -u) -eq 0 ]]; then
        SUDO=()
    elif command -v sudo >/dev/null 2>&1; then
        SUDO=(sudo)
    else
        die "wrk is missing and installing it needs root (no sudo): apt-get install wrk"
    fi
    "${SUDO[@]}" apt-get install -y wrk >/dev/null ||
        { "${SUDO[@]}" apt-get update >/dev/null && "${SUDO[@]}" apt-get install -y wrk >/dev/null; } ||
        die "could not install wrk with apt-get"
fi

# --- pinning ------------------------------------------------------------------------------------
NCPU=$(nproc)
if [[ -z ${PIN:-} ]]; then
    if ((THREADS == 1 && NCPU >= 2)) && command -v taskset >/dev/null 2>&1; then PIN=1; else PIN=0; fi
fi
SERVER_PIN=()
WRK_PIN=()
if [[ $PIN == 1 ]]; then
    command -v taskset >/dev/null 2>&1 || die "PIN=1 needs taskset"
    ((NCPU >= 2)) || die "PIN=1 needs at least 2 CPUs"
    SERVER_PIN=(taskset -c 0)
    WRK_PIN=(taskset -c 1)
fi

# --- build --------------------------------------------------------------------------------------
if [[ ${NO_BUILD:-0} != 1 ]]; then
    echo "loadbench: building the server (release)" >&2
    cargo build --release --quiet --features full --example loadbench_server ||
        die "cargo build failed"
fi
BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release/examples/loadbench_server"
[[ -x $BIN ]] || die "built server not found at $BIN"

# --- one run ------------------------------------------------------------------------------------
WORK=$(mktemp -d)
SERVER_PID=
stop_server() {
    if [[ -n $SERVER_PID ]]; then
        kill -TERM "$SERVER_PID" 2>/dev/null || true
        # Bounded wait for it to exit, then force.
        for _ in $(seq 50); do
            kill -0 "$SERVER_PID" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$SERVER_PID" 2>/dev/null || true
        wait "$SERVER_PID" 2>/dev/null || true
        SERVER_PID=
    fi
}
WRK_PID=
# Runs wrk with the common options and "$@", in the background so a signal to this script is handled
# at once (the trap kills it) instead of after wrk finishes.
run_wrk() {
    "${WRK_PIN[@]}" wrk -t"$WRK_THREADS" -c"$CONNECTIONS" -H "x-tenant-id: bench" "$@" &
    WRK_PID=$!
    local rc=0
    wait "$WRK_PID" || rc=$?
    WRK_PID=
    ((rc == 0)) || die "wrk failed (exit status $rc)"
}
cleanup() {
    if [[ -n $WRK_PID ]]; then kill -TERM "$WRK_PID" 2>/dev/null || true; fi
    stop_server
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Starts the server in mode $1 and sets ADDR to the address it printed (bounded wait).
start_server() {
    local mode=$1 out="$WORK/server.out" err="$WORK/server.err"
    : >"$out"
    "${SERVER_PIN[@]}" "$BIN" --mode "$mode" --threads "$THREADS" >"$out" 2>"$err" &
    SERVER_PID=$!
    ADDR=
    for _ in $(seq 100); do
        ADDR=$(head -n1 "$out")
        [[ -n $ADDR ]] && break
        kill -0 "$SERVER_PID" 2>/dev/null || { cat "$err" >&2; die "the $mode server exited at startup"; }
        sleep 0.1
    done
    [[ -n $ADDR ]] || { cat "$err" >&2; die "the $mode server did not print its address within 10 s"; }
}

# CPU time the server process has used so far, in nanoseconds: the sum over its threads of the
# scheduler's run time (/proc/PID/task/*/schedstat, ns resolution); falls back to utime + stime from
# /proc/PID/stat (clock-tick resolution).
cpu_ns() {
    if [[ -r /proc/$SERVER_PID/schedstat ]]; then
        cat /proc/"$SERVER_PID"/task/*/schedstat 2>/dev/null | awk '{ s += $1 } END { printf "%.0f", s }'
    else
        # Fields after the parenthesised command name: utime is the 14th field, stime the 15th.
        awk -v hz="$(getconf CLK_TCK)" '{ sub(/.*\) /, ""); printf "%.0f", ($12 + $13) / hz * 1e9 }' \
            "/proc/$SERVER_PID/stat"
    fi
}

# Converts a wrk latency ("812.00us", "1.20ms", "2.01s") to microseconds.
to_us() {
    awk -v v="$1" 'BEGIN {
        if (v ~ /us$/) { sub(/us$/, "", v); printf "%.1f", v }
        else if (v ~ /ms$/) { sub(/ms$/, "", v); printf "%.1f", v * 1000 }
        else if (v ~ /m$/) { sub(/m$/, "", v); printf "%.1f", v * 60e6 }
        else if (v ~ /s$/) { sub(/s$/, "", v); printf "%.1f", v * 1e6 }
        else { print "nan" }
    }'
}

declare -A RPS P99 CPU COST
FAILED_RUNS=0

# Runs mode $1 once (run number $2): fresh server, warm-up, measured run; records req/s, p99, CPU.
run_mode() {
    local mode=$1 run=$2 out="$WORK/wrk.$1.$2"
    start_server "$mode"
    local url="http://$ADDR/"
    run_wrk -d"${WARMUP}s" "$url" >/dev/null
    local t0 t1 w0 w1
    w0=$(date +%s%N)
    t0=$(cpu_ns)
    run_wrk -d"${DURATION}s" --latency "$url" >"$out"
    t1=$(cpu_ns)
    w1=$(date +%s%N)
    stop_server

    local rps p99 requests non2xx errors
    rps=$(awk '/^Requests\/sec:/ { print $2 }' "$out")
    requests=$(awk '/ requests in / { print $1 }' "$out")
    p99=$(awk '$1 == "99%" { print $2 }' "$out")
    non2xx=$(awk '/Non-2xx or 3xx responses:/ { print $NF }' "$out")
    errors=$(awk '/Socket errors:/ { print $0 }' "$out")
    [[ -n $rps && -n $p99 && -n $requests ]] || { cat "$out" >&2; die "could not parse wrk's output"; }
    ((requests > 0)) || { cat "$out" >&2; die "wrk completed no request"; }
    RPS[$mode,$run]=$rps
    P99[$mode,$run]=$(to_us "$p99")
    # Server CPU use over the measured run (% of one core), and server CPU time per request.
    CPU[$mode,$run]=$(awk -v a="$t0" -v b="$t1" -v w="$((w1 - w0))" 'BEGIN { printf "%.0f", (b - a) / w * 100 }')
    COST[$mode,$run]=$(awk -v a="$t0" -v b="$t1" -v n="$requests" 'BEGIN { printf "%.3f", (b - a) / 1e3 / n }')
    printf 'loadbench: run %d %-5s %10s req/s  p99 %8s  server CPU %3s%%  %s µs CPU/request\n' \
        "$run" "$mode" "$rps" "$p99" "${CPU[$mode,$run]}" "${COST[$mode,$run]}" >&2
    if [[ -n $non2xx || -n $errors ]]; then
        echo "loadbench: run $run $mode: non-2xx responses: ${non2xx:-0}; ${errors:-no socket errors}" >&2
        FAILED_RUNS=$((FAILED_RUNS + 1))
    fi
}

median() {
    printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END {
        if (NR % 2) printf "%.1f", v[(NR + 1) / 2]; else printf "%.1f", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

# Other work on the machine skews everything: measure how busy it is for a second before starting.
busy_percent() {
    local a b
    a=$(awk '/^cpu / { print $2 + $3 + $4 + $7 + $8 + $9, $2 + $3 + $4 + $5 + $6 + $7 + $8 + $9 }' /proc/stat)
    sleep 1
    b=$(awk '/^cpu / { print $2 + $3 + $4 + $7 + $8 + $9, $2 + $3 + $4 + $5 + $6 + $7 + $8 + $9 }' /proc/stat)
    awk -v a="$a" -v b="$b" 'BEGIN { split(a, x, " "); split(b, y, " ");
        t = y[2] - x[2]; printf "%.0f", (t > 0 ? (y[1] - x[1]) / t * 100 : 0) }'
}
BUSY=$(busy_percent)
if ((BUSY > 10)); then
    echo "loadbench: warning: the machine was $BUSY % busy before the bench; expect noisy results" >&2
fi

echo "loadbench: $RUNS runs per mode, ${DURATION}s each after ${WARMUP}s warm-up;" \
    "wrk -t$WRK_THREADS -c$CONNECTIONS; server threads $THREADS; pinned: $PIN; $NCPU CPUs" >&2
for ((r = 1; r <= RUNS; r++)); do
    if ((r % 2)); then order=(bare stack); else order=(stack bare); fi
    for mode in "${order[@]}"; do run_mode "$mode" "$r"; done
done

# --- report -------------------------------------------------------------------------------------
declare -A MED_RPS MED_P99 MED_COST
echo
echo "| mode | median req/s | median p99 latency | median server CPU | server CPU per request | req/s per run |"
echo "|---|---:|---:|---:|---:|---|"
for mode in bare stack; do
    rps=() p99=() cpu=() cost=()
    for ((r = 1; r <= RUNS; r++)); do
        rps+=("${RPS[$mode,$r]}")
        p99+=("${P99[$mode,$r]}")
        cpu+=("${CPU[$mode,$r]}")
        cost+=("${COST[$mode,$r]}")
    done
    MED_RPS[$mode]=$(median "${rps[@]}")
    MED_P99[$mode]=$(median "${p99[@]}")
    MED_COST[$mode]=$(median "${cost[@]}")
    printf '| %s | %.0f | %.0f µs | %.0f %% | %.2f µs | %s |\n' "$mode" "${MED_RPS[$mode]}" \
        "${MED_P99[$mode]}" "$(median "${cpu[@]}")" "${MED_COST[$mode]}" \
        "$(printf '%.0f ' "${rps[@]}" | sed 's/ $//')"
done
ratio=$(awk -v s="${MED_RPS[stack]}" -v b="${MED_RPS[bare]}" 'BEGIN { printf "%.1f", s / b * 100 }')
# The same ratio computed from server CPU per request: what a CPU-bound server would keep. Less
# sensitive than req/s to the load generator being slowed by other work on the machine.
cpu_ratio=$(awk -v s="${MED_COST[stack]}" -v b="${MED_COST[bare]}" 'BEGIN { printf "%.1f", b / s * 100 }')
# The median of each round's own ratio: a round's two runs are adjacent in time, so a burst of other
# work on the machine tends to hit both; with many short runs this is the most robust figure.
round_ratios=()
for ((r = 1; r <= RUNS; r++)); do
    round_ratios+=("$(awk -v s="${RPS[stack,$r]}" -v b="${RPS[bare,$r]}" 'BEGIN { printf "%.1f", s / b * 100 }')")
done
round_ratio=$(median "${round_ratios[@]}")
if awk -v r="$ratio" -v g="$GOAL_PERCENT" 'BEGIN { exit !(r >= g) }' && ((FAILED_RUNS == 0)); then
    verdict=PASS
else
    verdict=FAIL
fi
echo
echo "| stack / bare throughput (of medians) | goal | verdict | median of per-round ratios | bare / stack server CPU per request |"
echo "|---:|---:|---|---:|---:|"
echo "| $ratio % | ≥ $GOAL_PERCENT % | $verdict | $round_ratio % | $cpu_ratio % |"
echo
echo "per-round stack / bare: ${round_ratios[*]} (%)"
echo
echo "wrk -t$WRK_THREADS -c$CONNECTIONS -d${DURATION}s --latency -H 'x-tenant-id: bench' after a ${WARMUP}s warm-up;" \
    "$RUNS runs per mode (ABBA order); server: $THREADS tokio worker thread(s); pinned: $PIN; $NCPU CPUs;" \
    "machine $BUSY % busy before the bench"
((FAILED_RUNS == 0)) || echo "$FAILED_RUNS run(s) saw non-2xx responses or socket errors"
[[ $verdict == PASS ]]
