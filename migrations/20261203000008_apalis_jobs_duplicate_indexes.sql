-- apalis-postgres 1.0 leaves two pairs of identical indexes on apalis.jobs: a unique index on
-- `id` beside the primary key, and `lidx` beside `idx_apalis_jobs_lock_by`. Every job row is
-- updated twice after its insert (claimed, then done), and a status change is never a HOT
-- update, so each duplicate costs an index insertion per update for nothing. The primary key
-- and `idx_apalis_jobs_lock_by` stay. Runs after apalis's own migrations (see store::migrate).
DROP INDEX IF EXISTS apalis.unique_job_id;
DROP INDEX IF EXISTS apalis.lidx;
