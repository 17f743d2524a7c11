#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0
#
# mkinitramfs.sh KDIR OUT [extra.ko ...]
# mkinitramfs.sh --distro MODDIR [--load MOD,...] KDIR OUT [extra.ko ...]
#
# Builds the guest's initramfs (an uncompressed newc cpio) with the kernel's
# own $KDIR/usr/gen_init_cpio from a generated file list:
#   - static busybox with one symlink per applet,
#   - /init (scripts/guest/init) and the command agent (scripts/guest/agent),
#   - the in-tree C driver virtio_balloon.ko under kernel/drivers/virtio/ and
#     each extra .ko under extra/, with modules.dep, modules.alias, ... made by
#     the host's depmod, so busybox modprobe loads them by name or alias.
# The list is written next to OUT as OUT.list (handy to see what is inside).
# It is cheap, so it is rebuilt from scratch every time.
#
# --distro: the kernel is a distribution's (scripts/distro.sh), whose
# modules come from its installed module tree MODDIR (.../modules/<release>,
# with the modules.dep depmod made there): the C driver is the distribution's
# virtio_balloon, and each module of --load (comma-separated) comes with the
# modules it depends on (as modules.dep lists them), decompressed (.ko.xz,
# .ko.zst, .ko.gz), at its path in MODDIR; /etc/modules lists the --load
# modules, which the guest's init loads first (what the distribution builds
# as modules and the test kernel has built in: virtio_blk, ...). KDIR is a
# configured kernel tree of that kernel (its include/config/kernel.release
# must be MODDIR's release); without usr/gen_init_cpio there, it is compiled
# from the tree's source.

source "$(dirname "$0")/lib.sh"

