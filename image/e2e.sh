#!/usr/bin/env bash
# The appliance end to end in QEMU (what CI runs): build the dev image, then
# boot it three times against a KMS and an admin node on 127.0.0.1
# (appliance/e2e_test.go, TestApplianceQEMU). Every step prints its time;
# serial logs stay in build/e2e/RUN.
#
#   image/e2e.sh [--no-build]
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)
if [ "${1:-}" != "--no-build" ]; then
	bash image/build.sh dev
fi
echo "== image built at $(( $(date +%s) - start )) s"
FLEETBOX_E2E=1 go test ./appliance -run '^TestApplianceQEMU$' -count=1 -v -timeout 30m
echo "== e2e done in $(( $(date +%s) - start )) s"
