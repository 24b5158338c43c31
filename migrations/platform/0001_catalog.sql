-- The platform catalog: the realised state the data plane needs, written by the
-- operator. Everything lives in schema `catalog` so it never collides with a
-- tenant schema, even when both are loaded into one scratch database to check
-- queries at compile time.
CREATE SCHEMA IF NOT EXISTS catalog;

CREATE TABLE catalog.tenants (
    -- The Tenant resource's UID: stable for the object's life, never reused.
    id              uuid PRIMARY KEY,
    -- Tenant slug (metadata.name); unique among tenants that are not detached.
    name            text NOT NULL CHECK (name ~ '^[a-z0-9]([-a-z0-9]*[a-z0-9])?$'),
    namespace       text NOT NULL,
    display_name    text NOT NULL,
    -- Which database cluster holds the tenant ('default' or a Secret reference).
    cluster         text NOT NULL,
    -- Where the tenant's data lives: database (and, later, schema) on the cluster.
    placement       text NOT NULL DEFAULT 'database' CHECK (placement IN ('database')),
    database_name   text NOT NULL UNIQUE,
    owner_role      text NOT NULL UNIQUE,
    state           text NOT NULL CHECK (state IN ('provisioning', 'ready', 'suspended', 'failed', 'detached', 'deleting')),
    quotas          jsonb NOT NULL DEFAULT '{}'::jsonb,
    schema_version  bigint,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    detached_at     timestamptz
);

CREATE UNIQUE INDEX tenants_name_active ON catalog.tenants (name) WHERE state <> 'detached';
