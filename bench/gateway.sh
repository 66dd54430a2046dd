#!/usr/bin/env bash
# Gateway benchmark: requests per second, p99 latency and CPU per request
# of Berth's gateway against nginx and HAProxy, in one run, same upstreams.
#
#   upstreams  three servers on 127.0.0.1-3, one port, ~100-byte bodies
#              (bench/gatewaybench upstream: a minimal Go HTTP/1.1
#              keep-alive responder; GATEWAY_BENCH_NETHTTP=1 uses net/http)
#   berth      bench/gatewaybench gateway: the real xds.Server publishing one
#              service (host *, path /) over those three endpoints, and the
#              real gateway.Gateway following it over ADS
#   nginx      1 worker, upstream keepalive 256, access log off, the same
#              X-Forwarded-For/-Proto and X-Request-Id headers Berth adds
#   haproxy    nbthread 1, http-reuse always, the same headers
#
# Each proxy runs alone, pinned to CPU 0 (taskset); wrk and the upstreams
# run on CPU 1: `wrk -t1 -c64 -d10s --latency` over keep-alive after a 2 s
# warm-up. CPU us/request is the proxy's utime+stime delta (all its
# processes, from /proc) over the requests wrk completed. Rounds run
# berth, nginx, haproxy in turn (ROUNDS, default 3); the summary gives each
# proxy's median over the rounds and the ratios of the medians. Other load on
# the machine moves these figures by tens of percent: compare within a run.
#
# Environment: DURATION (10s), CONNS (64), ROUNDS (3), GATEWAY_BENCH_PROFILE=1
# to write a 5 s CPU profile of Berth's gateway under load to
# $OUT/berth.pprof and print its top functions. Only loopback is used.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH=$PATH:/usr/local/go/bin

DURATION=${DURATION:-10s}
CONNS=${CONNS:-64}
ROUNDS=${ROUNDS:-3}
PROXY_CPU=0
LOAD_CPU=1

