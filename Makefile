# The front door. Every CI step is a target here, so CI can be rerun
# locally one step at a time; `.ci/run` is just `make test`.

CARGO ?= cargo
HYPERVISOR_TARGET := aarch64-unknown-none-softfloat
GUEST_TARGET := aarch64-unknown-none
TESSERA := $(CARGO) run --release -p tessera-tools --

.PHONY: deps fmt-check clippy unit e2e test run bench fuzz clean

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

# The configuration checker on generated hostile configurations, in the
# debug build so an overflow panics (tools/src/system/fuzz.rs); not part of
# `make test`, which runs 20,000 of them within `unit`.
FUZZ_ITERATIONS ?= 1000000
FUZZ_SEED ?= 0x7E55E4A0
fuzz:
	TESSERA_FUZZ_ITERATIONS=$(FUZZ_ITERATIONS) TESSERA_FUZZ_SEED=$(FUZZ_SEED) \
		$(CARGO) test -p tessera-tools --bin tessera fuzz_many_configurations -- --ignored --nocapture

clean:
	$(CARGO) clean
