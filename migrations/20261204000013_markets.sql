-- Markets: the shard key of everything local to a city. Each restaurant and order belongs to
-- one; a driver to the one its position is in (NULL until its first report). Valkey keys of a
-- market share the hash tag `{<slug>}`, so a market's keys live on one cluster node.
CREATE TABLE markets (
    id          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    slug        VARCHAR(32) NOT NULL
                    CONSTRAINT markets_slug_format CHECK (slug ~ '^[a-z0-9]([a-z0-9-]{0,30}[a-z0-9])?$'),
    name        VARCHAR(100) NOT NULL,
    -- An IANA time zone name (checked by the application: Postgres's list may differ).
    time_zone   VARCHAR(64) NOT NULL,
    center      GEOGRAPHY(POINT, 4326) NOT NULL,
    radius_km   DOUBLE PRECISION NOT NULL
                    CONSTRAINT markets_radius_range CHECK (radius_km > 0 AND radius_km <= 20100),
    active      BOOLEAN NOT NULL DEFAULT TRUE,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT markets_slug_key UNIQUE (slug)
);

-- The market every existing row moves to. It covers the whole earth, so a deployment that ran
-- one market keeps working; operators narrow or deactivate it once real markets exist.
INSERT INTO markets (slug, name, time_zone, center, radius_km)
VALUES ('default', 'Default market', 'UTC', ST_GeogFromText('SRID=4326;POINT(0 0)'), 20100);

-- A constant default fills existing rows without rewriting the tables; it is dropped at once,
-- so new rows must name their market.
ALTER TABLE restaurants ADD COLUMN market_id BIGINT NOT NULL DEFAULT 1 REFERENCES markets (id);
ALTER TABLE restaurants ALTER COLUMN market_id DROP DEFAULT;
ALTER TABLE orders ADD COLUMN market_id BIGINT NOT NULL DEFAULT 1 REFERENCES markets (id);
ALTER TABLE orders ALTER COLUMN market_id DROP DEFAULT;
ALTER TABLE drivers ADD COLUMN market_id BIGINT DEFAULT 1 REFERENCES markets (id);
ALTER TABLE drivers ALTER COLUMN market_id DROP DEFAULT;

CREATE INDEX idx_restaurants_market ON restaurants (market_id);
CREATE INDEX idx_orders_market_status ON orders (market_id, status);
CREATE INDEX idx_drivers_market ON drivers (market_id);
