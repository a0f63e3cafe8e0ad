#!/usr/bin/env bash
# Builds the fleetbox binary twice, each time with an empty Go build cache
# and in a different output directory, and fails unless the two are
# byte-identical and statically linked. The levers: CGO_ENABLED=0,
# -trimpath, an empty build ID, no VCS stamping (the version comes from
# -X), and the toolchain pinned by go.mod's toolchain line.
set -euo pipefail
cd "$(dirname "$0")/.."

version=${FLEETBOX_VERSION:-$(git describe --always --tags 2>/dev/null || echo dev)}
work=$(mktemp -d)
trap 'chmod -R u+w "$work" 2>/dev/null; rm -rf "$work"' EXIT

build() { # $1: tag
	mkdir -p "$work/$1"
	GOCACHE="$work/cache-$1" CGO_ENABLED=0 GOFLAGS=-buildvcs=false \
		go build -trimpath -ldflags "-s -w -buildid= -X main.version=$version" \
		-o "$work/$1/fleetbox" ./cmd/fleetbox
}

echo "reproducible: building twice with empty caches (version $version)"
build a
build b
sum_a=$(sha256sum "$work/a/fleetbox" | cut -d' ' -f1)
sum_b=$(sha256sum "$work/b/fleetbox" | cut -d' ' -f1)
size=$(stat -c %s "$work/a/fleetbox")
echo "reproducible: a $sum_a"
echo "reproducible: b $sum_b"
echo "reproducible: size $((size / 1024 / 1024)) MiB ($size bytes)"
if [ "$sum_a" != "$sum_b" ]; then
	echo "reproducible: FAIL: the two builds differ" >&2
	cmp -l "$work/a/fleetbox" "$work/b/fleetbox" | head -20 >&2 || true
	exit 1
fi
info=$(file "$work/a/fleetbox")
echo "reproducible: $info"
case "$info" in
*"statically linked"*) ;;
*) echo "reproducible: FAIL: not statically linked" >&2; exit 1 ;;
esac
if [ "$size" -gt $((40 * 1024 * 1024)) ]; then
	echo "reproducible: FAIL: binary over the 40 MB budget" >&2
	exit 1
fi
echo "reproducible: OK"
