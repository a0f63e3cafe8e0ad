#!/usr/bin/env bash
# Boot a built fleetbox image in QEMU with OVMF.
#
#   image/qemu.sh dev [--data FILE] [--data-size 256M] [--fw-cfg FILE]
#                     [--kms-url URL] [--bootstrap MULTIADDR,...] [--fleet-join NS,...]
#                     [--node-port 14501] [--serial-log FILE] [--serial-socket SOCKET]
#                     [--qmp SOCKET] [--image DIR]
#
# The firmware is Debian's OVMF.fd (the build with TDVF metadata, so its MRTD
# can be computed) with a vTPM (swtpm, SHA-384 bank): the firmware's event
# log of the boot is what a dev image's MOCK quote replays its RTMR0-2
# from, and the host's `fleetbox measure mrtd` of that firmware goes in
# through fw_cfg opt/fleetbox/mock-mrtd, so the mock quote carries the
# registers a TD booting this image would show.
#
# The OS disk (build/image/PROFILE/fleetbox.raw) is attached read-only as a
# snapshot, so the image is never modified; the data disk (default
# build/qemu/PROFILE/data.raw, created sparse and blank) keeps the encrypted
# volume across boots. Networking is QEMU's user network: the guest reaches
# services on the host's 127.0.0.1 at 10.0.2.2, and the node's libp2p port
# 4501 is forwarded from 127.0.0.1:NODE_PORT only. KVM is used when
# /dev/kvm works, TCG software emulation otherwise (FLEETBOX_QEMU_ACCEL=tcg
# forces it). Operational settings go in through fw_cfg opt/fleetbox/config
# (unmeasured: where things are, never what to trust). Without
# --serial-log the serial console is this terminal (Ctrl-a x quits).
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
*) echo "image/qemu.sh: profile must be dev or prod, not $profile" >&2; exit 2 ;;
esac

image=$top/build/image/$profile
data=$top/build/qemu/$profile/data.raw
data_size=256M
fwcfg="" kms_url="" bootstrap="" fleet_join=""
node_port=14501
serial_log="" serial_sock="" qmp=""
mem=${FLEETBOX_QEMU_MEM:-2048}
while [ $# -gt 0 ]; do
	case "$1" in
	--image) image=$(realpath "$2"); shift 2 ;;
	--data) data=$(realpath -m "$2"); shift 2 ;;
	--data-size) data_size=$2; shift 2 ;;
	--fw-cfg) fwcfg=$(realpath "$2"); shift 2 ;;
	--kms-url) kms_url=$2; shift 2 ;;
	--bootstrap) bootstrap=$2; shift 2 ;;
	--fleet-join) fleet_join=$2; shift 2 ;;
	--node-port) node_port=$2; shift 2 ;;
	--serial-log) serial_log=$(realpath -m "$2"); shift 2 ;;
	--serial-socket) serial_sock=$(realpath -m "$2"); shift 2 ;;
	--qmp) qmp=$(realpath -m "$2"); shift 2 ;;
	*) echo "image/qemu.sh: unknown option $1" >&2; exit 2 ;;
	esac
done

disk=$image/fleetbox.raw
[ -f "$disk" ] || { echo "image/qemu.sh: $disk is missing: run image/build.sh $profile first" >&2; exit 2; }
for tool in qemu-system-x86_64 swtpm swtpm_setup; do
	command -v $tool >/dev/null || { echo "image/qemu.sh: $tool is missing (bash image/install-deps.sh)" >&2; exit 2; }
done
firmware=${FLEETBOX_QEMU_FIRMWARE:-/usr/share/ovmf/OVMF.fd}
[ -f "$firmware" ] || { echo "image/qemu.sh: $firmware is missing (apt-get install ovmf)" >&2; exit 2; }

run=$(dirname "$data")/run.$node_port
mkdir -p "$run"
cp "$firmware" "$run/firmware.fd"

# The MRTD a TD would show for this firmware (QEMU 9+ page order), from the
# fleetbox binary the image holds.
mrtd=$("$image/fleetbox.bin" measure mrtd --firmware "$firmware" --order single-pass 2>/dev/null | awk '$1 == "mrtd" {print $2}')
[ -n "$mrtd" ] || { echo "image/qemu.sh: could not compute the MRTD of $firmware" >&2; exit 2; }

