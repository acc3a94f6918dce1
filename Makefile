# The front door. Every CI step is a target here, so CI can be rerun
# locally one step at a time; `.ci/run` is just `make test`.

CARGO ?= cargo
HYPERVISOR_TARGET := aarch64-unknown-none-softfloat
GUEST_TARGET := aarch64-unknown-none
TESSERA := $(CARGO) run --release -p tessera-tools --

.PHONY: deps fmt-check clippy unit e2e test run bench fuzz soak clean

# `make test` lists its steps as prerequisites; they must run in order
# (deps first, cheap checks before slow ones) even under `make -j`.
.NOTPARALLEL:

deps:
	bash .ci/install-deps

fmt-check:
	$(CARGO) fmt --all -- --check

# Host code first, then each board's target build, then the guests.
clippy:
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	$(CARGO) clippy -p tessera-hypervisor --target $(HYPERVISOR_TARGET) --features board-virt -- -D warnings
	$(CARGO) clippy -p tessera-hypervisor --target $(HYPERVISOR_TARGET) --features board-rpi4 -- -D warnings
	$(CARGO) clippy -p tessera-guest-sdk --target $(GUEST_TARGET) -- -D warnings

unit:
	$(CARGO) test --workspace

e2e:
	$(TESSERA) test

test: deps fmt-check clippy unit e2e

run: deps
	$(TESSERA) run --system systems/demo.toml

# Instruction counts under QEMU -icount (docs/benchmarks.md); not part of
# `make test`. Writes target/bench/results.json and docs/benchmarks.md.
bench: deps
	$(TESSERA) bench

# Long randomized runs, not part of `make test` (which runs short ones
# within `unit`):
# - the configuration checker on generated hostile configurations, in the
#   debug build so an overflow panics (tools/src/system/fuzz.rs; 20,000 in
#   `make test`);
# - the vdev-shmem model driven by many VMs' random requests, its
#   invariants checked after every step (vdevs/src/shmem/tests.rs; 20,000
#   steps in `make test`), with overflow checks kept in the optimised build.
FUZZ_ITERATIONS ?= 1000000
FUZZ_SEED ?= 0x7E55E4A0
SHMEM_FUZZ_STEPS ?= 10000000
SHMEM_FUZZ_SEED ?= 24301
fuzz:
	TESSERA_FUZZ_ITERATIONS=$(FUZZ_ITERATIONS) TESSERA_FUZZ_SEED=$(FUZZ_SEED) \
		$(CARGO) test -p tessera-tools --bin tessera fuzz_many_configurations -- --ignored --nocapture
	TESSERA_SHMEM_STEPS=$(SHMEM_FUZZ_STEPS) TESSERA_SHMEM_SEED=$(SHMEM_FUZZ_SEED) \
		RUSTFLAGS="-C overflow-checks=on" CARGO_TARGET_DIR=target/fuzz \
		$(CARGO) test --release -p tessera-vdevs random_requests_keep_every_invariant -- --nocapture

# Long end-to-end runs under tests/soak/ (1,000,000 vdev-shmem ping-pongs);
# not part of `make test`.
soak: deps
	$(TESSERA) test --soak

clean:
	$(CARGO) clean
