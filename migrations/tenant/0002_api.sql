-- The database API's own tables and columns (issue 8). Runs as the tenant's
-- owner role, like every tenant migration.
--
-- Every statement is EXECUTEd on its own: on Citus, DDL on reference and
-- distributed tables (and CREATE TABLE with a foreign key to a reference
-- table, which makes a Citus-managed table at once) is propagated to the
-- workers with the statement's query string, which must then hold that one
-- statement; a migration file is one multi-statement query string. The same
-- statements run unchanged on plain PostgreSQL. See migrations/README.md.
DO $migration$
BEGIN
    -- Members: who acts in the tenant and with which seeded role. `subject`
    -- is the JWT `sub` (or the email an invitation was accepted with).
    EXECUTE $sql$
        CREATE TABLE members (
            subject     text PRIMARY KEY CHECK (length(subject) BETWEEN 1 AND 320),
            email       text CHECK (email IS NULL OR length(email) <= 320),
            role        text NOT NULL REFERENCES roles (name) ON UPDATE CASCADE,
            invited_by  text,
            created_at  timestamptz NOT NULL DEFAULT now(),
            updated_at  timestamptz NOT NULL DEFAULT now()
        )$sql$;

    -- API keys: `sk_<id>_<secret>`; only a SHA-256 of the secret is stored,
    -- the id is the primary key, so a request finds its key with one indexed
    -- read. Revocation is a timestamp, read on every request. Deleting the
    -- member a key acts for deletes the key.
    EXECUTE $sql$
        CREATE TABLE api_keys (
            id            text PRIMARY KEY CHECK (id ~ '^[0-9a-f]{16}$'),
            name          text NOT NULL DEFAULT '' CHECK (length(name) <= 200),
            secret_hash   bytea NOT NULL CHECK (length(secret_hash) = 32),
            role          text NOT NULL REFERENCES roles (name) ON UPDATE CASCADE,
            subject       text REFERENCES members (subject) ON DELETE CASCADE,
            created_by    text NOT NULL,
            created_at    timestamptz NOT NULL DEFAULT now(),
            expires_at    timestamptz,
            last_used_at  timestamptz,
            revoked_at    timestamptz
        )$sql$;

    -- Collections gain a version (for ETags), the If-Match switch, the
    -- fields that get expression indexes, the HNSW parameters and the vector
    -- index state. Constraints come one per statement: Citus refuses ADD
    -- COLUMN with a CHECK, and several ADD CONSTRAINTs, in one ALTER.
    EXECUTE $sql$
        ALTER TABLE collections
            ADD COLUMN version              bigint NOT NULL DEFAULT 1,
            ADD COLUMN require_if_match     boolean NOT NULL DEFAULT false,
            ADD COLUMN indexed_fields       jsonb NOT NULL DEFAULT '[]'::jsonb,
            ADD COLUMN hnsw_m               integer,
            ADD COLUMN hnsw_ef_construction integer,
            ADD COLUMN vector_index         text NOT NULL DEFAULT 'none'$sql$;
    EXECUTE $sql$ALTER TABLE collections ADD CONSTRAINT collections_indexed_fields_array
        CHECK (jsonb_typeof(indexed_fields) = 'array')$sql$;
    EXECUTE $sql$ALTER TABLE collections ADD CONSTRAINT collections_hnsw_m_range
        CHECK (hnsw_m BETWEEN 2 AND 100)$sql$;
    EXECUTE $sql$ALTER TABLE collections ADD CONSTRAINT collections_hnsw_ef_construction_range
        CHECK (hnsw_ef_construction BETWEEN 4 AND 1000)$sql$;
    EXECUTE $sql$ALTER TABLE collections ADD CONSTRAINT collections_vector_index_state
        CHECK (vector_index IN ('none', 'building', 'ready', 'failed'))$sql$;

    -- A vector may point at a document of its collection.
    EXECUTE $sql$
        ALTER TABLE embeddings
            ADD COLUMN document_id text,
            ADD COLUMN version     bigint NOT NULL DEFAULT 1$sql$;

    -- Equality filters use containment (`data @> '{"a": 1}'`) on one GIN index.
    EXECUTE $sql$CREATE INDEX documents_data_gin ON documents USING gin (data jsonb_path_ops)$sql$;

    IF EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'citus') THEN
        PERFORM create_reference_table('members');
        PERFORM create_reference_table('api_keys');
    END IF;
END
$migration$;
