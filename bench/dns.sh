#!/usr/bin/env bash
# DNS benchmark: Berth's DNS server against CoreDNS, the same 10,000 service
# names (3 A records each), the same dnsperf query file, over loopback UDP.
# `make bench-dns` runs it; it installs dnsperf (Debian) if missing and
# builds CoreDNS with `go install` into $WORK/bin (kept between runs).
#
# Setup: bench/dnsgen makes one discovery snapshot (10,000 services x 3
# ready endpoints). Berth serves it with the real dns.Server (dnsgen
# serve); CoreDNS serves the zone file dnsgen writes from the same
# snapshot's records (dns.Table.Records) with its `file` plugin, and again
# with `file` behind its `cache` plugin. Every server runs pinned to CPU 0
# (so GOMAXPROCS=1), dnsperf to CPU 1, all at nice $NICE (default -10) so
# that other work on a shared machine (builds, tests) disturbs the figures
# less; it applies to every server alike. Each peak run is $DURATION
# seconds with $CLIENTS sockets and $OUTSTANDING queries in flight.
#
# Columns:
#   qps       dnsperf's "Queries per second" at saturation
#   avg_ms    dnsperf's average latency at that load
#   cpu_us/q  the server's CPU time (utime+stime from /proc/<pid>/stat,
#             before and after the run) per completed query: the fair
#             figure on 2 cores, where the load generator may saturate first
#   lost      queries dnsperf gave up on
# Then the ratios Berth/CoreDNS (qps, and CoreDNS/Berth CPU per query), and
# Berth's latency percentiles at half its peak rate (dnsperf -Q; see the
# comment there on how they are measured). Goal (issue 3): qps ratio >= 2 against the
# file plugin, p99 < 1 ms at half peak.
#
# PROFILE=1 also writes a CPU profile of Berth's peak run to
# $WORK/berth.pprof (go tool pprof -top bin $WORK/berth.pprof).
#
# Network: loopback only (127.0.0.1).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/local/go/bin"

COREDNS_VERSION=${COREDNS_VERSION:-v1.15.0}
DURATION=${DURATION:-15}
CLIENTS=${CLIENTS:-4}
OUTSTANDING=${OUTSTANDING:-200}
NICE=${NICE:--10}
WORK=${BENCH_DNS_DIR:-/tmp/berth-bench-dns}
mkdir -p "$WORK/bin"

pids=()
cleanup() {
	for p in "${pids[@]}"; do
		kill "$p" 2>/dev/null || true
		wait "$p" 2>/dev/null || true
	done
}
trap cleanup EXIT

if ! command -v dnsperf >/dev/null; then
	echo "== installing dnsperf"
	apt-get update -qq && apt-get install -y -qq dnsperf >/dev/null
fi

have_coredns=1
if [ ! -x "$WORK/bin/coredns" ]; then
	echo "== building CoreDNS $COREDNS_VERSION (go install, first run only: a few minutes)"
	if ! GOBIN="$WORK/bin" GOFLAGS= go install "github.com/coredns/coredns@$COREDNS_VERSION" >"$WORK/coredns-build.log" 2>&1; then
		echo "!! go install github.com/coredns/coredns@$COREDNS_VERSION failed; Berth only. Last lines:"
		tail -5 "$WORK/coredns-build.log"
		have_coredns=0
	fi
fi

echo "== building dnsgen, writing the zone and queries"
go build -o "$WORK/bin/dnsgen" ./bench/dnsgen
"$WORK/bin/dnsgen" zone -dir "$WORK"
CLK_TCK=$(getconf CLK_TCK)

cpu_ticks() { # utime + stime of a pid, in clock ticks
	awk '{ sub(/^.*\) /, ""); print $12 + $13 }' "/proc/$1/stat"
}

free_port() { # a UDP and TCP port nothing on 127.0.0.1 uses now
	local p
	while :; do
		p=$((20000 + RANDOM % 20000))
		if ! ss -Hlnu "sport = :$p" | grep -q . && ! ss -Hlnt "sport = :$p" | grep -q .; then
			echo "$p"
			return
		fi
	done
}

