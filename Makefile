# moat: two commands.
#   make demo   boot the guest kernel (today: under the reference VMM in the test host)
#   make test   fmt, clippy, unit tests, then the end-to-end tier
# Also: deps, kernel [ARCH=x86_64|arm64], static, testhost, bench, fuzz [FUZZ_SECONDS=60].
# Expensive artifacts are cached under ~/.cache/moat/, keyed by their inputs.

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

ARCH ?= x86_64
ROOT := $(abspath .)
BUILD := $(ROOT)/build
CACHE ?= $(HOME)/.cache/moat
CARGO ?= cargo
# Static binaries for the test host and the guest. The explicit --target keeps
# RUSTFLAGS away from build scripts and proc-macros.
STATIC_TARGET := x86_64-unknown-linux-gnu
STATIC_PACKAGES := -p moat-vmm -p moat-agent -p moat-tests
STATIC_BINS := moat-vmm moat-agent moat-kvm-smoke

KERNEL_IMAGE_x86_64 := vmlinux
KERNEL_IMAGE_arm64 := Image

# Debian 12 packages the project needs (build, test host, e2e tests).
APT_PACKAGES := build-essential bc bison flex libelf-dev libssl-dev dwarves \
	device-tree-compiler gcc-aarch64-linux-gnu libc6-dev-arm64-cross \
	linux-source-6.1 xz-utils qemu-system-x86 seabios busybox-static cpio lz4 \
	zstd libseccomp-dev skopeo umoci docker-registry docker.io util-linux \
	coreutils python3 openssl
RUST_COMPONENTS := rustfmt clippy
RUST_TARGETS := x86_64-unknown-linux-musl aarch64-unknown-linux-gnu
# cargo-fuzz, pinned; installed once by `make deps` (see docs/fuzzing.md).
CARGO_FUZZ_VERSION := 0.13.2
DEPS_HASH := $(shell echo '$(APT_PACKAGES) | $(RUST_COMPONENTS) | $(RUST_TARGETS) | cargo-fuzz $(CARGO_FUZZ_VERSION)' | sha256sum | cut -c1-12)
DEPS_STAMP := $(CACHE)/deps-$(DEPS_HASH).stamp

# Where the end-to-end tests find the artifacts (tests/harness/artifacts.rs).
E2E_ENV := MOAT_E2E_REQUIRED=1 \
	MOAT_GUEST_KERNEL=$(BUILD)/kernel/x86_64/vmlinux \
	MOAT_BIN_DIR=$(BUILD)/bin \
	MOAT_TESTHOST_DIR=$(BUILD)/testhost \
	MOAT_REF_INITRD=$(BUILD)/testhost/ref-initrd.cpio

# Fuzzing (fuzz/, its own workspace). cargo-fuzz passes -Z flags (coverage
# instrumentation, sanitizers) that stable rustc accepts only with
# RUSTC_BOOTSTRAP=1; -s none skips AddressSanitizer, -a keeps debug assertions
# and overflow checks in the optimised build.
FUZZ_TARGETS := virtio_mmio vsock_tx block_req net_tx fs_fuse queue_chain \
	agent_frame layer_unpack manifest vmm_config
FUZZ_SECONDS ?= 60
FUZZ_RUN_FLAGS ?= -rss_limit_mb=4096
FUZZ := RUSTC_BOOTSTRAP=1 $(CARGO) fuzz
FUZZ_BUILD_FLAGS := -O -a -s none
FUZZ_BIN := $(ROOT)/fuzz/target/x86_64-unknown-linux-gnu/release

.PHONY: help deps kernel static testhost test unit e2e lint demo bench fuzz fuzz-build fuzz-regress fuzz-corpus

help:
	@echo "make demo    boot the guest kernel and print its console"
	@echo "make test    fmt + clippy + unit tests + end-to-end tests (MOAT_E2E_REQUIRED=1)"
	@echo "make deps | kernel [ARCH=arm64] | static | testhost | bench"
	@echo "make fuzz [FUZZ_SECONDS=60] | fuzz-regress | fuzz-corpus"

