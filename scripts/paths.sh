#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0
# Prints a path `make setup` provides:
#   kdir       the kernel build directory for $KVER, $TIER, $ARCH, $PAGES,
#              or nothing if it is not built yet
#   suffix     what names that build's products apart (-arm64-64k, -debug)
#   qemu       the QEMU binary the tests use, where setup unpacks it (even
#              before it does: a recipe may set it up after make read this)
#   qemu-data  QEMU's firmware search path (for -L), colon-separated
source "$(dirname "$0")/lib.sh"
case "${1:-}" in
kdir)
	kout=$(kernel_build_dir)
	if [[ -n "$kout" && -f "$kout/.balloon-built" ]]; then echo "$kout"; fi
	;;
suffix) guest_suffix ;;
qemu) echo "$QEMU_DIR/usr/bin/qemu-system-$QEMU_ARCH" ;;
qemu-data) echo "$QEMU_DIR/usr/share/qemu:/usr/share/seabios" ;;
*) die "usage: $0 kdir|suffix|qemu|qemu-data" ;;
esac
