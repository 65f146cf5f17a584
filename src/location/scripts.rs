//! The Lua scripts that make each location operation one atomic round trip to Valkey.
//!
//! Every script touches only keys of one market (they share a `{…}` hash tag), so the same
//! scripts run unchanged on Valkey Cluster.

/// Ingest one report.
///
/// KEYS: 1 driver hash, 2 seen zset, 3 available geo set, 4 online set, 5 load hash,
///       6 tracking hash.
/// ARGV: 1 driver id, 2 lat, 3 lon, 4 recorded_at ms, 5 now ms, 6 hash TTL ms,
///       7 live-tracking channel prefix.
/// Returns 0 when the report is older than the last one (ignored), 1 when accepted and the
/// driver is searchable, 2 when accepted but not searchable (offline or fully loaded).
pub const INGEST: &str = r#"
local last = tonumber(redis.call('HGET', KEYS[1], 'recorded_at'))
if last and last > tonumber(ARGV[4]) then
  return 0
end
redis.call('HSET', KEYS[1], 'lat', ARGV[2], 'lon', ARGV[3], 'recorded_at', ARGV[4], 'updated_at', ARGV[5])
redis.call('PEXPIRE', KEYS[1], ARGV[6])
redis.call('ZADD', KEYS[2], ARGV[5], ARGV[1])
local online = redis.call('SISMEMBER', KEYS[4], ARGV[1]) == 1
local load = tonumber(redis.call('HGET', KEYS[5], ARGV[1]) or '0')
local result = 2
if online and load < 2 then
  redis.call('GEOADD', KEYS[3], ARGV[3], ARGV[2], ARGV[1])
  result = 1
else
  redis.call('ZREM', KEYS[3], ARGV[1])
end
local order = redis.call('HGET', KEYS[6], ARGV[1])
if order then
  redis.call('PUBLISH', ARGV[7] .. order .. ':location',
    '{"driverId":' .. ARGV[1] .. ',"orderId":' .. order .. ',"lat":' .. ARGV[2] ..
    ',"lon":' .. ARGV[3] .. ',"timestamp":' .. ARGV[4] .. '}')
end
return result
"#;

/// Set a driver online or offline.
///
/// KEYS: 1 online set, 2 available geo set, 3 driver hash, 4 load hash.
/// ARGV: 1 driver id, 2 '1' for online / '0' for offline, 3 freshness cutoff ms.
/// Returns 1 when the driver is now searchable, else 0.
pub const SET_STATUS: &str = r"
if ARGV[2] == '0' then
  redis.call('SREM', KEYS[1], ARGV[1])
  redis.call('ZREM', KEYS[2], ARGV[1])
  return 0
end
redis.call('SADD', KEYS[1], ARGV[1])
local position = redis.call('HMGET', KEYS[3], 'lat', 'lon', 'updated_at')
local load = tonumber(redis.call('HGET', KEYS[4], ARGV[1]) or '0')
if position[1] and tonumber(position[3]) >= tonumber(ARGV[3]) and load < 2 then
  redis.call('GEOADD', KEYS[2], position[2], position[1], ARGV[1])
  return 1
end
return 0
";

/// Remove drivers not seen since a cutoff from the searchable structures.
///
/// KEYS: 1 seen zset, 2 available geo set. ARGV: 1 cutoff ms, 2 batch size.
/// Returns how many drivers were removed (at most the batch size).
pub const SWEEP: &str = r"
local stale = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
if #stale > 0 then
  redis.call('ZREM', KEYS[2], unpack(stale))
  redis.call('ZREM', KEYS[1], unpack(stale))
end
return #stale
";

/// Available drivers within a radius, nearest first.
///
/// KEYS: 1 available geo set, 2 seen zset, 3 load hash.
/// ARGV: 1 lon, 2 lat, 3 radius km, 4 how many to return, 5 freshness cutoff ms.
/// Returns a flat list: id, distance km, lon, lat, active orders — for each driver that is
/// fresh and has fewer than 2 active orders.
pub const NEARBY: &str = r"
local want = tonumber(ARGV[4])
local found = redis.call('GEOSEARCH', KEYS[1], 'FROMLONLAT', ARGV[1], ARGV[2], 'BYRADIUS', ARGV[3], 'km',
  'ASC', 'COUNT', want + 8, 'WITHDIST', 'WITHCOORD')
local cutoff = tonumber(ARGV[5])
local out = {}
if #found == 0 then
  return out
end
-- One ZMSCORE and one HMGET for all candidates, not two calls per candidate.
local ids = {}
for i, row in ipairs(found) do
  ids[i] = row[1]
end
local seen = redis.call('ZMSCORE', KEYS[2], unpack(ids))
local loads = redis.call('HMGET', KEYS[3], unpack(ids))
local n = 0
for i, row in ipairs(found) do
  if n >= want then break end
  local load = tonumber(loads[i] or '0')
  if tonumber(seen[i] or '0') >= cutoff and load < 2 then
    table.insert(out, row[1])
    table.insert(out, row[2])
    table.insert(out, row[3][1])
    table.insert(out, row[3][2])
    table.insert(out, tostring(load))
    n = n + 1
  end
end
return out
";
