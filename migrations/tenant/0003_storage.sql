-- The storage API's metadata (issue 9). Object bytes live in the backend
-- (S3 or the filesystem) under ids; names, sizes, checksums, usage and
-- reservations live here, so the row that makes an upload visible, the
-- usage it adds and its outbox row commit in one transaction.
--
-- Every table carries `bucket_id` (the Bucket resource's UID, as in
-- catalog.buckets) and, on Citus, is distributed by it and colocated with
-- `objects`, so a request naming one bucket routes to one shard. The
-- tenant-wide usage row is the `bucket_usage` row of the nil UUID.
--
-- Every statement is EXECUTEd on its own (see migrations/README.md).
DO $migration$
BEGIN
    -- One row per live object: the latest version of a key. `blobs` lists
    -- the backend blobs that hold its bytes, in order ([{key, size}]): one
    -- for a plain upload, the parts of a multipart upload (no copy).
    EXECUTE $sql$
        CREATE TABLE objects (
            bucket_id            uuid NOT NULL,
            -- Byte order ("C"): listings page by key with a keyset on the
            -- primary key's own order, whatever the database's collation.
            key                  text COLLATE "C" NOT NULL CHECK (octet_length(key) BETWEEN 1 AND 1024),
            version_id           uuid NOT NULL,
            size                 bigint NOT NULL CHECK (size >= 0),
            content_type         text NOT NULL,
            sha256               bytea CHECK (sha256 IS NULL OR length(sha256) = 32),
            etag                 text NOT NULL,
            blobs                jsonb NOT NULL CHECK (jsonb_typeof(blobs) = 'array'),
            user_metadata        jsonb NOT NULL DEFAULT '{}'::jsonb,
            cache_control        text,
            content_disposition  text,
            owner                text NOT NULL,
            created_at           timestamptz NOT NULL DEFAULT now(),
            modified_at          timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (bucket_id, key)
        )$sql$;
    -- Lifecycle expiry scans by age within a bucket.
    EXECUTE $sql$CREATE INDEX objects_modified ON objects (bucket_id, modified_at)$sql$;

    -- Multipart uploads in progress.
    EXECUTE $sql$
        CREATE TABLE uploads (
            bucket_id            uuid NOT NULL,
            id                   uuid NOT NULL,
            key                  text NOT NULL CHECK (octet_length(key) BETWEEN 1 AND 1024),
            content_type         text NOT NULL,
            user_metadata        jsonb NOT NULL DEFAULT '{}'::jsonb,
            cache_control        text,
            content_disposition  text,
            owner                text NOT NULL,
            created_at           timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (bucket_id, id)
        )$sql$;
    EXECUTE $sql$CREATE INDEX uploads_created ON uploads (bucket_id, created_at)$sql$;

    -- Parts of an upload; a re-sent part replaces the row (its old blob is
    -- deleted after the commit).
    EXECUTE $sql$
        CREATE TABLE upload_parts (
            bucket_id    uuid NOT NULL,
            upload_id    uuid NOT NULL,
            part_number  integer NOT NULL CHECK (part_number BETWEEN 1 AND 10000),
            blob_key     text NOT NULL,
            size         bigint NOT NULL CHECK (size >= 0),
            etag         text NOT NULL,
            created_at   timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (bucket_id, upload_id, part_number)
        )$sql$;

    -- Quota reservations: bytes (and an object) held for a write in flight.
    -- A reservation has a lease: the writer renews it while streaming, and
    -- the sweeper releases those whose lease ran out (a killed process).
    EXECUTE $sql$
        CREATE TABLE reservations (
            bucket_id   uuid NOT NULL,
            id          uuid NOT NULL,
            bytes       bigint NOT NULL CHECK (bytes >= 0),
            objects     bigint NOT NULL CHECK (objects >= 0),
            created_at  timestamptz NOT NULL DEFAULT now(),
            expires_at  timestamptz NOT NULL,
            PRIMARY KEY (bucket_id, id)
        )$sql$;
    EXECUTE $sql$CREATE INDEX reservations_expiry ON reservations (expires_at)$sql$;

    -- A blob about to be written: recorded before the first byte goes to
    -- the backend, removed in the transaction that references the blob (or
    -- after the blob is deleted). What is left past `expires_at` is an
    -- orphan the sweeper deletes.
    EXECUTE $sql$
        CREATE TABLE blob_intents (
            bucket_id   uuid NOT NULL,
            blob_key    text NOT NULL,
            created_at  timestamptz NOT NULL DEFAULT now(),
            expires_at  timestamptz NOT NULL,
            PRIMARY KEY (bucket_id, blob_key)
        )$sql$;
    EXECUTE $sql$CREATE INDEX blob_intents_expiry ON blob_intents (expires_at)$sql$;

    -- Usage per bucket (committed bytes and objects, and what reservations
    -- hold). The nil UUID's row is the tenant's total: every change
    -- updates it in the same transaction, rows locked tenant first.
    EXECUTE $sql$
        CREATE TABLE bucket_usage (
            bucket_id         uuid PRIMARY KEY,
            bytes             bigint NOT NULL DEFAULT 0 CHECK (bytes >= 0),
            objects           bigint NOT NULL DEFAULT 0 CHECK (objects >= 0),
            reserved_bytes    bigint NOT NULL DEFAULT 0 CHECK (reserved_bytes >= 0),
            reserved_objects  bigint NOT NULL DEFAULT 0 CHECK (reserved_objects >= 0),
            updated_at        timestamptz NOT NULL DEFAULT now()
        )$sql$;

    -- Presigned URL signing keys: the newest active key signs; a rotated
    -- key keeps verifying until `retired_at` + the grace period.
    EXECUTE $sql$
        CREATE TABLE signing_keys (
            id          text PRIMARY KEY CHECK (id ~ '^[0-9a-f]{16}$'),
            secret      bytea NOT NULL CHECK (length(secret) = 32),
            created_at  timestamptz NOT NULL DEFAULT now(),
            retired_at  timestamptz
        )$sql$;

    IF EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'citus') THEN
        PERFORM create_distributed_table('objects', 'bucket_id');
        PERFORM create_distributed_table('uploads', 'bucket_id', colocate_with => 'objects');
        PERFORM create_distributed_table('upload_parts', 'bucket_id', colocate_with => 'objects');
        PERFORM create_distributed_table('reservations', 'bucket_id', colocate_with => 'objects');
        PERFORM create_distributed_table('blob_intents', 'bucket_id', colocate_with => 'objects');
        PERFORM create_distributed_table('bucket_usage', 'bucket_id', colocate_with => 'objects');
        PERFORM create_reference_table('signing_keys');
    END IF;
END
$migration$;
