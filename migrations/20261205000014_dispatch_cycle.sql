-- Dispatch for a whole market at once (issue 24). A market dispatches its orders one at a
-- time as each is confirmed ('per_order', the default) or in a cycle every few seconds that
-- assigns all waiting orders together ('cycle'). `dispatch_cycle_at` is when its last cycle
-- finished: the per-order fallback of a cycle market acts when it is stale.
ALTER TABLE markets
    ADD COLUMN dispatch VARCHAR(16) NOT NULL DEFAULT 'per_order'
        CONSTRAINT markets_dispatch_mode CHECK (dispatch IN ('per_order', 'cycle')),
    ADD COLUMN dispatch_cycle_at TIMESTAMPTZ;

-- The restaurant's estimate of the food's preparation in minutes (fractions allowed), given
-- when it confirms and updated while it cooks; `food_ready_at` is when the food is expected
-- ready (confirmation plus the estimate, or the update's time plus the new one). NULL for
-- orders confirmed before this.
ALTER TABLE orders
    ADD COLUMN prep_minutes DOUBLE PRECISION
        CONSTRAINT orders_prep_minutes_range CHECK (prep_minutes > 0 AND prep_minutes <= 180),
    ADD COLUMN food_ready_at TIMESTAMPTZ;

-- One row per dispatch cycle: what it saw, what it offered, how long it took. Operators read
-- them with `courier admin dispatch cycles`; the housekeeping cron drops old ones.
CREATE TABLE dispatch_cycles (
    id                 BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    market_id          BIGINT NOT NULL REFERENCES markets (id),
    started_at         TIMESTAMPTZ NOT NULL DEFAULT now(),
    finished_at        TIMESTAMPTZ,
    status             VARCHAR(16) NOT NULL DEFAULT 'running'
                           CONSTRAINT dispatch_cycles_status CHECK (status IN ('running', 'done', 'failed')),
    orders_pooled      INTEGER NOT NULL DEFAULT 0,
    drivers_available  INTEGER NOT NULL DEFAULT 0,
    offered            INTEGER NOT NULL DEFAULT 0,
    held               INTEGER NOT NULL DEFAULT 0,
    unmatched          INTEGER NOT NULL DEFAULT 0,
    raced              INTEGER NOT NULL DEFAULT 0,
    routing_estimated  BOOLEAN NOT NULL DEFAULT FALSE,
    table_ms           DOUBLE PRECISION,
    solve_ms           DOUBLE PRECISION,
    error              TEXT
);
CREATE INDEX idx_dispatch_cycles_market ON dispatch_cycles (market_id, id DESC);
CREATE INDEX idx_dispatch_cycles_started ON dispatch_cycles (started_at);
