#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0
#
# Builds virtio_balloon_rs.ko for a stock, unmodified Debian kernel
# (default: trixie-backports' linux-image-7.3.4+deb13-cloud-amd64) and boots
# that kernel in QEMU to load it.
#
# Debian's linux-headers packages lack the Rust metadata an out-of-tree Rust
# module needs (rust/*.rmeta, libmacros.so), so we rebuild exactly that part
# of the kernel from the matching linux-source, with Debian's .config and
# Debian's own toolchain (rustc, bindgen, gcc-14 from trixie, which need a
# trixie userland), then build the module against it with Debian's
# Module.symvers.
#
#   1. root    a trixie root (mmdebstrap) with Debian's toolchain and the
#              kernel's linux-headers package
#   2. image   the kernel's vmlinuz and modules (linux-binary-*,
#              linux-modules-*), downloaded and extracted, not installed
#   3. kbuild  an O= build of the kernel source with Debian's .config:
#              modules_prepare + rust/ + Debian's Module.symvers
#   4. module  our module against it (M=<snapshot of the sources>)
#   5. boot    Debian's vmlinuz in QEMU, a busybox initramfs, insmod ours
#              (a smoke check; `make test-distro` runs the QEMU suites instead)
#
# and, for `make test-distro` (not in the default steps), into $DISTRO_OUT:
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
# Usage: scripts/distro.sh [step...]   (default: root image kbuild module boot)
#
# Parameters (environment):
#   DISTRO_KREL      kernel release (default 7.3.4+deb13-cloud-amd64)
#   DISTRO_KPKG      its Debian package version (default 7.3.4-1~bpo13+1);
#                    $BALLOON_CACHE/src/linux-source-<major.minor>
#                    must be linux-source of exactly that version
#   DISTRO_RUST      Debian rustc/rust-src version the kernel was built with
#                    (default 1.85.1+dfsg1-1+deb13u1)
#   DISTRO_MODULE_SRC  head (default: the committed sources, git HEAD) or
#                    worktree (the checkout's files as they are, uncommitted
#                    changes and new files included, gitignored ones not)
#   DISTRO_BOOT_TIMEOUT  seconds the QEMU boot may take (default 300)
#   DISTRO_OUT       where initramfs and applicable write (default
#                    build/distro in the checkout)
#   DISTRO_LOAD      modules the test guest loads at boot (default
#                    virtio_blk,zram: built into the project's kernel)

source "$(dirname "$0")/lib.sh"

DISTRO_KREL=${DISTRO_KREL:-7.3.4+deb13-cloud-amd64}
DISTRO_KPKG=${DISTRO_KPKG:-7.3.4-1~bpo13+1}
DISTRO_RUST=${DISTRO_RUST:-1.85.1+dfsg1-1+deb13u1}
DISTRO_SUITE=${DISTRO_SUITE:-trixie}
DISTRO_MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
DISTRO_MODULE_SRC=${DISTRO_MODULE_SRC:-head}
DISTRO_BOOT_TIMEOUT=${DISTRO_BOOT_TIMEOUT:-300}
DISTRO_OUT=${DISTRO_OUT:-$PROJECT_DIR/build/distro}
DISTRO_LOAD=${DISTRO_LOAD:-virtio_blk,zram}
JOBS=${JOBS:-2}
((JOBS <= 2)) || JOBS=2 # the machines have 2 cores

# 7.3.4+deb13-cloud-amd64 -> 7.3 (the linux-source package's version)
KVER=$(echo "$DISTRO_KREL" | cut -d. -f1-2)
KSRC=$(kernel_src_dir)
DISTRO_DIR=$BALLOON_CACHE/distro
KEYRING=/usr/share/keyrings/debian-archive-keyring.gpg
INSIDE=$PROJECT_DIR/scripts/distro-build-inside.sh
HDR=/usr/src/linux-headers-$DISTRO_KREL

