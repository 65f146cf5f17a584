# courier's tasks. `just dev` runs the stack, `just test` runs every test; both bring up
# Postgres+PostGIS and Valkey themselves (see ops/services-up).

set shell := ["bash", "-euo", "pipefail", "-c"]

export DATABASE_URL := env_var_or_default("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/courier")
export VALKEY_URL := env_var_or_default("VALKEY_URL", "redis://127.0.0.1:6380")
export LOG_FORMAT := env_var_or_default("LOG_FORMAT", "pretty")
# apalis-postgres checks its SQL against offline data; never against a live DATABASE_URL.
export SQLX_OFFLINE := "true"

# List the tasks.
default:
    @just --list

# Start Postgres+PostGIS and Valkey if they are not answering (installs them when missing).
services-up:
    ops/services-up

# Stop the private Postgres and Valkey that services-up started.
services-down:
    ops/services-down

# Apply migrations (courier's and apalis's) to DATABASE_URL.
migrate: services-up
    cargo run --quiet -- migrate

# A city on courier in two minutes: server, workers and the simulator, then the KPI table.
demo *ARGS: services-up
    ops/demo {{ARGS}}

# Run the city simulator against a running server, e.g. `just sim --url http://127.0.0.1:8080`.
sim *ARGS:
    cargo run --release --locked --quiet -p courier-sim -- {{ARGS}}

# Run the whole stack in one process (API + workers) in development mode.
dev: services-up
    cargo run -- --dev run --migrate-on-start

# Run every test (unit and integration) against real Postgres and Valkey.
test *ARGS: services-up
    ops/drop-test-databases
    COURIER_TEST_DATABASE_URL="${COURIER_TEST_DATABASE_URL:-$DATABASE_URL}" \
    COURIER_TEST_VALKEY_URL="${COURIER_TEST_VALKEY_URL:-$VALKEY_URL}" \
    VALKEY_SERVER="$(ops/valkey-bin)" \
    cargo test --locked --workspace --all-targets {{ARGS}}

# Formatting and clippy, as CI runs them.
lint:
    cargo fmt --all -- --check
    cargo clippy --locked --workspace --all-targets -- -D warnings

# Mint a development token, e.g. `just token operator 1`.
token ROLE SUBJECT:
    cargo run --quiet -- --dev token issue --role {{ROLE}} --subject {{SUBJECT}}

# Job-layer benchmark against a dedicated database, e.g. `just bench-jobs --jobs 20000`.
# Results: docs/benchmarks.md.
bench-jobs *ARGS: services-up
    DATABASE_URL="${BENCH_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/courier_bench}" \
    COURIER_KEY_PREFIX=bench: LOG_LEVEL=warn \
    cargo run --release --locked -- --dev bench jobs {{ARGS}}

# Location benchmark against a dedicated database and key prefix, e.g.
# `just bench-location --drivers 100000 --rate 10000`. Results: docs/benchmarks.md.
bench-location *ARGS: services-up
    DATABASE_URL="${BENCH_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/courier_bench}" \
    COURIER_KEY_PREFIX=bench: LOG_LEVEL=warn \
    cargo run --release --locked -- --dev bench location {{ARGS}}
