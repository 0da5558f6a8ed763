-- Usage an operator can bill (docs/platform.md, "Usage and costs").

-- Every usage report received, once per reporter and sequence number: a report written again
-- after a timeout conflicts and is ignored. Kept 13 months (they are the gaps' ledger); the
-- report itself (body) is kept 40 days for audits.
CREATE TABLE usage_reports (
    reporter    text    NOT NULL,
    seq         bigint  NOT NULL,
    kind        text    NOT NULL,
    from_ms     bigint  NOT NULL,
    to_ms       bigint  NOT NULL,
    final       boolean NOT NULL,
    stream_id   text    NOT NULL,
    received_ms bigint  NOT NULL,
    body        jsonb,
    PRIMARY KEY (reporter, seq)
);
CREATE INDEX usage_reports_from_ms ON usage_reports (from_ms);

-- Each app's quantities per UTC hour and item (instance:<ptype>:<size>, cpu, memory,
-- requests, bytes_in, bytes_out, addon:<kind>:<plan>), added to in the same transaction as
-- the report that brought them. Kept 13 months.
CREATE TABLE usage_hourly (
    app      text             NOT NULL,
    hour_ms  bigint           NOT NULL,
    item     text             NOT NULL,
    quantity double precision NOT NULL,
    PRIMARY KEY (app, hour_ms, item)
);

-- How far the collector has read the report stream.
CREATE TABLE usage_cursor (
    name      text PRIMARY KEY,
    stream_id text NOT NULL
);
