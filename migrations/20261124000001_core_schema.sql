-- courier core schema: users, restaurants, menus, drivers, orders and their items, audit log.
-- Money is stored in integer cents (BIGINT), never in floating point. Timestamps are TIMESTAMPTZ.

CREATE EXTENSION IF NOT EXISTS postgis;

-- The spec references users but never defines them. One row per person or business account;
-- the role decides which token a principal may hold.
CREATE TABLE users (
    id          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    role        TEXT NOT NULL CONSTRAINT users_role_check
                    CHECK (role IN ('customer', 'restaurant', 'driver', 'operator')),
    name        VARCHAR(200) NOT NULL CONSTRAINT users_name_not_blank CHECK (btrim(name) <> ''),
    email       VARCHAR(320) NOT NULL,
    phone       VARCHAR(32),
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX users_email_key ON users (lower(email));

CREATE TABLE restaurants (
    id                  BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    owner_user_id       BIGINT REFERENCES users (id),
    name                VARCHAR(200) NOT NULL,
    address             VARCHAR(500),
    location            GEOGRAPHY(POINT, 4326) NOT NULL,
    cuisine_type        VARCHAR(50),
    rating              NUMERIC(2, 1) CONSTRAINT restaurants_rating_range CHECK (rating BETWEEN 0 AND 5),
    prep_time_minutes   INTEGER NOT NULL DEFAULT 20
                            CONSTRAINT restaurants_prep_time_range CHECK (prep_time_minutes BETWEEN 1 AND 240),
    delivery_radius_m   INTEGER NOT NULL DEFAULT 8000
                            CONSTRAINT restaurants_delivery_radius_range CHECK (delivery_radius_m BETWEEN 100 AND 50000),
    is_open             BOOLEAN NOT NULL DEFAULT TRUE,
    created_at          TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at          TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX idx_restaurants_location ON restaurants USING GIST (location);
CREATE INDEX idx_restaurants_open ON restaurants (is_open) WHERE is_open = TRUE;
CREATE INDEX idx_restaurants_owner ON restaurants (owner_user_id);

CREATE TABLE menu_items (
    id              BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    restaurant_id   BIGINT NOT NULL REFERENCES restaurants (id) ON DELETE CASCADE,
    name            VARCHAR(200) NOT NULL,
    description     TEXT,
    price_cents     BIGINT NOT NULL CONSTRAINT menu_items_price_nonnegative CHECK (price_cents >= 0),
    category        VARCHAR(50),
    is_available    BOOLEAN NOT NULL DEFAULT TRUE,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at      TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX idx_menu_items_restaurant ON menu_items (restaurant_id);

CREATE TABLE drivers (
    id                  BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_id             BIGINT NOT NULL REFERENCES users (id),
    vehicle_type        VARCHAR(50),
    is_active           BOOLEAN NOT NULL DEFAULT FALSE,
    rating              NUMERIC(2, 1) NOT NULL DEFAULT 5.0
                            CONSTRAINT drivers_rating_range CHECK (rating BETWEEN 0 AND 5),
    total_deliveries    INTEGER NOT NULL DEFAULT 0 CONSTRAINT drivers_total_deliveries_nonnegative CHECK (total_deliveries >= 0),
    -- Matching's earnings-fairness factor compares today's deliveries with this goal.
    daily_delivery_goal INTEGER NOT NULL DEFAULT 10 CONSTRAINT drivers_daily_goal_nonnegative CHECK (daily_delivery_goal >= 0),
    created_at          TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at          TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT drivers_user_id_key UNIQUE (user_id)
);

CREATE TABLE orders (
    id                      BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    customer_id             BIGINT NOT NULL REFERENCES users (id),
    restaurant_id           BIGINT NOT NULL REFERENCES restaurants (id),
    driver_id               BIGINT REFERENCES drivers (id),
    status                  VARCHAR(30) NOT NULL DEFAULT 'PLACED'
                                CONSTRAINT orders_status_check CHECK (status IN (
                                    'PLACED', 'CONFIRMED', 'PREPARING', 'READY_FOR_PICKUP',
                                    'PICKED_UP', 'DELIVERED', 'COMPLETED', 'CANCELLED')),
    subtotal_cents          BIGINT NOT NULL CONSTRAINT orders_subtotal_nonnegative CHECK (subtotal_cents >= 0),
    delivery_fee_cents      BIGINT NOT NULL CONSTRAINT orders_delivery_fee_nonnegative CHECK (delivery_fee_cents >= 0),
    total_cents             BIGINT NOT NULL,
    currency                CHAR(3) NOT NULL DEFAULT 'USD',
    delivery_address        JSONB NOT NULL
                                CONSTRAINT orders_delivery_address_object CHECK (jsonb_typeof(delivery_address) = 'object'),
    delivery_location       GEOGRAPHY(POINT, 4326) NOT NULL,
    estimated_delivery_at   TIMESTAMPTZ,
    placed_at               TIMESTAMPTZ NOT NULL DEFAULT now(),
    confirmed_at            TIMESTAMPTZ,
    preparing_at            TIMESTAMPTZ,
    ready_at                TIMESTAMPTZ,
    picked_up_at            TIMESTAMPTZ,
    delivered_at            TIMESTAMPTZ,
    completed_at            TIMESTAMPTZ,
    cancelled_at            TIMESTAMPTZ,
    cancel_reason           TEXT,
    version                 INTEGER NOT NULL DEFAULT 1,
    created_at              TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at              TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT orders_total_is_sum CHECK (total_cents = subtotal_cents + delivery_fee_cents),
    CONSTRAINT orders_picked_up_has_driver CHECK (
        status NOT IN ('PICKED_UP', 'DELIVERED', 'COMPLETED') OR driver_id IS NOT NULL)
);
CREATE INDEX idx_orders_customer ON orders (customer_id);
CREATE INDEX idx_orders_driver ON orders (driver_id);
CREATE INDEX idx_orders_status ON orders (status);
CREATE INDEX idx_orders_restaurant_status ON orders (restaurant_id, status);

CREATE TABLE order_items (
    id                      BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    order_id                BIGINT NOT NULL REFERENCES orders (id) ON DELETE CASCADE,
    menu_item_id            BIGINT NOT NULL REFERENCES menu_items (id),
    -- The name as it was when ordered: menus change, receipts must not.
    name                    VARCHAR(200) NOT NULL,
    quantity                INTEGER NOT NULL CONSTRAINT order_items_quantity_range CHECK (quantity BETWEEN 1 AND 100),
    unit_price_cents        BIGINT NOT NULL CONSTRAINT order_items_unit_price_nonnegative CHECK (unit_price_cents >= 0),
    special_instructions    TEXT
);
CREATE INDEX idx_order_items_order ON order_items (order_id);

CREATE TABLE audit_logs (
    id          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_type  VARCHAR(50) NOT NULL,
    entity_type VARCHAR(50) NOT NULL,
    entity_id   BIGINT NOT NULL,
    actor_type  VARCHAR(20) NOT NULL,
    actor_id    BIGINT,
    changes     JSONB,
    metadata    JSONB,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX idx_audit_entity ON audit_logs (entity_type, entity_id);
CREATE INDEX idx_audit_created ON audit_logs (created_at);