# A fresh vTPM for this boot with a SHA-384 bank only (the digest TDX uses;
# one bank halves what the firmware hashes under emulation); it ends with QEMU.
rm -rf "$run/tpm" "$run/swtpm.sock"
mkdir -p "$run/tpm"
swtpm_setup --tpm2 --tpm-state "$run/tpm" --pcr-banks sha384 --overwrite >/dev/null
swtpm socket --tpm2 --tpmstate "dir=$run/tpm" --ctrl "type=unixio,path=$run/swtpm.sock" --terminate &
for _ in $(seq 50); do [ -S "$run/swtpm.sock" ] && break; sleep 0.1; done
mkdir -p "$(dirname "$data")"
[ -f "$data" ] || truncate -s "$data_size" "$data"

# Operational settings through fw_cfg: a file given as is, or one made from
# the flags.
if [ -z "$fwcfg" ] && { [ -n "$kms_url" ] || [ -n "$bootstrap" ] || [ -n "$fleet_join" ]; }; then
	fwcfg=$run/operational.json
	python3 - "$fwcfg" "$kms_url" "$bootstrap" "$fleet_join" <<'PY'
import json, sys
out, url, boot, join = sys.argv[1:]
d = {}
if url: d["kmsUrl"] = url
if boot: d["bootstrap"] = [x for x in boot.split(",") if x]
if join: d["fleetJoin"] = [x for x in join.split(",") if x]
open(out, "w").write(json.dumps(d) + "\n")
PY
fi

# /dev/kvm can exist without working: nested setups fail at the first MSR
# write once the vCPU runs. Only a VM that runs for two seconds counts.
kvm_works() {
	[ -w /dev/kvm ] || return 1
	local out
	out=$( (printf '{"execute":"qmp_capabilities"}\n{"execute":"cont"}\n'; sleep 2; printf '{"execute":"quit"}\n') |
		timeout 20 qemu-system-x86_64 -machine q35,accel=kvm -cpu host -display none -nodefaults -no-reboot \
			-S -qmp stdio -bios "$firmware" 2>&1) || return 1
	! grep -qiE 'error|assert' <<<"$out"
}
accel=${FLEETBOX_QEMU_ACCEL:-}
if [ -z "$accel" ]; then
	accel=tcg
	kvm_works && accel=kvm
fi
cpu=max
[ "$accel" = kvm ] && cpu=host

args=(
	-machine "q35,accel=$accel" -cpu "$cpu" -smp 2 -m "$mem"
	-no-reboot -nodefaults -display none
	-drive "if=pflash,format=raw,file=$run/firmware.fd"
	-chardev "socket,id=chrtpm,path=$run/swtpm.sock" -tpmdev emulator,id=tpm0,chardev=chrtpm -device tpm-tis,tpmdev=tpm0
	-fw_cfg "name=opt/fleetbox/mock-mrtd,string=$mrtd"
	-drive "if=none,id=os,format=raw,file=$disk,snapshot=on"
	-device "virtio-blk-pci,drive=os,bootindex=0"
	-drive "if=none,id=data,format=raw,file=$data"
	-device "virtio-blk-pci,drive=data,serial=fleetbox-data"
	-netdev "user,id=net0,hostfwd=tcp:127.0.0.1:$node_port-:4501"
	-device "virtio-net-pci,netdev=net0,romfile="
	-device virtio-rng-pci
)
[ -n "$fwcfg" ] && args+=(-fw_cfg "name=opt/fleetbox/config,file=$fwcfg")
[ -n "$qmp" ] && args+=(-qmp "unix:$qmp,server=on,wait=off")
if [ -n "$serial_sock" ]; then
	args+=(-chardev "socket,id=ser0,path=$serial_sock,server=on,wait=off${serial_log:+,logfile=$serial_log}" -serial chardev:ser0)
elif [ -n "$serial_log" ]; then
	args+=(-serial "file:$serial_log")
else
	args+=(-serial mon:stdio)
fi
echo "image/qemu.sh: booting $disk ($profile, $accel), data disk $data, node port 127.0.0.1:$node_port, mrtd ${mrtd:0:16}…" >&2
exec qemu-system-x86_64 "${args[@]}"
