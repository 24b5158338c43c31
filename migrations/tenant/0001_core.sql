-- Tenant database, core schema. Runs as the tenant's owner role inside its own
-- database. With Citus, tables that grow with data are distributed by
-- collection_id and colocated; small shared tables are reference tables (see
-- the block at the end). Without Citus the same tables are plain tables.

-- Roles and their permission matrix: resource -> allowed actions.
CREATE TABLE roles (
    name         text PRIMARY KEY CHECK (name ~ '^[a-z][a-z0-9_-]{0,62}$'),
    description  text NOT NULL DEFAULT '',
    permissions  jsonb NOT NULL DEFAULT '{}'::jsonb,
    builtin      boolean NOT NULL DEFAULT false,
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now()
);

-- Tenant configuration: limits and feature switches. `source` says whether a
-- value is the platform default or the tenant's own choice.
CREATE TABLE config (
    key          text PRIMARY KEY,
    value        jsonb NOT NULL,
    source       text NOT NULL DEFAULT 'default' CHECK (source IN ('default', 'tenant')),
    updated_at   timestamptz NOT NULL DEFAULT now()
);

-- Which seed sets have been applied: re-seeding never re-inserts what a tenant
-- deleted or changed.
CREATE TABLE seed_history (
    name         text PRIMARY KEY,
    applied_at   timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE collections (
    id                uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    name              text NOT NULL UNIQUE CHECK (name ~ '^[A-Za-z0-9_-]{1,128}$'),
    json_schema       jsonb,
    vector_dimension  integer CHECK (vector_dimension BETWEEN 1 AND 16000),
    vector_metric     text CHECK (vector_metric IN ('cosine', 'l2', 'inner_product')),
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE documents (
    collection_id  uuid NOT NULL REFERENCES collections (id) ON DELETE CASCADE,
    id             text NOT NULL,
    data           jsonb NOT NULL,
    version        bigint NOT NULL DEFAULT 1,
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (collection_id, id)
);

-- Dimension is per collection, so the column is untyped `vector`; each
-- collection gets a partial HNSW index on its own dimension and metric.
CREATE TABLE embeddings (
    collection_id  uuid NOT NULL REFERENCES collections (id) ON DELETE CASCADE,
    id             text NOT NULL,
    embedding      vector NOT NULL,
    metadata       jsonb NOT NULL DEFAULT '{}'::jsonb,
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (collection_id, id)
);

-- Invitations: only a SHA-256 of the token is stored.
CREATE TABLE invitations (
    id           uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    email        text NOT NULL,
    role         text NOT NULL,
    token_hash   bytea NOT NULL UNIQUE CHECK (length(token_hash) = 32),
    created_by   text NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    expires_at   timestamptz NOT NULL,
    accepted_at  timestamptz,
    revoked_at   timestamptz
);
CREATE UNIQUE INDEX invitations_one_open_per_email
    ON invitations (lower(email)) WHERE accepted_at IS NULL AND revoked_at IS NULL;

-- Append-only audit trail. `dedupe_key` makes a step that may be re-run after a
-- crash record its event exactly once.
CREATE TABLE audit_events (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at           timestamptz NOT NULL DEFAULT now(),
    actor        text NOT NULL,
    action       text NOT NULL,
    target       text NOT NULL,
    outcome      text NOT NULL CHECK (outcome IN ('success', 'failure')),
    detail       jsonb NOT NULL DEFAULT '{}'::jsonb,
    dedupe_key   text UNIQUE
);
CREATE INDEX audit_events_at ON audit_events (at);

-- Transactional outbox: written in the same transaction as the change it
-- announces; a dispatcher publishes and marks rows.
CREATE TABLE outbox (
    id             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    topic          text NOT NULL,
    aggregate_id   text NOT NULL,
    payload        jsonb NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now(),
    available_at   timestamptz NOT NULL DEFAULT now(),
    dispatched_at  timestamptz,
    attempts       integer NOT NULL DEFAULT 0,
    last_error     text
);
CREATE INDEX outbox_pending ON outbox (available_at, id) WHERE dispatched_at IS NULL;

-- Idempotency keys: the first response to a (principal, key) is replayed for
-- retries carrying the same request; a different request with the key is refused.
CREATE TABLE idempotency_keys (
    scope            text NOT NULL,
    key              text NOT NULL CHECK (length(key) BETWEEN 1 AND 255),
    request_hash     bytea NOT NULL,
    status_code      smallint,
    response_headers jsonb,
    response_body    bytea,
    created_at       timestamptz NOT NULL DEFAULT now(),
    expires_at       timestamptz NOT NULL,
    PRIMARY KEY (scope, key)
);
CREATE INDEX idempotency_keys_expiry ON idempotency_keys (expires_at);

-- Citus: one code path; the calls run only where the extension is installed.
DO $citus$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'citus') THEN
        PERFORM create_reference_table('roles');
        PERFORM create_reference_table('config');
        PERFORM create_reference_table('collections');
        PERFORM create_distributed_table('documents', 'collection_id');
        PERFORM create_distributed_table('embeddings', 'collection_id', colocate_with => 'documents');
    END IF;
END
$citus$;
