#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0
#
# Builds virtio_balloon_rs.ko for a stock, unmodified Debian kernel of the
# guest architecture (ARCH, PAGES: trixie-backports'
# linux-image-7.3.4+deb13-cloud-amd64, -cloud-arm64 or -arm64-16k), and the
# test initramfs and environment the QEMU harness boots that kernel with
# (`make check-distro` runs the smoke tests on it, `make test-distro` the
# suites).
#
# Debian's linux-headers packages lack the Rust metadata an out-of-tree Rust
# module needs (rust/*.rmeta, libmacros.so), so we rebuild exactly that part
# of the kernel from the matching linux-source, with Debian's .config and
# Debian's own toolchain (rustc, bindgen, gcc-14 from trixie, which need a
# trixie userland), then build the module against it with Debian's
# Module.symvers. For arm64 Debian's own cross compilers do it (Debian
# builds its arm64 kernels with CROSS_COMPILE=aarch64-linux-gnu- too).
#
#   1. root    a trixie root (mmdebstrap) with Debian's toolchain, native
#              and arm64 cross
#   2. image   the kernel's vmlinuz, modules and headers (linux-binary-*,
#              linux-modules-*, linux-headers-*), downloaded and extracted,
#              not installed
#   3. kbuild  an O= build of the kernel source with Debian's .config:
#              modules_prepare + rust/ + Debian's Module.symvers
#   4. module  our module against it (M=<snapshot of the sources>), its
#              vermagic checked against Debian's virtio_balloon.ko
#
# then, into $DISTRO_OUT, what the QEMU harness needs to boot that kernel:
#
#   initramfs  the test initramfs (scripts/mkinitramfs.sh --distro): Debian's
#              virtio_balloon.ko and the modules the guest needs that Debian
#              builds as modules ($DISTRO_LOAD), ours; and `env`, the
#              harness's environment (BALLOON_KERNEL=Debian's vmlinuz, ...)
#   applicable the suites' tests that need a kernel option Debian's .config
#              lacks (TEST_NEEDS below): not applicable, skipped by exact
#              name (DISTRO_SKIP in `env`) and listed in not-applicable.txt
#
# Everything else lives in $BALLOON_CACHE/distro, keyed; a second run is a
# no-op.
# Usage: scripts/distro.sh [step...]
#        (default: root image kbuild module initramfs applicable; the step
#        deb, which `make deb` adds, packages the module: scripts/deb.sh)
#
# Parameters (environment):
#   ARCH, PAGES      the guest (scripts/lib.sh): x86_64 is Debian's
#                    cloud-amd64 kernel, arm64 its cloud-arm64 (4 KiB pages),
#                    arm64 PAGES=16k its arm64-16k; Debian has no 64 KiB one
#   DISTRO_KREL      kernel release (default: 7.3.4+deb13-<that flavour>)
#   DISTRO_KPKG      its Debian package version (default 7.3.4-1~bpo13+1);
#                    $BALLOON_CACHE/src/linux-source-<major.minor>
#                    must be linux-source of exactly that version
#   DISTRO_RUST      Debian rustc/rust-src version the kernel was built with
#                    (default 1.85.1+dfsg1-1+deb13u1)
#   DISTRO_MODULE_SRC  head (default: the committed sources, git HEAD) or
#                    worktree (the checkout's files as they are, uncommitted
#                    changes and new files included, gitignored ones not)
#   DISTRO_OUT       where initramfs and applicable write (default
#                    build/distro<-arm64-4k|-arm64-16k> in the checkout)
#   DISTRO_LOAD      modules the test guest loads at boot, those of them the
#                    kernel has as modules (default virtio_blk,zram,ext4:
#                    built into the project's kernel)

source "$(dirname "$0")/lib.sh"

case "$ARCH:$PAGES" in
x86_64:4k) DISTRO_FLAVOUR=cloud-amd64 ;;
arm64:4k) DISTRO_FLAVOUR=cloud-arm64 ;;
arm64:16k) DISTRO_FLAVOUR=arm64-16k ;;
*) die "Debian ships no $ARCH kernel with $PAGES pages" \
	"Its Rust-enabled 7.3 kernels: cloud-amd64 (ARCH=x86_64), cloud-arm64 (ARCH=arm64)," \
	"arm64-16k (ARCH=arm64 PAGES=16k); for 64 KiB pages the project builds its own:" \
	"make ARCH=arm64 PAGES=64k test" ;;
