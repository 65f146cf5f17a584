-- Driver matching: offers of an order to a driver, and the order's matching round.
--
-- Invariants held by the schema itself, whatever the code does:
-- - at most one pending offer per order (partial unique index);
-- - an order is never offered twice to the same driver;
-- - an offer's status is one of the five the workflow knows.

CREATE TABLE offers (
    id              BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    order_id        BIGINT NOT NULL REFERENCES orders (id) ON DELETE CASCADE,
    driver_id       BIGINT NOT NULL REFERENCES drivers (id),
    -- The order's matching round when the offer was made (see orders.match_round).
    round           INTEGER NOT NULL CONSTRAINT offers_round_positive CHECK (round >= 1),
    status          VARCHAR(20) NOT NULL DEFAULT 'pending'
                        CONSTRAINT offers_status_check CHECK (status IN (
                            'pending', 'accepted', 'declined', 'expired', 'cancelled')),
    score           DOUBLE PRECISION NOT NULL,
    -- Every factor of the score, and the search that found the driver: why this driver.
    score_breakdown JSONB NOT NULL,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    expires_at      TIMESTAMPTZ NOT NULL,
    responded_at    TIMESTAMPTZ,
    CONSTRAINT offers_expires_after_created CHECK (expires_at > created_at),
    CONSTRAINT offers_order_driver_key UNIQUE (order_id, driver_id)
);
CREATE UNIQUE INDEX offers_one_pending_per_order ON offers (order_id) WHERE status = 'pending';
CREATE INDEX idx_offers_driver_pending ON offers (driver_id) WHERE status = 'pending';

-- The matching round an order is in: 1 when confirmed, +1 each time a round finds nobody and
-- a later round is scheduled. Only the job of the current round schedules the next, so
-- duplicate deliveries of a job never start parallel retry chains.
ALTER TABLE orders ADD COLUMN match_round INTEGER NOT NULL DEFAULT 1
    CONSTRAINT orders_match_round_positive CHECK (match_round >= 1);

-- Active orders of a driver (matching and accept count them under the driver's row lock).
CREATE INDEX idx_orders_driver_active ON orders (driver_id)
    WHERE status IN ('CONFIRMED', 'PREPARING', 'READY_FOR_PICKUP', 'PICKED_UP');
