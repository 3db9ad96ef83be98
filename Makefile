# Short task file: generate, test, bench. CI runs `cargo test --workspace` as root.
.PHONY: build crds test lint bench fuzz

build:
	cargo build --release

crds:
	cargo run -q --bin netlet -- crds > crds/netlet.io.yaml

test:
	cargo test --workspace

lint:
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings
