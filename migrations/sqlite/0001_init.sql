-- baton schema, SQLite. Same tables and rules as migrations/postgres.

CREATE TABLE leases (
    namespace      TEXT    NOT NULL,
    key            TEXT    NOT NULL,
    token          INTEGER NOT NULL CHECK (token >= 1),
    holder         TEXT,
    acquired_at_us INTEGER NOT NULL,
    expires_at_us  INTEGER NOT NULL,
    PRIMARY KEY (namespace, key)
);

CREATE TABLE machines (
    namespace     TEXT    NOT NULL,
    kind          TEXT    NOT NULL,
    version       INTEGER NOT NULL,
    spec          TEXT    NOT NULL,
    defined_at_us INTEGER NOT NULL,
    PRIMARY KEY (namespace, kind)
);

CREATE TABLE entities (
    namespace           TEXT    NOT NULL,
    id                  TEXT    NOT NULL,
    kind                TEXT    NOT NULL,
    state               TEXT    NOT NULL,
    version             INTEGER NOT NULL,
    fields              TEXT    NOT NULL DEFAULT '{}',
    dedup_key           TEXT,
    created_at_us       INTEGER NOT NULL,
    updated_at_us       INTEGER NOT NULL,
    last_activity_at_us INTEGER NOT NULL,
    last_seq            INTEGER NOT NULL DEFAULT 0,
    final_seq           INTEGER,
    PRIMARY KEY (namespace, id)
);
CREATE UNIQUE INDEX entities_dedup ON entities (namespace, kind, dedup_key) WHERE dedup_key IS NOT NULL;
CREATE INDEX entities_by_state ON entities (namespace, kind, state, id);

CREATE TABLE events (
    namespace     TEXT    NOT NULL,
    entity_id     TEXT    NOT NULL,
    seq           INTEGER NOT NULL CHECK (seq >= 1),
    type          TEXT    NOT NULL,
    content_type  TEXT    NOT NULL DEFAULT '',
    payload       BLOB    NOT NULL,
    state         TEXT,
    created_at_us INTEGER NOT NULL,
    PRIMARY KEY (namespace, entity_id, seq)
);
CREATE UNIQUE INDEX events_one_final ON events (namespace, entity_id) WHERE type = 'final';

CREATE TABLE requests (
    namespace     TEXT    NOT NULL,
    request_id    TEXT    NOT NULL,
    method        TEXT    NOT NULL,
    outcome       TEXT    NOT NULL,
    created_at_us INTEGER NOT NULL,
    PRIMARY KEY (namespace, request_id)
);
CREATE INDEX requests_by_age ON requests (created_at_us);
