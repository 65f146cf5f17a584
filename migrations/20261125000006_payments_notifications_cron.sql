-- Payments, notifications and cron bookkeeping.

-- The provider's payment intent, authorised by the client at checkout and captured on delivery.
ALTER TABLE orders ADD COLUMN payment_intent_id VARCHAR(255);

-- One capture per order. The idempotency key is derived from the order and sent to the
-- provider on every attempt, so a re-run after a crash can never charge twice.
CREATE TABLE payments (
    order_id            BIGINT PRIMARY KEY REFERENCES orders (id) ON DELETE CASCADE,
    provider            VARCHAR(20) NOT NULL,
    idempotency_key     VARCHAR(255) NOT NULL CONSTRAINT payments_idempotency_key_key UNIQUE,
    amount_cents        BIGINT NOT NULL CONSTRAINT payments_amount_nonnegative CHECK (amount_cents >= 0),
    currency            CHAR(3) NOT NULL,
    status              VARCHAR(20) NOT NULL DEFAULT 'pending'
                            CONSTRAINT payments_status_check CHECK (status IN (
                                'pending', 'captured', 'declined', 'failed', 'refunded')),
    provider_reference  VARCHAR(255),
    failure_code        VARCHAR(100),
    failure_message     TEXT,
    attempts            INTEGER NOT NULL DEFAULT 0,
    created_at          TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at          TIMESTAMPTZ NOT NULL DEFAULT now(),
    captured_at         TIMESTAMPTZ
);
CREATE INDEX idx_payments_status ON payments (status) WHERE status <> 'captured';

-- Every capture attempt and its outcome.
CREATE TABLE payment_attempts (
    id          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    order_id    BIGINT NOT NULL REFERENCES orders (id) ON DELETE CASCADE,
    attempt     INTEGER NOT NULL,
    outcome     VARCHAR(20) NOT NULL CONSTRAINT payment_attempts_outcome_check CHECK (outcome IN (
                    'captured', 'declined', 'rejected', 'retryable')),
    http_status SMALLINT,
    detail      TEXT,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX idx_payment_attempts_order ON payment_attempts (order_id);

-- The development payment provider's books: captures recorded in Postgres, deduplicated by
-- the same idempotency key a real provider would see.
CREATE TABLE ledger_captures (
    id              BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    idempotency_key VARCHAR(255) NOT NULL CONSTRAINT ledger_captures_idempotency_key_key UNIQUE,
    order_id        BIGINT NOT NULL,
    amount_cents    BIGINT NOT NULL,
    currency        CHAR(3) NOT NULL,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- Webhook deliveries: one row per attempt, for operators and for dedupe on the receiving side
-- (the event id is sent with every attempt).
CREATE TABLE notification_deliveries (
    id          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_id    UUID NOT NULL,
    order_id    BIGINT NOT NULL,
    audience    VARCHAR(20) NOT NULL,
    event_type  VARCHAR(100) NOT NULL,
    attempt     INTEGER NOT NULL,
    outcome     VARCHAR(20) NOT NULL CONSTRAINT notification_deliveries_outcome_check CHECK (outcome IN (
                    'delivered', 'retrying', 'gave_up', 'skipped')),
    http_status SMALLINT,
    detail      TEXT,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX idx_notification_deliveries_event ON notification_deliveries (event_id);
CREATE INDEX idx_notification_deliveries_order ON notification_deliveries (order_id);

-- One row per cron task and tick: every process's scheduler fires every tick, and only the one
-- whose insert wins runs it. The row is inserted in the transaction that stays open while the
-- tick's work runs, so a process that dies mid-tick leaves the tick to another.
CREATE TABLE cron_runs (
    task        VARCHAR(50) NOT NULL,
    tick        TIMESTAMPTZ NOT NULL,
    ran_by      TEXT NOT NULL,
    started_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    summary     JSONB,
    CONSTRAINT cron_runs_pkey PRIMARY KEY (task, tick)
);
CREATE INDEX idx_cron_runs_started ON cron_runs (started_at);
