-- Notifications of a batch's alert events, as one function so that the shard writer can
-- store them in the same statement as the batch's pings and flips. One notification per
-- channel of each check, with the check's descriptive fields read in the same
-- transaction. The id is derived from the event and the channel, so an event queued
-- twice is stored once. Returns the number of notifications inserted.
CREATE FUNCTION insert_alerts(
    alert_check uuid[], alert_key text[], alert_kind text[], alert_time timestamptz[],
    alert_status text[], alert_reason text[], alert_time_iso text[],
    alert_last_ping_iso text[], alert_body text[], alert_truncated boolean[],
    alert_exitstatus integer[], alert_due timestamptz[]
) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    inserted integer;
BEGIN
    INSERT INTO notifications (id, check_id, event_time, channel_id, kind, payload, created,
                               due)
    SELECT md5(c.id::text || '/' || a.event_key || '/' || a.kind || '/' || ch::text)::uuid,
           c.id, a.event_time, ch, a.kind,
           jsonb_build_object(
               'check_id', c.id::text, 'name', c.name, 'slug', c.slug, 'tags', c.tags,
               'desc', c.description, 'status', a.status, 'reason', a.reason,
               'event_time', a.event_iso, 'last_ping', a.last_ping_iso, 'body', a.body,
               'body_truncated', a.truncated, 'exitstatus', a.exitstatus),
           now(), a.due
    FROM unnest(alert_check, alert_key, alert_kind, alert_time, alert_status, alert_reason,
                alert_time_iso, alert_last_ping_iso, alert_body, alert_truncated,
                alert_exitstatus, alert_due)
         AS a(check_id, event_key, kind, event_time, status, reason, event_iso,
              last_ping_iso, body, truncated, exitstatus, due)
    JOIN checks AS c ON c.id = a.check_id
    CROSS JOIN LATERAL unnest(c.channels) AS ch
    ON CONFLICT (id) DO NOTHING;
    GET DIAGNOSTICS inserted = ROW_COUNT;
    RETURN inserted;
END
$$;
