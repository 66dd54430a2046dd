#!/usr/bin/env bash
# Vendors the dashboard's charting library, uPlot, into ui/assets/vendor/uplot
# (checked in: the build and the binary need no network, and nothing is
# loaded from a CDN). Run it only to change the version: it fetches the
# exact release with `npm pack`, refuses a tarball whose sha512 differs from
# the one written here (the registry's dist.integrity of that release), and
# copies the IIFE build, its CSS and the licence.
set -euo pipefail

VERSION=1.6.32
# npm view uplot@1.6.32 dist.integrity
INTEGRITY=sha512-KIMVnG68zvu5XXUbC4LQEPnhwOxBuLyW1AHtpm6IKTXImkbLgkMy+jabjLgSLMasNuGGzQm/ep3tOkyTxpiQIw==

root=$(cd "$(dirname "$0")/.." && pwd)
dest=$root/ui/assets/vendor/uplot
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

(cd "$tmp" && npm pack --silent "uplot@$VERSION" >/dev/null)
tgz=$tmp/uplot-$VERSION.tgz
got=sha512-$(openssl dgst -sha512 -binary "$tgz" | base64 -w0)
if [ "$got" != "$INTEGRITY" ]; then
  echo "vendor-ui: uplot-$VERSION.tgz has $got, want $INTEGRITY" >&2
  exit 1
fi
tar -xzf "$tgz" -C "$tmp"
mkdir -p "$dest"
cp "$tmp/package/dist/uPlot.iife.min.js" "$tmp/package/dist/uPlot.min.css" "$tmp/package/LICENSE" "$dest/"
echo "$VERSION $INTEGRITY" >"$dest/VERSION"
echo "vendor-ui: uplot $VERSION -> ${dest#"$root"/}"
