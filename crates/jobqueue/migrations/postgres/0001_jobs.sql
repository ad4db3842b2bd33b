-- steadfast-jobqueue on PostgreSQL, schema version 1: the jobs table.
-- Every time column is decided by the database clock (now()).
CREATE TABLE steadfast_jobs (
    id               bigserial   PRIMARY KEY,
    kind             text        NOT NULL,
    queue            text        NOT NULL,
    codec            text        NOT NULL,
    payload          bytea       NOT NULL,
    state            text        NOT NULL CHECK (state IN
                         ('scheduled', 'available', 'running', 'retryable', 'completed', 'dead', 'cancelled')),
    priority         integer     NOT NULL DEFAULT 0,
    attempt          integer     NOT NULL DEFAULT 0,
    max_attempts     integer     NOT NULL CHECK (max_attempts >= 1),
    rescues          integer     NOT NULL DEFAULT 0,
    lease_number     bigint      NOT NULL DEFAULT 0,
    lease_owner      text,
    lease_expires_at timestamptz,
    run_at           timestamptz NOT NULL,
    created_at       timestamptz NOT NULL,
    attempted_at     timestamptz,
    finalized_at     timestamptz,
    unique_key       text,
    timeout_ms       bigint,
    backoff          text,
    errors           jsonb       NOT NULL DEFAULT '[]'
) WITH (fillfactor = 80);
-- Free room in every page lets a heartbeat (which changes no indexed
-- column) update its row in place (a HOT update), with no index writes.

-- Claims: due waiting jobs of one queue in claim order.
CREATE INDEX steadfast_jobs_due ON steadfast_jobs (queue, priority DESC, run_at, id)
    WHERE state IN ('scheduled', 'available', 'retryable');

-- The sweep finds running jobs through steadfast_jobs_state; lease_expires_at
-- is deliberately in no index, so that heartbeats stay HOT updates.

-- Listings by state, and pruning of final jobs by age.
CREATE INDEX steadfast_jobs_state ON steadfast_jobs (state, id);
CREATE INDEX steadfast_jobs_finalized ON steadfast_jobs (finalized_at)
    WHERE state IN ('completed', 'dead', 'cancelled');

-- Uniqueness: at most one active job per key, enforced by the index itself.
CREATE UNIQUE INDEX steadfast_jobs_unique ON steadfast_jobs (unique_key)
    WHERE unique_key IS NOT NULL
      AND state IN ('scheduled', 'available', 'running', 'retryable');

-- Wake-ups: one NOTIFY per inserting statement and queue, delivered at
-- commit, on a channel named after the schema so that queues in other
-- schemas of the same database are not disturbed.
CREATE FUNCTION steadfast_jobs_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('steadfast_jobs:' || TG_TABLE_SCHEMA, q.queue)
    FROM (SELECT DISTINCT queue FROM inserted WHERE run_at <= now()) AS q;
    RETURN NULL;
END
$$;

CREATE TRIGGER steadfast_jobs_notify AFTER INSERT ON steadfast_jobs
    REFERENCING NEW TABLE AS inserted
    FOR EACH STATEMENT EXECUTE FUNCTION steadfast_jobs_notify();
