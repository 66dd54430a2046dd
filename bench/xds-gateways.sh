#!/usr/bin/env bash
# Berth's own gateways on delta ADS against the same gateways on state of
# the world: 5 gateways, 1,000 services x 10,000 endpoints, 50 one-endpoint
# changes, timed from Update to every gateway's ACK (each gateway compiles
# what it receives and swaps its routing table). Prints both runs and the
# ratios. Loopback only.
set -euo pipefail
cd "$(dirname "$0")/.."
go build -o bin/xdsbench ./bench/xdsbench
run() { bin/xdsbench -client berth -gateways "${GATEWAYS:-5}" -changes "${CHANGES:-50}" -protocol "$1" -timeout 10m; }
delta=$(run delta); echo "$delta"; echo
sotw=$(run sotw); echo "$sotw"; echo
ms() { # duration text (1.2ms, 345µs, 1.5s) -> milliseconds
	awk -v d="$1" 'BEGIN { if (d ~ /µs$/) { sub(/µs$/, "", d); print d/1000 } else if (d ~ /ms$/) { sub(/ms$/, "", d); print d } else { sub(/s$/, "", d); print d*1000 } }'
}
p99() { echo "$1" | awk '/ACKs over/ { for (i = 1; i <= NF; i++) if ($i == "p99") print $(i+1) }'; }
p50() { echo "$1" | awk '/ACKs over/ { for (i = 1; i <= NF; i++) if ($i == "p50") print $(i+1) }'; }
cpu() { echo "$1" | awk '/CPU per change/ { print $5 }'; }
gwcpu() { echo "$1" | awk '/gateways. process/ { print $4 }'; }
for what in p50 p99 cpu gwcpu; do
	d=$(ms "$($what "$delta")"); s=$(ms "$($what "$sotw")")
	awk -v w="$what" -v d="$d" -v s="$s" 'BEGIN {
		name = (w == "p50") ? "change -> all ACKs p50" : (w == "p99") ? "change -> all ACKs p99" : (w == "cpu") ? "control-plane CPU per change" : "gateways CPU over all changes"
		printf "%-32s delta %9.1f ms   sotw %9.1f ms   sotw/delta %.1fx\n", name, d, s, s / d }'
done
