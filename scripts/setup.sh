#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0
#
# Sets up everything the module build and the QEMU tests need, from scratch:
#
#   1. apt packages (clang/lld/llvm, libclang, QEMU, busybox-static, ...)
#   2. bindgen-cli (cargo install, into the cache)
#   3. the kernel source (Debian linux-source-$KVER through a private apt
#      state directory; the system's apt sources are never edited)
#   4. Rust library sources matching the installed rustc exactly
#   5. QEMU from the release's backports suite, unpacked into the cache
#   6. a guest kernel configured from scripts/kconfig/*.config, verified
#   7. bzImage (arm64: Image) + vmlinux + modules, built once per key
#
# Each step is skipped when its result is already in the cache, so a second
# run is a no-op.  Usage: scripts/setup.sh [step...]  (default: all steps)

source "$(dirname "$0")/lib.sh"

APT_STATE=$BALLOON_CACHE/apt

# --------------------------------------------------------------------------
# 1. apt packages
# --------------------------------------------------------------------------
step_packages() {
	command -v dpkg-query >/dev/null ||
		die "this setup needs a Debian-based host (dpkg/apt not found)" \
			"Install the equivalent of: ${APT_PACKAGES[*]}"
	local missing=()
	for p in "${APT_PACKAGES[@]}"; do
		dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" ||
			missing+=("$p")
	done
	if ((${#missing[@]} == 0)); then
		msg "apt packages: all present"
		return
	fi
	msg "apt packages: installing ${missing[*]}"
	local sudo=()
	if ((EUID != 0)); then
		command -v sudo >/dev/null || die "installing packages needs root" \
			"Run as root, or install: ${missing[*]}"
		sudo=(sudo)
	fi
	"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q ||
		die "apt-get update failed" "Check the system's apt sources and network access."
	"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive \
		apt-get install -y -q --no-install-recommends "${missing[@]}" ||
		die "apt-get install failed for: ${missing[*]}"
}

# --------------------------------------------------------------------------
# 2. bindgen
# --------------------------------------------------------------------------
step_bindgen() {
	local have=""
	if command -v bindgen >/dev/null; then
		have=$(bindgen --version | awk '{print $2}')
	fi
	if [[ "$have" == "$BINDGEN_VERSION" ]]; then
		msg "bindgen $have: present ($(command -v bindgen))"
		return
	fi
	need_cmd cargo "Install Rust with rustup (https://rustup.rs) first."
	msg "bindgen: installing bindgen-cli $BINDGEN_VERSION into $TOOLS_DIR"
	LIBCLANG_PATH=$("llvm-config$LLVM_SUFFIX" --libdir) \
		cargo install --locked --root "$TOOLS_DIR" bindgen-cli --version "$BINDGEN_VERSION" ||
		die "cargo install bindgen-cli $BINDGEN_VERSION failed" \
			"Check access to crates.io and that libclang$LLVM_SUFFIX-dev is installed."
}

# --------------------------------------------------------------------------
# 3./4. Debian packages from other suites, through a private apt state
# --------------------------------------------------------------------------
debian_mirror() {
	if [[ -n "${DEBIAN_MIRROR:-}" ]]; then
		echo "$DEBIAN_MIRROR"
		return
	fi
	local uri
	uri=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list \
		/etc/apt/sources.list.d/*.sources 2>/dev/null |
		grep -oE 'https?://[^ ]*/debian/?( |$)' | grep -v security | head -1 | tr -d ' ')
	echo "${uri:-http://deb.debian.org/debian}"
}

apt_private() {
	local cmd=$1
	shift
	"$cmd" -o Dir::Etc::sourcelist="$APT_STATE/sources.list" \
		-o Dir::Etc::sourceparts=- \
		-o Dir::State::Lists="$APT_STATE/lists" \
		-o Dir::State::status=/dev/null \
		-o Dir::Cache="$APT_STATE/cache" \
		-o APT::Architectures::=amd64 -o APT::Architectures::="$DEB_ARCH" \
		-o APT::Sandbox::User="$(id -un)" \
		-o Acquire::Languages=none \
		-o Acquire::IndexTargets::deb::DEP-11::DefaultEnabled=false \
		-o Acquire::IndexTargets::deb::DEP-11-icons::DefaultEnabled=false \
		-o Acquire::IndexTargets::deb::DEP-11-icons-small::DefaultEnabled=false \
		-o Acquire::IndexTargets::deb::CNF::DefaultEnabled=false \
		"$@"
}

APT_UPDATED=""
# apt_private_update [SUITES]: point the private state at SUITES (default
# $DEBIAN_SUITES) and refresh its package lists.
apt_private_update() {
	local suites=${1:-$DEBIAN_SUITES}
	[[ "$APT_UPDATED" == "$suites" ]] && return
	local mirror
	mirror=$(debian_mirror)
	mkdir -p "$APT_STATE/lists/partial" "$APT_STATE/cache/archives/partial"
	: >"$APT_STATE/sources.list"
	for suite in $suites; do
		echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $mirror $suite main" \
			>>"$APT_STATE/sources.list"
	done
	msg "private apt state: updating ($suites from $mirror)"
	apt_private apt-get -q update >"$APT_STATE/update.log" 2>&1 ||
		die "apt-get update with the private state in $APT_STATE failed" \
			"See $APT_STATE/update.log; set DEBIAN_MIRROR if the mirror is wrong."
	APT_UPDATED=$suites
}

# apt_private_download PKG[=VER] DIR: download one .deb into DIR, print its path.
apt_private_download() {
	local spec=$1 dir=$2
	mkdir -p "$dir"
	(cd "$dir" && apt_private apt-get -q download "$spec" >/dev/null) ||
		die "could not download $spec from $DEBIAN_SUITES" \
			"Available versions: $(apt_private apt-cache madison "${spec%%=*}" | awk -F'|' '{print $2}' | xargs)" \
			"Set KVER / DEBIAN_SUITES to a kernel Debian ships, or KDIR to your own build."
	local name=${spec%%=*}
	ls -t "$dir"/"${name%%:*}"_*.deb | head -1
}

step_kernel_source() {
	local src
	src=$(kernel_src_dir)
	if [[ -f "$src/.pkgversion" && -f "$src/Makefile" ]]; then
		msg "kernel source: linux-source-$KVER $(cat "$src/.pkgversion") present"
		return
	fi
	apt_private_update
	local tmp deb
	tmp=$(mktemp -d "$BALLOON_CACHE/src.XXXXXX")
	deb=$(apt_private_download "linux-source-$KVER" "$tmp")
	local version
	version=$(dpkg-deb -f "$deb" Version)
	msg "kernel source: unpacking linux-source-$KVER $version"
	dpkg-deb --fsys-tarfile "$deb" | tar -x -C "$tmp" --wildcards './usr/src/linux-source-*.tar.*'
	local tarball
	tarball=$(ls "$tmp"/usr/src/linux-source-"$KVER".tar.*)
	tar -x -C "$tmp" -f "$tarball"
	[[ -f "$tmp/linux-source-$KVER/Makefile" ]] || die "unexpected layout in $deb"
	echo "$version" >"$tmp/linux-source-$KVER/.pkgversion"
	rm -rf "$src"
	mkdir -p "$(dirname "$src")"
	mv "$tmp/linux-source-$KVER" "$src"
	rm -rf "$tmp"
}

# Prints the Rust library source directory matching the active rustc.
rust_lib_src() {
	local ver sysroot
	ver=$(rustc_version)
	sysroot=$(rustc --print sysroot)
	if [[ -f "$sysroot/lib/rustlib/src/rust/library/core/src/lib.rs" ]]; then
		echo "$sysroot/lib/rustlib/src/rust/library"
		return
	fi
	local dir=$BALLOON_CACHE/rust-src/$ver
	if [[ -f "$dir/library/core/src/lib.rs" ]]; then
		echo "$dir/library"
	fi
}

step_rust_src() {
	local ver lib
	ver=$(rustc_version)
	lib=$(rust_lib_src)
	if [[ -n "$lib" ]]; then
		msg "rust library sources for rustc $ver: $lib"
		return
	fi
	apt_private_update
	# Debian versions look like 1.95.0+dfsg1-2~bpo13+1: the upstream part
	# must equal rustc's own version exactly.
	local debver
	debver=$(apt_private apt-cache madison rust-src | awk -F'|' '{gsub(/ /,"",$2); print $2}' |
		grep -E "^${ver//./\\.}[+-]" | head -1 || true)
	if [[ -z "$debver" ]]; then
		die "no Rust library sources match rustc $ver" \
			"The kernel's Rust build needs core/alloc sources of exactly the rustc version." \
			"Debian rust-src versions in $DEBIAN_SUITES: $(apt_private apt-cache madison rust-src | awk -F'|' '{print $2}' | xargs)" \
			"Fix: 'rustup component add rust-src', or 'rustup default <one of those versions>'."
	fi
	local tmp deb
	tmp=$(mktemp -d "$BALLOON_CACHE/rust-src.XXXXXX")
	deb=$(apt_private_download "rust-src=$debver" "$tmp")
	msg "rust library sources: unpacking Debian rust-src $debver"
	dpkg-deb -x "$deb" "$tmp/root"
	local libdir
	libdir=$(ls -d "$tmp"/root/usr/src/rustc-*/library | head -1)
	[[ -f "$libdir/core/src/lib.rs" ]] || die "unexpected layout in $deb"
	rm -rf "$BALLOON_CACHE/rust-src/$ver"
	mkdir -p "$BALLOON_CACHE/rust-src/$ver"
	mv "$libdir" "$BALLOON_CACHE/rust-src/$ver/library"
	echo "$debver" >"$BALLOON_CACHE/rust-src/$ver/.debversion"
	rm -rf "$tmp"
}

# --------------------------------------------------------------------------
# 5. QEMU for the tests
# --------------------------------------------------------------------------
step_qemu() {
	local bin=$QEMU_DIR/usr/bin/qemu-system-$QEMU_ARCH
	if [[ -x "$bin" ]] && "$bin" --version >/dev/null 2>&1; then
		msg "qemu: $("$bin" --version | head -1) ($QEMU_DIR)"
		return
	fi
	apt_private_update "$QEMU_SUITE"
	local tmp pkgs=(qemu-system-common qemu-system-data)
	case "$ARCH" in
	x86_64) pkgs+=(qemu-system-x86) ;;
	arm64) pkgs+=(qemu-system-arm) ;;
	esac
	tmp=$(mktemp -d "$BALLOON_CACHE/qemu.XXXXXX")
	# One directory for every architecture's QEMU: keep what is there.
	if [[ -d "$QEMU_DIR" ]]; then cp -a "$QEMU_DIR/." "$tmp/root"; fi
	for pkg in "${pkgs[@]}"; do
		local deb
		deb=$(apt_private_download "$pkg" "$tmp/debs")
		dpkg-deb -x "$deb" "$tmp/root"
	done
	local missing
	missing=$(ldd "$tmp/root/usr/bin/qemu-system-$QEMU_ARCH" | awk '/not found/ {print $1}' | xargs)
	[[ -z "$missing" ]] || die "QEMU from $QEMU_SUITE needs libraries this system lacks: $missing" \
		"Install them with apt, or set QEMU_SUITE to a suite built for this release."
	"$tmp/root/usr/bin/qemu-system-$QEMU_ARCH" --version >/dev/null ||
		die "QEMU from $QEMU_SUITE does not run on this system"
	rm -rf "$QEMU_DIR"
	mkdir -p "$(dirname "$QEMU_DIR")"
	mv "$tmp/root" "$QEMU_DIR"
	rm -rf "$tmp"
	msg "qemu: $("$bin" --version | head -1) unpacked into $QEMU_DIR"
}

# --------------------------------------------------------------------------
# 5b. the guest's static busybox for a foreign architecture
# --------------------------------------------------------------------------
step_busybox() {
	[[ "$ARCH" != x86_64 ]] || return 0
	local bin
	bin=$(guest_busybox)
	if [[ -x "$bin" ]]; then
		msg "busybox for $ARCH: $bin"
		return
	fi
	apt_private_update
	local tmp deb
	tmp=$(mktemp -d "$BALLOON_CACHE/busybox.XXXXXX")
	deb=$(apt_private_download "busybox-static:$DEB_ARCH" "$tmp")
	dpkg-deb -x "$deb" "$tmp/root"
	local found="" f
	for f in "$tmp"/root/{usr/,}bin/busybox; do [[ -f "$f" ]] && found=$f && break; done
	[[ -n "$found" ]] || die "no busybox binary in $deb"
	mkdir -p "$(dirname "$bin")"
	mv "$found" "$bin"
	msg "busybox for $ARCH: $(dpkg-deb -f "$deb" Version) in $bin"
	rm -rf "$tmp"
}

# --------------------------------------------------------------------------
# 6./7. configure and build the guest kernel
# --------------------------------------------------------------------------
kmake() {
	local args
	mapfile -t args < <(kmake_args)
	RUST_LIB_SRC="$RUST_LIB_SRC" make -s -C "$(kernel_src_dir)" O="$KOUT" "${args[@]}" RUST_LIB_SRC="$RUST_LIB_SRC" "$@"
}

# Checks that every option of the fragments has the requested value in .config.
verify_config() {
	local config=$1 bad=()
	while IFS= read -r line; do
		case "$line" in
		CONFIG_*=*)
			grep -qxF "$line" "$config" || bad+=("$line (got: $(grep -E "^(# )?${line%%=*}[= ]" "$config" || echo 'absent'))")
			;;
		"# CONFIG_"*" is not set")
			local opt=${line#\# }
			opt=${opt%% *}
			if grep -qE "^$opt=" "$config"; then bad+=("$line (got: $(grep -E "^$opt=" "$config"))"); fi
			;;
		esac
	done < <(config_fragments | xargs cat)
	if ((${#bad[@]})); then
		die "the guest kernel configuration in $config lacks required options:" "${bad[@]}" \
			"Kconfig drops options whose dependencies are unmet or whose names changed;" \
			"fix scripts/kconfig/*.config for linux $KVER."
	fi
}

# kernel_configure: configure $KOUT for the current key, unless it is
# already (the stamp .balloon-configured holds the key).
kernel_configure() {
	KOUT=$(kernel_build_dir)
	[[ -n "$KOUT" ]] || die "kernel source for $KVER not fetched; run: make setup"
	local key
	key=$(build_key)
	RUST_LIB_SRC=$(rust_lib_src)
	[[ -n "$RUST_LIB_SRC" ]] || die "Rust library sources missing; run: scripts/setup.sh rust_src"
	need_cmd "clang$LLVM_SUFFIX" "apt-get install clang$LLVM_SUFFIX (or set LLVM_VERSION)"
	need_cmd "ld.lld$LLVM_SUFFIX" "apt-get install lld$LLVM_SUFFIX"
	need_cmd bindgen "run: scripts/setup.sh bindgen"
	export LIBCLANG_PATH
	LIBCLANG_PATH=$("llvm-config$LLVM_SUFFIX" --libdir)
	local f
	for f in .balloon-configured .balloon-built; do
		if [[ -f "$KOUT/$f" && "$(cat "$KOUT/$f")" == "$key" ]]; then return; fi
	done
	mkdir -p "$KOUT"

	msg "guest kernel: checking the Rust toolchain (make rustavailable)"
	kmake rustavailable ||
		die "the kernel rejects this Rust toolchain (make rustavailable failed, see above)" \
			"rustc $(rustc_version), bindgen $(bindgen --version | awk '{print $2}'), RUST_LIB_SRC=$RUST_LIB_SRC"

	msg "guest kernel: configuring (tinyconfig + $(config_fragments | xargs -n1 basename | xargs))"
	kmake tinyconfig >/dev/null
	# shellcheck disable=SC2046
	"$(kernel_src_dir)/scripts/kconfig/merge_config.sh" -m -O "$KOUT" "$KOUT/.config" \
		$(config_fragments) >"$KOUT/merge_config.log"
	kmake olddefconfig
	verify_config "$KOUT/.config"
	grep -qx CONFIG_RUST=y "$KOUT/.config" || die "CONFIG_RUST did not stick"
	# include/config/auto.conf, which an external module's build reads.
	kmake syncconfig >/dev/null
	echo "$key" >"$KOUT/.balloon-configured"
}

# 6a. kernel_config: configure only (for a kernel the module refuses: its
# Kbuild checks the version before anything is compiled).
step_kernel_config() {
	kernel_configure
	msg "guest kernel: $KOUT is configured"
}

# 6b. kernel_prepare: only what an out-of-tree module is compiled against
# (modules_prepare, which builds rust/ too): minutes instead of the whole
# kernel, for the compile checks of `make check-matrix`. Without vmlinux
# there is no Module.symvers, so such a tree checks compilation, not
# linking (modpost runs with KBUILD_MODPOST_WARN=1 there).
step_kernel_prepare() {
	kernel_configure
	local key stamp=$KOUT/.balloon-prepared
	key=$(build_key)
	if [[ -f "$stamp" && "$(cat "$stamp")" == "$key" ]] ||
		[[ -f "$KOUT/.balloon-built" && "$(cat "$KOUT/.balloon-built")" == "$key" ]]; then
		msg "guest kernel: $KOUT is prepared"
		return
	fi
	msg "guest kernel: modules_prepare with $JOBS jobs in $KOUT"
	local t0=$SECONDS
	kmake -j"$JOBS" modules_prepare ||
		die "modules_prepare failed (see above); build dir: $KOUT"
	[[ -f "$KOUT/rust/libkernel.rmeta" ]] || die "modules_prepare built no rust/libkernel.rmeta in $KOUT"
	msg "guest kernel: prepared in $((SECONDS - t0)) s"
	echo "$key" >"$stamp"
}

step_kernel() {
	KOUT=$(kernel_build_dir)
	[[ -n "$KOUT" ]] || die "kernel source for $KVER not fetched; run: make setup"
	local key stamp=$KOUT/.balloon-built
	key=$(build_key)
	if [[ -f "$stamp" && "$(cat "$stamp")" == "$key" ]]; then
		msg "guest kernel: $KOUT is built"
		return
	fi
	kernel_configure

	msg "guest kernel: building with $JOBS jobs in $KOUT (several minutes)"
	local t0=$SECONDS
	kmake -j"$JOBS" "$(basename "$(kernel_image)")" vmlinux modules ||
		die "the kernel build failed (see above); build dir: $KOUT"
	msg "guest kernel: built in $((SECONDS - t0)) s"
	[[ -x "$KOUT/usr/gen_init_cpio" ]] || kmake usr/gen_init_cpio
	echo "$key" >"$stamp"
}

# --------------------------------------------------------------------------
ALL_STEPS=(packages bindgen kernel_source rust_src qemu busybox kernel)
mkdir -p "$BALLOON_CACHE"
steps=("$@")
((${#steps[@]})) || steps=("${ALL_STEPS[@]}")
for s in "${steps[@]}"; do
	declare -F "step_$s" >/dev/null || die "unknown setup step '$s'" "steps: ${ALL_STEPS[*]}"
	"step_$s"
done
if [[ " ${steps[*]} " == *" kernel "* ]]; then
	msg "setup done: KDIR=$(kernel_build_dir)"
fi
