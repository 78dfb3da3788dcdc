-- name: OrgEventInsert :one
-- A second copy of an event (the same id), or one of an organisation that
-- no longer exists (deleted while its records were in flight), inserts
-- nothing and returns no row.
INSERT INTO org_events (id, org_id, fleet_id, order_key, type, source, subject, time, data)
SELECT @id, @org_id, sqlc.narg(fleet_id)::uuid, @order_key, @type, @source, @subject, @time, @data
WHERE EXISTS (SELECT 1 FROM orgs WHERE orgs.id = @org_id)
ON CONFLICT (id) DO NOTHING
RETURNING seq;

-- name: EventFanOut :execrows
-- One delivery for every enabled endpoint of the organisation that takes
-- the event's type and fleet. Only the head of an order key is ever due:
-- a delivery behind another pending one waits (infinity) until that one
-- is done and promotes it (DeliveriesPromoteNext), so the claim's index
-- range holds only deliveries it may send. The pending deliveries ahead
-- are locked FOR SHARE: a completion racing this insert either commits
-- first (this sees nothing pending: due now) or waits for this commit and
-- then promotes what it inserted.
WITH eps AS (
  SELECT e.id FROM event_endpoints e
  WHERE e.org_id = @org_id AND e.enabled
    AND (cardinality(e.types) = 0 OR @type::text = ANY (e.types))
    AND (e.fleet_id IS NULL OR e.fleet_id = sqlc.narg(fleet_id)::uuid)
), ahead AS (
  SELECT p.endpoint_id FROM event_deliveries p
  WHERE @order_key::text <> '' AND p.endpoint_id IN (SELECT id FROM eps) AND p.order_key = @order_key::text AND p.status = 'pending'
  FOR SHARE OF p
)
INSERT INTO event_deliveries (id, endpoint_id, event_seq, order_key, next_attempt_at)
SELECT gen_random_uuid(), eps.id, @seq, @order_key::text,
  CASE WHEN eps.id IN (SELECT endpoint_id FROM ahead) THEN 'infinity'::timestamptz ELSE now() END
FROM eps
ON CONFLICT (endpoint_id, event_seq) DO NOTHING;

