-- At most one pending offer per driver. Matching rounds for different orders run at once; each
-- takes the driver's row lock before offering, and this index holds the rule whatever the code
-- does. Should duplicates exist from before, the newest pending offer of each driver stays and
-- the others are cancelled; their orders have no pending offer and no round scheduled, which
-- the stuck_orders cron revives on its next tick.
UPDATE offers SET status = 'cancelled', responded_at = now()
WHERE status = 'pending'
  AND id NOT IN (SELECT max(id) FROM offers WHERE status = 'pending' GROUP BY driver_id);

DROP INDEX idx_offers_driver_pending;
CREATE UNIQUE INDEX offers_one_pending_per_driver ON offers (driver_id) WHERE status = 'pending';
