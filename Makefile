# SPDX-License-Identifier: GPL-2.0
#
# virtio_balloon_rs: a virtio memory balloon driver in Rust-for-Linux.
#
#   make setup      install tools, fetch and build the guest kernel (cached)
#   make            build virtio_balloon_rs.ko against $(KDIR)
#   make test       host unit tests + QEMU tests (C baseline and ours)
#   make run        boot a guest with the driver and a serial shell
#   make bench      C vs Rust inflate/deflate benchmark
#   make test-debug the QEMU suites and fault injection on the debug-tier
#                   kernel (KASAN, lockdep, kmemleak, ...), both drivers
#   make test-debug-quick  a quick part of test-debug (outside CI: it does
#                   not fit CI's time on a fresh machine)
#   make test-distro our module and the QEMU suites on Debian's unmodified
#                   kernel (scripts/distro.sh; its C driver the baseline)
#   make check-matrix  compile checks against every supported kernel
#   make matrix     build every supported kernel and boot the smoke tests
#   make check-distro  the module for Debian's stock kernel, Debian's rustc,
#                   and the smoke tests on that kernel
#   make test-arm64 the arm64 suites: 4 KiB and 64 KiB kernels of ours,
#                   Debian's cloud-arm64 and arm64-16k (outside CI)
#
# Parameters: KVER (default 7.3), TIER=base|debug (guest kernel tier,
# default base), ARCH=x86_64|arm64 (guest architecture, default x86_64;
# arm64 is cross-built and runs under TCG), PAGES=4k|16k|64k (arm64 page
# size, default 4k), KDIR (default: the kernel `make setup` built for KVER,
# TIER, ARCH and PAGES), LLVM_VERSION (default 19), ACCEL=tcg|kvm|auto,
# TESTS=<filter> (only the QEMU tests whose name contains it).

KVER ?= 7.3
TIER ?= base
LLVM_VERSION ?= 19
PAGES ?= 4k
# ARCH is the kernel's own variable (it reaches the kernel's make as is):
# unset is the host's, x86_64; arm64 cross-builds.
ifneq ($(filter-out x86 x86_64 arm64,$(ARCH)),)
$(error ARCH=$(ARCH): the guest architectures are x86_64 (the default) and arm64)
endif
export PAGES
ifneq ($(ARCH),)
export ARCH
endif
# (make 4.3's $(shell) does not see exported variables: pass them.)
PATHS = KVER=$(KVER) TIER=$(TIER) BALLOON_CACHE=$(BALLOON_CACHE) ARCH=$(ARCH) PAGES=$(PAGES) \
	scripts/paths.sh
BALLOON_CACHE ?= $(or $(XDG_CACHE_HOME),$(HOME)/.cache)/virtio-balloon-rs
export KVER TIER LLVM_VERSION BALLOON_CACHE
# bindgen installed by `make setup` lives in the cache.
export PATH := $(BALLOON_CACHE)/tools/bin:$(PATH)

# (An empty KDIR inherited from a parent make, before setup built the
# kernel, counts as unset.)
ifeq ($(strip $(KDIR)),)
override KDIR := $(shell $(PATHS) kdir 2>/dev/null)
endif
export KDIR

# The QEMU the tests run (`make setup` unpacks it); QEMU=... overrides.
QEMU ?= $(shell $(PATHS) qemu 2>/dev/null)
QEMU_DATA ?= $(shell $(PATHS) qemu-data 2>/dev/null)
export BALLOON_QEMU := $(QEMU)
export BALLOON_QEMU_DATA := $(QEMU_DATA)

# Per-checkout build products (initramfs, logs); gitignored.
BUILD_DIR := $(CURDIR)/build
# -arm64-64k, -debug, ...: nothing for the base x86_64 guest.
GUEST_SUFFIX := $(shell $(PATHS) suffix 2>/dev/null)
INITRAMFS := $(BUILD_DIR)/initramfs-$(KVER)$(GUEST_SUFFIX).cpio
MODULE    := virtio_balloon_rs.ko
# The test device (qemu-test/fake-device), in the test initramfs only.
FAKE_MODULE := virtio_balloon_fake.ko
C_MODULE  := $(KDIR)/drivers/virtio/virtio_balloon.ko