# run_peak NAME PID PORT: dnsperf at saturation; prints a result row and
# sets PEAK_QPS and CPU_US.
run_peak() {
	local name=$1 pid=$2 port=$3 out="$WORK/dnsperf-$1.txt"
	local t0 t1
	t0=$(cpu_ticks "$pid")
	nice -n "$NICE" taskset -c 1 dnsperf -s 127.0.0.1 -p "$port" -d "$WORK/queries.txt" -l "$DURATION" \
		-c "$CLIENTS" -q "$OUTSTANDING" -t 2 >"$out" 2>&1 || true
	t1=$(cpu_ticks "$pid")
	local completed qps avg lost
	completed=$(awk '/Queries completed:/ {print $3}' "$out")
	qps=$(awk '/Queries per second:/ {print $4}' "$out")
	avg=$(awk '/Average Latency/ {print $4}' "$out")
	lost=$(awk '/Queries lost:/ {print $3}' "$out")
	if [ -z "$completed" ] || [ "$completed" = 0 ]; then
		echo "!! $name: dnsperf completed no query; see $out"
		PEAK_QPS=0 CPU_US=0
		return
	fi
	CPU_US=$(awk -v d=$((t1 - t0)) -v hz="$CLK_TCK" -v n="$completed" 'BEGIN { printf "%.2f", d / hz * 1e6 / n }')
	PEAK_QPS=$(printf '%.0f' "$qps")
	printf '%-22s %10s %9.3f %9s %8s\n' "$name" "$PEAK_QPS" "$(awk -v a="$avg" 'BEGIN{print a*1000}')" "$CPU_US" "$lost"
}

start_berth() {
	local prof=()
	if [ "${PROFILE:-0}" = 1 ]; then prof=(-cpuprofile "$WORK/berth.pprof"); fi
	nice -n "$NICE" taskset -c 0 "$WORK/bin/dnsgen" serve -addr 127.0.0.1:0 "${prof[@]}" >"$WORK/berth.out" 2>&1 &
	BERTH_PID=$!
	pids+=("$BERTH_PID")
	for _ in $(seq 100); do
		grep -q listening "$WORK/berth.out" && break
		sleep 0.1
	done
	BERTH_PORT=$(awk '/listening/ { n = split($2, a, ":"); print a[n] }' "$WORK/berth.out")
	[ -n "$BERTH_PORT" ] || { cat "$WORK/berth.out"; exit 1; }
	"$WORK/bin/dnsgen" probe -addr "127.0.0.1:$BERTH_PORT"
}

stop() { kill "$1" 2>/dev/null || true; wait "$1" 2>/dev/null || true; }

start_coredns() { # start_coredns NAME with-cache(0|1)
	local port
	port=$(free_port)
	{
		echo "berth.internal.:$port {"
		echo "    bind 127.0.0.1"
		if [ "$2" = 1 ]; then echo "    cache 5"; fi
		echo "    file $WORK/db.berth.internal berth.internal."
		echo "}"
	} >"$WORK/Corefile-$1"
	nice -n "$NICE" taskset -c 0 "$WORK/bin/coredns" -conf "$WORK/Corefile-$1" -quiet >"$WORK/$1.out" 2>&1 &
	COREDNS_PID=$!
	pids+=("$COREDNS_PID")
	COREDNS_PORT=$port
	"$WORK/bin/dnsgen" probe -addr "127.0.0.1:$port" || { cat "$WORK/$1.out"; exit 1; }
}

echo
echo "== 10,000 services x 3 A, dnsperf -c $CLIENTS -q $OUTSTANDING, ${DURATION}s per run; server on CPU 0, dnsperf on CPU 1"
printf '%-22s %10s %9s %9s %8s\n' server qps avg_ms cpu_us/q lost

start_berth
run_peak berth "$BERTH_PID" "$BERTH_PORT"
berth_qps=$PEAK_QPS berth_cpu=$CPU_US

