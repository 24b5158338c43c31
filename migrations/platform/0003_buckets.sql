-- Buckets (issue 9): the realised state of each Bucket resource, written by
-- the operator, read by the data plane (rules) — the data plane never reads
-- the Kubernetes API. Object metadata and usage live in the tenant database;
-- only the rules and the backend location live here.
CREATE TABLE catalog.buckets (
    -- The Bucket resource's UID: part of every backend location, never reused.
    id                  uuid PRIMARY KEY,
    tenant_id           uuid NOT NULL REFERENCES catalog.tenants (id) ON DELETE CASCADE,
    -- The name clients use in paths (spec.name, S3 naming rules).
    name                text NOT NULL CHECK (name ~ '^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$'),
    namespace           text NOT NULL,
    -- Prefix of every blob of this bucket in the backend: t/<tenant>/b/<bucket>.
    backend_prefix      text NOT NULL UNIQUE,
    public              boolean NOT NULL DEFAULT false,
    quota_bytes         bigint CHECK (quota_bytes >= 0),
    quota_objects       bigint CHECK (quota_objects >= 0),
    max_object_size     bigint CHECK (max_object_size >= 1),
    -- `type/subtype`, `type/*` or `*/*`; empty accepts every type.
    allowed_content_types text[] NOT NULL DEFAULT '{}',
    -- [{"prefix": "...", "expireAfterDays": n, "abortIncompleteMultipartUploadAfterDays": n}]
    lifecycle           jsonb NOT NULL DEFAULT '[]'::jsonb,
    compression         boolean NOT NULL DEFAULT false,
    image_transforms    boolean NOT NULL DEFAULT false,
    antivirus_scan      boolean NOT NULL DEFAULT false,
    -- 'ready' serves; 'deleting' refuses writes while the operator empties it.
    state               text NOT NULL CHECK (state IN ('ready', 'deleting')),
    generation          bigint NOT NULL DEFAULT 0,
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now()
);

CREATE UNIQUE INDEX buckets_tenant_name ON catalog.buckets (tenant_id, name);
