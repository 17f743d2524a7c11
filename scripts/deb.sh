#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0
#
# Packages virtio_balloon_rs.ko, built for one stock Debian kernel by
# scripts/distro.sh, as a Debian binary package in the shape of Debian's own
# linux-modules-* packages (`make deb`), and checks it with trixie's lintian.
#
# Usage: scripts/deb.sh MODULE_KO KREL KPKG OUTDIR
#   MODULE_KO  the module, built against Debian's KREL (scripts/distro.sh module)
#   KREL       the kernel release (7.3.4+deb13-cloud-amd64)
#   KPKG       its package version (7.3.4-1~bpo13+1)
#   OUTDIR     where the .deb goes
#
# The package, virtio-balloon-rs-KREL (as Debian's linux-modules-KREL),
# version <module version>+<KPKG with '-' and '+' as '.'> (0.3.0+7.3.4.1~bpo13.1),
# holds:
#   /usr/lib/modules/KREL/updates/virtio_balloon_rs.ko   the module
#   /usr/lib/modprobe.d/virtio-balloon-rs-KREL.conf      which driver binds,
#       and the module parameters, documented (a user sets them in a file
#       of their own in /etc/modprobe.d)
#   /usr/share/initramfs-tools/hooks/virtio-balloon-rs-KREL  puts ours into
#       an initrd of KREL that has C's virtio_balloon (Debian's does not:
#       only if a user added it)
# and its maintainer scripts run depmod for KREL only, and update-initramfs
# for KREL when its initrd has C's virtio_balloon.
#
# Which driver binds: both modules claim the device's alias
# (virtio:d00000005v*), so udev loads both and the first to register wins.
# The package's modprobe.d file makes loading C's module load ours instead,
# and C's only when ours cannot be loaded:
#   install virtio_balloon /sbin/modprobe -q virtio_balloon_rs || \
#           /sbin/modprobe --ignore-install virtio_balloon $CMDLINE_OPTS
# modprobe looks modules up in /usr/lib/modules/$(uname -r) only, so on
# KREL ours is found and C is never loaded; on every other kernel (no
# package of ours for it, or it was removed) `modprobe -q
# virtio_balloon_rs` fails and C loads as before, and so it does on KREL
# when ours cannot be loaded (e.g. refused as unsigned under Secure Boot).
# Not both: at boot the rule is the only way C loads while the package is
# installed (on the running system C stays bound until the reboot; ours,
# loaded beside it then, finds the device taken). Not neither: C is the
# fallback of the same command, as long as ours fails to load; if ours
# loads and its probe fails, C is not tried. (A plain `blacklist
# virtio_balloon` applies to every kernel and only stops alias loading;
# depmod's updates/ priority only ranks modules of the same name.) To keep
# C on KREL with the package installed: `install virtio_balloon_rs
# /bin/false` in a file of /etc/modprobe.d.

source "$(dirname "$0")/lib.sh"

