# SPDX-License-Identifier: GPL-2.0
#
# Shared settings and helpers for the project's scripts.
#
# Everything downloaded or built lives in $BALLOON_CACHE (outside the
# checkout), keyed so that several kernel versions and configurations can
# coexist and a rerun with the same inputs does nothing.
#
# Parameters (environment):
#   KVER            kernel version to build against (default 7.3); the source
#                   comes from Debian's linux-source-$KVER package.
#   LLVM_VERSION    versioned clang/lld/llvm suffix (default 19).
#   BALLOON_CACHE   cache root (default ${XDG_CACHE_HOME:-~/.cache}/virtio-balloon-rs).
#   DEBIAN_MIRROR   Debian mirror (default: taken from the system's apt sources).
#   DEBIAN_SUITES   suites searched for linux-source/rust-src
#                   (default "trixie trixie-backports").
#   JOBS            parallel make jobs (default: nproc).
#   TIER            guest kernel tier: base (default; scripts/kconfig/common.config)
#                   or debug (adds scripts/kconfig/tier-debug.config: KASAN,
#                   lockdep, kmemleak, fault injection, ...). Each tier is its
#                   own cached build.
#   ARCH            guest architecture: x86_64 (default) or arm64 (cross-built
#                   with LLVM, booted on qemu-system-aarch64's virt machine).
#   PAGES           arm64 guest page size: 4k (default), 16k or 64k; each is
#                   its own cached build (scripts/kconfig/arm64-<PAGES>.config).

set -euo pipefail

PROJECT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
KVER=${KVER:-7.3}
LLVM_VERSION=${LLVM_VERSION:-19}
LLVM_SUFFIX=-$LLVM_VERSION
BALLOON_CACHE=${BALLOON_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/virtio-balloon-rs}
DEBIAN_SUITES=${DEBIAN_SUITES:-trixie trixie-backports}
JOBS=${JOBS:-$(nproc)}
TIER=${TIER:-base}
# The guest architecture, in the kernel's spelling (ARCH=x86 | arm64), and
# QEMU's (x86_64 | aarch64).
case "${ARCH:-x86_64}" in
x86 | x86_64 | amd64) ARCH=x86_64 KARCH=x86 QEMU_ARCH=x86_64 DEB_ARCH=amd64 ;;
arm64 | aarch64) ARCH=arm64 KARCH=arm64 QEMU_ARCH=aarch64 DEB_ARCH=arm64 ;;
*)
	printf 'error: unknown ARCH %s\n       ARCH=x86_64 (the default) or ARCH=arm64\n' "$ARCH" >&2
	exit 1
	;;
esac
PAGES=${PAGES:-4k}
case "$ARCH:$PAGES" in
*:4k | arm64:16k | arm64:64k) ;;
*)
	printf 'error: PAGES=%s is not a page size of %s\n       x86_64: 4k; arm64: 4k, 16k or 64k\n' \
		"$PAGES" "$ARCH" >&2
	exit 1
	;;
esac
# Tools installed by setup (bindgen) live here, not in ~/.cargo.
TOOLS_DIR=$BALLOON_CACHE/tools
export PATH="$TOOLS_DIR/bin:$PATH"

# QEMU for the tests: bookworm's 7.2 drops balloon statistics newer than
# 2016 (it reports 10 of the 16 tags), so setup unpacks the suite's
# backported QEMU (10.x, built for this release) into the cache.
QEMU_SUITE=${QEMU_SUITE:-$(. /etc/os-release 2>/dev/null && echo "${VERSION_CODENAME:-bookworm}")-backports}
QEMU_DIR=$BALLOON_CACHE/qemu/$QEMU_SUITE

# bindgen-cli version installed by setup; the kernel's own minimum is checked
# separately against scripts/min-tool-version.sh.
BINDGEN_VERSION=${BINDGEN_VERSION:-0.73.2}

# Debian packages the build and the tests need, from the system's own suite.
APT_PACKAGES=(
	"clang$LLVM_SUFFIX" "lld$LLVM_SUFFIX" "llvm$LLVM_SUFFIX" "libclang$LLVM_SUFFIX-dev"
	# QEMU 7.2 brings the shared libraries and SeaBIOS; the tests run the
	# newer QEMU setup fetches from backports (see QEMU_SUITE below).
	qemu-system-x86 seabios busybox-static
	make gcc flex bison bc libelf-dev libssl-dev cpio xz-utils python3 kmod
	# Disk images for the test guests (mkfs.ext4).
	e2fsprogs
	# The trixie root of `make check-distro` (scripts/distro.sh).
	mmdebstrap
	debian-archive-keyring ca-certificates
	# Host plotting for `make bench` (plotters' TrueType text).
	libfontconfig-dev fonts-dejavu-core
)

