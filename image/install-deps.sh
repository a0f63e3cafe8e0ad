#!/usr/bin/env bash
# Install what building and booting the image needs, on Debian bookworm
# (the build machines): mkosi 24 and its host tools from bookworm-backports,
# QEMU, OVMF, swtpm (the vTPM whose event log the dev boot replays),
# cryptsetup. Idempotent; run as root (or with sudo available).
set -euo pipefail
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

src=/etc/apt/sources.list.d/bookworm-backports.sources
if ! grep -rqs "bookworm-backports" /etc/apt/sources.list /etc/apt/sources.list.d/; then
	as_root tee "$src" >/dev/null <<'SRC'
Types: deb
URIs: http://deb.debian.org/debian
Suites: bookworm-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
fi

backports="mkosi systemd-boot systemd-boot-efi python3-pefile e2fsprogs"
plain="qemu-system-x86 qemu-utils ovmf cpio dosfstools mtools kmod fdisk zstd cryptsetup swtpm swtpm-tools"
missing=""
for p in $backports $plain; do dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"; done
mkosi_ok=no
command -v mkosi >/dev/null && mkosi --version | grep -qE 'mkosi (2[4-9]|[3-9][0-9])' && mkosi_ok=yes
if [ -z "$missing" ] && [ "$mkosi_ok" = yes ]; then
	echo "image/install-deps.sh: everything is installed ($(mkosi --version))"
	exit 0
fi
export DEBIAN_FRONTEND=noninteractive
as_root apt-get update -qq
# Without --no-install-recommends mkosi pulls in dnf, pacman and zypper.
as_root apt-get install -y -qq --no-install-recommends -t bookworm-backports $backports
as_root apt-get install -y -qq --no-install-recommends $plain
echo "image/install-deps.sh: $(mkosi --version), $(qemu-system-x86_64 --version | head -1)"
