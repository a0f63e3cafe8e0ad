#!/usr/bin/env bash
# The appliance end to end in QEMU (what CI runs): build the dev image and a
# variant with one more kernel command line option, predict both images'
# measurements, then boot them against a KMS and an admin node on
# 127.0.0.1 whose policies are written from measurements.json
# (appliance/e2e_test.go, TestApplianceQEMU). Every step prints its time;
# serial logs stay in build/e2e/RUN.
#
#   image/e2e.sh [--no-build]
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)
if [ "${1:-}" != "--no-build" ]; then
	bash image/build.sh dev
	bash image/build.sh dev --out build/image/dev-changed --cmdline-extra "mitigations=auto"
fi
bash image/measure.sh dev
bash image/measure.sh dev --image build/image/dev-changed
echo "== images built and measured at $(( $(date +%s) - start )) s"
FLEETBOX_E2E=1 FLEETBOX_E2E_CHANGED_IMAGE=build/image/dev-changed \
	go test ./appliance -run '^TestApplianceQEMU$' -count=1 -v -timeout 30m
echo "== e2e done in $(( $(date +%s) - start )) s"
