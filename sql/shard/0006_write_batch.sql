-- The shard process commits most batches with this one statement: the owner check, the
-- pings, the flips and the new state of every touched check. One statement is one round
-- trip and, outside an explicit transaction, its own transaction, which costs far less
-- per batch than a statement each. Times arrive as epoch seconds.
CREATE FUNCTION write_batch(
    owner_token uuid,
    ping_check uuid[], ping_n integer[], ping_created float8[], ping_kind text[],
    ping_exitstatus smallint[], ping_rid uuid[], ping_scheme text[], ping_method text[],
    ping_remote_addr text[], ping_ua text[], ping_body bytea[], ping_body_size integer[],
    ping_duration float8[],
    state_id uuid[], state_status text[], state_last_ping float8[], state_last_start float8[],
    state_last_start_rid uuid[], state_last_duration float8[], state_n_pings integer[],
    flip_check uuid[], flip_created float8[], flip_old text[], flip_new text[],
    flip_reason text[], flip_hold float8[]
) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    -- A process that lost the shard to another one must not write: every batch first
    -- proves that its owner token is still the stored one.
    PERFORM 1 FROM shard_owner WHERE id = 1 AND token = owner_token FOR SHARE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'another process has taken over this shard' USING ERRCODE = 'SL001';
    END IF;

    IF cardinality(ping_check) > 0 THEN
        INSERT INTO pings (check_id, n, created, kind, exitstatus, rid, scheme, method,
                           remote_addr, ua, body, body_size, duration_s)
        SELECT p.check_id, p.n, to_timestamp(p.created), p.kind, p.exitstatus, p.rid,
               p.scheme, p.method, p.remote_addr, p.ua, p.body, p.body_size, p.duration
        FROM unnest(ping_check, ping_n, ping_created, ping_kind, ping_exitstatus, ping_rid,
                    ping_scheme, ping_method, ping_remote_addr, ping_ua, ping_body,
                    ping_body_size, ping_duration)
             AS p(check_id, n, created, kind, exitstatus, rid, scheme, method, remote_addr,
                  ua, body, body_size, duration);
    END IF;

    IF cardinality(state_id) > 0 THEN
        UPDATE checks AS c
        SET status = s.status, last_ping = to_timestamp(s.last_ping),
            last_start = to_timestamp(s.last_start), last_start_rid = s.last_start_rid,
            last_duration_s = s.last_duration, n_pings = s.n_pings
        FROM unnest(state_id, state_status, state_last_ping, state_last_start,
                    state_last_start_rid, state_last_duration, state_n_pings)
             AS s(id, status, last_ping, last_start, last_start_rid, last_duration, n_pings)
        WHERE c.id = s.id;
    END IF;

    IF cardinality(flip_check) > 0 THEN
        INSERT INTO flips (check_id, created, old_status, new_status, reason, hold_until)
        SELECT f.check_id, to_timestamp(f.created), f.old_status, f.new_status, f.reason,
               to_timestamp(f.hold)
        FROM unnest(flip_check, flip_created, flip_old, flip_new, flip_reason, flip_hold)
             AS f(check_id, created, old_status, new_status, reason, hold);
    END IF;
END
$$;
