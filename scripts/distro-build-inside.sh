#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0
#
# Runs inside the trixie root of scripts/distro.sh (Debian's rustc, bindgen,
# gcc-14 and its arm64 cross compilers installed there; Debian's
# linux-headers package extracted in the cache):
#
#   kbuild SRC O HDR KREL JOBS
#       O= build of the kernel source SRC with Debian's .config (HDR/.config)
#       and Debian's compilers: olddefconfig (checked against Debian's
#       .config), modules_prepare, rust/ (the Rust metadata: rust/*.rmeta,
#       libmacros.so, ...), then Debian's Module.symvers and BTF vmlinux.
#   module O MSRC JOBS
#       make -C O M=MSRC modules

set -euo pipefail

say() { printf '\033[1;34m==>\033[0m [trixie] %s\n' "$*" >&2; }
fail() {
	printf '\033[1;31merror:\033[0m [trixie] %s\n' "$*" >&2
	exit 1
}

# The make variables of Debian's own kernel build, from the headers
# package's .kernelvariables (override ARCH = arm64, override CROSS_COMPILE
# = aarch64-linux-gnu-, CC = $(CROSS_COMPILE)gcc-14, and for arm64's compat
# vDSO CROSS_COMPILE_COMPAT) and CONFIG_CC_VERSION_TEXT, which names the
# compiler as invoked (so the name matters). Host programs are built with
# the native gcc-14 when the target is another architecture.
kargs() {
	local hdr=$1 cc_text cc var
	var() { sed -n "s/^\(override \)\?$1 = \(.*\)$/\2/p" "$hdr/.kernelvariables"; }
	cc_text=$(sed -n 's/^CONFIG_CC_VERSION_TEXT="\(.*\)"$/\1/p' "$hdr/.config")
	cc=${cc_text%% *}
	command -v "$cc" >/dev/null || fail "Debian's compiler $cc (from CONFIG_CC_VERSION_TEXT) is not installed"
	local arch cross compat hostcc=$cc
	arch=$(var ARCH)
	cross=$(var CROSS_COMPILE)
	compat=$(var CROSS_COMPILE_COMPAT)
	[[ -n "$arch" && -n "$cross" ]] || fail "no ARCH or CROSS_COMPILE in $hdr/.kernelvariables"
	[[ "$cc" == "$cross"* ]] || fail "the compiler $cc is not $cross* ($hdr/.kernelvariables)"
	[[ "$cross" == "$(gcc-14 -dumpmachine)-" ]] || hostcc=gcc-14
	local rustlib
	rustlib=/usr/src/rustc-$(rustc --version | awk '{print $2}')/library
	[[ -f "$rustlib/core/src/lib.rs" ]] || fail "no Rust library sources in $rustlib (rust-src)"
	echo "ARCH=$arch CROSS_COMPILE=$cross CC=$cc HOSTCC=$hostcc RUSTC=rustc HOSTRUSTC=rustc BINDGEN=bindgen"
	if [[ -n "$compat" ]]; then echo "CROSS_COMPILE_COMPAT=$compat"; fi
	echo "RUST_LIB_SRC=$rustlib"
}

config_lines() { grep -E '^(CONFIG_|# CONFIG_)' "$1" | sort; }

do_kbuild() {
	local src=$1 o=$2 hdr=$3 krel=$4 jobs=$5
	[[ -f "$hdr/.config" ]] || fail "no $hdr/.config (linux-headers package)"
	# Saved for the module builds, which must use the same compilers.
	kargs "$hdr" >"$o/.balloon-kargs"
	local args
	read -r -a args <<<"$(tr '\n' ' ' <"$o/.balloon-kargs")"
	args+=("KERNELRELEASE=$krel")
	local cc
	cc=$(sed -n 's/.*\bCC=\([^ ]*\).*/\1/p' "$o/.balloon-kargs")
	say "toolchain: $(rustc --version), $(bindgen --version 2>&1 | head -1), $("$cc" --version | head -1)"
	say "make ${args[*]}"
	local kmake=(make -C "$src" O="$o" "${args[@]}")

	cp "$hdr/.config" "$o/.config"
	"${kmake[@]}" -s olddefconfig
	if diff -u <(config_lines "$hdr/.config") <(config_lines "$o/.config") >"$o/config.diff"; then
		say ".config after olddefconfig: identical to Debian's"
	else
		say ".config after olddefconfig differs from Debian's ($o/config.diff):"
		grep -E '^[-+][^-+]' "$o/config.diff" >&2
		# Only the toolchain-detected values may differ; anything else means
		# a different toolchain or source. (CC_CAN_LINK: whether the
		# compiler links user programs, which only the kernel's own sample
		# and self-test programs need; a cross compiler without the
		# target's C library cannot.)
		if grep -E '^[-+][^-+]' "$o/config.diff" |
			grep -vE '^[-+]CONFIG_(CC_VERSION_TEXT|GCC_VERSION|AS_VERSION|LD_VERSION|RUSTC_VERSION|RUSTC_VERSION_TEXT|RUSTC_LLVM_VERSION|RUSTC_LLVM_MAJOR_VERSION|BINDGEN_VERSION_TEXT|PAHOLE_VERSION|CC_CAN_LINK)='; then
			fail "the .config differs from Debian's beyond toolchain versions (above)"
		fi
	fi
	local rel
	rel=$("${kmake[@]}" -s kernelrelease)
	[[ "$rel" == "$krel" ]] || fail "kernelrelease is $rel, not $krel"

	say "modules_prepare"
	"${kmake[@]}" -j"$jobs" modules_prepare
	say "rust/ (core, alloc, macros, bindings, kernel, ...)"
	"${kmake[@]}" -j"$jobs" rust/

	# Debian's exported symbols (the C and Rust ones of its vmlinux and
	# in-tree modules) and its vmlinux for the modules' BTF (the kernel
	# refuses a module whose BTF was made against another base:
	# CONFIG_MODULE_ALLOW_BTF_MISMATCH is not set).
	cp "$hdr/Module.symvers" "$o/Module.symvers"
	cp "$hdr/vmlinux" "$o/vmlinux"
	say "kernel build ready: $o ($(ls "$o"/rust/*.rmeta | wc -l) rmeta files, $(wc -l <"$o/Module.symvers") symbols in Debian's Module.symvers)"
}

do_module() {
	local o=$1 msrc=$2 jobs=$3
	local args
	read -r -a args <<<"$(tr '\n' ' ' <"$o/.balloon-kargs")"
	say "make -C $o ${args[*]} M=$msrc modules"
	make -C "$o" "${args[@]}" M="$msrc" -j"$jobs" modules
}

cmd=${1:-}
shift || true
case "$cmd" in
kbuild) do_kbuild "$@" ;;
module) do_module "$@" ;;
*) fail "usage: $0 kbuild SRC O HDR KREL JOBS | module O MSRC JOBS" ;;
esac
