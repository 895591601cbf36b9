-- A flip whose deadline passed while the monitor itself was not running is recorded with
-- its true time, but its alert waits until hold_until: a check that pings again within
-- the start-up quiet period never alerts for that outage of ours.
ALTER TABLE flips ADD COLUMN hold_until timestamptz;
