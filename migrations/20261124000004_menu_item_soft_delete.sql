-- Menu items are soft-deleted: past orders keep referencing them (order_items.menu_item_id),
-- so a deleted item is hidden from menus and refused in new orders but its row stays.
ALTER TABLE menu_items ADD COLUMN deleted_at TIMESTAMPTZ;
CREATE INDEX idx_menu_items_restaurant_live ON menu_items (restaurant_id) WHERE deleted_at IS NULL;
