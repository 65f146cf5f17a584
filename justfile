# courier's tasks. `just dev` runs the stack, `just test` runs every test; both bring up
# Postgres+PostGIS and Valkey themselves (see ops/services-up).

set shell := ["bash", "-euo", "pipefail", "-c"]

export DATABASE_URL := env_var_or_default("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/courier")
export VALKEY_URL := env_var_or_default("VALKEY_URL", "redis://127.0.0.1:6380")
export KAFKA_BROKERS := env_var_or_default("KAFKA_BROKERS", "127.0.0.1:19092")
export LOG_FORMAT := env_var_or_default("LOG_FORMAT", "pretty")
# apalis-postgres checks its SQL against offline data; never against a live DATABASE_URL.
export SQLX_OFFLINE := "true"

# List the tasks.
default:
    @just --list

# Start Postgres+PostGIS, Valkey and a Kafka broker if they are not answering (installs them when missing).
services-up:
    ops/services-up

# Stop the private Postgres and Valkey that services-up started.
services-down:
    ops/services-down

# A local Valkey Cluster (3 primaries, 3 replicas) for development: `just valkey-cluster up`
# prints the value for VALKEY_CLUSTER_NODES; also `status`, `kill-primary`, `down`.
valkey-cluster *ARGS:
    ops/valkey-cluster {{ARGS}}

# Apply migrations (courier's and apalis's) to DATABASE_URL.
migrate: services-up
    cargo run --quiet -- migrate

# A city on courier in two minutes: server, workers and the simulator, then the KPI table.
demo *ARGS: services-up
    ops/demo {{ARGS}}

# courier beyond one machine: 2 serve + 2 worker processes on one Postgres and a 3+3 Valkey
# Cluster, the simulator over both API ports, then the invariants (`courier admin check`) and
# the Postgres connection peak; `just scale --failover` kills a primary mid-run (docs/scaling.md).
scale *ARGS: services-up
    ops/scale {{ARGS}}

# Run the city simulator against a running server, e.g. `just sim --url http://127.0.0.1:8080`.
sim *ARGS:
    cargo run --release --locked --quiet -p courier-sim -- {{ARGS}}

# Run the whole stack in one process (API + workers) in development mode.
dev: services-up
    cargo run -- --dev run --migrate-on-start

# Run every test (unit and integration) against real Postgres, Valkey (one node, and a local
# 3-primary cluster: ops/valkey-cluster) and Kafka.
test *ARGS: services-up
    ops/drop-test-databases
    COURIER_TEST_VALKEY_CLUSTER_NODES="${COURIER_TEST_VALKEY_CLUSTER_NODES:-$(ops/valkey-cluster up)}" \
    COURIER_TEST_DATABASE_URL="${COURIER_TEST_DATABASE_URL:-$DATABASE_URL}" \
    COURIER_TEST_VALKEY_URL="${COURIER_TEST_VALKEY_URL:-$VALKEY_URL}" \
    COURIER_TEST_KAFKA_BROKERS="${COURIER_TEST_KAFKA_BROKERS:-$KAFKA_BROKERS}" \
    VALKEY_SERVER="$(ops/valkey-bin)" \
    cargo test --locked --workspace --all-targets {{ARGS}}

# Formatting and clippy, as CI runs them.
lint:
    cargo fmt --all -- --check
    cargo clippy --locked --workspace --all-targets -- -D warnings

# Fuzz the API from its OpenAPI document with schemathesis, as every role, e.g.
# `just fuzz-api 300` (seconds per role; 45 by default). See docs/fuzzing.md.
fuzz-api *ARGS: services-up
    ops/fuzz-api {{ARGS}}

# Mint a development token, e.g. `just token operator 1`.
token ROLE SUBJECT:
    cargo run --quiet -- --dev token issue --role {{ROLE}} --subject {{SUBJECT}}

# The benchmarks are `courier-bench` (crates/courier-bench), built beside the `courier` binary
# they start. Each runs on a dedicated database and key prefix; results: docs/benchmarks.md.
_bench DB PREFIX *ARGS: services-up
    cargo build --release --locked --quiet -p courier -p courier-bench
    DATABASE_URL="${BENCH_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/{{DB}}}" \
    COURIER_KEY_PREFIX={{PREFIX}} LOG_LEVEL=warn \
    target/release/courier-bench --dev {{ARGS}}

# Job-layer benchmark, e.g. `just bench-jobs --jobs 20000` or `just bench-jobs --peer graphile`.
bench-jobs *ARGS: (_bench "courier_bench" "bench:" "jobs" ARGS)

# Location benchmark, e.g. `just bench-location --drivers 100000 --rate 10000`.
bench-location *ARGS: (_bench "courier_bench" "bench:" "location" ARGS)

# A whole city at peak: 10,000 drivers reporting every second and 100 orders/s carried through
# the workflow by `courier serve` and `courier worker`, e.g. `just bench-e2e --duration 60s`.
bench-e2e *ARGS: (_bench "courier_bench_e2e" "bench-e2e:" "e2e" ARGS)

# Dispatch: the cycle's solve at 500 orders × 2,000 drivers against the per-order choice, then
# the simulated city under per-order matching and under cycles (same seed), e.g.
# `just bench-dispatch` or `just bench-dispatch --solve-only`.
bench-dispatch *ARGS: (_bench "courier_bench_dispatch" "bench-dispatch:" "dispatch" ARGS)

# Live clients: 2,000 SSE connections on one `courier serve` while orders move, e.g.
# `just bench-sse --clients 2000 --duration 30s`.
bench-sse *ARGS: (_bench "courier_bench_sse" "bench-sse:" "sse" ARGS)