KMAKE = $(MAKE) -C $(KDIR) M=$(CURDIR) LLVM=-$(LLVM_VERSION)

.PHONY: all modules setup check-kdir clean initramfs test unit-test qemu-test \
	run bench fmt lint must-not-build test-debug test-debug-quick qemu-test-debug qemu-test-debug-quick \
	check-matrix matrix qemu-test-smoke

all: modules

# Everything below runs in a sub-make so that KDIR and QEMU, computed when
# the Makefile is read, see what setup just produced.
setup:
	scripts/setup.sh
	$(MAKE) modules

check-kdir:
	@scripts/check-kdir.sh "$(KDIR)"

modules: check-kdir
	$(KMAKE) modules


# Rust sources built by Kbuild: the driver and the test device.
RUST_MODULE_SOURCES = $(shell find src qemu-test/fake-device -name '*.rs' ! -name '*generated*')

# Kernel rustfmt settings (the kernel tree's .rustfmt.toml) on every Rust
# source of the module and the host crates.
fmt: check-kdir
	rustfmt --config-path $(KDIR)/source/.rustfmt.toml --edition 2021 \
		$(RUST_MODULE_SOURCES)
	cargo fmt --all

initramfs: modules
	scripts/mkinitramfs.sh "$(KDIR)" "$(INITRAMFS)" "$(CURDIR)/$(MODULE)" \
		"$(CURDIR)/$(FAKE_MODULE)"

unit-test:
	cargo test --locked -p virtio-balloon-logic

QEMU_TEST_ENV = BALLOON_KDIR="$(KDIR)" BALLOON_INITRAMFS="$(INITRAMFS)" \
	BALLOON_LOG_DIR="$(BUILD_DIR)/logs$(GUEST_SUFFIX)" \
	BALLOON_TIER="$(TIER)"

# The driver suites and the realistic scenarios run two VMs at a time; the
# timed comparisons (tests/timed.rs) then run alone, one VM at a time.
qemu-test: initramfs
	$(QEMU_TEST_ENV) cargo test --locked --release --no-fail-fast -p qemu-test --lib --bins \
		--test c_driver --test rust_driver --test misbehaving --test realistic \
		-- --test-threads=$${QEMU_TEST_THREADS:-2} $(TESTS)
	$(QEMU_TEST_ENV) cargo test --locked --release -p qemu-test --test timed \
		-- --test-threads=1 $(TESTS)

# The README's test command: sets up what is missing (a no-op when the
# cache is warm), then runs every check.
test:
	scripts/setup.sh
	$(MAKE) lint unit-test qemu-test

# The debug tier: a second guest kernel (scripts/kconfig/tier-debug.config),
# cached like the first. test-debug runs every QEMU suite but the timed
# comparisons (KASAN and lockdep make timings meaningless) and the fault
# injection scenarios; the C driver's kernel reports are recorded in
# build/logs-debug/c-driver-reports.txt, ours fail the test.
test-debug:
	TIER=debug scripts/setup.sh
	$(MAKE) TIER=debug KDIR= qemu-test-debug

qemu-test-debug: initramfs
	$(QEMU_TEST_ENV) cargo test --locked --release --no-fail-fast -p qemu-test --lib --bins \
		--test c_driver --test rust_driver --test misbehaving --test realistic --test faults \
		-- --test-threads=$${QEMU_TEST_THREADS:-2} $(TESTS)

# A quick part of the debug tier: fault injection into our driver's probe
# and remove (systematic: every allocation in turn), and for both drivers a
# small balloon inflated and deflated and hot-unplug while inflating.
DEBUG_QUICK_TESTS = probe_rs remove_rs inflate_deflate_actual unplug_while_inflating

test-debug-quick:
	TIER=debug scripts/setup.sh
	$(MAKE) TIER=debug KDIR= qemu-test-debug-quick

qemu-test-debug-quick: initramfs
	$(QEMU_TEST_ENV) cargo test --locked --release --no-fail-fast -p qemu-test \
		--test faults --test c_driver --test rust_driver \
		-- --test-threads=$${QEMU_TEST_THREADS:-2} $(DEBUG_QUICK_TESTS)

