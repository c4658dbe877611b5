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

# Every benchmark scenario (release build; ~13 minutes on 2 cores); see docs/benchmarks.md.
# `e2e` runs the release binaries next to the bench's (`nightshift dev`; the five role binaries
# for its distributed form).
bench:
    cargo build --release -p nightshift-cli -p nightshift-bench -p nightshift-manager -p nightshift-scheduler \
        -p nightshift-worker -p nightshift-memory -p nightshift-events
    target/release/nightshift-bench --json target/nightshift-bench.json all

# Vector index latency of the memory service (in-process, pgvector, Chroma, Qdrant at 10k and 100k items).
bench-memory:
    cargo run --release -p nightshift-bench -- memory-search --index all --sizes 10000,100000
