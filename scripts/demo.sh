#!/usr/bin/env bash
# The Berth demo: start `berth dev`, load the example images, deploy the
# examples, show the services and instances, a request through the gateway
# and a DNS lookup and a request made from inside a container; then keep the
# cluster up until Ctrl-C. `make demo` builds everything first.
set -euo pipefail
cd "$(dirname "$0")/.."

DATA=${BERTH_DEMO_DATA:-/var/lib/berth/dev}
API=${BERTH_DEMO_API:-127.0.0.1:7400}
GW=${BERTH_DEMO_GATEWAY:-127.0.0.1:8080}
DNS=${BERTH_DEMO_DNS:-127.0.0.1:1053}
UI=${BERTH_DEMO_UI:-127.0.0.1:7420}
LOG=${BERTH_DEMO_LOG:-/var/log/berth/dev.log}
BERTH="bin/berth --server $API"
export BERTH_ADDR=$API
# berth dev writes the CLI's configuration (cluster CA and an admin token)
# into its data dir; every CLI call below authenticates with it.
export BERTH_CONFIG=$DATA/admin.conf

mkdir -p "$(dirname "$LOG")"
say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

say "starting berth dev (logs: $LOG)"
bin/berth dev --data-dir "$DATA" --api-addr "$API" --gateway-addr "$GW" --dns-addr "$DNS" --ui-addr "$UI" 2>>"$LOG" &
pid=$!
stop() {
  trap - INT TERM
  echo
  say "stopping berth dev"
  kill -INT "$pid" 2>/dev/null || true
  wait "$pid" || true
  exit 0
}
trap stop INT TERM

for i in $(seq 1 300); do
  if ! kill -0 "$pid" 2>/dev/null; then
    wait "$pid"; code=$?
    echo "berth dev exited ($code); last log lines:" >&2
    tail -n 20 "$LOG" >&2
    exit "$code"
  fi
  if $BERTH get nodes 2>/dev/null | grep -q ' Ready '; then break; fi
  sleep 0.2
done

say "loading the example images"
# --force: a rebuilt example image re-points its tag (the demo user is the admin)
$BERTH image load --force images/hello-v1.tar images/hello-v2.tar

say "berth apply -f examples/"
$BERTH apply -f examples/ --wait --timeout 3m

say "berth get services"
$BERTH get services
say "berth get instances"
$BERTH get instances

say "a request through the gateway: curl -H 'Host: hello.example.test' http://$GW/"
for _ in 1 2 3; do curl -sS --max-time 5 -H 'Host: hello.example.test' "http://$GW/"; done

client_ip=$($BERTH get instances | awk '$3=="client" && $7=="true" {print $8; exit}')
say "inside the client container ($client_ip): resolve 'hello' through Berth's DNS"
curl -sS --max-time 10 "http://$client_ip:8080/resolve?name=hello"
say "inside the client container: GET http://hello:8080/"
curl -sS --max-time 10 "http://$client_ip:8080/call?url=http://hello:8080/"
say "inside the client container: GET http://hello.default.svc.berth.internal:8080/"
curl -sS --max-time 10 "http://$client_ip:8080/call?url=http://hello.default.svc.berth.internal:8080/"

say "berth describe service hello"
$BERTH describe service hello

say "berth logs hello --tail 1 (every replica's output, from its node)"
$BERTH logs hello --tail 1
say "berth exec client -- /hello env (a command inside a container)"
$BERTH exec client -- /hello env | grep '^BERTH_'

# The admin's token (in the CLI configuration berth dev wrote) logs the
# browser in; tokens are "berth-" and URL-safe characters.
token=$(awk '$1=="token:" {print $2; exit}' "$BERTH_CONFIG")
say "the dashboard (live rollout plots): http://$UI/login?token=$token"
echo "  (a canary rollout started with berth apply shows there live: see the README's CLI tour)"

echo
echo "berth dev keeps running: try '$BERTH get instances' in another terminal. Ctrl-C stops it."
wait "$pid"