# The packages of the trixie root.
ROOT_PACKAGES=(
	"rustc=$DISTRO_RUST" "rust-src=$DISTRO_RUST" bindgen libclang-dev
	gcc-14 make flex bison bc libelf-dev libssl-dev python3 kmod cpio
	dwarves xz-utils zstd
	# certs/Kconfig: OPENSSL_SUPPORTS_ML_DSA runs `openssl list -key-managers`
	openssl
	"linux-headers-$DISTRO_KREL=$DISTRO_KPKG"
)

root_key() {
	{
		echo "$DISTRO_SUITE $DISTRO_MIRROR"
		printf '%s\n' "${ROOT_PACKAGES[@]}"
	} | sha12
}
ROOT=$DISTRO_DIR/root-$(root_key)
IMAGE=$DISTRO_DIR/image-$DISTRO_KREL-$DISTRO_KPKG

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
	chroot "$tmp" dpkg-query -W rustc rust-src bindgen gcc-14 pahole "linux-headers-$DISTRO_KREL" \
		"linux-kbuild-${DISTRO_KREL%%-*}" >"$tmp/.balloon-root"
	mv "$tmp" "$ROOT"
	prune "$DISTRO_DIR/root-*" "$ROOT"
	msg "trixie root: $(tr '\n' ' ' <"$ROOT/.balloon-root")"
}

# --------------------------------------------------------------------------
# 2. Debian's kernel image and modules, for the QEMU boot
# --------------------------------------------------------------------------
step_image() {
	if [[ -f "$IMAGE/.balloon-image" ]]; then
		msg "kernel image: $IMAGE present"
		return
	fi
	local tmp=$IMAGE.tmp
	rm -rf "$tmp"
	mkdir -p "$tmp/debs" "$tmp/root"
	msg "kernel image: downloading linux-binary/linux-modules-$DISTRO_KREL $DISTRO_KPKG"
	in_root bash -euc 'cd "$1" && apt-get -q update >/dev/null &&
		apt-get -q -o APT::Sandbox::User=root download "${@:2}"' _ "$tmp/debs" \
		"linux-binary-$DISTRO_KREL=$DISTRO_KPKG" "linux-modules-$DISTRO_KREL=$DISTRO_KPKG" ||
		die "could not download Debian's kernel packages"
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

# qmp SOCKET JSON: one QMP command, prints its answer.
qmp() {
	python3 - "$@" <<'EOF'
import json, socket, sys
s = socket.socket(socket.AF_UNIX)
s.connect(sys.argv[1])
f = s.makefile("rw")
def answer():
    while True:
        m = json.loads(f.readline())
        if "event" not in m:
            return m
answer()  # greeting
for cmd in ['{"execute":"qmp_capabilities"}', sys.argv[2]]:
    f.write(cmd + "\n")
    f.flush()
    a = answer()
print(json.dumps(a.get("return", a)))
EOF
}

# --------------------------------------------------------------------------
# 5. boot the stock kernel in QEMU and load the module
# --------------------------------------------------------------------------
step_boot() {
	[[ -n "${MODULE_KO:-}" ]] || step_module >/dev/null
	local key dir
	key=$({
		sha256sum "$MODULE_KO" "$IMAGE/vmlinuz"
		cat "$PROJECT_DIR/scripts/distro.sh"
	} | sha12)
	dir=$DISTRO_DIR/boot-$key
	if [[ -f "$dir/.balloon-passed" ]]; then
		msg "boot: passed before ($dir/console.log)"
		return
	fi
	local qemu=$QEMU_DIR/usr/bin/qemu-system-x86_64
	[[ -x "$qemu" ]] || die "no QEMU in $QEMU_DIR" "run: scripts/setup.sh qemu"
	need_cmd cpio "apt-get install cpio"
	if ! [[ -x /bin/busybox ]] || ! /bin/busybox --list | grep -qx insmod; then
		die "/bin/busybox (static, with insmod) missing" "apt-get install busybox-static"
	fi
	prune "$DISTRO_DIR/boot-*" ""
	mkdir -p "$dir/initramfs"/{bin,dev,proc,sys,modules}
	local ir=$dir/initramfs moddir
	moddir=$(image_moddir)
	cp /bin/busybox "$ir/bin/busybox"
	cp "$MODULE_KO" "$ir/modules/"
	# Debian's C driver, decompressed.
	local f
	f=$(find "$moddir/kernel/drivers/virtio" -name 'virtio_balloon.ko*' | head -1)
	[[ -n "$f" ]] || die "no virtio_balloon.ko* in $moddir/kernel/drivers/virtio"
	case "$f" in
	*.xz) xz -dc "$f" >"$ir/modules/virtio_balloon.ko" ;;
	*.zst) zstd -qdc "$f" >"$ir/modules/virtio_balloon.ko" ;;
	*) cp "$f" "$ir/modules/virtio_balloon.ko" ;;
	esac
	cat >"$ir/init" <<'EOF'