esac
DISTRO_KREL=${DISTRO_KREL:-7.3.4+deb13-$DISTRO_FLAVOUR}
DISTRO_KPKG=${DISTRO_KPKG:-7.3.4-1~bpo13+1}
DISTRO_RUST=${DISTRO_RUST:-1.85.1+dfsg1-1+deb13u1}
DISTRO_SUITE=${DISTRO_SUITE:-trixie}
DISTRO_MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
DISTRO_MODULE_SRC=${DISTRO_MODULE_SRC:-head}
DISTRO_OUT=${DISTRO_OUT:-$PROJECT_DIR/build/distro$(guest_suffix)}
DISTRO_LOAD=${DISTRO_LOAD:-virtio_blk,zram,ext4}
JOBS=${JOBS:-2}
((JOBS <= 2)) || JOBS=2 # the machines have 2 cores

# 7.3.4+deb13-cloud-amd64 -> 7.3 (the linux-source package's version)
KVER=$(echo "$DISTRO_KREL" | cut -d. -f1-2)
KSRC=$(kernel_src_dir)
DISTRO_DIR=$BALLOON_CACHE/distro
KEYRING=/usr/share/keyrings/debian-archive-keyring.gpg
INSIDE=$PROJECT_DIR/scripts/distro-build-inside.sh

# The packages of the trixie root (one root for every architecture).
ROOT_PACKAGES=(
	"rustc=$DISTRO_RUST" "rust-src=$DISTRO_RUST" bindgen libclang-dev
	gcc-14 make flex bison bc libelf-dev libssl-dev python3 kmod cpio
	dwarves xz-utils zstd
	# certs/Kconfig: OPENSSL_SUPPORTS_ML_DSA runs `openssl list -key-managers`
	openssl
	# Debian's arm64 kernels: aarch64-linux-gnu-gcc-14, and the 32-bit
	# compiler of the compat vDSO (their .kernelvariables name both).
	gcc-14-aarch64-linux-gnu gcc-arm-linux-gnueabihf
)

root_key() {
	{
		echo "$DISTRO_SUITE $DISTRO_MIRROR"
		printf '%s\n' "${ROOT_PACKAGES[@]}"
	} | sha12
}
ROOT=$DISTRO_DIR/root-$(root_key)
IMAGE=$DISTRO_DIR/image-$DISTRO_KREL-$DISTRO_KPKG
# Debian's headers package for the kernel, extracted: .config,
# .kernelvariables, Module.symvers, vmlinux.
HDR=$IMAGE/root/usr/src/linux-headers-$DISTRO_KREL

# The kernel build directory: root + source + the inside script's kernel
# part (from kargs() up to do_module()).
kbuild_key() {
	{
		root_key
		cat "$KSRC/.pkgversion" 2>/dev/null || true
		echo "$DISTRO_KREL"
		sed -n '/^kargs()/,/^do_module()/p' "$INSIDE"
	} | sha12
}
KOUT=$DISTRO_DIR/kbuild-$DISTRO_KREL-$(kbuild_key)

# timed NAME CMD...: run CMD, log how long it took.
timed() {
	local name=$1 t0=$SECONDS
	shift
	"$@"
	msg "$name: $((SECONDS - t0)) s"
	echo "$(date -Is) $name $((SECONDS - t0))s" >>"$DISTRO_DIR/timings.log"
}

# prune GLOB KEEP: remove the cache entries GLOB (older keys) except KEEP.
prune() {
	local d
	for d in $1; do
		[[ -e "$d" && "$d" != "$2" ]] || continue
		msg "removing the outdated $d"
		rm -rf "$d"
	done
}

