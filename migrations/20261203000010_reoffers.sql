-- A driver may be offered the same order again once the re-offer window has passed
-- (`COURIER_REOFFER_AFTER`): in a quiet market every nearby driver can pass on an order while
-- busy, and with one offer per driver and order for good such an order waited for ever. The
-- unique pair goes; matching checks the window under the order's lock when it offers, and
-- this index serves that check and the candidates' exclusion.
ALTER TABLE offers DROP CONSTRAINT offers_order_driver_key;
CREATE INDEX idx_offers_order_driver ON offers (order_id, driver_id, created_at);