# The kernel matrix (scripts/matrix.sh): check-matrix compiles the module
# against each supported kernel from a prepared tree (minutes each, in CI)
# and checks that 6.12 is refused with its reason; matrix builds each kernel
# and boots the smoke tests below on it, both drivers.
check-matrix:
	scripts/matrix.sh check

matrix:
	scripts/matrix.sh boot

SMOKE_TESTS ?= inflate_deflate_actual rmmod_while_inflated
qemu-test-smoke: initramfs
	$(QEMU_TEST_ENV) cargo test --locked --release --no-fail-fast -p qemu-test \
		--test c_driver --test rust_driver \
		-- --test-threads=$${QEMU_TEST_THREADS:-2} $(SMOKE_TESTS)

# arm64 (README "arm64"): every suite on the project's 4 KiB-page arm64
# kernel and on Debian's cloud-arm64 kernel, and the tests that touch
# page-size logic on a 64 KiB-page kernel of the project's and on Debian's
# arm64-16k kernel, C beside ours. Cross-built kernels (cached), TCG.
PAGE_SIZE_TESTS := inflate_deflate_actual memtotal_follows_balloon inflate_releases_host_memory \
	guest_stats unaligned_target several_targets rmmod_while_inflated free_page_reporting \
	free_page_hint_migration balloon_page_migration deflate_on_oom_on deflate_on_oom_off \
	page_poison_none page_poison_on page_poison_init_on_free kunit_suites_pass \
	same_targets_as_c stats_match_c hugetlb_inflate_returns_huge_pages
.PHONY: test-arm64 qemu-test-page-size
test-arm64:
	$(MAKE) ARCH=arm64 PAGES=4k test
	$(MAKE) ARCH=arm64 PAGES=4k test-distro
	ARCH=arm64 PAGES=64k scripts/setup.sh
	$(MAKE) ARCH=arm64 PAGES=64k KDIR= qemu-test-page-size
	$(MAKE) ARCH=arm64 PAGES=16k test-distro DISTRO_SUITES="c_driver rust_driver" \
		TESTS="$(PAGE_SIZE_TESTS)"

qemu-test-page-size: initramfs
	$(QEMU_TEST_ENV) cargo test --locked --release --no-fail-fast -p qemu-test \
		--test c_driver --test rust_driver \
		-- --test-threads=$${QEMU_TEST_THREADS:-2} --exact $(PAGE_SIZE_TESTS)

# A stock Debian kernel of the guest architecture (scripts/distro.sh,
# cached in $(BALLOON_CACHE)/distro): our module built for Debian's
# unmodified linux-image-7.3.*-cloud-amd64 (ARCH=arm64: -cloud-arm64;
# ARCH=arm64 PAGES=16k: -arm64-16k) with Debian's own rustc 1.85.1 (the
# kernel's minimum) and GCC, which the QEMU harness boots with an initramfs
# of its own modules; Debian's virtio_balloon.ko is the C baseline.
# check-distro runs the smoke tests there (CI), test-distro the suites.
# Tests that need a kernel option Debian's .config lacks are skipped by
# exact name (with TESTS, name tests exactly) and printed as NOT APPLICABLE
# (build/distro*/not-applicable.txt).
DISTRO_OUT := $(BUILD_DIR)/distro$(GUEST_SUFFIX)
DISTRO_SUITES := c_driver rust_driver misbehaving realistic
DISTRO_TEST = set -a && . "$(DISTRO_OUT)/env" && set +a && rc=0 && { \
	cargo test --locked --release --no-fail-fast -p qemu-test $(1) \
		-- --test-threads=$${QEMU_TEST_THREADS:-2} $(2) || rc=$$?; } && \
	sed 's/^/NOT APPLICABLE: /' "$(DISTRO_OUT)/not-applicable.txt" && exit $$rc

# What booting a guest of ARCH needs besides the kernel (the host's packages
# for that ARCH, its QEMU, its busybox): `make setup` prepares x86_64's
# only, so the distro targets of another ARCH set theirs up (no-ops when
# present).
GUEST_TOOLS = scripts/setup.sh packages qemu busybox

