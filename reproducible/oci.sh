#!/usr/bin/env bash
# Builds the fleetbox binary as reproducible/binary.sh does, then the
# container image from it twice with image/oci, into two separate
# temporary directories, under a different umask, time zone and working
# directory, a second apart, and fails unless the two manifest digests are
# identical. Prints both digests, the image size and the time taken, and
# leaves the first image in build/oci (OCI layout, digest in build/oci/digest)
# and build/fleetbox-oci.tar (oci-archive, also docker-loadable) for pushing.
#
#   bash reproducible/oci.sh
#
# SOURCE_DATE_EPOCH (default: HEAD's commit time) and FLEETBOX_VERSION
# (default: git describe) are the inputs besides the source; the same
# commit gives the same digest on any machine, since go.mod pins the
# toolchain (and with it the gzip stream). FLEETBOX_CA_BUNDLE=FILE installs
# FILE as the image's trust roots (none by default); its sha256 is printed,
# since a rebuild needs the same file to reach the same digest.
set -euo pipefail
cd "$(dirname "$0")/.."
top=$PWD
t0=$(date +%s)

export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || echo 0)}
version=${FLEETBOX_VERSION:-$(git describe --always --tags 2>/dev/null || echo dev)}
revision=$(git rev-parse HEAD 2>/dev/null || echo "")
ca=()
if [ -n "${FLEETBOX_CA_BUNDLE:-}" ]; then
	ca=(--ca-bundle "$(realpath "$FLEETBOX_CA_BUNDLE")")
	echo "oci: trust roots from $FLEETBOX_CA_BUNDLE, sha256 $(sha256sum "$FLEETBOX_CA_BUNDLE" | cut -d' ' -f1)"
fi
work=$(mktemp -d "${TMPDIR:-/tmp}/fleetbox-oci.XXXXXX")
trap 'chmod -R u+w "$work" 2>/dev/null; rm -rf "$work"' EXIT

echo "oci: building the binary (version $version, SOURCE_DATE_EPOCH $SOURCE_DATE_EPOCH)"
CGO_ENABLED=0 GOFLAGS=-buildvcs=false \
	go build -trimpath -ldflags "-s -w -buildid= -X main.version=$version" \
	-o "$work/fleetbox" ./cmd/fleetbox
go build -o "$work/oci-tool" ./image/oci

image() { # $1: output dir (absolute), $2: umask, $3: TZ
	mkdir -p "$1"
	(cd "$1" && umask "$2" && TZ=$3 "$work/oci-tool" --binary "$work/fleetbox" \
		--out "$1/oci" --tar "$1/fleetbox-oci.tar" --tag "fleetbox:$version" \
		--version "$version" --revision "$revision" "${ca[@]}") >"$1.log" 2>&1 || {
		echo "oci: building the image in $1 failed:" >&2
		cat "$1.log" >&2
		exit 3
	}
}

image "$work/a" 022 UTC
sleep 1
image "$work/b/a-longer/path" 077 Pacific/Kiritimati
sed 's/^/oci: a: /' "$work/a.log"
digest_a=$(cat "$work/a/oci/digest")
digest_b=$(cat "$work/b/a-longer/path/oci/digest")
echo "oci: a $digest_a"
echo "oci: b $digest_b"
if [ "$digest_a" != "$digest_b" ]; then
	echo "oci: FAIL: the two images differ" >&2
	diff -r "$work/a/oci" "$work/b/a-longer/path/oci" >&2 || true
	exit 1
fi
if ! cmp -s "$work/a/fleetbox-oci.tar" "$work/b/a-longer/path/fleetbox-oci.tar"; then
	echo "oci: FAIL: same manifest digest, but the two archives differ" >&2
	exit 1
fi

# What a registry stores (compressed layer, config, manifest) and what the
# layer unpacks to.
blobs=$(find "$work/a/oci/blobs" -type f -printf '%s\n' | awk '{s += $1} END {print s}')
unpacked=$(stat -c %s "$work/fleetbox")
echo "oci: image $((blobs / 1024 / 1024)) MiB in the registry ($blobs bytes: layer, config, manifest); binary $((unpacked / 1024 / 1024)) MiB ($unpacked bytes)"

mkdir -p "$top/build"
rm -rf "$top/build/oci"
cp -r "$work/a/oci" "$top/build/oci"
cp "$work/a/fleetbox-oci.tar" "$top/build/fleetbox-oci.tar"
echo "oci: wrote build/oci (digest in build/oci/digest) and build/fleetbox-oci.tar"
echo "oci: pin it as  image: ghcr.io/OWNER/fleetbox@$digest_a"
echo "oci: OK in $(( $(date +%s) - t0 )) s"