#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
echo "GUEST: uname -r: $(uname -r)"
echo "GUEST: tainted before: $(cat /proc/sys/kernel/tainted)"
for d in /sys/bus/virtio/devices/*; do
	echo "GUEST: virtio device $(basename $d): id $(cat $d/device) driver $(basename "$(readlink $d/driver)" 2>/dev/null)"
done
if insmod /modules/virtio_balloon_rs.ko; then echo "GUEST: insmod ok"; else echo "GUEST: insmod failed: $?"; fi
sleep 1
bound=no
for d in /sys/bus/virtio/devices/*; do
	drv=$(basename "$(readlink $d/driver)" 2>/dev/null)
	echo "GUEST: virtio device $(basename $d): id $(cat $d/device) driver $drv"
	[ "$(cat $d/device)" = 0x0005 ] && [ "$drv" = virtio_balloon_rs ] && bound=yes
done
echo "GUEST: bound=$bound"
echo "GUEST: tainted after: $(cat /proc/sys/kernel/tainted)"
grep MemTotal /proc/meminfo | sed 's/^/GUEST: /'
grep -E '^virtio_balloon_rs' /proc/modules | sed 's/^/GUEST: /'
ls /sys/module/virtio_balloon_rs/parameters 2>/dev/null | sed 's/^/GUEST: param /'
# The host (scripts/distro.sh) asks for a 768 MiB guest over QMP once it
# sees bound=yes: wait for MemTotal to drop by at least 200 MiB.
t0=$(awk '/MemTotal/ {print $2}' /proc/meminfo)
i=0
while [ $i -lt 120 ]; do
	m=$(awk '/MemTotal/ {print $2}' /proc/meminfo)
	[ $((t0 - m)) -ge 204800 ] && break
	sleep 0.5
	i=$((i + 1))
done
echo "GUEST: inflate: MemTotal $t0 kB -> $m kB"
sleep 2
echo "GUEST: inflated MemTotal $(awk '/MemTotal/ {print $2}' /proc/meminfo) kB"
# (the host reads QEMU's `actual` now, before rmmod deflates)
sleep 5
if rmmod virtio_balloon_rs; then echo "GUEST: rmmod ok"; else echo "GUEST: rmmod failed"; fi
echo "GUEST: after rmmod MemTotal $(awk '/MemTotal/ {print $2}' /proc/meminfo) kB"
# The C driver of the same kernel binds the same device afterwards.
insmod /modules/virtio_balloon.ko && sleep 1
for d in /sys/bus/virtio/devices/*; do
	echo "GUEST: after C insmod: $(basename $d) id $(cat $d/device) driver $(basename "$(readlink $d/driver)" 2>/dev/null)"
done
echo "GUEST: done"
poweroff -f
EOF
	chmod +x "$ir/init"
	(cd "$ir" && find . | cpio -o -H newc --quiet) >"$dir/initramfs.cpio"
	msg "boot: Debian's vmlinuz-$DISTRO_KREL in QEMU (TCG), insmod virtio_balloon_rs.ko"
	local data
	data="-L $QEMU_DIR/usr/share/qemu -L /usr/share/seabios"
	# shellcheck disable=SC2086
	timeout "$DISTRO_BOOT_TIMEOUT" "$qemu" $data -accel tcg -m 1024 -smp 1 -nographic \
		-no-reboot -serial stdio -monitor none -qmp "unix:$dir/qmp.sock,server=on,wait=off" \
		-kernel "$IMAGE/vmlinuz" -initrd "$dir/initramfs.cpio" \
		-append "console=ttyS0 panic=-1 quiet loglevel=6" \
		-device virtio-balloon-pci </dev/null >"$dir/console.log" 2>&1 &
	local qpid=$! t0=$SECONDS
	: >"$dir/host.log"
	# Once the driver is bound: balloon to 768 MiB, and read QEMU's view.
	while kill -0 "$qpid" 2>/dev/null && ((SECONDS - t0 < DISTRO_BOOT_TIMEOUT)); do
		if grep -q 'GUEST: bound=yes' "$dir/console.log"; then
			qmp "$dir/qmp.sock" '{"execute":"balloon","arguments":{"value":805306368}}' >/dev/null
			while kill -0 "$qpid" 2>/dev/null && ! grep -q 'GUEST: inflated' "$dir/console.log"; do sleep 0.5; done
			echo "HOST: query-balloon after inflate: $(qmp "$dir/qmp.sock" '{"execute":"query-balloon"}')" >>"$dir/host.log"
			break
		fi
		grep -q 'GUEST: bound=no' "$dir/console.log" && break
		sleep 0.5
	done
	wait "$qpid" || true
	cat "$dir/host.log" >&2
	grep -E 'GUEST:|virtio_balloon|taint|Oops|BUG|WARNING|Call Trace|Unknown symbol|disagrees|version magic' \
		"$dir/console.log" >&2 || true
	if grep -q 'GUEST: insmod ok' "$dir/console.log" && grep -q 'GUEST: bound=yes' "$dir/console.log" &&
		grep -q '"actual": 805306368' "$dir/host.log" && grep -q 'GUEST: rmmod ok' "$dir/console.log" &&
		grep -q "GUEST: after rmmod MemTotal $(sed -n 's/^GUEST: MemTotal: *\([0-9]*\) kB.*/\1/p' "$dir/console.log") kB" "$dir/console.log" &&
		! grep -qE 'Oops|BUG:|WARNING:|Call Trace' "$dir/console.log"; then
		touch "$dir/.balloon-passed"
		msg "boot: virtio_balloon_rs loaded into Debian's $DISTRO_KREL, bound the balloon device, inflated to 768 MiB, unloaded"
	else
		die "boot: the module did not load, bind, inflate and unload; console: $dir/console.log"
	fi
}

