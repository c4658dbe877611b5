# Developer tasks. `pip install rust-just` (or `cargo install just`) provides `just`.

# Run everything in one process with the example agents.
dev:
    cargo run -p nightshift-cli -- dev -f examples/agents

# The full test suite as CI runs it (starts Postgres/Redis/NATS if needed).
test:
    scripts/test.sh

# Lints.
lint:
    cargo fmt --all -- --check
    cargo clippy --workspace --all-targets -- -D warnings

# Format the code.
fmt:
    cargo fmt --all

# Benchmarks: the harness arrives with the benchmarks issue; until then this says so.
bench:
    @echo "no benchmark harness yet (see the benchmarks issue); nothing measured" && exit 1