# Architecture-specific host packages: the guest tools' cross compiler and
# static C library.
case "$ARCH" in
arm64) APT_PACKAGES+=(gcc-aarch64-linux-gnu libc6-dev-arm64-cross) ;;
esac

# The static busybox of the guest's initramfs: the host's for x86_64, for
# another architecture Debian's busybox-static of it (setup's busybox step).
guest_busybox() {
	case "$ARCH" in
	x86_64) echo /bin/busybox ;;
	*) echo "$BALLOON_CACHE/busybox/$DEB_ARCH/busybox" ;;
	esac
}

# The C compiler for the guest's static tools.
guest_cc() {
	case "$ARCH" in
	x86_64) echo gcc ;;
	arm64) echo aarch64-linux-gnu-gcc ;;
	esac
}

msg() { printf '\033[1;34m==>\033[0m %s\n' "$*" >&2; }
warn() { printf '\033[1;33mwarning:\033[0m %s\n' "$*" >&2; }
die() {
	printf '\033[1;31merror:\033[0m %s\n' "$1" >&2
	shift
	for line in "$@"; do printf '       %s\n' "$line" >&2; done
	exit 1
}

# need_cmd CMD HINT: fail with a clear message when CMD is not on PATH.
need_cmd() {
	command -v "$1" >/dev/null 2>&1 || die "required tool '$1' not found" "$2"
}

sha12() { sha256sum | cut -c1-12; }

rustc_version() { rustc --version | awk '{print $2}'; }

# Kconfig fragments that apply to $KVER and $TIER: the common one, the
# architecture's (console, firmware, boot protocol), the one for its major
# version (Kconfig names differ between 6.x and 7.x) and the
# tier's.
config_fragments() {
	local major=${KVER%%.*}
	echo "$PROJECT_DIR/scripts/kconfig/common.config"
	echo "$PROJECT_DIR/scripts/kconfig/arch-$KARCH.config"
	if [[ "$PAGES" != 4k ]]; then
		echo "$PROJECT_DIR/scripts/kconfig/$KARCH-$PAGES.config"
	fi
	if [[ -f "$PROJECT_DIR/scripts/kconfig/linux-$major.config" ]]; then
		echo "$PROJECT_DIR/scripts/kconfig/linux-$major.config"
	fi
	case "$TIER" in
	base) ;;
	debug) echo "$PROJECT_DIR/scripts/kconfig/tier-debug.config" ;;
	*) die "unknown TIER '$TIER'" "TIER=base (the default) or TIER=debug" ;;
	esac
}

# Directory the kernel source package for $KVER is unpacked to; its
# .pkgversion records the exact Debian version.
kernel_src_dir() { echo "$BALLOON_CACHE/src/linux-source-$KVER"; }

# The build key: kernel package version + config fragments + toolchain.
# Prints nothing if the source has not been fetched yet.
build_key() {
	local src
	src=$(kernel_src_dir)
	[[ -f "$src/.pkgversion" ]] || return 0
	{
		cat "$src/.pkgversion"
		config_fragments | xargs cat
		rustc --version
		"clang$LLVM_SUFFIX" --version 2>/dev/null | head -1 || true
		echo "bindgen $BINDGEN_VERSION"
	} | sha12
}

# The kernel build (O=) directory for the current key.
kernel_build_dir() {
	local key
	key=$(build_key)
	[[ -n "$key" ]] || return 0
	echo "$BALLOON_CACHE/build/linux-$KVER$(guest_suffix)-$key"
}

# What tells apart the guest kernels of one version: the architecture and
# page size (nothing for x86_64) and the tier (nothing for base).
guest_suffix() {
	local s=""
	[[ "$ARCH" == x86_64 ]] || s+=-$ARCH-$PAGES
	[[ "$TIER" == base ]] || s+=-$TIER
	echo "$s"
}

# Make arguments shared by every kernel-tree make invocation.
# (ARCH only when cross-building: the x86_64 trees were configured without.)
kmake_args() {
	echo "LLVM=$LLVM_SUFFIX"
	[[ "$ARCH" == x86_64 ]] || echo "ARCH=$KARCH"
}

# The kernel image QEMU boots, relative to the build directory.
kernel_image() {
	case "$ARCH" in
	x86_64) echo arch/x86/boot/bzImage ;;
	arm64) echo arch/arm64/boot/Image ;;
	esac
}