# --------------------------------------------------------------------------
# For `make test-distro`: the test initramfs and the harness's environment
# --------------------------------------------------------------------------
step_initramfs() {
	[[ -n "${MODULE_KO:-}" ]] || step_module >/dev/null
	local fake_ko=${MODULE_KO%/*}/virtio_balloon_fake.ko
	[[ -f "$fake_ko" ]] || die "no $fake_ko: the module step builds the test device too (Kbuild obj-m)"
	[[ -f "$IMAGE/.balloon-image" ]] || die "no kernel image in $IMAGE" "run: scripts/distro.sh image"
	mkdir -p "$DISTRO_OUT"
	local out=$DISTRO_OUT/initramfs-$DISTRO_KREL.cpio
	# Cheap (a few seconds), so rebuilt every time, like `make initramfs`.
	"$PROJECT_DIR/scripts/mkinitramfs.sh" --distro "$(image_moddir)" --load "$DISTRO_LOAD" \
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

# What a test needs from the kernel's configuration beyond what every test
# needs (listed first, as "*"): TEST CONFIG_OPTION... -- why. A test whose
# options are not all set (=y, or =m for what the initramfs loads) in
# Debian's .config is not applicable. TEST is the exact name libtest knows
# (the same name in c_driver and rust_driver: both drivers run on the same
# kernel).
TEST_NEEDS=(
	"* CONFIG_VIRTIO_PCI CONFIG_VIRTIO_CONSOLE CONFIG_VIRTIO_BALLOON CONFIG_BALLOON CONFIG_NUMA CONFIG_SWAP CONFIG_EXT4_FS CONFIG_DEBUG_FS CONFIG_MEMCG -- the guest every test boots: virtio-pci devices, the agent's virtio-serial port, two NUMA nodes, swap, an ext4 data disk, debugfs and memory cgroups mounted by init"
	"freeze_restore CONFIG_PM_DEBUG CONFIG_PM_SLEEP_DEBUG CONFIG_SUSPEND -- suspend test mode: /sys/power/pm_test (PM_SLEEP_DEBUG, from PM_DEBUG) runs the devices' freeze and restore without sleeping"
	"page_poison_on CONFIG_PAGE_POISONING -- page_poison=1 poisons freed pages only with PAGE_POISONING; without it the driver rightly declines VIRTIO_BALLOON_F_PAGE_POISON"
	"page_poison_none CONFIG_PAGE_REPORTING -- free page reporting"
	"page_poison_init_on_free CONFIG_PAGE_REPORTING -- free page reporting (init_on_free= needs no option)"
	"kunit_suites_pass CONFIG_KUNIT -- the module's KUnit suites run at load only on a kernel with KUnit"
	"free_page_reporting CONFIG_PAGE_REPORTING -- free page reporting"
	"balloon_page_migration CONFIG_BALLOON_MIGRATION CONFIG_COMPACTION CONFIG_HUGETLB_PAGE -- compaction migrates balloon pages (nr_hugepages triggers it)"
	"unplug_while_inflating CONFIG_HOTPLUG_PCI_ACPI -- ACPI PCI hot-unplug on the pc machine"
	"unplug_while_deflating CONFIG_HOTPLUG_PCI_ACPI -- ACPI PCI hot-unplug on the pc machine"
	"unplug_during_stats CONFIG_HOTPLUG_PCI_ACPI -- ACPI PCI hot-unplug on the pc machine"
	"unplug_during_hinting CONFIG_HOTPLUG_PCI_ACPI -- ACPI PCI hot-unplug on the pc machine"
	"thp_workload CONFIG_TRANSPARENT_HUGEPAGE -- a THP workload"
	"cgroup_workload CONFIG_MEMCG -- a memory cgroup workload"
)

# The QEMU suites make test-distro runs (the Makefile passes the same).
DISTRO_SUITES=${DISTRO_SUITES:-c_driver rust_driver misbehaving realistic}

# config_has CONFIG FILE: CONFIG is set (=y, =m or a value) in FILE.
config_has() { grep -q "^$1=" "$2"; }

step_applicable() {
	local config=$HDR/.config
	config=$ROOT$config
	[[ -f "$config" ]] || die "no Debian .config at $config" "run: scripts/distro.sh root"
	mkdir -p "$DISTRO_OUT"
	# The suites' test names, to catch a stale TEST_NEEDS entry.
	local names=() suite args=()
	for suite in $DISTRO_SUITES; do args+=(--test "$suite"); done
	if command -v cargo >/dev/null; then
		mapfile -t names < <(cd "$PROJECT_DIR" && cargo test --locked --release -q -p qemu-test \
			"${args[@]}" -- --list 2>/dev/null | sed -n 's/: test$//p' | sort -u)
		((${#names[@]})) || die "cannot list the tests of: $DISTRO_SUITES (cargo test -- --list)"
	fi
	local entry test opts why o missing na=() skip=()
	: >"$DISTRO_OUT/not-applicable.txt.tmp"
	for entry in "${TEST_NEEDS[@]}"; do
		why=${entry#* -- }
		read -r test opts <<<"${entry%% -- *}"
		if [[ "$test" != "*" && ${#names[@]} -gt 0 ]] && ! printf '%s\n' "${names[@]}" | grep -qx "$test"; then
			die "TEST_NEEDS names '$test', which is no test of: $DISTRO_SUITES" "update TEST_NEEDS in $0"
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
	((${#skip[@]} == 0)) || skip+=(--exact)
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
ALL_STEPS=(root image kbuild module boot)
EXTRA_STEPS=(initramfs applicable)
mkdir -p "$DISTRO_DIR"
steps=("$@")
((${#steps[@]})) || steps=("${ALL_STEPS[@]}")
for s in "${steps[@]}"; do
	declare -F "step_$s" >/dev/null || die "unknown step '$s'" "steps: ${ALL_STEPS[*]} ${EXTRA_STEPS[*]}"
	timed "$s" "step_$s"
done