# --- deps: idempotent; fast once the stamp for this package list exists -------
deps: $(DEPS_STAMP)

$(DEPS_STAMP):
	@set -e; \
	sudo=""; [ "$$(id -u)" = 0 ] || sudo=sudo; \
	missing=""; \
	for p in $(APT_PACKAGES); do \
		dpkg-query -W -f='$${Status}' "$$p" 2>/dev/null | grep -q 'ok installed' || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
		echo "deps: installing$$missing"; \
		$$sudo apt-get update -q; \
		DEBIAN_FRONTEND=noninteractive $$sudo apt-get install -y -q --no-install-recommends $$missing; \
	fi; \
	if ! apt-cache show linux-image-cloud-amd64 >/dev/null 2>&1; then \
		echo "deps: apt lists lack linux-image-cloud-amd64 (test host kernel); apt-get update"; \
		$$sudo apt-get update -q; \
	fi; \
	command -v rustup >/dev/null || { echo "deps: rustup not found; install Rust with rustup first" >&2; exit 1; }; \
	installed=$$(rustup component list --installed); \
	for c in $(RUST_COMPONENTS); do \
		echo "$$installed" | grep -q "^$$c" || rustup component add "$$c"; \
	done; \
	targets=$$(rustup target list --installed); \
	for t in $(RUST_TARGETS); do \
		echo "$$targets" | grep -qx "$$t" || rustup target add "$$t"; \
	done; \
	if ! $(CARGO) fuzz --version 2>/dev/null | grep -qx "cargo-fuzz $(CARGO_FUZZ_VERSION)"; then \
		$(CARGO) install --locked cargo-fuzz --version $(CARGO_FUZZ_VERSION); \
	fi; \
	mkdir -p $(CACHE); rm -f $(CACHE)/deps-*.stamp; touch $@; \
	echo "deps: ok"

# --- kernel: cached by the hash of fragments, script, source and compiler ----
kernel:
	guest-kernel-config/build.sh $(ARCH) $(BUILD)/kernel/$(ARCH)
	@grep -E '^(build_seconds|image_bytes)=' $(BUILD)/kernel/$(ARCH)/build-info

# --- static binaries for the test host and the guest -------------------------
# Every binary of STATIC_PACKAGES lands in build/bin (cargo names them in its JSON
# messages); STATIC_BINS must be among them.
static:
	@mkdir -p $(BUILD)/bin
	RUSTFLAGS="-C target-feature=+crt-static" $(CARGO) build --release \
		--target $(STATIC_TARGET) $(STATIC_PACKAGES) --bins \
		--message-format=json-render-diagnostics \
		| sed -n 's/.*"executable":"\([^"]*\)".*/\1/p' >$(BUILD)/bin/.built
	@for f in $$(cat $(BUILD)/bin/.built); do \
		b=$$(basename "$$f"); \
		cp "$$f" $(BUILD)/bin/$$b.tmp && mv $(BUILD)/bin/$$b.tmp $(BUILD)/bin/$$b; \
	done
	@for b in $(STATIC_BINS); do \
		grep -q "/$$b$$" $(BUILD)/bin/.built || { echo "static: $$b was not built" >&2; exit 1; }; \
	done
	@echo "static: $$(xargs -n1 basename <$(BUILD)/bin/.built | paste -sd' ') in $(BUILD)/bin"

# --- nested KVM test host (kernel, modules, busybox initramfs, QEMU bundle) --
testhost:
	tests/kvm-host/build.sh --qemu $(BUILD)/testhost

# --- test ---------------------------------------------------------------------
lint:
	$(CARGO) fmt --all --check
	$(CARGO) fmt --manifest-path fuzz/Cargo.toml --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

# Unit tests: every crate, and the harness's own (lib and bins of moat-tests).
unit:
	$(CARGO) test --workspace --exclude moat-tests
	$(CARGO) test -p moat-tests --lib --bins

