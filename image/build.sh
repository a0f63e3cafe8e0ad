#!/usr/bin/env bash
# Build the fleetbox appliance image for one profile (dev or prod).
#
#   image/build.sh dev  [--out DIR] [--cache DIR] [--no-incremental]
#   image/build.sh prod (--kms-policy FILE | --kms-key BASE64) [--kms-url URL] [...]
#   image/build.sh dev --update-lock     # resolve versions anew, rewrite image/packages.lock
#   image/build.sh dev --cmdline-extra "mitigations=auto" --out DIR   # a variant with one more
#                                        # (measured) kernel command line option
#
# Steps: build the static fleetbox binary with the pinned toolchain
# (CGO_ENABLED=0, -trimpath, no build id); stage it, and for prod the
# fleetbox.conf with the KMS trust anchor, as an extra tree; run mkosi with
# the profile's drop-ins, SOURCE_DATE_EPOCH from the commit, and every
# package pinned to its version in image/packages.lock (apt fails if the
# mirror no longer has it, naming the package); then check the image's
# manifest against the lock, so a package the lock does not name also
# fails the build. Outputs in OUT (default build/image/PROFILE):
#   fleetbox.raw   the ESP-only disk image QEMU and clouds boot
#   fleetbox.efi   the UKI (kernel, initrd = the whole OS, command line)
#   fleetbox.conf  the appliance configuration baked into the image
#   fleetbox.bin   the static fleetbox binary inside it
#   fleetbox.initrd, fleetbox.vmlinuz  the UKI's initrd and kernel
#   fleetbox.manifest, build.json (timing and sizes)
set -euo pipefail
cd "$(dirname "$0")/.."
top=$PWD

profile=${1:-}
case "$profile" in
dev | prod) shift ;;
-h | --help | "")
	sed -n '2,/^set -e/p' "$0" | sed '$d; s/^# \{0,1\}//'
	[ -n "$profile" ] && exit 0 || exit 2
	;;
*) echo "image/build.sh: profile must be dev or prod, not $profile" >&2; exit 2 ;;
esac

out=$top/build/image/$profile
cache=$top/build/mkosi-cache
incremental=yes
update_lock=no
kms_policy="" kms_key="" kms_url="" cmdline_extra=""
while [ $# -gt 0 ]; do
	case "$1" in
	--out) out=$(realpath -m "$2"); shift 2 ;;
	--cache) cache=$(realpath -m "$2"); shift 2 ;;
	--no-incremental) incremental=no; shift ;;
	--update-lock) update_lock=yes; shift ;;
	--kms-policy) kms_policy=$(realpath "$2"); shift 2 ;;
	--kms-key) kms_key=$2; shift 2 ;;
	--kms-url) kms_url=$2; shift 2 ;;
	--cmdline-extra) cmdline_extra=$2; shift 2 ;;
	*) echo "image/build.sh: unknown option $1" >&2; exit 2 ;;
	esac
done

need() { command -v "$1" >/dev/null || { echo "image/build.sh: $1 is missing ($2)" >&2; exit 2; }; }
need mkosi "apt-get install -t bookworm-backports mkosi; see image/README.md"
need go "the Go toolchain"
need python3 "mkosi needs it too"

t0=$(date +%s.%N)
stage=$(mktemp -d "${TMPDIR:-/tmp}/fleetbox-stage.XXXXXX")
trap 'rm -rf "$stage"' EXIT

# The binary. The toolchain is the one go.mod pins (GOTOOLCHAIN=local
# refuses a different one rather than downloading it silently).
want_go=$(sed -n 's/^toolchain //p' go.mod)
have_go=$(go env GOVERSION)
if [ -n "$want_go" ] && [ "$want_go" != "$have_go" ]; then
	echo "image/build.sh: go.mod pins $want_go, this machine has $have_go" >&2
	exit 2
fi
version=${FLEETBOX_VERSION:-$(git describe --always --dirty 2>/dev/null || echo dev)}
mkdir -p "$stage/tree/usr/bin"
CGO_ENABLED=0 GOFLAGS=-buildvcs=false go build -trimpath \
	-ldflags "-s -w -buildid= -X main.version=$version" \
	-o "$stage/tree/usr/bin/fleetbox" ./cmd/fleetbox
