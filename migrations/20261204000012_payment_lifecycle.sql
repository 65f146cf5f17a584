-- Payments a real provider can carry: authorised at placement, captured on delivery, released
-- on cancellation, refunded by operators (docs/payments.md).

-- An order waits in PAYMENT_PENDING until its payment is authorised; only then is it PLACED
-- and its restaurant asked. `placed_at` is therefore the moment the restaurant was asked, and
-- empty while the payment is pending (or for an order cancelled before it).
ALTER TABLE orders DROP CONSTRAINT orders_status_check;
ALTER TABLE orders ADD CONSTRAINT orders_status_check CHECK (status IN (
    'PAYMENT_PENDING', 'PLACED', 'CONFIRMED', 'PREPARING', 'READY_FOR_PICKUP',
    'PICKED_UP', 'DELIVERED', 'COMPLETED', 'CANCELLED'));
ALTER TABLE orders ALTER COLUMN status SET DEFAULT 'PAYMENT_PENDING';
ALTER TABLE orders ALTER COLUMN placed_at DROP NOT NULL;
ALTER TABLE orders ALTER COLUMN placed_at DROP DEFAULT;

-- The payment row now exists from placement on and carries the whole lifecycle.
ALTER TABLE payments RENAME COLUMN idempotency_key TO capture_key;
-- The provider that holds the money: known once the authorisation is asked for.
ALTER TABLE payments ALTER COLUMN provider DROP NOT NULL;
ALTER TABLE payments RENAME CONSTRAINT payments_idempotency_key_key TO payments_capture_key_key;
ALTER TABLE payments
    ADD COLUMN payment_method  VARCHAR(255),
    ADD COLUMN intent_id       VARCHAR(255),
    ADD COLUMN authorize_key   VARCHAR(255) CONSTRAINT payments_authorize_key_key UNIQUE,
    ADD COLUMN authorized_at   TIMESTAMPTZ,
    ADD COLUMN released_at     TIMESTAMPTZ,
    ADD COLUMN refunded_cents  BIGINT NOT NULL DEFAULT 0
        CONSTRAINT payments_refunded_within_amount CHECK (refunded_cents BETWEEN 0 AND amount_cents),
    ADD COLUMN written_off_at  TIMESTAMPTZ,
    ADD COLUMN written_off_by  BIGINT,
    ADD COLUMN write_off_reason TEXT;

-- Before this release the client authorised at checkout and the intent sat on the order.
UPDATE payments p SET intent_id = o.payment_intent_id, authorized_at = o.placed_at
FROM orders o WHERE o.id = p.order_id;
UPDATE payments SET status = CASE status
    WHEN 'pending' THEN 'authorized'
    WHEN 'declined' THEN 'capture_declined'
    WHEN 'failed' THEN 'capture_failed'
    ELSE status END;
-- Orders in flight from the previous release were authorised at checkout: they keep going.
INSERT INTO payments (order_id, provider, capture_key, amount_cents, currency, status,
                      intent_id, authorized_at)
SELECT o.id, 'legacy', 'courier-capture-' || o.id, o.total_cents, o.currency, 'authorized',
       o.payment_intent_id, o.placed_at
FROM orders o
WHERE o.status NOT IN ('COMPLETED', 'CANCELLED')
  AND NOT EXISTS (SELECT 1 FROM payments p WHERE p.order_id = o.id);
ALTER TABLE orders DROP COLUMN payment_intent_id;

ALTER TABLE payments DROP CONSTRAINT payments_status_check;
ALTER TABLE payments ALTER COLUMN status TYPE VARCHAR(30);
ALTER TABLE payments ADD CONSTRAINT payments_status_check CHECK (status IN (
    'authorizing', 'authorized', 'authorization_declined', 'authorization_failed',
    'captured', 'capture_declined', 'capture_failed', 'written_off',
    'released', 'partially_refunded', 'refunded'));
ALTER TABLE payments ALTER COLUMN status SET DEFAULT 'authorizing';
DROP INDEX idx_payments_status;
CREATE INDEX idx_payments_open ON payments (status, authorized_at)
    WHERE status IN ('authorizing', 'authorized', 'capture_declined', 'capture_failed');

-- Operator refunds: one row per request, deduplicated by the request's key; the provider sees
-- `courier-refund-<id>` on every attempt, so a re-run never refunds twice.
CREATE TABLE payment_refunds (
    id                  BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    order_id            BIGINT NOT NULL REFERENCES payments (order_id) ON DELETE CASCADE,
    request_key         VARCHAR(255) NOT NULL,
    amount_cents        BIGINT NOT NULL CONSTRAINT payment_refunds_amount_positive CHECK (amount_cents > 0),
    reason              TEXT NOT NULL,
    requested_by        BIGINT,
    status              VARCHAR(20) NOT NULL DEFAULT 'pending'
                            CONSTRAINT payment_refunds_status_check CHECK (status IN (
                                'pending', 'succeeded', 'failed')),
    provider_reference  VARCHAR(255),
    failure_code        VARCHAR(100),
    failure_message     TEXT,
    attempts            INTEGER NOT NULL DEFAULT 0,
    created_at          TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at          TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT payment_refunds_request_key UNIQUE (order_id, request_key)
);
CREATE INDEX idx_payment_refunds_order ON payment_refunds (order_id);

-- Every call to the provider, whatever the operation.
ALTER TABLE payment_attempts
    ADD COLUMN operation VARCHAR(20) NOT NULL DEFAULT 'capture'
        CONSTRAINT payment_attempts_operation_check CHECK (operation IN (
            'authorize', 'capture', 'release', 'refund')),
    ADD COLUMN refund_id BIGINT REFERENCES payment_refunds (id) ON DELETE CASCADE;
ALTER TABLE payment_attempts ALTER COLUMN operation DROP DEFAULT;
ALTER TABLE payment_attempts DROP CONSTRAINT payment_attempts_outcome_check;
UPDATE payment_attempts SET outcome = 'succeeded' WHERE outcome = 'captured';
ALTER TABLE payment_attempts ADD CONSTRAINT payment_attempts_outcome_check CHECK (outcome IN (
    'succeeded', 'declined', 'rejected', 'retryable'));

-- The development provider's books: payment intents and every keyed request with the answer
-- it got, so a repeated key replays the first answer as a real provider does.
DROP TABLE ledger_captures;
CREATE TABLE ledger_intents (
    id              BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    order_id        BIGINT NOT NULL,
    payment_method  VARCHAR(255) NOT NULL,
    amount_cents    BIGINT NOT NULL,
    currency        CHAR(3) NOT NULL,
    status          VARCHAR(20) NOT NULL CONSTRAINT ledger_intents_status_check CHECK (status IN (
                        'requires_capture', 'succeeded', 'canceled')),
    captured_cents  BIGINT NOT NULL DEFAULT 0,
    refunded_cents  BIGINT NOT NULL DEFAULT 0,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE TABLE ledger_requests (
    idempotency_key VARCHAR(255) PRIMARY KEY,
    operation       VARCHAR(20) NOT NULL,
    order_id        BIGINT NOT NULL,
    outcome         JSONB NOT NULL,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now()
);
