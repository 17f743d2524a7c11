#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0
#
# The full Debian guest of `make test-install`: a trixie system made by
# mmdebstrap, as a user's VM has it (systemd as init, udev, apt,
# initramfs-tools, Debian's unmodified kernel packages with the initrds
# their own postinst made), on an ext4 disk image the QEMU harness boots
# with root on that disk, Debian's kernel and Debian's initrd.
#
# Two kernels are installed, both untouched:
#   linux-image-$DISTRO_KREL (trixie-backports, the kernel `make deb`
#       packages the module for: 7.3.4+deb13-cloud-amd64, with ARCH=arm64
#       7.3.4+deb13-cloud-arm64), and
#   linux-image-cloud-amd64 (-cloud-arm64: trixie's 6.12, a kernel with no
#       package of ours: the C driver must bind there whatever of ours is
#       installed).
#
# An arm64 guest is made on this x86_64 host with the packages'
# maintainer scripts run by qemu-user (qemu-user-static through
# binfmt_misc, which this script registers host-wide if it is not).
#
# The only addition is the test harness's command channel: the agent
# (scripts/guest/agent) as a systemd service on the virtio-serial port
# "agent", which prints BALLOON-GUEST-READY on the console when it starts.
# Nothing loads a module: udev does, as on any Debian system.
#
# The image is made once and cached in $BALLOON_CACHE/debian-guest, keyed by
# its inputs (packages, customize(), the agent); tests copy it and boot the copy. Prints the
# image's directory (root.img, kernels.txt).
#
# Parameters (environment): DISTRO_KREL, DISTRO_KPKG (as scripts/distro.sh),
# DEBIAN_MIRROR.

source "$(dirname "$0")/lib.sh"
# Standard output is the image's directory and nothing else (callers
# capture it): everything else goes to standard error.
exec 3>&1 1>&2

case "$ARCH:$PAGES" in
x86_64:4k) FLAVOUR=cloud-amd64 ;;
arm64:4k) FLAVOUR=cloud-arm64 ;;
*) die "the full Debian guest is made for x86_64 and arm64 with 4 KiB pages (ARCH=$ARCH PAGES=$PAGES)" ;;
esac
DISTRO_KREL=${DISTRO_KREL:-7.3.4+deb13-$FLAVOUR}
DISTRO_KPKG=${DISTRO_KPKG:-7.3.4-1~bpo13+1}
SUITE=trixie
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
KEYRING=/usr/share/keyrings/debian-archive-keyring.gpg
GUEST_DIR=$BALLOON_CACHE/debian-guest/$DEB_ARCH
IMAGE_MIB=3072

PACKAGES=(
	systemd systemd-sysv udev apt kmod initramfs-tools e2fsprogs
	# The backported kernel pre-depends on the backported linux-base.
	linux-base/trixie-backports
	"linux-image-$DISTRO_KREL=$DISTRO_KPKG"
	"linux-image-$FLAVOUR"
)

# customize ROOTFS: what the test harness needs in the guest, nothing more.
customize() {
	local r=$1
	echo balloon-guest >"$r/etc/hostname"
	echo 'LABEL=debian-root / ext4 rw,errors=remount-ro 0 1' >"$r/etc/fstab"
	# Root logs in on the console without a password (a test VM).
	chroot "$r" passwd -d root >/dev/null
	install -m 0755 "$PROJECT_DIR/scripts/guest/agent" "$r/usr/local/sbin/balloon-agent"
	cat >"$r/etc/systemd/system/balloon-agent.service" <<'EOF'
[Unit]
Description=Test harness command agent (virtio-serial port "agent")
BindsTo=dev-virtio\x2dports-agent.device
After=dev-virtio\x2dports-agent.device

[Service]
ExecStart=/usr/local/sbin/balloon-agent /dev/virtio-ports/agent
ExecStartPost=/bin/sh -c 'echo BALLOON-GUEST-READY >/dev/console'

[Install]
WantedBy=dev-virtio\x2dports-agent.device
EOF
	mkdir -p "$r/etc/systemd/system/dev-virtio\\x2dports-agent.device.wants"
	ln -s ../balloon-agent.service \
		"$r/etc/systemd/system/dev-virtio\\x2dports-agent.device.wants/balloon-agent.service"
	# No apt run of its own while a test runs apt.
	chroot "$r" systemctl mask apt-daily.timer apt-daily-upgrade.timer >/dev/null 2>&1 || true
	chroot "$r" dpkg-query -W 'linux-image-*' >"$r/.balloon-kernels"
}

# mmdebstrap runs its hooks with sh: it calls this script back for them.
if [[ "${1:-}" == --customize ]]; then
	customize "$2"
	exit 0
