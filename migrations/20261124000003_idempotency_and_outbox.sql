-- Order-creation idempotency keys, enforced in Postgres inside the order's transaction: the
-- primary key makes N concurrent requests with one key create exactly one order. Keys are kept
-- 24 hours (the spec), then purged by housekeeping.
CREATE TABLE order_idempotency_keys (
    customer_id     BIGINT NOT NULL REFERENCES users (id),
    idempotency_key VARCHAR(255) NOT NULL,
    -- Hash of the canonical request body: the same key with a different body is rejected.
    request_hash    TEXT NOT NULL,
    order_id        BIGINT REFERENCES orders (id) ON DELETE CASCADE,
    response_status SMALLINT,
    response_body   JSONB,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    expires_at      TIMESTAMPTZ NOT NULL DEFAULT now() + INTERVAL '24 hours',
    CONSTRAINT order_idempotency_keys_pkey PRIMARY KEY (customer_id, idempotency_key)
);
CREATE INDEX idx_order_idempotency_keys_expires ON order_idempotency_keys (expires_at);

-- Transactional outbox: every domain event is written here in the same transaction as the state
-- change that caused it, and relayed to subscribers afterwards. Nothing is published that did
-- not commit, and nothing that committed is lost.
CREATE TABLE outbox (
    id              BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_id        UUID NOT NULL CONSTRAINT outbox_event_id_key UNIQUE,
    topic           VARCHAR(100) NOT NULL,
    aggregate_type  VARCHAR(50) NOT NULL,
    aggregate_id    BIGINT NOT NULL,
    event_type      VARCHAR(100) NOT NULL,
    payload         JSONB NOT NULL,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    published_at    TIMESTAMPTZ
);
CREATE INDEX idx_outbox_unpublished ON outbox (id) WHERE published_at IS NULL;
CREATE INDEX idx_outbox_aggregate ON outbox (aggregate_type, aggregate_id);
