#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0
#
# scripts/run.sh [-- QEMU ARGS...]: what `make run` calls. Boots a guest with
# a serial shell on this terminal and QMP at build/run/qmp.sock, so that
# scripts/balloon can drive the balloon from another terminal.
#
# Environment: BALLOON_KDIR, BALLOON_INITRAMFS (set by `make run`);
#   DRIVER=c|rs|none  driver loaded at boot (default: rs if virtio_balloon_rs.ko
#                     is in the initramfs, else c)
#   MEM               guest RAM, MiB or with a unit (default 1024)
#   SMP               vCPUs (default 2)
#   ACCEL=tcg|kvm|auto  as for the tests; auto uses the cached KVM probe
#                     verdict of `make test` if there is one, else TCG
#   LOGLEVEL          guest console log level (default 7)
#
#   BALLOON_QEMU, BALLOON_QEMU_DATA  QEMU binary and its -L directories
#                     (exported by the Makefile)
#
# The QEMU command line is the test harness's (qemu-test crate, `balloon run`).
source "$(dirname "$0")/lib.sh"

[[ -n "${BALLOON_KDIR:-}" && -n "${BALLOON_INITRAMFS:-}" ]] ||
	die "BALLOON_KDIR and BALLOON_INITRAMFS are not set" "Use 'make run'."
need_cmd "${BALLOON_QEMU:-qemu-system-x86_64}" "Install QEMU: run 'make setup'."
need_cmd cargo "Install a Rust toolchain."

cd "$PROJECT_DIR"
msg "building the qemu-test crate's balloon tool"
cargo build -q --release --locked -p qemu-test --bin balloon
exec cargo run -q --release --locked -p qemu-test --bin balloon -- run "$@"