fi

# The image's inputs: the system, the packages, what customize() adds.
key=$({
	echo "$SUITE $MIRROR $IMAGE_MIB $DEB_ARCH"
	printf '%s\n' "${PACKAGES[@]}"
	declare -f customize
	cat "$PROJECT_DIR/scripts/guest/agent"
} | sha12)
OUT=$GUEST_DIR/guest-$key

if [[ -f "$OUT/.balloon-guest" ]]; then
	msg "Debian guest: $OUT present"
	echo "$OUT" >&3
	exit 0
fi

need_cmd mmdebstrap "apt-get install mmdebstrap"
need_cmd mkfs.ext4 "apt-get install e2fsprogs"
((EUID == 0)) || die "the Debian guest needs root (mmdebstrap --mode=root)"
[[ -f "$KEYRING" ]] || die "$KEYRING missing" "apt-get install debian-archive-keyring"
# A foreign architecture's maintainer scripts run under qemu-user.
foreign_arch_ready() {
	[[ "$DEB_ARCH" == amd64 ]] && return
	need_cmd arch-test "apt-get install arch-test"
	arch-test "$DEB_ARCH" >/dev/null 2>&1 && return
	local conf=/usr/lib/binfmt.d/qemu-$QEMU_ARCH.conf
	[[ -f "$conf" ]] || die "this host cannot run $DEB_ARCH programs, which an $DEB_ARCH root needs" \
		"apt-get install qemu-user-static arch-test (then rerun: this script registers it)"
	msg "registering qemu-$QEMU_ARCH-static with binfmt_misc (host-wide, until reboot)"
	mountpoint -q /proc/sys/fs/binfmt_misc || mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
	[[ -e /proc/sys/fs/binfmt_misc/qemu-$QEMU_ARCH ]] || cat "$conf" >/proc/sys/fs/binfmt_misc/register
	arch-test "$DEB_ARCH" >/dev/null 2>&1 ||
		die "$DEB_ARCH programs still do not run through binfmt_misc ($(arch-test "$DEB_ARCH" 2>&1))"
}
foreign_arch_ready

mkdir -p "$GUEST_DIR"
tmp=$OUT.tmp
rm -rf "$tmp"
mkdir -p "$tmp"
msg "Debian guest: mmdebstrap $SUITE $DEB_ARCH (systemd, udev, apt, linux-image-$DISTRO_KREL, linux-image-$FLAVOUR)"
inc=$(
	IFS=,
	echo "${PACKAGES[*]}"
)
mmdebstrap --variant=minbase --mode=root --components=main --architectures="$DEB_ARCH" \
	--aptopt='Acquire::Languages "none"' \
	--aptopt='APT::Install-Recommends "false"' \
	--include="$inc" \
	--customize-hook="'$PROJECT_DIR/scripts/debian-guest.sh' --customize \"\$1\"" \
	"$SUITE" "$tmp/rootfs" \
	"deb [signed-by=$KEYRING] $MIRROR $SUITE main" \
	"deb [signed-by=$KEYRING] $MIRROR $SUITE-backports main" \
	>"$tmp/mmdebstrap.log" 2>&1 ||
	die "mmdebstrap failed" "see $tmp/mmdebstrap.log (tail: $(tail -3 "$tmp/mmdebstrap.log" | tr '\n' ' '))"
[[ -f "$tmp/rootfs/boot/vmlinuz-$DISTRO_KREL" ]] || die "no /boot/vmlinuz-$DISTRO_KREL in the guest"
for k in "$tmp"/rootfs/boot/vmlinuz-*; do
	[[ -f "$tmp/rootfs/boot/initrd.img-${k##*/vmlinuz-}" ]] ||
		die "no /boot/initrd.img-${k##*/vmlinuz-} in the guest: initramfs-tools did not make one (see $tmp/mmdebstrap.log)"
done
mv "$tmp/rootfs/.balloon-kernels" "$tmp/kernels.txt"
msg "Debian guest: ext4 image of $IMAGE_MIB MiB"
mkfs.ext4 -q -F -L debian-root -d "$tmp/rootfs" "$tmp/root.img" "${IMAGE_MIB}M" ||
	die "mkfs.ext4 -d failed for $tmp/rootfs"
rm -rf "$tmp/rootfs"
touch "$tmp/.balloon-guest"
for d in "$GUEST_DIR"/guest-*; do
	[[ "$d" == "$OUT" || "$d" == "$tmp" ]] || rm -rf "$d"
done
rm -rf "$OUT"
mv "$tmp" "$OUT"
msg "Debian guest: $OUT ($(tr '\n' ' ' <"$OUT/kernels.txt"))"
echo "$OUT" >&3