file_qps=0 file_cpu=0 cache_qps=0 cache_cpu=0
if [ "$have_coredns" = 1 ]; then
	start_coredns coredns-file 0
	run_peak "coredns $COREDNS_VERSION file" "$COREDNS_PID" "$COREDNS_PORT"
	file_qps=$PEAK_QPS file_cpu=$CPU_US
	stop "$COREDNS_PID"

	start_coredns coredns-cache 1
	run_peak "coredns file+cache" "$COREDNS_PID" "$COREDNS_PORT"
	cache_qps=$PEAK_QPS cache_cpu=$CPU_US
	stop "$COREDNS_PID"
fi

if [ "$file_qps" != 0 ]; then
	echo
	awk -v b="$berth_qps" -v f="$file_qps" -v c="$cache_qps" -v bc="$berth_cpu" -v fc="$file_cpu" -v cc="$cache_cpu" 'BEGIN {
		printf "ratio Berth/CoreDNS file:        qps %.2fx   cpu per query %.2fx less\n", b / f, fc / bc
		if (c > 0) printf "ratio Berth/CoreDNS file+cache:  qps %.2fx   cpu per query %.2fx less\n", b / c, cc / bc
		printf "goal (qps >= 2x CoreDNS file): %s\n", (b / f >= 2 ? "met" : "NOT met")
	}'
fi

# Latency at half of Berth's peak rate. dnsperf prints no percentiles; its
# per-query output (-v) gives every latency, but costs dnsperf itself
# enough CPU to inflate them (its average rises several-fold), so the
# figures below are an upper bound: they include dnsperf's own delays, and
# on a shared machine whatever else ran on either CPU. (Splitting the load
# over two dnsperf processes on CPU 1 was worse: they time-share the core in
# millisecond slices.)
half=$((berth_qps / 2))
echo
echo "== Berth at half its peak: dnsperf -Q $half -v for ${DURATION}s"
t0=$(cpu_ticks "$BERTH_PID")
nice -n "$NICE" taskset -c 1 dnsperf -s 127.0.0.1 -p "$BERTH_PORT" -d "$WORK/queries.txt" -l "$DURATION" \
	-c "$CLIENTS" -q "$OUTSTANDING" -Q "$half" -t 2 -v >"$WORK/dnsperf-half.txt" 2>&1 || true
t1=$(cpu_ticks "$BERTH_PID")
grep '^> ' "$WORK/dnsperf-half.txt" | awk '{ print $NF }' | sort -g >"$WORK/latencies.txt"
n=$(wc -l <"$WORK/latencies.txt")
if [ "$n" -gt 0 ]; then
	at() { sed -n "$(((n * $1 + 999) / 1000))p" "$WORK/latencies.txt"; }
	p50=$(at 500) p90=$(at 900) p99=$(at 990) p999=$(at 999)
	awk -v n="$n" -v d="$DURATION" -v p50="$p50" -v p90="$p90" -v p99="$p99" -v p999="$p999" -v t=$((t1 - t0)) -v hz="$CLK_TCK" 'BEGIN {
		printf "answered %d (%.0f qps); latency p50 %.3f ms, p90 %.3f ms, p99 %.3f ms, p99.9 %.3f ms; cpu %.2f us/query\n", n, n / d, p50 * 1000, p90 * 1000, p99 * 1000, p999 * 1000, t / hz * 1e6 / n
		printf "goal (p99 < 1 ms at half peak): %s\n", (p99 < 0.001 ? "met" : "NOT met")
	}'
else
	echo "!! no per-query latencies; see $WORK/dnsperf-half.txt"
fi
echo "(machine load average: $(cut -d' ' -f1-3 /proc/loadavg); other work on the 2 CPUs shows up in the tail)"
stop "$BERTH_PID"
if [ "${PROFILE:-0}" = 1 ]; then
	echo
	echo "== where Berth's time goes (peak and half-peak runs together)"
	go tool pprof -top -nodecount=25 "$WORK/bin/dnsgen" "$WORK/berth.pprof" 2>/dev/null | head -35
fi