need=()
command -v wrk >/dev/null || need+=(wrk)
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || need+=(nginx)
command -v haproxy >/dev/null || [ -x /usr/sbin/haproxy ] || need+=(haproxy)
if [ ${#need[@]} -gt 0 ]; then
	echo "installing ${need[*]} (system services are not started)"
	# policy-rc.d keeps the packages' services from starting.
	prc=/usr/sbin/policy-rc.d
	made_prc=0
	if [ ! -e $prc ]; then printf '#!/bin/sh\nexit 101\n' >$prc; chmod +x $prc; made_prc=1; fi
	DEBIAN_FRONTEND=noninteractive apt-get install -y "${need[@]}" >/dev/null
	[ $made_prc = 1 ] && rm -f $prc
fi
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
HAPROXY=$(command -v haproxy || echo /usr/sbin/haproxy)

OUT=$(mktemp -d /tmp/berth-gwbench.XXXXXX)
pids=()
cleanup() {
	for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
	wait 2>/dev/null || true
}
trap cleanup EXIT

go build -o "$OUT/gatewaybench" ./bench/gatewaybench

IPS=127.0.0.1,127.0.0.2,127.0.0.3
UP_PORT=$("$OUT/gatewaybench" freeport -ips $IPS)
up_flags=()
[ "${GATEWAY_BENCH_NETHTTP:-0}" = 1 ] && up_flags+=(-nethttp)
taskset -c $LOAD_CPU "$OUT/gatewaybench" upstream -port "$UP_PORT" -ips $IPS "${up_flags[@]}" >"$OUT/upstream.log" 2>&1 &
pids+=($!)

wait_port() { # host port
	for _ in $(seq 1 200); do
		if (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; then return 0; fi
		sleep 0.05
	done
	echo "nothing listens on $1:$2" >&2
	return 1
}
wait_port 127.0.0.1 "$UP_PORT"

# cpu_ticks PID...: utime+stime of the processes, in clock ticks.
cpu_ticks() {
	local sum=0 p
	for p in "$@"; do
		[ -r /proc/$p/stat ] || continue
		# Fields after the ")" of the command name: utime is the 12th, stime the 13th.
		local rest
		rest=$(sed 's/^.*) //' /proc/$p/stat)
		set -- $rest
		sum=$((sum + ${12} + ${13}))
	done
	echo $sum
}
HZ=$(getconf CLK_TCK)

declare -A RPS P99 CPU
# measure NAME PORT PIDS...
measure() {
	local name=$1 port=$2
	shift 2
	local url="http://127.0.0.1:$port/"
	taskset -c $LOAD_CPU wrk -t1 -c"$CONNS" -d2s "$url" >/dev/null
	local before after
	before=$(cpu_ticks "$@")
	taskset -c $LOAD_CPU wrk -t1 -c"$CONNS" -d"$DURATION" --latency "$url" >"$OUT/$name.wrk"
	after=$(cpu_ticks "$@")
	local total rps p99 non2xx
	total=$(awk '/requests in/ {print $1}' "$OUT/$name.wrk")
	rps=$(awk '/^Requests\/sec/ {print $2}' "$OUT/$name.wrk")
	p99=$(awk '$1=="99%" {print $2}' "$OUT/$name.wrk")
	local p50
	p50=$(to_us "$(awk '$1=="50%" {print $2}' "$OUT/$name.wrk")")
	non2xx=$(awk '/Non-2xx/ {print $NF}' "$OUT/$name.wrk")
	if [ -n "$non2xx" ]; then echo "$name: $non2xx non-2xx answers" >&2; cat "$OUT/$name.wrk" >&2; fi
	if grep -q "Socket errors" "$OUT/$name.wrk"; then grep "Socket errors" "$OUT/$name.wrk" >&2; fi
	local us
	us=$(awk -v t=$((after - before)) -v hz="$HZ" -v n="$total" 'BEGIN { printf "%.1f", t / hz * 1e6 / n }')
	local p99us
	p99us=$(to_us "$p99")
	# Per-round values; the summary uses the median of the rounds.
	RPS[$name]="${RPS[$name]:-} $rps"
	P99[$name]="${P99[$name]:-} $p99us"
	CPU[$name]="${CPU[$name]:-} $us"
	printf "%-8s %10s req/s   p50 %6s us   p99 %8s us   %6s us CPU/request\n" "$name" "$rps" "$p50" "$p99us" "$us"
}
to_us() { # wrk latency ("812.00us", "1.23ms", "2.00s") -> microseconds
	awk -v v="$1" 'BEGIN {
		n = v + 0
		if (v ~ /us$/) m = 1; else if (v ~ /ms$/) m = 1000; else if (v ~ /s$/) m = 1000000; else m = 1
		printf "%.0f", n * m }'
}

run_berth() {
	local port
	port=$("$OUT/gatewaybench" freeport -ips 127.0.0.1)
	local pprof_port
	pprof_port=$("$OUT/gatewaybench" freeport -ips 127.0.0.1)
	taskset -c $PROXY_CPU "$OUT/gatewaybench" gateway -listen "127.0.0.1:$port" -port "$UP_PORT" -ips $IPS \
		-pprof "127.0.0.1:$pprof_port" >"$OUT/berth.log" 2>&1 &
	local pid=$!
	pids+=($pid)
	for _ in $(seq 1 200); do grep -q '^ready' "$OUT/berth.log" && break; sleep 0.05; done
	grep -q '^ready' "$OUT/berth.log" || { cat "$OUT/berth.log" >&2; exit 1; }
	measure berth "$port" $pid
	if [ "${GATEWAY_BENCH_PROFILE:-0}" = 1 ]; then
		taskset -c $LOAD_CPU wrk -t1 -c"$CONNS" -d8s "http://127.0.0.1:$port/" >/dev/null &
		local wrk=$!
		sleep 1
		curl -s -o "$OUT/berth.pprof" "http://127.0.0.1:$pprof_port/debug/pprof/profile?seconds=5"
		wait $wrk
		go tool pprof -top -nodecount=40 "$OUT/gatewaybench" "$OUT/berth.pprof" 2>/dev/null | head -50
	fi
	kill $pid
	wait $pid 2>/dev/null || true
}

run_nginx() {
	local port
	port=$("$OUT/gatewaybench" freeport -ips 127.0.0.1)
	mkdir -p "$OUT/nginx"
	cat >"$OUT/nginx/nginx.conf" <<EOF
worker_processes 1;
daemon off;
pid $OUT/nginx/nginx.pid;
error_log $OUT/nginx/error.log warn;
events { worker_connections 4096; }
http {
	access_log off;
	client_body_temp_path $OUT/nginx/body;
	proxy_temp_path $OUT/nginx/proxy;
	fastcgi_temp_path $OUT/nginx/fastcgi;
	uwsgi_temp_path $OUT/nginx/uwsgi;
	scgi_temp_path $OUT/nginx/scgi;
	upstream backend {
		server 127.0.0.1:$UP_PORT;
		server 127.0.0.2:$UP_PORT;
		server 127.0.0.3:$UP_PORT;
		keepalive 256;
	}
	server {
		listen 127.0.0.1:$port;
		location / {
			proxy_pass http://backend;
			proxy_http_version 1.1;
			proxy_set_header Connection "";
			proxy_set_header Host \$host;
			proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
			proxy_set_header X-Forwarded-Proto \$scheme;
			proxy_set_header X-Request-Id \$request_id;
		}
	}
}
EOF
	taskset -c $PROXY_CPU "$NGINX" -p "$OUT/nginx" -c "$OUT/nginx/nginx.conf" -e "$OUT/nginx/error.log" >"$OUT/nginx/stdout.log" 2>&1 &
	local pid=$!
	pids+=($pid)
	wait_port 127.0.0.1 "$port"
	local all=($pid $(pgrep -P $pid || true))
	measure nginx "$port" "${all[@]}"
	kill -QUIT $pid
	wait $pid 2>/dev/null || true
}

run_haproxy() {
	local port
	port=$("$OUT/gatewaybench" freeport -ips 127.0.0.1)
	mkdir -p "$OUT/haproxy"
	cat >"$OUT/haproxy/haproxy.cfg" <<EOF
global
	nbthread 1
	maxconn 4096
defaults
	mode http
	timeout connect 2s
	timeout client 30s
	timeout server 30s
	option http-keep-alive
	http-reuse always
frontend fe
	bind 127.0.0.1:$port
	option forwardfor
	http-request set-header X-Forwarded-Proto http
	http-request set-header X-Request-Id %[uuid()]
	default_backend be
backend be
	balance roundrobin
	server s1 127.0.0.1:$UP_PORT
	server s2 127.0.0.2:$UP_PORT
	server s3 127.0.0.3:$UP_PORT
EOF
	taskset -c $PROXY_CPU "$HAPROXY" -db -f "$OUT/haproxy/haproxy.cfg" >"$OUT/haproxy/stdout.log" 2>&1 &
	local pid=$!
	pids+=($pid)
	wait_port 127.0.0.1 "$port"
	local all=($pid $(pgrep -P $pid || true))
	measure haproxy "$port" "${all[@]}"
	kill $pid
	wait $pid 2>/dev/null || true
}

echo "gateway benchmark: wrk -t1 -c$CONNS -d$DURATION keep-alive; proxy on CPU $PROXY_CPU, wrk + upstreams on CPU $LOAD_CPU; output in $OUT"
for round in $(seq 1 "$ROUNDS"); do
	[ "$ROUNDS" -gt 1 ] && echo "round $round"
	run_berth
	run_nginx
	run_haproxy
done

median() { printf '%s\n' $1 | sort -g | awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
declare -A MR MP MC
for name in berth nginx haproxy; do
	MR[$name]=$(median "${RPS[$name]}")
	MP[$name]=$(median "${P99[$name]}")
	MC[$name]=$(median "${CPU[$name]}")
done
echo "medians over $ROUNDS round(s):"
for name in berth nginx haproxy; do
	printf "%-8s %10.0f req/s   p99 %8.0f us   %6.1f us CPU/request\n" "$name" "${MR[$name]}" "${MP[$name]}" "${MC[$name]}"
done
awk -v br="${MR[berth]}" -v nr="${MR[nginx]}" -v hr="${MR[haproxy]}" \
	-v bp="${MP[berth]}" -v np="${MP[nginx]}" -v hp="${MP[haproxy]}" \
	-v bc="${MC[berth]}" -v nc="${MC[nginx]}" -v hc="${MC[haproxy]}" 'BEGIN {
	printf "berth/nginx:   req/s %.2fx (goal >= 1.0)   p99 %.2fx (goal <= 1.2)   CPU/request %.2fx\n", br/nr, bp/np, bc/nc
	printf "berth/haproxy: req/s %.2fx                 p99 %.2fx                  CPU/request %.2fx\n", br/hr, bp/hp, bc/hc
}'