mkdir -p "$stage/tree/usr/share/doc/fleetbox"
cp appliance/README.md "$stage/tree/usr/share/doc/fleetbox/appliance.md"

# prod: the KMS trust anchor goes into fleetbox.conf (measured: in the
# image, and its hash is an RTMR3 event).
if [ "$profile" = prod ]; then
	if [ -z "$kms_policy" ] && [ -z "$kms_key" ]; then
		echo "image/build.sh: the prod image needs the KMS's trust anchor: --kms-policy FILE (the KMS's own" >&2
		echo "  quote must satisfy it) and/or --kms-key BASE64 (its pinned signing key, from kms serve's log)" >&2
		exit 2
	fi
	mkdir -p "$stage/tree/etc/fleetbox"
	python3 - image/profiles/prod/fleetbox.conf.in "$stage/tree/etc/fleetbox/fleetbox.conf" "$kms_policy" "$kms_key" "$kms_url" <<'PY'
import json, sys
src, dst, pol, key, url = sys.argv[1:]
c = json.load(open(src))
kms = {}
if url: kms["url"] = url
if pol: kms["policy"] = json.load(open(pol))
if key: kms["publicKey"] = key
c["kms"] = kms
open(dst, "w").write(json.dumps(c, indent=2) + "\n")
PY
fi

# Package pins from the lock, as apt preferences (priority 1001: that
# version and no other, even a downgrade). A pin does not install anything,
# so one lock serves both profiles; what each image holds is checked below.
mkdir -p "$stage/pkgmngr/etc/apt/preferences.d"
npins=0
if [ "$update_lock" = no ]; then
	[ -f image/packages.lock ] || { echo "image/build.sh: image/packages.lock is missing (run with --update-lock once)" >&2; exit 2; }
	while read -r name ver; do
		case "$name" in "" | "#"*) continue ;; esac
		printf 'Package: %s\nPin: version %s\nPin-Priority: 1001\n\n' "$name" "$ver"
		npins=$((npins + 1))
	done <image/packages.lock >"$stage/pkgmngr/etc/apt/preferences.d/fleetbox-lock.pref"
fi

# SOURCE_DATE_EPOCH from the environment wins (reproducible/image.sh builds
# copies without history); otherwise the last commit's time.
epoch=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || echo 0)}
# The incremental cache (the installed packages) is keyed by the lock, so a
# new lock never reuses packages installed under the old one.
lockkey=$(cat image/packages.lock 2>/dev/null | sha256sum | cut -c1-12)
[ "$update_lock" = yes ] && lockkey=unlocked
mkdir -p "$out" "$cache/incremental/$profile-$lockkey" "$cache/packages"
args=(
	--directory "$top"
	--include "$top/image/profiles/$profile"
	--extra-tree "$stage/tree"
	--package-manager-tree "$stage/pkgmngr"
	--output-dir "$out"
	--cache-dir "$cache/incremental/$profile-$lockkey"
	--package-cache-dir "$cache/packages"
	--source-date-epoch "$epoch"
	--environment "SOURCE_DATE_EPOCH=$epoch"
	--incremental "$incremental"
	--force
)
if [ -n "$cmdline_extra" ]; then
	args+=(--kernel-command-line "$cmdline_extra")
fi
echo "== mkosi build: profile $profile, SOURCE_DATE_EPOCH $epoch, $npins pinned packages, out $out (log: $out/mkosi.log)"
if ! mkosi "${args[@]}" build >"$stage/mkosi.log" 2>&1; then
	cp "$stage/mkosi.log" "$out/mkosi.log"

# The ESP's FAT: mtools 4.0.32 (bookworm) stamps the directories
# systemd-repart 254 creates with the current time; clamp every FAT
# timestamp to SOURCE_DATE_EPOCH (image/fatclamp). Unmeasured metadata: no
# register changes.
go run ./image/fatclamp -epoch "$epoch" "$out/fleetbox.raw" 2>/dev/null || true
	tail -60 "$stage/mkosi.log" >&2
	echo "image/build.sh: mkosi failed; the whole log is $out/mkosi.log" >&2
	exit 1