# in_root CMD...: run CMD in the trixie root, in a private mount namespace
# (nothing stays mounted afterwards) with /proc, /dev, the project (read
# only), the kernel source (read only) and the cache at their own paths.
in_root() {
	unshare --mount --pid --fork --propagation private -- bash -euc '
		r=$1 project=$2 ksrc=$3 cache=$4
		shift 4
		mount -t proc proc "$r/proc"
		mount --rbind /dev "$r/dev"
		for d in "$project" "$ksrc" "$cache"; do
			mkdir -p "$r$d"
			mount --bind "$d" "$r$d"
		done
		mount -o remount,bind,ro "$r$project"
		mount -o remount,bind,ro "$r$ksrc"
		cp /etc/resolv.conf "$r/etc/resolv.conf" 2>/dev/null || true
		exec chroot "$r" /usr/bin/env -i HOME=/root LANG=C.UTF-8 \
			PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin "$@"
	' in_root "$ROOT" "$PROJECT_DIR" "$KSRC" "$DISTRO_DIR" "$@"
}

# --------------------------------------------------------------------------
# 1. the trixie root
# --------------------------------------------------------------------------
step_root() {
	if [[ -f "$ROOT/.balloon-root" ]]; then
		msg "trixie root: $ROOT present"
		return
	fi
	need_cmd mmdebstrap "apt-get install mmdebstrap"
	need_cmd unshare "apt-get install util-linux"
	((EUID == 0)) || die "the trixie root needs root (mmdebstrap --mode=root, chroot)"
	[[ -f "$KEYRING" ]] || die "$KEYRING missing" "apt-get install debian-archive-keyring"
	mkdir -p "$DISTRO_DIR"
	local tmp=$ROOT.tmp
	rm -rf "$tmp"
	msg "trixie root: mmdebstrap $DISTRO_SUITE into $ROOT"
	local inc
	inc=$(
		IFS=,
		echo "${ROOT_PACKAGES[*]}"
	)
	mmdebstrap --variant=apt --mode=root --components=main \
		--aptopt='Acquire::Languages "none"' \
		--aptopt='APT::Install-Recommends "false"' \
		--dpkgopt='path-exclude=/usr/share/doc/*' \
		--dpkgopt='path-exclude=/usr/share/man/*' \
		--dpkgopt='path-exclude=/usr/share/locale/*' \
		--include="$inc" \
		"$DISTRO_SUITE" "$tmp" \
		"deb [signed-by=$KEYRING] $DISTRO_MIRROR $DISTRO_SUITE main" \
		"deb [signed-by=$KEYRING] $DISTRO_MIRROR $DISTRO_SUITE-backports main" \
		>"$DISTRO_DIR/mmdebstrap.log" 2>&1 ||
		die "mmdebstrap failed" "see $DISTRO_DIR/mmdebstrap.log (tail: $(tail -3 "$DISTRO_DIR/mmdebstrap.log" | tr '\n' ' '))"
	chroot "$tmp" dpkg-query -W rustc rust-src bindgen gcc-14 pahole gcc-14-aarch64-linux-gnu \
		>"$tmp/.balloon-root"
	mv "$tmp" "$ROOT"
	prune "$DISTRO_DIR/root-*" "$ROOT"
	msg "trixie root: $(tr '\n' ' ' <"$ROOT/.balloon-root")"
}