# End-to-end tests (tests/*.rs): one at a time, they boot VMs on 2 shared cores.
e2e: kernel static testhost
	@echo "e2e: tier $$(tests/kvm-host/probe 2>&1 | paste -sd' ')"
	$(E2E_ENV) $(CARGO) test -p moat-tests --tests -- --test-threads=1

test: deps
	$(MAKE) lint
	$(MAKE) unit
	$(MAKE) fuzz-regress
	$(MAKE) e2e

# --- fuzz: coverage-guided fuzzing of everything that parses hostile input ----
fuzz-build:
	cd fuzz && $(FUZZ) build $(FUZZ_BUILD_FLAGS)

# Every target over its committed corpus only: seeds and past crashes must pass.
fuzz-regress: fuzz-build
	@for t in $(FUZZ_TARGETS); do \
		n=$$(ls fuzz/corpus/$$t | wc -l); \
		echo "fuzz-regress: $$t ($$n inputs)"; \
		$(FUZZ_BIN)/$$t -runs=0 $(FUZZ_RUN_FLAGS) fuzz/corpus/$$t 2>fuzz/target/regress-$$t.log \
			|| { tail -40 fuzz/target/regress-$$t.log; echo "fuzz-regress: $$t FAILED" >&2; exit 1; }; \
	done; \
	echo "fuzz-regress: $(words $(FUZZ_TARGETS)) passed, 0 failed"

# Each target for FUZZ_SECONDS, one at a time and niced (2 shared cores). New
# inputs go to fuzz/corpus-work/<target> (not committed); crashes to
# fuzz/artifacts/<target>/.
fuzz: fuzz-build
	@for t in $(FUZZ_TARGETS); do \
		mkdir -p fuzz/corpus-work/$$t fuzz/artifacts/$$t; \
		echo "fuzz: $$t for $(FUZZ_SECONDS) s"; \
		nice $(FUZZ_BIN)/$$t -max_total_time=$(FUZZ_SECONDS) $(FUZZ_RUN_FLAGS) \
			-artifact_prefix=fuzz/artifacts/$$t/ fuzz/corpus-work/$$t fuzz/corpus/$$t \
			2>fuzz/target/fuzz-$$t.log \
			|| { tail -60 fuzz/target/fuzz-$$t.log; echo "fuzz: $$t found a crash (fuzz/artifacts/$$t/)" >&2; exit 1; }; \
		grep -E '^(#[0-9]+ +DONE|Done [0-9]+ runs)' fuzz/target/fuzz-$$t.log | tail -1; \
	done

# Rewrites the seed corpora from the unit tests' valid cases.
fuzz-corpus:
	cd fuzz && $(CARGO) run --release --example gen-corpus -- corpus

# --- demo: until the runtime exists, the guest kernel under the reference VMM
# (QEMU -M pc: -M microvm is faster but now and then stalls ~100 s in the test host).
demo: deps kernel testhost
	@tier=$$(tests/kvm-host/probe); \
	echo "demo: booting build/kernel/x86_64/vmlinux to a static /init ($$tier tier)"; \
	if [ "$$tier" = nested ]; then \
		tests/kvm-host/run.sh --qemu --timeout 300 \
			--add $(BUILD)/kernel/x86_64/vmlinux:/demo/vmlinux \
			--add $(BUILD)/testhost/ref-initrd.cpio:/demo/initrd.cpio \
			--add tests/kvm-host/ref-boot.sh:/demo/ref-boot.sh \
			--env MOAT_REF_APPEND= \
			-- /demo/ref-boot.sh /demo/vmlinux /demo/initrd.cpio 1 pc; \
	else \
		MOAT_REF_APPEND= tests/kvm-host/ref-boot.sh $(BUILD)/kernel/x86_64/vmlinux \
			$(BUILD)/testhost/ref-initrd.cpio 1 pc; \
	fi

# --- bench: real measurements, 3 runs each -----------------------------------
bench: deps kernel testhost
	$(CARGO) build --release -p moat-tests --bin moat-bench
	$(E2E_ENV) $(ROOT)/target/release/moat-bench --runs 3
	$(CARGO) bench -p moat-images --bench pull