usage() { die "usage: $0 [--distro MODDIR [--load MOD,...]] KDIR OUT [extra.ko ...]"; }
distro_moddir=
load_mods=
while [[ $# -gt 0 && "$1" == --* ]]; do
	[[ $# -ge 2 ]] || usage
	case "$1" in
	--distro) distro_moddir=$2 ;;
	--load) load_mods=$2 ;;
	*) usage ;;
	esac
	shift 2
done
[[ -z "$load_mods" || -n "$distro_moddir" ]] || die "--load needs --distro"
[[ $# -ge 2 ]] || usage
kdir=$1
out=$2
shift 2

BUSYBOX=${BUSYBOX:-$(guest_busybox)}
CC=$(guest_cc)
GUEST_DIR=$PROJECT_DIR/scripts/guest

[[ -n "$kdir" && -d "$kdir" ]] ||
	die "kernel build directory '$kdir' does not exist" "Run 'make setup' to build the guest kernel."
need_file() { # FILE HINT...
	local f=$1
	shift
	[[ -f "$f" ]] || die "missing $f" "$@"
}
need_file "$kdir/include/config/kernel.release" "The kernel build is incomplete: run 'make setup'."
if [[ -z "$distro_moddir" ]]; then
	need_file "$kdir/usr/gen_init_cpio" "The kernel build is incomplete (no gen_init_cpio): run 'make setup'."
	need_file "$kdir/drivers/virtio/virtio_balloon.ko" \
		"The guest kernel must build the C driver as a module (CONFIG_VIRTIO_BALLOON=m):" \
		"run 'make setup'."
else
	need_file "$distro_moddir/modules.dep" \
		"--distro takes an installed module tree (.../modules/<release>) indexed by depmod."
	[[ -x "$kdir/usr/gen_init_cpio" ]] ||
		need_file "$kdir/source/usr/gen_init_cpio.c" \
			"KDIR has neither usr/gen_init_cpio nor its source (an O= tree's source/)."
	need_cmd xz "Install xz-utils ('make setup' does)."
fi
need_file "$BUSYBOX" "Install busybox-static ('make setup' does; for ARCH=$ARCH: 'scripts/setup.sh busybox')."
need_file "$GUEST_DIR/init" "The checkout is incomplete."
need_file "$GUEST_DIR/agent" "The checkout is incomplete."
need_file "$GUEST_DIR/fragment.c" "The checkout is incomplete."
need_file "$GUEST_DIR/memhog.c" "The checkout is incomplete."
need_file "$GUEST_DIR/workload.c" "The checkout is incomplete."
need_cmd "$CC" "Install $CC ('make setup' does)."
for ko in "$@"; do
	need_file "$ko" "Build the module first: run 'make'."
done
need_cmd depmod "Install kmod ('make setup' does)."
if command -v file >/dev/null && file -L "$BUSYBOX" | grep -q 'dynamically linked'; then
	die "$BUSYBOX is dynamically linked" "Install busybox-static ('make setup' does)."
fi

krel=$(<"$kdir/include/config/kernel.release")
if [[ -n "$distro_moddir" && "$(basename "$distro_moddir")" != "$krel" ]]; then
	die "the modules in $distro_moddir are not for $krel (the release of $kdir)"
fi

staging=$(mktemp -d "${TMPDIR:-/tmp}/balloon-initramfs.XXXXXX")
trap 'rm -rf "$staging"' EXIT

gen_init_cpio=$kdir/usr/gen_init_cpio
if [[ -n "$distro_moddir" && ! -x "$gen_init_cpio" ]]; then
	gen_init_cpio=$staging/gen_init_cpio
	gcc -O2 -o "$gen_init_cpio" "$kdir/source/usr/gen_init_cpio.c" ||
		die "building gen_init_cpio from $kdir/source/usr/gen_init_cpio.c failed"
fi

# Guest test tools busybox lacks, built static for the guest.
for tool in fragment memhog workload; do
	"$CC" -static -O2 -Wall -Werror -o "$staging/$tool" "$GUEST_DIR/$tool.c" ||
		die "building the guest tool $GUEST_DIR/$tool.c failed" \
			"It needs $CC and the static C library (libc6-dev, for arm64 libc6-dev-arm64-cross)."
done
stage=$staging

# Module tree, indexed by the host's depmod.
moddir=$staging/lib/modules/$krel

# distro_module NAME: stage the distribution's module NAME and the modules
# it depends on (modules.dep lists them all), decompressed, at their paths.
distro_module() {
	local name=${1//-/_} line rel rels
	line=$(awk -F: -v m="$name" '{
		n = $1; sub(/.*\//, "", n); sub(/\.ko(\.(xz|zst|gz))?$/, "", n); gsub(/-/, "_", n)
		if (n == m) { print; exit }
	}' "$distro_moddir/modules.dep")
	[[ -n "$line" ]] ||
		die "no module $1 in $distro_moddir/modules.dep" "(Built into the kernel? Then leave it out.)"
	read -r -a rels <<<"${line/:/}"
	for rel in "${rels[@]}"; do
		local src=$distro_moddir/$rel dst=$moddir/${rel%.ko*}.ko
		[[ -f "$dst" ]] && continue
		mkdir -p "$(dirname "$dst")"
		case "$rel" in
		*.ko.xz) xz -dc "$src" >"$dst" ;;
		*.ko.zst) zstd -qdc "$src" >"$dst" ;;
		*.ko.gz) gzip -dc "$src" >"$dst" ;;
		*) cp "$src" "$dst" ;;
		esac || die "cannot decompress $src"
	done
}

mkdir -p "$moddir/extra"
if [[ -z "$distro_moddir" ]]; then
	mkdir -p "$moddir/kernel/drivers/virtio"
	cp "$kdir/drivers/virtio/virtio_balloon.ko" "$moddir/kernel/drivers/virtio/"
	index_dir=$kdir
else
	distro_module virtio_balloon
	mkdir -p "$staging/etc"
	: >"$staging/etc/modules"
	for m in ${load_mods//,/ }; do
		distro_module "$m"
		echo "$m" >>"$staging/etc/modules"
	done
	index_dir=$distro_moddir
fi
for ko in "$@"; do
	cp "$ko" "$moddir/extra/"
done
for f in modules.builtin modules.builtin.modinfo modules.order; do
	if [[ -f "$index_dir/$f" ]]; then cp "$index_dir/$f" "$moddir/"; fi
done
# (A distribution's module package may lack modules.order and
# modules.builtin*: depmod's warnings about them say nothing then.)
depmod -b "$staging" "$krel" 2>"$staging/depmod.err" ||
	die "depmod failed on $staging for kernel $krel" "$(cat "$staging/depmod.err")"
if [[ -n "$distro_moddir" ]]; then
	grep -v 'could not open modules\.\(order\|builtin\)' "$staging/depmod.err" >&2 || true
else
	cat "$staging/depmod.err" >&2
fi
[[ -s "$moddir/modules.dep" ]] || die "depmod produced no modules.dep"

list=$out.list
mkdir -p "$(dirname "$out")"
{
	echo "# generated by scripts/mkinitramfs.sh for $krel"
	for d in /bin /sbin /usr /usr/bin /usr/sbin /proc /sys /dev /tmp /root /etc \
		/run /mnt /var /var/log /lib /lib/modules; do
		echo "dir $d 0755 0 0"
	done
	# The kernel opens /dev/console for init before devtmpfs is mounted.
	echo "nod /dev/console 0600 0 0 c 5 1"
	echo "nod /dev/null 0666 0 0 c 1 3"
	echo "file /bin/busybox $BUSYBOX 0755 0 0"
	if [[ "$ARCH" == x86_64 ]]; then
		"$BUSYBOX" --list-full | sort -u | while read -r applet; do
			[[ "$applet" == bin/busybox ]] && continue
			echo "slink /$applet /bin/busybox 0777 0 0"
		done
	else
		# The host cannot run it: /init makes the links (busybox --install).
		echo "slink /bin/sh /bin/busybox 0777 0 0"
	fi
	echo "file /init $GUEST_DIR/init 0755 0 0"
	echo "file /bin/balloon-agent $GUEST_DIR/agent 0755 0 0"
	echo "file /bin/fragment $stage/fragment 0755 0 0"
	echo "file /bin/memhog $stage/memhog 0755 0 0"
	echo "file /bin/workload $stage/workload 0755 0 0"
	if [[ -n "$distro_moddir" ]]; then
		echo "file /etc/modules $staging/etc/modules 0644 0 0"
	fi
	# The staged module tree (directories first, as cpio order matters).
	(cd "$staging" && find lib/modules -mindepth 1 -type d | sort) | while read -r d; do
		echo "dir /$d 0755 0 0"
	done
	(cd "$staging" && find lib/modules -type f | sort) | while read -r f; do
		echo "file /$f $staging/$f 0644 0 0"
	done
} >"$list"

"$gen_init_cpio" "$list" >"$out.tmp" ||
	die "gen_init_cpio failed (file list: $list)"
mv "$out.tmp" "$out"
# The list names files in the staging directory that is about to go away.
sed -i "s|$staging|<staging>|" "$list"
mods=(virtio_balloon)
for ko in "$@"; do mods+=("$(basename "$ko" .ko)"); done
if [[ -n "$distro_moddir" ]]; then
	mods+=("loaded at boot: ${load_mods:-none}")
fi
msg "initramfs $out ($(du -h "$out" | cut -f1), kernel $krel, modules: ${mods[*]})"
