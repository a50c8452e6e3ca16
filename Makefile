# moat: two commands.
#   make demo   run a container in a moat microVM (in the test host where KVM is nested)
#   make test   fmt, clippy, unit tests, then the end-to-end tier
# Also: deps, kernel [ARCH=x86_64|arm64], static, initrd, testhost, bench.
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
STATIC_PACKAGES := -p moat-vmm -p moat-agent -p moat-runtime -p moat-tests
STATIC_BINS := moat-vmm moat-agent moat-kvm-smoke moat-demo moat-sandbox-check
# The guest initramfs: the static agent as /init (agent/mkinitramfs.sh).
INITRD := $(BUILD)/initrd/agent.cpio

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
DEPS_HASH := $(shell echo '$(APT_PACKAGES) | $(RUST_COMPONENTS) | $(RUST_TARGETS)' | sha256sum | cut -c1-12)
DEPS_STAMP := $(CACHE)/deps-$(DEPS_HASH).stamp

# Where the end-to-end tests find the artifacts (tests/harness/artifacts.rs).
E2E_ENV := MOAT_E2E_REQUIRED=1 \
	MOAT_GUEST_KERNEL=$(BUILD)/kernel/x86_64/vmlinux \
	MOAT_BIN_DIR=$(BUILD)/bin \
	MOAT_TESTHOST_DIR=$(BUILD)/testhost \
	MOAT_REF_INITRD=$(BUILD)/testhost/ref-initrd.cpio \
	MOAT_AGENT_INITRD=$(INITRD)

.PHONY: help deps kernel static initrd testhost test unit e2e lint demo bench

help:
	@echo "make demo    run a container in a moat microVM [DEMO_ARGS='sh -c \"uname -a\"']"
	@echo "make test    fmt + clippy + unit tests + end-to-end tests (MOAT_E2E_REQUIRED=1)"
	@echo "make deps | kernel [ARCH=arm64] | static | initrd | testhost | bench"

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

# --- initrd: the agent's initramfs, rebuilt only when the agent binary (or the
# script) changed: the key is their sha256, kept beside the archive.
initrd: static
	@mkdir -p $(dir $(INITRD)); \
	key=$$(cat $(BUILD)/bin/moat-agent agent/mkinitramfs.sh | sha256sum | cut -c1-16); \
	if [ -f $(INITRD) ] && [ "$$(cat $(INITRD).key 2>/dev/null)" = "$$key" ]; then \
		echo "initrd: $(INITRD) cached (agent $$key)"; \
	else \
		agent/mkinitramfs.sh $(INITRD).tmp $(BUILD)/bin/moat-agent; \
		mv $(INITRD).tmp $(INITRD); echo "$$key" >$(INITRD).key; \
		echo "initrd: $(INITRD) built (agent $$key)"; \
	fi

# --- nested KVM test host (kernel, modules, busybox initramfs, QEMU bundle) --
testhost:
	tests/kvm-host/build.sh --qemu $(BUILD)/testhost

# --- test ---------------------------------------------------------------------
lint:
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

# Unit tests: every crate, and the harness's own (lib and bins of moat-tests).
unit:
	$(CARGO) test --workspace --exclude moat-tests
	$(CARGO) test -p moat-tests --lib --bins

# End-to-end tests (tests/*.rs): one at a time, they boot VMs on 2 shared cores.
e2e: kernel static initrd testhost
	@echo "e2e: tier $$(tests/kvm-host/probe 2>&1 | paste -sd' ')"
	$(E2E_ENV) $(CARGO) test -p moat-tests --tests -- --test-threads=1

test: deps
	$(MAKE) lint
	$(MAKE) unit
	$(MAKE) e2e

# --- demo: moat-demo imports the bundled busybox-static image into a fresh image
# store and runs DEMO_ARGS (default: echo hello from a moat microVM) in one
# microVM (moat-vmm + guest kernel + agent initramfs). Nested tier: inside the
# test host (one test-host boot, one VM boot); direct tier: here.
DEMO_ARGS ?=
demo: deps kernel static initrd testhost
	@tier=$$(tests/kvm-host/probe); \
	echo "demo: a container in a moat microVM ($$tier tier)"; \
	if [ "$$tier" = nested ]; then \
		echo "demo: inside the nested test host (QEMU TCG): timings are emulated, read them as shares"; \
		tests/kvm-host/run.sh --timeout 300 \
			--add $(BUILD)/kernel/x86_64/vmlinux:/demo/vmlinux \
			--add $(INITRD):/demo/agent.cpio \
			--add $(BUILD)/bin/moat-vmm:/demo/moat-vmm \
			--add $(BUILD)/bin/moat-demo:/demo/moat-demo \
			-- /demo/moat-demo --kernel /demo/vmlinux --initrd /demo/agent.cpio \
			--vmm /demo/moat-vmm $(DEMO_ARGS); \
	else \
		$(BUILD)/bin/moat-demo --kernel $(BUILD)/kernel/x86_64/vmlinux --initrd $(INITRD) \
			--vmm $(BUILD)/bin/moat-vmm $(DEMO_ARGS); \
	fi

# --- bench: real measurements, 3 runs each -----------------------------------
bench: deps kernel testhost
	$(CARGO) build --release -p moat-tests --bin moat-bench
	$(E2E_ENV) $(ROOT)/target/release/moat-bench --runs 3
	$(CARGO) bench -p moat-images --bench pull
