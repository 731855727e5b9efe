-- baton schema, Postgres. Times are microseconds since the Unix epoch (database time).

-- One row per key, kept forever: `token` is the key's fencing-token counter (I2), so
-- release and expiry clear `holder` but never the row.
CREATE TABLE leases (
    namespace      TEXT   NOT NULL,
    key            TEXT   NOT NULL,
    token          BIGINT NOT NULL CHECK (token >= 1),
    holder         TEXT,
    acquired_at_us BIGINT NOT NULL,
    expires_at_us  BIGINT NOT NULL,
    PRIMARY KEY (namespace, key)
);

CREATE TABLE machines (
    namespace     TEXT   NOT NULL,
    kind          TEXT   NOT NULL,
    version       BIGINT NOT NULL,
    spec          TEXT   NOT NULL, -- JSON MachineSpec
    defined_at_us BIGINT NOT NULL,
    PRIMARY KEY (namespace, kind)
);

CREATE TABLE entities (
    namespace           TEXT   NOT NULL,
    id                  TEXT   NOT NULL,
    kind                TEXT   NOT NULL,
    state               TEXT   NOT NULL,
    version             BIGINT NOT NULL,
    fields              TEXT   NOT NULL DEFAULT '{}', -- JSON object of strings
    dedup_key           TEXT,
    created_at_us       BIGINT NOT NULL,
    updated_at_us       BIGINT NOT NULL,
    last_activity_at_us BIGINT NOT NULL,
    last_seq            BIGINT NOT NULL DEFAULT 0,
    final_seq           BIGINT,
    PRIMARY KEY (namespace, id)
);
-- I9: the guarantee behind dedup (the advisory lock only orders the callers).
CREATE UNIQUE INDEX entities_dedup ON entities (namespace, kind, dedup_key) WHERE dedup_key IS NOT NULL;
CREATE INDEX entities_by_state ON entities (namespace, kind, state, id);

CREATE TABLE events (
    namespace     TEXT   NOT NULL,
    entity_id     TEXT   NOT NULL,
    seq           BIGINT NOT NULL CHECK (seq >= 1),
    type          TEXT   NOT NULL,
    content_type  TEXT   NOT NULL DEFAULT '',
    payload       BYTEA  NOT NULL,
    state         TEXT,
    created_at_us BIGINT NOT NULL,
    PRIMARY KEY (namespace, entity_id, seq)            -- I6: an event is stored at most once
);
-- I7, backed by the database: at most one `final` per tape.
CREATE UNIQUE INDEX events_one_final ON events (namespace, entity_id) WHERE type = 'final';

-- I10: first outcomes of mutating calls, by request id.
CREATE TABLE requests (
    namespace     TEXT   NOT NULL,
    request_id    TEXT   NOT NULL,
    method        TEXT   NOT NULL,
    outcome       TEXT   NOT NULL, -- JSON
    created_at_us BIGINT NOT NULL,
    PRIMARY KEY (namespace, request_id)
);
CREATE INDEX requests_by_age ON requests (created_at_us);

-- Database time in microseconds, shifted by a skew that tests use instead of sleeping.
CREATE FUNCTION baton_now_us(skew_us BIGINT) RETURNS BIGINT
LANGUAGE sql VOLATILE AS $$
    SELECT (extract(epoch FROM clock_timestamp()) * 1000000)::BIGINT + skew_us
$$;

-- The first statement of every write transaction: serialize writers of one key across
-- replicas, then read the clock, in one round trip (the clock is read after the wait).
CREATE FUNCTION baton_lock_now(lock_key BIGINT, skew_us BIGINT) RETURNS BIGINT
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    PERFORM pg_advisory_xact_lock(lock_key);
    RETURN baton_now_us(skew_us);
END
$$;
