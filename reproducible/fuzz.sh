#!/usr/bin/env bash
# Runs every fuzz target in the module for a bounded time each
# (FUZZTIME, default 10s). New crashers land in testdata/fuzz as usual.
set -euo pipefail
cd "$(dirname "$0")/.."
fuzztime=${FUZZTIME:-10s}
for pkg in $(go list ./...); do
	for target in $(go test -list '^Fuzz' "$pkg" 2>/dev/null | grep '^Fuzz' || true); do
		echo "fuzz: $pkg $target ($fuzztime)"
		go test "$pkg" -run '^$' -fuzz "^${target}\$" -fuzztime "$fuzztime" >/tmp/fuzz.$$.log 2>&1 || {
			cat /tmp/fuzz.$$.log >&2
			exit 1
		}
	done
done
rm -f /tmp/fuzz.$$.log
