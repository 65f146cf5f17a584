-- Driver location history, range-partitioned by day (UTC) on recorded_at.
--
-- There is deliberately no DEFAULT partition: a default partition silently collects rows for
-- days that have no partition yet and then blocks creating that day's partition. Instead,
-- `courier migrate` creates today's and tomorrow's partitions, and the partition-maintenance
-- cron creates the next days ahead of time and drops those past retention.
CREATE TABLE driver_locations (
    driver_id   BIGINT NOT NULL REFERENCES drivers (id),
    location    GEOGRAPHY(POINT, 4326) NOT NULL,
    heading     REAL,
    speed_mps   REAL,
    accuracy_m  REAL,
    recorded_at TIMESTAMPTZ NOT NULL DEFAULT now()
) PARTITION BY RANGE (recorded_at);
CREATE INDEX idx_driver_locations_driver_time ON driver_locations (driver_id, recorded_at);

-- Creates the partition holding the UTC day `day`, named driver_locations_YYYYMMDD.
-- Idempotent; returns the partition's name.
CREATE FUNCTION courier_create_location_partition(day DATE) RETURNS TEXT
LANGUAGE plpgsql AS $$
DECLARE
    partition_name TEXT := format('driver_locations_%s', to_char(day, 'YYYYMMDD'));
    lower_bound TIMESTAMPTZ := (day::timestamp AT TIME ZONE 'UTC');
    upper_bound TIMESTAMPTZ := ((day + 1)::timestamp AT TIME ZONE 'UTC');
BEGIN
    EXECUTE format(
        'CREATE TABLE IF NOT EXISTS %I PARTITION OF driver_locations FOR VALUES FROM (%L) TO (%L)',
        partition_name, lower_bound, upper_bound);
    RETURN partition_name;
END;
$$;

-- Creates the partitions for `days` consecutive UTC days starting with the current one.
CREATE FUNCTION courier_ensure_location_partitions(days INTEGER) RETURNS SETOF TEXT
LANGUAGE sql AS $$
    SELECT courier_create_location_partition(((now() AT TIME ZONE 'UTC')::date + offset_days))
    FROM generate_series(0, GREATEST(days, 1) - 1) AS offset_days;
$$;