fi
cp "$stage/mkosi.log" "$out/mkosi.log"

# The ESP's FAT: mtools 4.0.32 (bookworm) stamps the directories
# systemd-repart 254 creates with the current time; clamp every FAT
# timestamp to SOURCE_DATE_EPOCH (image/fatclamp). Unmeasured metadata: no
# register changes.
go run ./image/fatclamp -epoch "$epoch" "$out/fleetbox.raw"

# What the image holds, against the lock.
manifest="$out/fleetbox.manifest"
python3 - "$manifest" "$out/packages.txt" <<'PY'
import json, sys
m = json.load(open(sys.argv[1]))
rows = sorted((p["name"], p["version"]) for p in m["packages"])
open(sys.argv[2], "w").write("".join(f"{n} {v}\n" for n, v in rows))
PY
if [ "$update_lock" = yes ]; then
	# Merge: this profile's versions replace the lock's; packages only the
	# other profile has keep theirs.
	python3 - image/packages.lock "$out/packages.txt" <<'PY'
import datetime, os, sys
lock, got = sys.argv[1], sys.argv[2]
rows = {}
if os.path.exists(lock):
    for line in open(lock):
        if line.strip() and not line.startswith("#"):
            n, v = line.split()
            rows[n] = v
for line in open(got):
    n, v = line.split()
    rows[n] = v
with open(lock, "w") as f:
    f.write("# Package versions of the fleetbox image (both profiles): name version.\n")
    f.write("# image/build.sh pins apt to exactly these and fails when an image holds a package that is\n")
    f.write("# not here or in another version (the mirror moved on). Rewrite with image/build.sh PROFILE --update-lock.\n")
    f.write(f"# Resolved {datetime.date.today()} from trixie, trixie-updates, trixie-security, trixie-backports.\n")
    for n in sorted(rows):
        f.write(f"{n} {rows[n]}\n")
print(f"wrote {lock} ({len(rows)} packages)")
PY
else
	if ! python3 - image/packages.lock "$out/packages.txt" >"$out/lock.diff" <<'PY'; then
import sys
lock = {}
for line in open(sys.argv[1]):
    if line.strip() and not line.startswith("#"):
        n, v = line.split()
        lock[n] = v
bad = 0
for line in open(sys.argv[2]):
    n, v = line.split()
    if n not in lock:
        print(f"{n} {v}: not in the lock"); bad += 1
    elif lock[n] != v:
        print(f"{n}: {v} installed, the lock says {lock[n]}"); bad += 1
sys.exit(1 if bad else 0)
PY
		echo "image/build.sh: the image's packages differ from image/packages.lock:" >&2
		cat "$out/lock.diff" >&2
		exit 1
	fi
	echo "== every package of the image matches image/packages.lock"
fi

# Artifacts under stable names.
cp "$stage/tree/usr/bin/fleetbox" "$out/fleetbox.bin"
if [ -f "$stage/tree/etc/fleetbox/fleetbox.conf" ]; then
	cp "$stage/tree/etc/fleetbox/fleetbox.conf" "$out/fleetbox.conf"
else
	cp "image/profiles/$profile/tree/etc/fleetbox/fleetbox.conf" "$out/fleetbox.conf"
fi
t1=$(date +%s.%N)
python3 - "$out" "$t0" "$t1" "$profile" "$epoch" <<'PY'
import json, os, sys
out, t0, t1, profile, epoch = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), sys.argv[4], sys.argv[5]
sizes = {f: os.path.getsize(os.path.join(out, f)) for f in sorted(os.listdir(out))
         if not os.path.islink(os.path.join(out, f)) and f.split(".")[-1] in ("raw", "efi", "initrd", "vmlinuz", "bin")}
json.dump({"profile": profile, "sourceDateEpoch": int(epoch), "seconds": round(t1 - t0, 1), "bytes": sizes},
          open(os.path.join(out, "build.json"), "w"), indent=2)
print(f"== built {profile} in {t1 - t0:.0f} s: " + ", ".join(f"{k} {v / 2**20:.1f} MiB" for k, v in sizes.items()))
PY
