-- steadfast-jobqueue on PostgreSQL, schema version 2: durable periodic jobs.
-- One row per (schedule name, time slot): the primary key is what makes
-- many workers insert a slot's job exactly once.
CREATE TABLE steadfast_periodic_slots (
    name        text        NOT NULL,
    slot        timestamptz NOT NULL,
    job_id      bigint,
    inserted_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (name, slot)
);