.PHONY: test-distro check-distro
check-distro:
	$(GUEST_TOOLS)
	DISTRO_OUT="$(DISTRO_OUT)" scripts/distro.sh
	$(call DISTRO_TEST,--test c_driver --test rust_driver,$$DISTRO_SKIP $(or $(TESTS),$(SMOKE_TESTS)))

test-distro:
	$(GUEST_TOOLS)
	DISTRO_OUT="$(DISTRO_OUT)" scripts/distro.sh
	$(call DISTRO_TEST,$(addprefix --test ,$(DISTRO_SUITES)),$$DISTRO_SKIP $(TESTS))

# The Debian package of the module for Debian's stock kernel (ARCH, PAGES
# as above), lintian-checked: $(DISTRO_OUT)/virtio-balloon-rs-<ABI>_*.deb
# (scripts/deb.sh says what it installs and why).
.PHONY: deb
deb:
	scripts/setup.sh packages
	DISTRO_OUT="$(DISTRO_OUT)" scripts/distro.sh root image kbuild module deb

# That package installed as users do, in a full Debian guest
# (scripts/debian-guest.sh: trixie, systemd, udev, apt, Debian's kernels and
# initrds, root on a disk), boot by boot: C before, ours after apt install,
# C on another kernel, C after apt remove (qemu-test/tests/install.rs).
.PHONY: test-install
test-install: deb
	$(GUEST_TOOLS)
	guest=$$(scripts/debian-guest.sh) && \
	deb=$$(cat "$(DISTRO_OUT)/deb.path") && \
	BALLOON_DEBIAN_IMAGE="$$guest/root.img" BALLOON_DEB="$$deb" \
	BALLOON_DEB_KREL="$$(dpkg-deb -f "$$deb" Package | sed 's/^virtio-balloon-rs-//')" \
	BALLOON_LOG_DIR="$(BUILD_DIR)/logs-install$(GUEST_SUFFIX)" \
	cargo test --locked --release -p qemu-test --test install -- --nocapture

# Kernel rustfmt, the must-not-build check and clippy on the module, clippy
# on the host crates.
lint: check-kdir
	rustfmt --check --config-path $(KDIR)/source/.rustfmt.toml --edition 2021 \
		$(RUST_MODULE_SOURCES)
	$(MAKE) must-not-build
	@mkdir -p $(BUILD_DIR)
	@# Recompile the Rust crates so that clippy speaks even when they are up to date.
	rm -f src/virtio_balloon_rs.o qemu-test/fake-device/virtio_balloon_fake.o
	$(KMAKE) CLIPPY=1 modules >$(BUILD_DIR)/clippy.log 2>&1 || { cat $(BUILD_DIR)/clippy.log; exit 1; }
	@if grep -qE '(^|: )(warning|error)' $(BUILD_DIR)/clippy.log; then \
		cat $(BUILD_DIR)/clippy.log; \
		echo "clippy/rustc warnings in the module (see above)"; exit 1; fi
	cargo fmt --all --check
	cargo clippy --locked --workspace --all-targets -- -D warnings

# What must not compile does not (src/virtio/must_not_build.rs): the crate
# alone, with --cfg must_not_build, must fail for the expected reasons. The
# failed compile writes neither object nor command record (.cmd), so the
# normal build's products, and what the next build makes of them, stay.
must-not-build: check-kdir
	scripts/must-not-build.sh $(BUILD_DIR)/must-not-build.log \
		$(KMAKE) MUST_NOT_BUILD=1 src/virtio_balloon_rs.o

run: initramfs
	BALLOON_KDIR="$(KDIR)" BALLOON_INITRAMFS="$(INITRAMFS)" scripts/run.sh

bench: initramfs
	BALLOON_KDIR="$(KDIR)" BALLOON_INITRAMFS="$(INITRAMFS)" \
	BALLOON_LOG_DIR="$(BUILD_DIR)/logs" \
		cargo run --locked --release -p qemu-test --bin bench -- $(BENCH_ARGS)

clean:
	-[ -n "$(KDIR)" ] && [ -d "$(KDIR)" ] && $(KMAKE) clean
	rm -rf $(BUILD_DIR) src/bindings/bindings_generated.rs src/bindings/wrappers.c