-- name: DeliveriesClaim :many
-- Leases due deliveries to holder, fairly across endpoints: each endpoint
-- with due deliveries offers only its oldest few (an index probe each),
-- and may have at most per_endpoint in flight (counting those already
-- leased), or one while its last attempt failed (a circuit breaker: a dead
-- endpoint keeps one worker probing and its backlog never crowds out the
-- others'). Deliveries behind another of their order key are not due
-- (EventFanOut), so order holds without looking. The locking step re-checks the lease, so two
-- replicas never lease one delivery.
WITH eps AS (
  SELECT e.id, e.failing_since IS NOT NULL AS failing FROM event_endpoints e
  WHERE e.enabled AND EXISTS (
    SELECT 1 FROM event_deliveries x
    WHERE x.endpoint_id = e.id AND x.status = 'pending' AND x.next_attempt_at <= now())
), busy AS (
  SELECT b.endpoint_id, count(*) AS n FROM event_deliveries b
  WHERE b.status = 'pending' AND b.leased_by IS NOT NULL AND b.lease_until > now()
    AND b.endpoint_id IN (SELECT id FROM eps)
  GROUP BY b.endpoint_id
), due AS (
  SELECT d.id, d.endpoint_id, d.order_key, d.event_seq, d.next_attempt_at, eps.failing
  FROM eps CROSS JOIN LATERAL (
    SELECT dd.id, dd.endpoint_id, dd.order_key, dd.event_seq, dd.next_attempt_at FROM event_deliveries dd
    WHERE dd.endpoint_id = eps.id AND dd.status = 'pending' AND dd.next_attempt_at <= now()
      AND (dd.lease_until IS NULL OR dd.lease_until <= now())
    ORDER BY dd.next_attempt_at, dd.event_seq
    LIMIT @scan_per_endpoint::int
  ) d
), cand AS (
  SELECT x.id FROM (
    SELECT d.id, d.endpoint_id, d.next_attempt_at, d.event_seq, d.failing,
           row_number() OVER (PARTITION BY d.endpoint_id ORDER BY d.next_attempt_at, d.event_seq) AS rn
    FROM due d
  ) x LEFT JOIN busy b ON b.endpoint_id = x.endpoint_id
  WHERE x.rn + coalesce(b.n, 0) <= CASE WHEN x.failing THEN 1 ELSE @per_endpoint::bigint END
  ORDER BY x.next_attempt_at, x.event_seq
  LIMIT @max_rows
), locked AS (
  SELECT d.id FROM event_deliveries d JOIN cand ON cand.id = d.id
  WHERE d.status = 'pending' AND (d.lease_until IS NULL OR d.lease_until <= now())
  FOR UPDATE OF d SKIP LOCKED
)
UPDATE event_deliveries d
SET lease_until = now() + make_interval(secs => @lease_seconds::double precision), leased_by = @holder::text
FROM locked WHERE d.id = locked.id
RETURNING d.*;

-- name: DeliveriesSucceeded :many
-- Successful attempts, many in one statement (the common case; the
-- gateway writes what finished while the last write ran): the deliveries
-- done, the attempts logged, the endpoints' failure records cleared. It
-- returns those it wrote. A delivery another transaction holds locked (a
-- fan-out's FOR SHARE of the pending rows ahead of its event) is skipped,
-- not waited for: waiting while holding the batch's other rows could
-- deadlock with that fan-out, which locks in its events' order. The
-- caller writes the skipped ones with DeliverySucceeded, one at a time.
-- The next of each order key is promoted by a statement after it
-- (DeliveriesPromoteNext), which sees an insert that raced this one.
WITH input AS (
  -- Set-returning functions in one select list advance together.
  SELECT unnest(@ids::uuid[]) AS id, unnest(@attempt_ids::uuid[]) AS attempt_id, unnest(@ats::timestamptz[]) AS at,
         unnest(@status_codes::int[]) AS status_code, unnest(@durations_ms::int[]) AS duration_ms, unnest(@responses::text[]) AS response
), free AS (
  SELECT ed.id FROM event_deliveries ed
  WHERE ed.id IN (SELECT input.id FROM input) AND ed.leased_by = @holder::text
  FOR UPDATE OF ed SKIP LOCKED
), done AS (
  UPDATE event_deliveries ed
  SET status = 'succeeded', attempts = ed.attempts + 1, lease_until = NULL, leased_by = NULL,
      last_status = nullif(input.status_code, 0), last_error = '', updated_at = now()
  FROM input
  WHERE ed.id = input.id AND ed.id IN (SELECT free.id FROM free)
  RETURNING ed.id, ed.endpoint_id, ed.order_key, ed.event_seq
), logged AS (
  INSERT INTO event_delivery_attempts (id, delivery_id, endpoint_id, at, status_code, duration_ms, response, error, succeeded)
  SELECT input.attempt_id, done.id, done.endpoint_id, input.at, nullif(input.status_code, 0), input.duration_ms, input.response, '', true
  FROM done JOIN input ON input.id = done.id
), cleared AS (
  -- In id order, so two replicas' writes never wait on each other in a cycle.
  UPDATE event_endpoints ee SET failing_since = NULL
  WHERE ee.id IN (SELECT e.id FROM event_endpoints e
                  WHERE e.id IN (SELECT endpoint_id FROM done) AND e.failing_since IS NOT NULL
                  ORDER BY e.id FOR UPDATE)
)
SELECT done.id, done.endpoint_id, done.order_key, done.event_seq FROM done;

-- name: DeliverySucceeded :one
-- One successful attempt (DeliveriesSucceeded skipped it: locked by a
-- fan-out, which this waits for). No row: the lease lapsed.
WITH done AS (
  UPDATE event_deliveries ed
  SET status = 'succeeded', attempts = ed.attempts + 1, lease_until = NULL, leased_by = NULL,
      last_status = sqlc.narg(status_code)::int, last_error = '', updated_at = now()
  WHERE ed.id = @id::uuid AND ed.leased_by = @holder::text
  RETURNING ed.id, ed.endpoint_id, ed.order_key, ed.event_seq
), logged AS (
  INSERT INTO event_delivery_attempts (id, delivery_id, endpoint_id, at, status_code, duration_ms, response, error, succeeded)
  SELECT @attempt_id::uuid, done.id, done.endpoint_id, @at::timestamptz, sqlc.narg(status_code)::int, @duration_ms::int, @response::text, '', true FROM done
), cleared AS (
  UPDATE event_endpoints ee SET failing_since = NULL
  WHERE ee.id IN (SELECT endpoint_id FROM done) AND ee.failing_since IS NOT NULL
)
SELECT done.id, done.endpoint_id, done.order_key, done.event_seq FROM done;

-- name: DeliveriesPromoteNext :many
-- Deliveries done (or given up) make the next of each of their order keys
-- due. A next delivery another transaction holds locked (a fan-out's FOR SHARE) is skipped, not waited for, as in
-- DeliveriesSucceeded; it comes back with promoted false and the caller
-- promotes it with DeliveryPromote.
WITH i AS (
  SELECT unnest(@endpoint_ids::uuid[]) AS endpoint_id, unnest(@order_keys::text[]) AS order_key,
         unnest(@event_seqs::bigint[]) AS event_seq
), target AS (
  SELECT n.id FROM i CROSS JOIN LATERAL (
    SELECT x.id FROM event_deliveries x
    WHERE x.endpoint_id = i.endpoint_id AND x.order_key = i.order_key AND i.order_key <> ''
      AND x.status = 'pending' AND x.event_seq > i.event_seq
    ORDER BY x.event_seq LIMIT 1) n
), free AS (
  SELECT d.id FROM event_deliveries d
  WHERE d.id IN (SELECT target.id FROM target) AND d.next_attempt_at = 'infinity'
  FOR UPDATE OF d SKIP LOCKED
), promoted AS (
  UPDATE event_deliveries d SET next_attempt_at = now()
  WHERE d.id IN (SELECT free.id FROM free)
  RETURNING d.id
)
SELECT target.id, (target.id IN (SELECT promoted.id FROM promoted))::bool AS promoted FROM target;

-- name: DeliveryPromote :execrows
UPDATE event_deliveries SET next_attempt_at = now() WHERE id = @id AND status = 'pending' AND next_attempt_at = 'infinity';

-- name: OrgEventsBySeq :many
SELECT * FROM org_events WHERE seq = ANY (@seqs::bigint[]);

-- name: EventEndpointsByID :many
SELECT * FROM event_endpoints WHERE id = ANY (@ids::uuid[]);

-- name: DeliveryDone :execrows
-- The outcome of an attempt by the lease's holder: succeeded, failed (the
-- schedule is spent), or pending again at next_attempt_at.
UPDATE event_deliveries
SET status = @status, attempts = attempts + 1, next_attempt_at = @next_attempt_at, lease_until = NULL, leased_by = NULL,
    last_status = sqlc.narg(last_status), last_error = @last_error
WHERE id = @id AND leased_by = @holder::text;

-- name: AttemptInsert :exec
INSERT INTO event_delivery_attempts (id, delivery_id, endpoint_id, status_code, duration_ms, response, error, succeeded)
VALUES (@id, @delivery_id, @endpoint_id, sqlc.narg(status_code), @duration_ms, @response, @error, @succeeded);

-- name: EndpointFailing :one
-- Marks the start of a run of failures (kept while it lasts).
UPDATE event_endpoints SET failing_since = coalesce(failing_since, now()) WHERE id = @id
RETURNING failing_since, enabled, org_id, name;

-- name: EndpointDisable :execrows
UPDATE event_endpoints SET enabled = false, disabled_reason = @reason, disabled_at = now() WHERE id = @id AND enabled;

-- name: EventEndpointCreate :one
INSERT INTO event_endpoints (id, org_id, name, kind, url, kafka, kafka_password, types, fleet_id, secret, enabled)
VALUES (@id, @org_id, @name, @kind, @url, @kafka, @kafka_password, @types, sqlc.narg(fleet_id)::uuid, @secret, @enabled)
RETURNING *;

-- name: EventEndpointGet :one
SELECT * FROM event_endpoints WHERE id = @id;

-- name: EventEndpointForUpdate :one
SELECT * FROM event_endpoints WHERE id = @id FOR UPDATE;

-- name: EventEndpointList :many
SELECT * FROM event_endpoints
WHERE org_id = @org_id
  AND (sqlc.narg(after_time)::timestamptz IS NULL OR (created_at, id) > (sqlc.narg(after_time), sqlc.narg(after_id)::uuid))
ORDER BY created_at, id
LIMIT @max_rows;

-- name: EventEndpointUpdate :one
UPDATE event_endpoints
SET name = @name, url = @url, kafka = @kafka, kafka_password = @kafka_password, types = @types, fleet_id = sqlc.narg(fleet_id)::uuid,
    enabled = @enabled, disabled_reason = @disabled_reason, disabled_at = sqlc.narg(disabled_at), failing_since = sqlc.narg(failing_since),
    secret = @secret, previous_secret = @previous_secret, previous_expires_at = sqlc.narg(previous_expires_at)
WHERE id = @id
RETURNING *;

-- name: EventEndpointDelete :execrows
DELETE FROM event_endpoints WHERE id = @id;

-- name: EventEndpointAccess :one
SELECT e.org_id, m.role FROM event_endpoints e
LEFT JOIN memberships m ON m.org_id = e.org_id AND m.user_id = @user_id
WHERE e.id = @id;

-- name: AttemptList :many
-- The delivery log of an endpoint, newest first.
SELECT a.*, d.event_seq, d.status AS delivery_status, d.attempts AS delivery_attempts, ev.id AS event_id, ev.type AS event_type
FROM event_delivery_attempts a
JOIN event_deliveries d ON d.id = a.delivery_id
JOIN org_events ev ON ev.seq = d.event_seq
WHERE a.endpoint_id = @endpoint_id
  AND (sqlc.narg(before_time)::timestamptz IS NULL OR (a.at, a.id) < (sqlc.narg(before_time), sqlc.narg(before_id)::uuid))
ORDER BY a.at DESC, a.id DESC
LIMIT @max_rows;

-- name: DeliveryReplay :execrows
UPDATE event_deliveries
SET status = 'pending', next_attempt_at = now(), attempts = 0, lease_until = NULL, leased_by = NULL
WHERE id = @id AND endpoint_id = @endpoint_id;

-- name: EndpointReplaySince :execrows
-- Queues again every event since a time that the endpoint takes, whether
-- or not it was delivered, keeping each order key's order: its first
-- replayed event is due (unless one of its deliveries is pending still),
-- the rest follow it one by one.
INSERT INTO event_deliveries (id, endpoint_id, event_seq, order_key, next_attempt_at)
SELECT gen_random_uuid(), r.endpoint_id, r.seq, r.order_key,
  CASE WHEN r.order_key = '' OR (r.rn = 1 AND NOT EXISTS (
         SELECT 1 FROM event_deliveries p
         WHERE p.endpoint_id = r.endpoint_id AND p.order_key = r.order_key AND p.status = 'pending' AND p.event_seq < r.seq))
       THEN now() ELSE 'infinity'::timestamptz END
FROM (
  SELECT e.id AS endpoint_id, ev.seq, ev.order_key,
         row_number() OVER (PARTITION BY ev.order_key ORDER BY ev.seq) AS rn
  FROM event_endpoints e
  JOIN org_events ev ON ev.org_id = e.org_id
  WHERE e.id = @endpoint_id AND ev.time >= @since
    AND (cardinality(e.types) = 0 OR ev.type = ANY (e.types))
    AND (e.fleet_id IS NULL OR e.fleet_id = ev.fleet_id)
) r
ON CONFLICT (endpoint_id, event_seq) DO UPDATE
SET status = 'pending', next_attempt_at = EXCLUDED.next_attempt_at, attempts = 0, lease_until = NULL, leased_by = NULL;

-- name: OrgEventsAfter :many
-- The feed: the organisation's events after a sequence, in order.
SELECT * FROM org_events
WHERE org_id = @org_id AND seq > @after
  AND (cardinality(@types::text[]) = 0 OR type = ANY (@types::text[]))
ORDER BY seq
LIMIT @max_rows;

-- name: OrgEventsLast :one
SELECT coalesce(max(seq), 0)::bigint FROM org_events WHERE org_id = @org_id;

-- name: OrgEventsPrune :execrows
DELETE FROM org_events WHERE seq IN (SELECT o.seq FROM org_events o WHERE o.created_at < @before::timestamptz LIMIT 10000);

-- name: EventDevKeyInit :exec
INSERT INTO event_dev_key (key) VALUES (@key) ON CONFLICT DO NOTHING;

-- name: EventDevKey :one
SELECT key FROM event_dev_key;

-- name: DeliveryInsertLeased :one
-- A delivery made and attempted at once (event-endpoint:test).
INSERT INTO event_deliveries (id, endpoint_id, event_seq, lease_until, leased_by)
VALUES (@id, @endpoint_id, @event_seq, now() + interval '1 minute', @holder::text)
RETURNING *;

-- name: DeliveriesNextDue :one
-- When the next pending delivery comes due (null when none), so the
-- dispatcher sleeps no longer than that.
SELECT coalesce(min(d.next_attempt_at), now() + interval '1 hour')::timestamptz AS due FROM event_deliveries d
JOIN event_endpoints e ON e.id = d.endpoint_id AND e.enabled
WHERE d.status = 'pending' AND d.lease_until IS NULL AND d.next_attempt_at < 'infinity';

-- name: DeliveriesUnblock :execrows
-- The safety net of promotion (a promotion that failed after its success
-- committed): blocked deliveries with nothing pending ahead become due.
UPDATE event_deliveries d SET next_attempt_at = now()
WHERE d.id IN (
  SELECT b.id FROM event_deliveries b
  WHERE b.status = 'pending' AND b.next_attempt_at = 'infinity' AND b.created_at < now() - interval '10 seconds'
    AND NOT EXISTS (SELECT 1 FROM event_deliveries p
                    WHERE p.endpoint_id = b.endpoint_id AND p.order_key = b.order_key
                      AND p.status = 'pending' AND p.event_seq < b.event_seq)
  LIMIT 1000);
