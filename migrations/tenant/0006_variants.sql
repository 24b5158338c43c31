-- Storage compression and image variants (issue 11).
--
-- Objects in buckets with `compression: true` may be stored
-- Brotli-compressed: `content_encoding` says so ('br'), `stored_size` is
-- what the blobs hold. `size`, `sha256` and the ETag keep describing the
-- bytes the user sent (and quotas count them); storage use reports the
-- stored bytes.
--
-- `variants` records each rendered image (a transform of one object
-- version) stored in the backend under a name derived from the source's
-- strong ETag and the canonical parameters. Distributed by `bucket_id`
-- and colocated with `objects` like every storage table, so the write
-- that replaces or deletes an object deletes its variants on the same
-- shard, in the same transaction.
--
-- Every statement is EXECUTEd on its own (see migrations/README.md).
DO $migration$
BEGIN
    EXECUTE $sql$ALTER TABLE objects ADD COLUMN content_encoding text$sql$;
    EXECUTE $sql$ALTER TABLE objects ADD COLUMN stored_size bigint$sql$;
    EXECUTE $sql$ALTER TABLE objects ADD CONSTRAINT objects_content_encoding
        CHECK (content_encoding IS NULL OR content_encoding = 'br')$sql$;
    EXECUTE $sql$ALTER TABLE objects ADD CONSTRAINT objects_stored_size
        CHECK (stored_size IS NULL OR stored_size >= 0)$sql$;

    EXECUTE $sql$
        CREATE TABLE variants (
            bucket_id     uuid NOT NULL,
            source_key    text COLLATE "C" NOT NULL CHECK (octet_length(source_key) BETWEEN 1 AND 1024),
            -- Hex SHA-256 of (source ETag, canonical parameters): the
            -- blob's name and the cache key.
            variant       text NOT NULL CHECK (variant ~ '^[0-9a-f]{64}$'),
            source_etag   text NOT NULL,
            params        text NOT NULL,
            blob_key      text NOT NULL,
            size          bigint NOT NULL CHECK (size >= 0),
            content_type  text NOT NULL,
            width         integer NOT NULL CHECK (width > 0),
            height        integer NOT NULL CHECK (height > 0),
            created_at    timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (bucket_id, source_key, variant)
        )$sql$;

    IF EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'citus') THEN
        PERFORM create_distributed_table('variants', 'bucket_id', colocate_with => 'objects');
    END IF;
END
$migration$;
