#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0
#
# The kernel build matrix.
#
#   scripts/matrix.sh check   compile the module (and the test device) against
#                             every kernel of MATRIX_KVERS, each from a tree
#                             that is only configured and prepared
#                             (scripts/setup.sh kernel_prepare, minutes), and
#                             check that every kernel of MATRIX_REFUSED
#                             (only configured) is refused at build time
#                             with the reason
#   scripts/matrix.sh boot    build each kernel of MATRIX_KVERS completely
#                             (scripts/setup.sh, cached) and run the QEMU
#                             smoke tests (MATRIX_SMOKE) for both drivers
#
# The module is built from a snapshot of the checkout (tracked files and
# new ones git does not ignore), in build/matrix/<kver>/, so the checkout's
# own build products (for the default KVER) stay as they are.
#
# Parameters (environment): MATRIX_KVERS (default "7.2 7.3"),
# MATRIX_REFUSED (default "6.12"), MATRIX_SMOKE (cargo test name filters),
# and those of scripts/lib.sh.

source "$(dirname "$0")/lib.sh"

MATRIX_KVERS=${MATRIX_KVERS:-7.2 7.3}
MATRIX_REFUSED=${MATRIX_REFUSED-6.12}
# Probe, a balloon inflated and deflated with `actual` checked, rmmod while
# inflated: both drivers (tests/c_driver.rs, tests/rust_driver.rs).
MATRIX_SMOKE=${MATRIX_SMOKE:-inflate_deflate_actual rmmod_while_inflated}
OUT=$PROJECT_DIR/build/matrix

# snapshot DIR: the checkout's sources, as they are, into DIR.
snapshot() {
	local dst=$1
	rm -rf "$dst"
	mkdir -p "$dst"
	(
		cd "$PROJECT_DIR" &&
			git ls-files -z --cached --others --exclude-standard -- Kbuild Makefile src qemu-test/fake-device |
			while IFS= read -r -d '' f; do
				if [[ -f "$f" ]]; then printf '%s\0' "$f"; fi
			done | xargs -0 cp --parents -t "$dst"
	)
}

# prepared_kdir KVER: the prepared (or built) kernel tree of KVER.
prepared_kdir() {
	KVER=$1 TIER=base bash -c 'source "$0"; kernel_build_dir' "$PROJECT_DIR/scripts/lib.sh"
}

# module_build KVER KDIR LOG: build the snapshot for KVER against KDIR.
module_build() {
	local kver=$1 kdir=$2 log=$3 dir=$OUT/$1 warn=()
	snapshot "$dir"
	# A tree that was only prepared has no Module.symvers: modpost then
	# cannot resolve the kernel's symbols, which is not what this checks.
	[[ -f "$kdir/Module.symvers" ]] || warn=(KBUILD_MODPOST_WARN=1)
	make -C "$kdir" M="$dir" LLVM="$LLVM_SUFFIX" "${warn[@]}" -j"$JOBS" modules >"$log" 2>&1
}

check() {
	local failed=() kver kdir t0
	mkdir -p "$OUT"
	for kver in $MATRIX_KVERS; do
		t0=$SECONDS
		KVER=$kver "$PROJECT_DIR/scripts/setup.sh" packages bindgen kernel_source rust_src kernel_prepare
		kdir=$(prepared_kdir "$kver")
		if module_build "$kver" "$kdir" "$OUT/$kver.log" &&
			! grep -qE '(^|: )(warning|error)' "$OUT/$kver.log" &&
			[[ -f "$OUT/$kver/virtio_balloon_rs.ko" && -f "$OUT/$kver/virtio_balloon_fake.ko" ]]; then
			msg "matrix: linux $kver ($(rustc_version)): compiles without a warning ($((SECONDS - t0)) s)"
		else
			cat "$OUT/$kver.log" >&2
			warn "matrix: linux $kver: the module does not compile cleanly (log: $OUT/$kver.log)"
			failed+=("$kver")
		fi
	done
	for kver in $MATRIX_REFUSED; do
		# Configured is enough: Kbuild checks the version first.
		KVER=$kver "$PROJECT_DIR/scripts/setup.sh" packages bindgen kernel_source rust_src kernel_config
		kdir=$(prepared_kdir "$kver")
		if module_build "$kver" "$kdir" "$OUT/$kver.log"; then
			warn "matrix: linux $kver: the build succeeded, but this kernel is meant to be refused"
			failed+=("$kver")
		elif grep -q "linux $kver in .* is not supported" "$OUT/$kver.log"; then
			msg "matrix: linux $kver: refused at build time, as it should be:"
			grep -o "is not supported.*" "$OUT/$kver.log" | head -1 | fold -s -w 100 >&2
		else
			cat "$OUT/$kver.log" >&2
			warn "matrix: linux $kver: the build failed, but not with the refusal (log: $OUT/$kver.log)"
			failed+=("$kver")
		fi
	done
	((${#failed[@]} == 0)) || die "matrix check failed for: ${failed[*]}"
}

boot() {
	local failed=() kver
	for kver in $MATRIX_KVERS; do
		KVER=$kver "$PROJECT_DIR/scripts/setup.sh"
		# shellcheck disable=SC2086
		if make -C "$PROJECT_DIR" KVER="$kver" KDIR= qemu-test-smoke SMOKE_TESTS="$MATRIX_SMOKE"; then
			msg "matrix: linux $kver: smoke tests passed, both drivers"
		else
			warn "matrix: linux $kver: smoke tests failed (logs: build/logs)"
			failed+=("$kver")
		fi
	done
	((${#failed[@]} == 0)) || die "matrix boots failed for: ${failed[*]}"
}

case "${1:-}" in
check) check ;;
boot) boot ;;
*) die "usage: $0 check|boot" ;;
esac
