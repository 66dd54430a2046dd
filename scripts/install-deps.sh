#!/usr/bin/env bash
# Installs what Berth needs on Debian 12 (as root), only what is missing:
# containerd, runc, the CNI plugins, iproute2, iptables, curl (the demo),
# e2fsprogs and util-linux (volumes, tests), and headless Chromium (the
# dashboard's browser test). Idempotent.
set -euo pipefail

need=()
command -v containerd >/dev/null 2>&1 || need+=(containerd)
command -v runc >/dev/null 2>&1 || need+=(runc)
[ -x /usr/lib/cni/bridge ] || [ -x /opt/cni/bin/bridge ] || need+=(containernetworking-plugins)
command -v ip >/dev/null 2>&1 || need+=(iproute2)
command -v iptables >/dev/null 2>&1 || need+=(iptables)
command -v curl >/dev/null 2>&1 || need+=(curl)
command -v mkfs.ext4 >/dev/null 2>&1 || need+=(e2fsprogs)   # sized volumes
command -v nsenter >/dev/null 2>&1 || need+=(util-linux)     # multi-node tests
command -v chromium-headless-shell >/dev/null 2>&1 || command -v chromium >/dev/null 2>&1 || need+=(chromium-headless-shell) # dashboard browser test

if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "berth: missing packages: ${need[*]}; run as root or: apt-get install ${need[*]}" >&2
    exit 1
  fi
  echo "berth: installing ${need[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${need[@]}" >/dev/null
fi

if ! command -v go >/dev/null 2>&1 && [ ! -x /usr/local/go/bin/go ]; then
  echo "berth: Go is not installed (expected in PATH or /usr/local/go/bin)" >&2
  exit 1
fi
