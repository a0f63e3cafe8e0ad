#!/usr/bin/env bash
# Predict the measurements of a built image: writes measurements.json next
# to it (build/image/PROFILE/measurements.json) with `fleetbox measure
# image`: MRTD of the firmware (each page order), RTMR1 and RTMR2 from the
# UKI and the GPT actually on the ESP disk, RTMR3 from the profile's
# runtime events and fleetbox.conf. RTMR0 depends on the hypervisor: give a
# reference boot (--rtmr0-quote FILE, --rtmr0-log FILE or --rtmr0 HEX), or
# waive it when writing the policy.
#
#   image/measure.sh dev [--firmware OVMF.fd] [--image DIR] [--rtmr0-quote FILE ...]
#
# Then: fleetbox policy from-measurements --profile dev [--waive rtmr0]
#       [--accept-mock] --out ns-policy.json --kms-out kms-policy.json build/image/dev/measurements.json
set -euo pipefail
cd "$(dirname "$0")/.."
profile=${1:-}
case "$profile" in
dev | prod) shift ;;
*) sed -n '2,/^set -e/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 2 ;;
esac
image=build/image/$profile
firmware=/usr/share/ovmf/OVMF.fd
extra=()
while [ $# -gt 0 ]; do
	case "$1" in
	--image) image=$2; shift 2 ;;
	--firmware) firmware=$2; shift 2 ;;
	--rtmr0 | --rtmr0-quote | --rtmr0-log) extra+=("$1" "$2"); shift 2 ;;
	*) echo "image/measure.sh: unknown option $1" >&2; exit 2 ;;
	esac
done
[ -f "$image/fleetbox.efi" ] || { echo "image/measure.sh: no image in $image: run image/build.sh $profile" >&2; exit 2; }
"$image/fleetbox.bin" measure image --profile "$profile" --firmware "$firmware" --out "$image/measurements.json" "${extra[@]}" "$image"
