#!/usr/bin/env bash
# Starts containerd if it is not answering on its socket (machines without
# systemd, such as CI containers, do not start it on install).
set -euo pipefail
sock=${CONTAINERD_SOCKET:-/run/containerd/containerd.sock}

if ctr --address "$sock" version >/dev/null 2>&1; then
  exit 0
fi
if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
  systemctl start containerd || true
fi
if ! ctr --address "$sock" version >/dev/null 2>&1; then
  mkdir -p /var/log/berth
  echo "berth: starting containerd (log: /var/log/berth/containerd.log)" >&2
  nohup containerd >>/var/log/berth/containerd.log 2>&1 &
fi
for _ in $(seq 1 100); do
  if ctr --address "$sock" version >/dev/null 2>&1; then
    exit 0
  fi
  sleep 0.1
done
echo "berth: containerd did not come up on $sock; see /var/log/berth/containerd.log" >&2
exit 1
