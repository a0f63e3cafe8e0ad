#!/usr/bin/env bash
# Runs every fuzz target in the module for a bounded time each
# (FUZZTIME, default 10s). New crashers land in testdata/fuzz as usual.
#
# Go 1.26's fuzz coordinator can fail a target with a bare "context deadline
# exceeded" when -fuzztime expires while a worker is mid-call
# (golang/go#75804, fixed in Go 1.27). A real finding always writes its
# input ("Failing input written to ..."), so a failure without one is
# treated as that race: the target's corpus is replayed deterministically
# and must pass, and the run goes on with a warning.
set -euo pipefail
cd "$(dirname "$0")/.."
fuzztime=${FUZZTIME:-10s}
log=$(mktemp)
trap 'rm -f "$log"' EXIT
for pkg in $(go list ./...); do
	for target in $(go test -list '^Fuzz' "$pkg" 2>/dev/null | grep '^Fuzz' || true); do
		echo "fuzz: $pkg $target ($fuzztime)"
		if go test "$pkg" -run '^$' -fuzz "^${target}\$" -fuzztime "$fuzztime" >"$log" 2>&1; then
			continue
		fi
		if grep -q 'context deadline exceeded' "$log" && ! grep -q 'Failing input written' "$log"; then
			echo "fuzz: $target stopped with Go's -fuzztime shutdown race (golang/go#75804), no failing input; replaying its corpus"
			if go test "$pkg" -run "^${target}\$" -count=1 >"$log" 2>&1; then
				continue
			fi
		fi
		cat "$log" >&2
		exit 1
	done
done
