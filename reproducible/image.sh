#!/usr/bin/env bash
# Build the appliance image twice from clean state and compare every
# artifact (what CI runs for the dev profile):
#
#   reproducible/image.sh [dev|prod]
#
# The two builds run from two copies of the source at different paths
# (different lengths, so a leaked path shows), each with an empty Go build
# cache and its own empty mkosi package and incremental caches (so the
# packages are downloaded twice), no incremental reuse. Then
# reproducible/imagecmp compares the sha256 of the disk image, the UKI, its
# initrd and kernel, the fleetbox binary, the configuration and the package
# list, of each UKI section, and of every file in the initrd with its mode,
# owner and time; on a difference it lists what differs and why (timestamp,
# order, build id, content) and this script exits 1. The prod profile is
# built with an example KMS key (its trust anchor must be in the image).
# Timing and the report go to build/reproducible/PROFILE/.
set -euo pipefail
cd "$(dirname "$0")/.."
top=$PWD
profile=${1:-dev}
case "$profile" in dev | prod) ;; *) echo "reproducible/image.sh: profile dev or prod" >&2; exit 2 ;; esac

report=$top/build/reproducible/$profile
mkdir -p "$report"
work=$(mktemp -d "${TMPDIR:-/var/tmp}/fleetbox-repro.XXXXXX")
trap 'chmod -R u+w "$work" 2>/dev/null; rm -rf "$work"' EXIT

# Both builds take their date and version from this checkout, not from a
# copy without history.
export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct)}
export FLEETBOX_VERSION=${FLEETBOX_VERSION:-$(git describe --always --dirty 2>/dev/null || echo dev)}
extra=()
if [ "$profile" = prod ]; then
	# An example trust anchor: any fixed key makes the comparison; a real
	# deployment passes its KMS's key or policy.
	extra=(--kms-key "qIKuf8sALC7vp40bdtTZCtwpdLEXkS0R7sxbP4yHi+0=" --kms-url "https://kms.example:8443")
fi

# One snapshot of the source for both builds: the tracked files as they
# are in this working tree (committed or not), plus untracked files git
# does not ignore. Taken once, so an edit during the run cannot make the
# builds differ.
git ls-files -z -co --exclude-standard | tar -C "$top" --null -T - -cf "$work/source.tar"

build() { # $1: name, $2: source dir
	local src=$2
	mkdir -p "$src"
	tar -C "$src" -xf "$work/source.tar"
	local t0=$(date +%s)
	(cd "$src" && GOCACHE="$work/$1/gocache" bash image/build.sh "$profile" --no-incremental \
		--out "$work/$1/out" --cache "$work/$1/cache" "${extra[@]}" >"$report/build-$1.log" 2>&1) || {
		echo "reproducible/image.sh: build $1 failed; its log:" >&2
		tail -40 "$report/build-$1.log" >&2
		exit 2
	}
	echo "$(( $(date +%s) - t0 ))" >"$report/seconds-$1"
	echo "reproducible: build $1 in $(cat "$report/seconds-$1") s from $src"
}

echo "reproducible: building the $profile image twice (SOURCE_DATE_EPOCH $SOURCE_DATE_EPOCH, version $FLEETBOX_VERSION)"
build a "$work/a/src"
build b "$work/b/a-longer-path/to/the/source"
set +e
go run ./reproducible/imagecmp -json "$report/report.json" "$work/a/out" "$work/b/out" | tee "$report/report.txt"
status=${PIPESTATUS[0]}
set -e
echo "reproducible: build times $(cat "$report/seconds-a") s and $(cat "$report/seconds-b") s; report in $report"
if [ "$status" != 0 ]; then
	echo "reproducible: FAIL: the two builds differ" >&2
	exit 1
fi
