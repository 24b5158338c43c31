-- Events and idempotency (issue 10): stable event ids and a dead-letter
-- state on the outbox, webhook endpoints, their deliveries and every
-- delivery attempt. Runs as the tenant's owner role, like every tenant
-- migration. See docs/events.md.
--
-- None of these tables is distributed on Citus: the outbox is read by the
-- dispatcher across collections (`ORDER BY available_at`), and webhooks are
-- few and small. They stay local tables of the coordinator, as `outbox`
-- and `idempotency_keys` already are.
--
-- Every statement is EXECUTEd on its own (see migrations/README.md).
DO $migration$
BEGIN
    -- The event id is what receivers deduplicate on (Redis messages carry
    -- it, webhooks send it as `webhook-id`): it never changes across
    -- retries. The writer picks a UUIDv7; the default covers rows written
    -- by older code (the operator's `tenant.admin_invited`).
    EXECUTE $sql$
        ALTER TABLE outbox
            ADD COLUMN event_id uuid NOT NULL DEFAULT gen_random_uuid(),
            ADD COLUMN dead_at  timestamptz$sql$;
    EXECUTE $sql$CREATE UNIQUE INDEX outbox_event_id ON outbox (event_id)$sql$;
    -- What the dispatcher claims: neither dispatched nor dead, by due time.
    EXECUTE $sql$
        CREATE INDEX outbox_due ON outbox (available_at, id)
            WHERE dispatched_at IS NULL AND dead_at IS NULL$sql$;
    EXECUTE $sql$DROP INDEX outbox_pending$sql$;
    -- Pruning dispatched rows after the retention period.
    EXECUTE $sql$
        CREATE INDEX outbox_dispatched ON outbox (dispatched_at)
            WHERE dispatched_at IS NOT NULL$sql$;
    EXECUTE $sql$
        CREATE INDEX outbox_dead ON outbox (dead_at, id) WHERE dead_at IS NOT NULL$sql$;

    -- Webhook endpoints. `event_types` empty: every event. Secrets are
    -- `whsec_<base64>`; during a rotation the previous secret keeps
    -- signing (both signatures are sent) until `previous_expires_at`.
    EXECUTE $sql$
        CREATE TABLE webhook_endpoints (
            id                   uuid PRIMARY KEY DEFAULT gen_random_uuid(),
            url                  text NOT NULL CHECK (length(url) BETWEEN 1 AND 2048),
            description          text NOT NULL DEFAULT '' CHECK (length(description) <= 500),
            event_types          text[] NOT NULL DEFAULT '{}',
            enabled              boolean NOT NULL DEFAULT true,
            secret               text NOT NULL,
            previous_secret      text,
            previous_expires_at  timestamptz,
            version              bigint NOT NULL DEFAULT 1,
            created_at           timestamptz NOT NULL DEFAULT now(),
            updated_at           timestamptz NOT NULL DEFAULT now()
        )$sql$;

    -- One row per (event, endpoint): made when the dispatcher fans an event
    -- out, unique so a re-dispatched event never makes a second one.
    EXECUTE $sql$
        CREATE TABLE webhook_deliveries (
            id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            outbox_id        bigint NOT NULL REFERENCES outbox (id) ON DELETE CASCADE,
            endpoint_id      uuid NOT NULL REFERENCES webhook_endpoints (id) ON DELETE CASCADE,
            state            text NOT NULL DEFAULT 'pending'
                             CHECK (state IN ('pending', 'delivered', 'dead')),
            attempts         integer NOT NULL DEFAULT 0,
            next_attempt_at  timestamptz NOT NULL DEFAULT now(),
            last_status      integer,
            last_error       text,
            created_at       timestamptz NOT NULL DEFAULT now(),
            delivered_at     timestamptz,
            dead_at          timestamptz,
            UNIQUE (outbox_id, endpoint_id)
        )$sql$;
    EXECUTE $sql$
        CREATE INDEX webhook_deliveries_due ON webhook_deliveries (next_attempt_at, id)
            WHERE state = 'pending'$sql$;
    EXECUTE $sql$
        CREATE INDEX webhook_deliveries_endpoint ON webhook_deliveries (endpoint_id, id)$sql$;

    -- Every attempt, for the tenant to read: HTTP status (NULL when no
    -- answer), latency, and the error when there was no answer.
    EXECUTE $sql$
        CREATE TABLE webhook_attempts (
            id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            delivery_id  bigint NOT NULL REFERENCES webhook_deliveries (id) ON DELETE CASCADE,
            attempted_at timestamptz NOT NULL DEFAULT now(),
            status       integer,
            latency_ms   integer NOT NULL,
            error        text
        )$sql$;
    EXECUTE $sql$CREATE INDEX webhook_attempts_delivery ON webhook_attempts (delivery_id, id)$sql$;
END
$migration$;
