#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0
# Checks that $1 is a kernel build an out-of-tree Rust module can be built
# against, and says what to do when it is not.
source "$(dirname "$0")/lib.sh"
kdir=${1:-}
[[ -n "$kdir" ]] || die "no kernel build for KVER=$KVER" \
	"Run 'make setup' to build one, or pass KDIR=/path/to/your/kernel/build."
[[ -d "$kdir" ]] || die "KDIR=$kdir does not exist"
[[ -f "$kdir/.config" ]] || die "KDIR=$kdir is not a configured kernel build (no .config)"
grep -qx CONFIG_RUST=y "$kdir/.config" ||
	die "KDIR=$kdir was built without CONFIG_RUST=y" \
		"Rust modules need a kernel with Rust support: enable CONFIG_RUST" \
		"(needs a Rust toolchain 'make rustavailable' accepts) and rebuild it."
grep -qx CONFIG_CC_IS_CLANG=y "$kdir/.config" ||
	die "KDIR=$kdir was not built with clang (LLVM=1 or LLVM=-N)" \
		"The module's bindgen step reuses the kernel's clang flags."
grep -qx CONFIG_VIRTIO=y "$kdir/.config" || grep -qx CONFIG_VIRTIO=m "$kdir/.config" ||
	die "KDIR=$kdir has no virtio support (CONFIG_VIRTIO)"
[[ -f "$kdir/rust/libkernel.rmeta" && -f "$kdir/Module.symvers" ]] ||
	die "KDIR=$kdir has no Rust metadata (rust/libkernel.rmeta) or Module.symvers" \
		"Build the kernel completely ('make LLVM=... all'), not only modules_prepare."
