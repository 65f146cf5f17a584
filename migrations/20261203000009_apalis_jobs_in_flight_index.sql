-- no-transaction
-- Every worker looks for the jobs of dead workers on each heartbeat (apalis's rescue), and
-- housekeeping looks for jobs stuck in `Running`. The only index that helps either is
-- `idx_apalis_jobs_lock_by`, on every row a worker ever claimed: `lock_by` stays set on `Done`
-- rows, and the registry keeps every worker that ever ran, so each heartbeat read the whole
-- retained history of the queue's dead workers (168 ms per heartbeat on the job benchmark's
-- table, stalling that worker's claims meanwhile). This index holds only the jobs in flight.
-- Built concurrently so a large `apalis.jobs` keeps taking writes; if the build fails, drop
-- the invalid index and migrate again.
CREATE INDEX CONCURRENTLY IF NOT EXISTS idx_courier_jobs_in_flight
    ON apalis.jobs (lock_by) WHERE status IN ('Running', 'Queued');