(($# == 4)) || die "usage: $0 MODULE_KO KREL KPKG OUTDIR"
KO=$1 KREL=$2 KPKG=$3 OUTDIR=$4
[[ -f "$KO" ]] || die "no module at $KO" "run: scripts/distro.sh module"
need_cmd dpkg-deb "apt-get install dpkg"
need_cmd modinfo "apt-get install kmod"

VERSION=$(modinfo -F version "$KO")
[[ -n "$VERSION" ]] || die "$KO has no version (module_version! in src/virtio_balloon_rs.rs)"
vermagic=$(modinfo -F vermagic "$KO")
[[ "$vermagic" == "$KREL "* ]] || die "$KO is built for '$vermagic', not $KREL"
PKG=virtio-balloon-rs-$KREL
# Debian reuses an ABI name across uploads: the kernel's package version is
# part of ours, so a rebuild for the next upload sorts after this one.
KPKG_IN_VERSION=${KPKG//-/.}
PKGVER=$VERSION+${KPKG_IN_VERSION//+/.}
DEB=$OUTDIR/${PKG}_${PKGVER}_$DEB_ARCH.deb
MAINTAINER="virtio_balloon_rs developers <virtio-balloon-rs@localhost.invalid>"

stage=$OUTDIR/deb-stage
rm -rf "$stage"
mkdir -p "$stage/DEBIAN" "$stage/usr/lib/modules/$KREL/updates" "$stage/usr/lib/modprobe.d" \
	"$stage/usr/share/initramfs-tools/hooks" "$stage/usr/share/doc/$PKG"

# The module, without debug information (as Debian ships its own);
# LLVM's objcopy reads every architecture's objects.
OBJCOPY=llvm-objcopy$LLVM_SUFFIX
need_cmd "$OBJCOPY" "apt-get install llvm$LLVM_SUFFIX (make setup does)"
"$OBJCOPY" --strip-debug "$KO" "$stage/usr/lib/modules/$KREL/updates/virtio_balloon_rs.ko"
chmod 0644 "$stage/usr/lib/modules/$KREL/updates/virtio_balloon_rs.ko"

# Parameter documentation, from the module itself.
params=$(modinfo -F parm "$KO" | sed 's/^/#   /')
cat >"$stage/usr/lib/modprobe.d/virtio-balloon-rs-$KREL.conf" <<EOF
# virtio_balloon_rs for Linux $KREL (package $PKG).
#
# The balloon device is driven by virtio_balloon_rs instead of the C
# virtio_balloon on every kernel that has virtio_balloon_rs in
# /usr/lib/modules/\$(uname -r); on any other kernel the C driver loads as
# before. Loading virtio_balloon (by udev, for the device, or by hand)
# loads virtio_balloon_rs; the C driver loads only if that fails.
install virtio_balloon /sbin/modprobe -q virtio_balloon_rs || /sbin/modprobe --ignore-install virtio_balloon \$CMDLINE_OPTS
#
# Module parameters (modinfo virtio_balloon_rs):
$params
#
# Set them in a file of your own, e.g. /etc/modprobe.d/virtio-balloon-rs.conf:
#   options virtio_balloon_rs min_available_mib=256
# or on the kernel command line: virtio_balloon_rs.min_available_mib=256.
# They take effect when the module loads (at the next boot, or after
# rmmod virtio_balloon_rs; modprobe virtio_balloon_rs).
EOF

# Debian's initrd (MODULES=most) has no virtio_balloon: the driver loads
# after the root file system is mounted, from it. An initrd a user gave C's
# module (/etc/initramfs-tools/modules) has the modprobe.d files too, and
# its udev would load C there: ours goes wherever C goes.
cat >"$stage/usr/share/initramfs-tools/hooks/virtio-balloon-rs-$KREL" <<EOF
#!/bin/sh
# Adds virtio_balloon_rs to the initrd of Linux $KREL, where the
# install rule of /usr/lib/modprobe.d/virtio-balloon-rs-$KREL.conf
# loads it instead of C's virtio_balloon (package $PKG).
set -e
PREREQ=""
prereqs() { echo "\$PREREQ"; }
case "\$1" in prereqs) prereqs; exit 0 ;; esac
. /usr/share/initramfs-tools/hook-functions
[ "\$version" = "$KREL" ] || exit 0
if find "\$DESTDIR" -name 'virtio_balloon.ko*' | grep -q .; then
	manual_add_modules virtio_balloon_rs
fi
EOF
chmod 0755 "$stage/usr/share/initramfs-tools/hooks/virtio-balloon-rs-$KREL"

# depmod for this kernel only (as the kernel's own postinst does for it),
# and its initrd if that has a balloon driver, whenever the module appears
# or goes (on remove, not again on purge, when kmod may be gone); nothing if
# the kernel itself is gone.
for script in postinst postrm; do
	cat >"$stage/DEBIAN/$script" <<EOF
#!/bin/sh
set -e
KREL=$KREL
case "\$1" in
$(if [[ $script == postinst ]]; then echo configure; else echo remove; fi))
	if [ -d "/usr/lib/modules/\$KREL/kernel" ] && command -v depmod >/dev/null; then
		if [ -e "/boot/System.map-\$KREL" ]; then
			depmod -a -F "/boot/System.map-\$KREL" "\$KREL"
		else
			depmod -a "\$KREL"
		fi
		# Only an initrd with C's driver in it has a balloon driver to change.
		if command -v update-initramfs >/dev/null && [ -e "/boot/initrd.img-\$KREL" ] &&
			lsinitramfs "/boot/initrd.img-\$KREL" | grep '/virtio_balloon\.ko' >/dev/null; then
			update-initramfs -u -k "\$KREL"
		fi
	fi
	;;
esac
exit 0
EOF
	chmod 0755 "$stage/DEBIAN/$script"
done

cat >"$stage/usr/share/doc/$PKG/copyright" <<EOF
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: virtio-balloon-rs
Source: the virtio_balloon_rs project (README.md)

Files: *
Copyright: 2025-2026 virtio_balloon_rs developers
License: GPL-2
 This program is free software; you can redistribute it and/or modify it
 under the terms of the GNU General Public License version 2 as published
 by the Free Software Foundation.
 .
 On Debian systems, the complete text of the GNU General Public License
 version 2 can be found in /usr/share/common-licenses/GPL-2.
EOF
{
	echo "virtio-balloon-rs ($PKGVER) unstable; urgency=medium"
	echo
	echo "  * virtio_balloon_rs $VERSION for Linux $KREL"
	echo "    (Debian package version $KPKG)."
	echo
	echo " -- $MAINTAINER  $(date -R -d @"${SOURCE_DATE_EPOCH:-$(git -C "$PROJECT_DIR" log -1 --format=%ct 2>/dev/null || date +%s)}")"
} | gzip -9n >"$stage/usr/share/doc/$PKG/changelog.gz"

# The one lintian override: the file name is long because the package is
# named after the kernel ABI, as Debian's linux-modules-<ABI> are, and its
# version carries the kernel package's version (Debian reuses an ABI
# name across uploads); the warning is about CD file systems.
mkdir -p "$stage/usr/share/lintian/overrides"
cat >"$stage/usr/share/lintian/overrides/$PKG" <<EOF
# Named after the kernel ABI (as linux-modules-<ABI>), versioned with the
# kernel package's version: see scripts/deb.sh.
$PKG: package-has-long-file-name *
EOF

size=$(du -k -s --exclude=DEBIAN "$stage" | cut -f1)
(cd "$stage" && find usr -type f -print0 | LC_ALL=C sort -z | xargs -0 md5sum) >"$stage/DEBIAN/md5sums"
cat >"$stage/DEBIAN/control" <<EOF
Package: $PKG
Source: virtio-balloon-rs
Version: $PKGVER
Architecture: $DEB_ARCH
Maintainer: $MAINTAINER
Installed-Size: $size
Depends: linux-image-$KREL (= $KPKG), kmod
Section: kernel
Priority: optional
Description: virtio memory balloon driver in Rust for Linux $KREL
 virtio_balloon_rs drives the virtio memory balloon device (virtio device
 5) of a virtual machine in place of the kernel's C virtio_balloon:
 inflating and deflating on the host's request, statistics, free page
 reporting and hinting, deflate on OOM, page poisoning and balloon page
 migration, with a reserve it never inflates into.
 .
 This package is for Debian's Linux $KREL only
 (package version $KPKG); on any other kernel the C driver
 keeps driving the device.
EOF

find "$stage" -type d -exec chmod 0755 {} +
find "$stage/usr" -type f -exec chmod 0644 {} +
chmod 0755 "$stage/usr/share/initramfs-tools/hooks/virtio-balloon-rs-$KREL"
mkdir -p "$OUTDIR"
rm -f "$OUTDIR/${PKG}_"*.deb "$OUTDIR/virtio-balloon-rs-modules-"*.deb
dpkg-deb --root-owner-group -Zxz --build "$stage" "$DEB" >/dev/null ||
	die "dpkg-deb failed to build $DEB"
# Which file is the package, for make test-install (others of older
# kernel versions may be there too).
echo "$DEB" >"$OUTDIR/deb.path"
rm -rf "$stage"
msg "deb: $DEB"

# --------------------------------------------------------------------------
# lintian, trixie's (it knows merged /usr), from a root of its own (cached)
# --------------------------------------------------------------------------
LINTIAN_ROOT=$BALLOON_CACHE/lintian-$(echo "trixie lintian ${DEBIAN_MIRROR:-}" | sha12)
if [[ ! -f "$LINTIAN_ROOT/.balloon-root" ]]; then
	need_cmd mmdebstrap "apt-get install mmdebstrap"
	((EUID == 0)) || die "lintian's trixie root needs root (mmdebstrap --mode=root)"
	msg "deb: a trixie root with lintian in $LINTIAN_ROOT"
	rm -rf "$LINTIAN_ROOT.tmp"
	mmdebstrap --variant=apt --mode=root --components=main --include=lintian \
		--aptopt='APT::Install-Recommends "false"' trixie "$LINTIAN_ROOT.tmp" \
		"deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] ${DEBIAN_MIRROR:-http://deb.debian.org/debian} trixie main" \
		>"$OUTDIR/lintian-mmdebstrap.log" 2>&1 ||
		die "mmdebstrap of lintian's root failed" "see $OUTDIR/lintian-mmdebstrap.log"
	chroot "$LINTIAN_ROOT.tmp" dpkg-query -W lintian >"$LINTIAN_ROOT.tmp/.balloon-root"
	rm -rf "$LINTIAN_ROOT"
	mv "$LINTIAN_ROOT.tmp" "$LINTIAN_ROOT"
fi
cp "$DEB" "$LINTIAN_ROOT/tmp/"
rc=0
unshare --mount --fork --propagation private -- sh -c '
	mount -t proc proc "$1/proc" && mount --rbind /dev "$1/dev" &&
	exec chroot "$1" /usr/bin/env -i LANG=C.UTF-8 PATH=/usr/sbin:/usr/bin:/sbin:/bin \
		lintian --fail-on error,warning --display-info --tag-display-limit 0 "/tmp/$2"
' lintian "$LINTIAN_ROOT" "${DEB##*/}" >"$OUTDIR/lintian.txt" 2>&1 || rc=$?
rm -f "$LINTIAN_ROOT/tmp/${DEB##*/}"
cat "$OUTDIR/lintian.txt" >&2
((rc == 0)) || die "lintian ($(cut -f1 "$LINTIAN_ROOT/.balloon-root" --complement)) finds errors or warnings in $DEB (above, $OUTDIR/lintian.txt)"
msg "deb: lintian $(cut -f2 "$LINTIAN_ROOT/.balloon-root"): no error or warning ($OUTDIR/lintian.txt)"
