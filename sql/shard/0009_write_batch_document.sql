-- write_batch takes the batch as one JSON document instead of one array per column. The
-- shard process builds the document with a single serializer call, where dumping 26
-- arrays element by element cost it more than the rest of a ping. The document is
-- [pings, states, flips], each a list of rows in the column order below. Times are epoch
-- seconds, and a ping body is base64.
DROP FUNCTION write_batch(
    uuid, uuid[], integer[], float8[], text[], smallint[], uuid[], text[], text[], text[],
    text[], bytea[], integer[], float8[], uuid[], text[], float8[], float8[], uuid[],
    float8[], integer[], uuid[], float8[], text[], text[], text[], float8[]
);

-- A batch touches a few checks, each found by its primary key. The planner cannot tell how
-- many rows a document contains and guesses 100, so it prefers a hash join over the whole
-- checks table. The SET clauses keep it on the index.
CREATE FUNCTION write_batch(owner_token uuid, batch jsonb) RETURNS void
LANGUAGE plpgsql
SET enable_hashjoin = off
SET enable_mergejoin = off
AS $$
BEGIN
    -- A process that lost the shard to another one must not write: every batch first
    -- proves that its owner token is still the stored one.
    PERFORM 1 FROM shard_owner WHERE id = 1 AND token = owner_token FOR SHARE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'another process has taken over this shard' USING ERRCODE = 'SL001';
    END IF;

    IF jsonb_array_length(batch -> 0) > 0 THEN
        INSERT INTO pings (check_id, n, created, kind, exitstatus, rid, scheme, method,
                           remote_addr, ua, body, body_size, duration_s)
        SELECT (p ->> 0)::uuid, (p ->> 1)::integer, to_timestamp((p ->> 2)::float8),
               p ->> 3, (p ->> 4)::smallint, (p ->> 5)::uuid, p ->> 6, p ->> 7, p ->> 8,
               p ->> 9, decode(p ->> 10, 'base64'), (p ->> 11)::integer,
               (p ->> 12)::float8
        FROM jsonb_array_elements(batch -> 0) AS p;
    END IF;

    IF jsonb_array_length(batch -> 1) > 0 THEN
        UPDATE checks AS c
        SET status = s ->> 1, last_ping = to_timestamp((s ->> 2)::float8),
            last_start = to_timestamp((s ->> 3)::float8), last_start_rid = (s ->> 4)::uuid,
            last_duration_s = (s ->> 5)::float8, n_pings = (s ->> 6)::integer
        FROM jsonb_array_elements(batch -> 1) AS s
        WHERE c.id = (s ->> 0)::uuid;
    END IF;

    IF jsonb_array_length(batch -> 2) > 0 THEN
        INSERT INTO flips (check_id, created, old_status, new_status, reason, hold_until)
        SELECT (f ->> 0)::uuid, to_timestamp((f ->> 1)::float8), f ->> 2, f ->> 3, f ->> 4,
               to_timestamp((f ->> 5)::float8)
        FROM jsonb_array_elements(batch -> 2) AS f;
    END IF;
END
$$;