# --------------------------------------------------------------------------
# 2. Debian's kernel image, modules and headers
# --------------------------------------------------------------------------
step_image() {
	# (An image of an older layout, without the headers, is fetched again.)
	if [[ -f "$IMAGE/.balloon-image" && -f "$HDR/.config" ]]; then
		msg "kernel image: $IMAGE present"
		return
	fi
	local tmp=$IMAGE.tmp
	rm -rf "$tmp"
	mkdir -p "$tmp/debs" "$tmp/root"
	msg "kernel image: downloading linux-binary/linux-modules/linux-headers-$DISTRO_KREL $DISTRO_KPKG ($DEB_ARCH)"
	local pkg pkgs=()
	for pkg in linux-binary linux-modules linux-headers; do
		pkgs+=("$pkg-$DISTRO_KREL:$DEB_ARCH=$DISTRO_KPKG")
	done
	in_root bash -euc 'cd "$1" && a=(-o APT::Architectures::=amd64 -o APT::Architectures::="$2") &&
		apt-get -q "${a[@]}" update >/dev/null &&
		apt-get -q "${a[@]}" -o APT::Sandbox::User=root download "${@:3}"' _ "$tmp/debs" \
		"$DEB_ARCH" "${pkgs[@]}" ||
		die "could not download Debian's kernel packages: ${pkgs[*]}"
	local deb
	for deb in "$tmp"/debs/*.deb; do
		dpkg-deb -x "$deb" "$tmp/root"
	done
	# The image is usr/lib/modules/$KREL/vmlinuz (boot/vmlinuz-$KREL in
	# older packages).
	local vmlinuz
	vmlinuz=$(ls "$tmp/root/usr/lib/modules/$DISTRO_KREL/vmlinuz" "$tmp/root/boot/vmlinuz-$DISTRO_KREL" 2>/dev/null | head -1 || true)
	[[ -n "$vmlinuz" ]] || die "no vmlinuz for $DISTRO_KREL in $tmp/debs/*.deb"
	ln -sfr "$vmlinuz" "$tmp/vmlinuz"
	[[ -d "$tmp/root/lib/modules/$DISTRO_KREL" || -d "$tmp/root/usr/lib/modules/$DISTRO_KREL" ]] ||
		die "no lib/modules/$DISTRO_KREL in $tmp/debs/*.deb"
	[[ -f "$tmp/root/usr/src/linux-headers-$DISTRO_KREL/.config" ]] ||
		die "no usr/src/linux-headers-$DISTRO_KREL/.config in $tmp/debs/*.deb"
	# The module index the package's postinst would make (depmod looks in
	# lib/modules under its base: merged /usr needs the link).
	[[ -e "$tmp/root/lib" ]] || ln -s usr/lib "$tmp/root/lib"
	need_cmd depmod "apt-get install kmod"
	depmod -b "$tmp/root" "$DISTRO_KREL" ||
		die "depmod failed for Debian's $DISTRO_KREL modules in $tmp/root"
	(cd "$tmp/debs" && ls) >"$tmp/.balloon-image"
	rm -rf "$IMAGE"
	mv "$tmp" "$IMAGE"
}

image_moddir() {
	if [[ -d "$IMAGE/root/usr/lib/modules/$DISTRO_KREL" ]]; then
		echo "$IMAGE/root/usr/lib/modules/$DISTRO_KREL"
	else
		echo "$IMAGE/root/lib/modules/$DISTRO_KREL"
	fi
}

# --------------------------------------------------------------------------
# 3. the kernel's Rust metadata for Debian's .config
# --------------------------------------------------------------------------
step_kbuild() {
	local key
	key=$(kbuild_key)
	if [[ -f "$KOUT/.balloon-built" && "$(cat "$KOUT/.balloon-built")" == "$key" ]]; then
		msg "kernel build: $KOUT is built"
		return
	fi
	[[ -f "$KSRC/.pkgversion" ]] || die "no kernel source in $KSRC" "run: KVER=$KVER scripts/setup.sh kernel_source"
	[[ "$(cat "$KSRC/.pkgversion")" == "$DISTRO_KPKG" ]] ||
		die "$KSRC is linux-source-$KVER $(cat "$KSRC/.pkgversion"), the kernel is $DISTRO_KPKG" \
			"The Rust metadata must come from exactly the kernel's source."
	prune "$DISTRO_DIR/kbuild-$DISTRO_KREL-*" "$KOUT"
	mkdir -p "$KOUT"
	msg "kernel build: Debian's .config, modules_prepare + rust/ in $KOUT ($JOBS jobs)"
	in_root bash "$INSIDE" kbuild "$KSRC" "$KOUT" "$HDR" "$DISTRO_KREL" "$JOBS" ||
		die "the kernel build failed (see above); build dir: $KOUT"
	echo "$key" >"$KOUT/.balloon-built"
}

# --------------------------------------------------------------------------
# 4. the module
# --------------------------------------------------------------------------
# A snapshot of the project's files (Kbuild builds src/ and
# qemu-test/fake-device), built in place: HEAD's, or the checkout's as they
# are (worktree_files).  Not
# M=$PROJECT_DIR MO=<dir> (7.3 supports MO=): the checkout has the build
# products of the default build (modules.order), which MO= refuses ("The
# external module source tree is not clean"), and src/bindings.rs
# include!()s bindings/bindings_generated.rs relative to the source file,
# while MO= generates it in the output directory.
# The checkout's files, NUL-separated, relative to it: tracked ones and new
# ones git does not ignore (uncommitted work adds files), deleted ones left
# out.
worktree_files() {
	(
		cd "$PROJECT_DIR" &&
			git ls-files -z --cached --others --exclude-standard |
			while IFS= read -r -d '' f; do
				if [[ -f "$f" ]]; then printf '%s\0' "$f"; fi
			done
	)
}

module_snapshot() {
	local dst=$1
	rm -rf "$dst"
	mkdir -p "$dst"
	case "$DISTRO_MODULE_SRC" in
	head) git -C "$PROJECT_DIR" archive HEAD | tar -x -C "$dst" ;;
	worktree)
		worktree_files | (cd "$PROJECT_DIR" && xargs -0 cp --parents -t "$dst")
		;;
	*) die "DISTRO_MODULE_SRC must be head or worktree" ;;
	esac
}

module_key() {
	{
		kbuild_key
		case "$DISTRO_MODULE_SRC" in
		# What Kbuild builds: a commit that changes only other files (tests,
		# scripts) does not rebuild the module.
		head) git -C "$PROJECT_DIR" rev-parse HEAD:Kbuild HEAD:src HEAD:qemu-test/fake-device ;;
		worktree) worktree_files | (cd "$PROJECT_DIR" && xargs -0 sha256sum) ;;
		esac
	} | sha12
}

step_module() {
	local key dir
	key=$(module_key)
	dir=$DISTRO_DIR/module-$key
	MODULE_KO=$dir/src/virtio_balloon_rs.ko
	if [[ -f "$dir/.balloon-built" ]]; then
		msg "module: $MODULE_KO is built"
		return
	fi
	prune "$DISTRO_DIR/module-*" "$dir"
	module_snapshot "$dir/src"
	msg "module: building ($DISTRO_MODULE_SRC sources) against $KOUT"
	local rc=0
	in_root bash "$INSIDE" module "$KOUT" "$dir/src" "$JOBS" >"$dir/build.log" 2>&1 || rc=$?
	cat "$dir/build.log" >&2
	((rc == 0)) || die "the module build failed; see $dir/build.log"
	[[ -f "$MODULE_KO" ]] || die "no $MODULE_KO after the build"
	# The minimum rustc (Debian's 1.85.1) must compile it without a warning,
	# as the current one does (make lint).
	if grep -E '(^|: )(warning|error)(\[|:)' "$dir/build.log" >&2; then
		die "Debian's rustc or gcc warns about the module (see above, $dir/build.log)"
	fi
	# modpost already failed the build on a symbol missing from Debian's
	# Module.symvers; check the version magic against a Debian module.
	local ours theirs
	ours=$(modinfo -F vermagic "$MODULE_KO")
	if [[ -f "$IMAGE/.balloon-image" ]]; then
		theirs=$(xz -dc "$(image_moddir)/kernel/drivers/virtio/virtio_balloon.ko.xz" >"$dir/virtio_balloon.ko" &&
			modinfo -F vermagic "$dir/virtio_balloon.ko")
		[[ "$ours" == "$theirs" ]] || die "vermagic '$ours' differs from Debian's virtio_balloon.ko: '$theirs'"
		msg "module: vermagic '$ours' = Debian's virtio_balloon.ko's"
	fi
	touch "$dir/.balloon-built"
}

# --------------------------------------------------------------------------
# 5. the test initramfs and the harness's environment
# --------------------------------------------------------------------------
step_initramfs() {
	[[ -n "${MODULE_KO:-}" ]] || step_module >/dev/null
	local fake_ko=${MODULE_KO%/*}/virtio_balloon_fake.ko
	[[ -f "$fake_ko" ]] || die "no $fake_ko: the module step builds the test device too (Kbuild obj-m)"
	[[ -f "$IMAGE/.balloon-image" ]] || die "no kernel image in $IMAGE" "run: scripts/distro.sh image"
	mkdir -p "$DISTRO_OUT"
	local out=$DISTRO_OUT/initramfs-$DISTRO_KREL.cpio
	# Cheap (a few seconds), so rebuilt every time, like `make initramfs`.
	# Those of DISTRO_LOAD this kernel builds as modules (the cloud
	# flavours have ext4 built in, arm64-16k as a module).
	local m load=()
	for m in ${DISTRO_LOAD//,/ }; do
		if grep -qE "/$m\.ko(\.[a-z]+)?:" "$(image_moddir)/modules.dep"; then load+=("$m"); fi
	done
	"$PROJECT_DIR/scripts/mkinitramfs.sh" --distro "$(image_moddir)" --load "$(
		IFS=,
		echo "${load[*]}"
	)" \
		"$KOUT" "$out" "$MODULE_KO" "$fake_ko"
	{
		echo "# scripts/distro.sh initramfs: the QEMU harness's environment for"
		echo "# Debian's $DISTRO_KREL (make test-distro sources it)."
		printf 'BALLOON_KERNEL=%q\n' "$(readlink -f "$IMAGE/vmlinuz")"
		printf 'BALLOON_INITRAMFS=%q\n' "$out"
		# The kernel build the modules were built against (the harness boots
		# BALLOON_KERNEL; BALLOON_KDIR only names the tree).
		printf 'BALLOON_KDIR=%q\n' "$KOUT"
		printf 'BALLOON_LOG_DIR=%q\n' "$DISTRO_OUT/logs"
		printf 'BALLOON_TIER=base\n'
	} >"$DISTRO_OUT/env.tmp"
	mv "$DISTRO_OUT/env.tmp" "$DISTRO_OUT/env"
	msg "initramfs: $out; harness environment: $DISTRO_OUT/env"
}

# --------------------------------------------------------------------------
# the Debian package of the module (make deb; not a default step)
# --------------------------------------------------------------------------
step_deb() {
	[[ -n "${MODULE_KO:-}" ]] || step_module >/dev/null
	"$PROJECT_DIR/scripts/deb.sh" "$MODULE_KO" "$DISTRO_KREL" "$DISTRO_KPKG" "$DISTRO_OUT"
}

# PCI hot-unplug: through ACPI on x86's pc machine, PCIe native hotplug of
# the root port the balloon sits behind on arm64's virt.
case "$ARCH" in
x86_64) HOTPLUG_OPT=CONFIG_HOTPLUG_PCI_ACPI HOTPLUG_WHY="ACPI PCI hot-unplug on the pc machine" ;;
arm64) HOTPLUG_OPT=CONFIG_HOTPLUG_PCI_PCIE HOTPLUG_WHY="PCIe hot-unplug behind a root port on the virt machine" ;;
esac

# What a test needs from the kernel's configuration beyond what every test
# needs (listed first, as "*"): TEST CONFIG_OPTION... -- why. A test whose
# options are not all set (=y, or =m for what the initramfs loads) in
# Debian's .config is not applicable. TEST is the exact name libtest knows
# (the same name in c_driver and rust_driver: both drivers run on the same
# kernel).
TEST_NEEDS=(
	"* CONFIG_VIRTIO_PCI CONFIG_VIRTIO_CONSOLE CONFIG_VIRTIO_BALLOON CONFIG_BALLOON CONFIG_NUMA CONFIG_SWAP CONFIG_EXT4_FS CONFIG_DEBUG_FS CONFIG_MEMCG -- the guest every test boots: virtio-pci devices, the agent's virtio-serial port, two NUMA nodes, swap, an ext4 data disk, debugfs and memory cgroups mounted by init"
	"freeze_restore CONFIG_PM_DEBUG CONFIG_PM_SLEEP_DEBUG CONFIG_SUSPEND -- suspend test mode: /sys/power/pm_test (PM_SLEEP_DEBUG, from PM_DEBUG) runs the devices' freeze and restore without sleeping"
	"suspend_with_report_held_c CONFIG_PM_DEBUG CONFIG_PM_SLEEP_DEBUG CONFIG_SUSPEND -- suspend test mode (/sys/power/pm_test), as freeze_restore"
	"suspend_with_report_held_rs CONFIG_PM_DEBUG CONFIG_PM_SLEEP_DEBUG CONFIG_SUSPEND -- suspend test mode (/sys/power/pm_test), as freeze_restore"
	"page_poison_on CONFIG_PAGE_POISONING -- page_poison=1 poisons freed pages only with PAGE_POISONING; without it the driver rightly declines VIRTIO_BALLOON_F_PAGE_POISON"
	"page_poison_none CONFIG_PAGE_REPORTING -- free page reporting"
	"page_poison_init_on_free CONFIG_PAGE_REPORTING -- free page reporting (init_on_free= needs no option)"
	"kunit_suites_pass CONFIG_KUNIT -- the module's KUnit suites run at load only on a kernel with KUnit"
	"free_page_reporting CONFIG_PAGE_REPORTING -- free page reporting"
	"balloon_page_migration CONFIG_BALLOON_MIGRATION CONFIG_COMPACTION CONFIG_HUGETLB_PAGE -- compaction migrates balloon pages (nr_hugepages triggers it)"
	"unplug_while_inflating $HOTPLUG_OPT -- $HOTPLUG_WHY"
	"unplug_while_deflating $HOTPLUG_OPT -- $HOTPLUG_WHY"
	"unplug_during_stats $HOTPLUG_OPT -- $HOTPLUG_WHY"
	"unplug_during_hinting $HOTPLUG_OPT -- $HOTPLUG_WHY"
	"thp_workload CONFIG_TRANSPARENT_HUGEPAGE -- a THP workload"
	"cgroup_workload CONFIG_MEMCG -- a memory cgroup workload"
)


# config_has CONFIG FILE: CONFIG is set (=y, =m or a value) in FILE.
config_has() { grep -q "^$1=" "$2"; }

step_applicable() {
	local config=$HDR/.config
	[[ -f "$config" ]] || die "no Debian .config at $config" "run: scripts/distro.sh image"
	mkdir -p "$DISTRO_OUT"
	# Every suite's test names (whichever run), to catch a stale
	# TEST_NEEDS entry.
	local names=() suite args=()
	for suite in c_driver rust_driver misbehaving realistic; do args+=(--test "$suite"); done
	if command -v cargo >/dev/null; then
		mapfile -t names < <(cd "$PROJECT_DIR" && cargo test --locked --release -q -p qemu-test \
			"${args[@]}" -- --list 2>/dev/null | sed -n 's/: test$//p' | sort -u)
		((${#names[@]})) || die "cannot list the tests of the suites (cargo test -- --list)"
	fi
	local entry test opts why o missing na=() skip=()
	: >"$DISTRO_OUT/not-applicable.txt.tmp"
	for entry in "${TEST_NEEDS[@]}"; do
		why=${entry#* -- }
		read -r test opts <<<"${entry%% -- *}"
		if [[ "$test" != "*" && ${#names[@]} -gt 0 ]] && ! printf '%s\n' "${names[@]}" | grep -qx "$test"; then
			die "TEST_NEEDS names '$test', which is no test of any suite" "update TEST_NEEDS in $0"
		fi
		missing=()
		for o in $opts; do
			config_has "$o" "$config" || missing+=("$o")
		done
		((${#missing[@]})) || continue
		[[ "$test" != "*" ]] ||
			die "Debian's .config lacks ${missing[*]}, which every test needs ($why)"
		na+=("$test")
		skip+=(--skip "$test")
		echo "$test: Debian's $DISTRO_KREL has no ${missing[*]} ($why)" >>"$DISTRO_OUT/not-applicable.txt.tmp"
	done
	mv "$DISTRO_OUT/not-applicable.txt.tmp" "$DISTRO_OUT/not-applicable.txt"
	# Exact names, for the skips and for the filters the caller adds.
	skip+=(--exact)
	{
		grep -v '^DISTRO_SKIP=' "$DISTRO_OUT/env" 2>/dev/null || true
		printf 'DISTRO_SKIP=%q\n' "${skip[*]}"
	} >"$DISTRO_OUT/env.tmp"
	mv "$DISTRO_OUT/env.tmp" "$DISTRO_OUT/env"
	local line
	while IFS= read -r line; do
		msg "NOT APPLICABLE: $line"
	done <"$DISTRO_OUT/not-applicable.txt"
	msg "applicable: ${#na[@]} tests not applicable ($DISTRO_OUT/not-applicable.txt), skipped by exact name"
}

# --------------------------------------------------------------------------
ALL_STEPS=(root image kbuild module initramfs applicable)
KNOWN_STEPS=("${ALL_STEPS[@]}" deb)
mkdir -p "$DISTRO_DIR"
steps=("$@")
((${#steps[@]})) || steps=("${ALL_STEPS[@]}")
for s in "${steps[@]}"; do
	declare -F "step_$s" >/dev/null || die "unknown step '$s'" "steps: ${KNOWN_STEPS[*]}"
	timed "$s" "step_$s"
done
