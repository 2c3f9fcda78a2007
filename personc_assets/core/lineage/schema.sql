-- PersonC lineage schema (DuckDB). Every table is keyed so that
-- re-materializing the same inputs upserts instead of duplicating rows.
-- Each row carries the run that wrote it, the code version and the hashes
-- of its inputs.

CREATE TABLE IF NOT EXISTS runs (
    run_id          VARCHAR PRIMARY KEY,
    started_at      TIMESTAMP,
    finished_at     TIMESTAMP,
    code_version    VARCHAR,
    config_hash     VARCHAR,
    config_json     VARCHAR,
    backbone        VARCHAR,
    status          VARCHAR,               -- running / success / failure (killed runs stay running)
    updated_at      TIMESTAMP,
    source_set_hash VARCHAR
);

CREATE TABLE IF NOT EXISTS sources (
    content_hash    VARCHAR PRIMARY KEY,   -- sha256 of decoded, oriented pixels
    source_id       VARCHAR,               -- group + hash prefix, used in reports
    grp             VARCHAR,               -- 'A' or 'B'
    label           VARCHAR,
    path            VARCHAR,
    aligned_path    VARCHAR,
    superseded      BOOLEAN DEFAULT FALSE, -- the file at `path` changed or vanished
    superseded_by   VARCHAR,
    first_run_id    VARCHAR,
    last_run_id     VARCHAR,
    code_version    VARCHAR,
    updated_at      TIMESTAMP,
    role            VARCHAR DEFAULT 'donor', -- 'donor' (lends factors, protects) or 'protect_only'
    role_code       VARCHAR,               -- why a protect-only photo is no donor (grayscale, face_too_small, ...)
    role_reason     VARCHAR
);

CREATE TABLE IF NOT EXISTS quarantine (
    path            VARCHAR,
    grp             VARCHAR,
    code            VARCHAR,
    reason          VARCHAR,
    file_sha256     VARCHAR,
    run_id          VARCHAR,
    seen_at         TIMESTAMP,
    PRIMARY KEY (path, file_sha256)
);

CREATE TABLE IF NOT EXISTS duplicates (
    path            VARCHAR,
    content_hash    VARCHAR,
    kept_path       VARCHAR,
    run_id          VARCHAR,
    PRIMARY KEY (path, content_hash)
);

CREATE TABLE IF NOT EXISTS latents (
    content_hash    VARCHAR,
    backbone        VARCHAR,
    backbone_state  VARCHAR,               -- hash of weights + fitted state
    latent_path     VARCHAR,
    reconstruction_error DOUBLE,
    extras_json     VARCHAR,
    run_id          VARCHAR,
    code_version    VARCHAR,
    PRIMARY KEY (content_hash, backbone_state)
);

CREATE TABLE IF NOT EXISTS factors (
    content_hash    VARCHAR,
    backbone_state  VARCHAR,
    factor          VARCHAR,
    dim             INTEGER,
    norm            DOUBLE,
    factors_path    VARCHAR,
    run_id          VARCHAR,
    PRIMARY KEY (content_hash, backbone_state, factor)
);

CREATE TABLE IF NOT EXISTS embeddings (
    content_hash    VARCHAR,
    encoder         VARCHAR,
    encoder_version VARCHAR,
    vector          FLOAT[],
    run_id          VARCHAR,
    PRIMARY KEY (content_hash, encoder_version)
);

CREATE TABLE IF NOT EXISTS indexes (
    encoder         VARCHAR,
    encoder_version VARCHAR,
    source_set_hash VARCHAR,
    kind            VARCHAR,
    count           INTEGER,
    index_path      VARCHAR,
    run_id          VARCHAR,
    PRIMARY KEY (encoder_version, source_set_hash)
);

CREATE TABLE IF NOT EXISTS recipes (
    recipe_id       VARCHAR PRIMARY KEY,
    seed            BIGINT,
    mean_pull       DOUBLE,
    context_donor   VARCHAR,
    recipe_json     VARCHAR,               -- factor -> [(donor hash, weight)]
    run_id          VARCHAR
);

CREATE TABLE IF NOT EXISTS candidates (
    candidate_id    VARCHAR PRIMARY KEY,
    recipe_id       VARCHAR,
    generation_id   VARCHAR,
    attempt         INTEGER,
    backbone_state  VARCHAR,
    image_path      VARCHAR,
    image_hash      VARCHAR,
    run_id          VARCHAR,
    code_version    VARCHAR,
    created_at      TIMESTAMP
);

CREATE TABLE IF NOT EXISTS verdicts (
    candidate_id    VARCHAR,
    encoder         VARCHAR,
    encoder_version VARCHAR,
    gating          BOOLEAN,
    max_similarity  DOUBLE,
    nearest_source  VARCHAR,
    released_similarity DOUBLE,
    tau             DOUBLE,
    verdict         VARCHAR,               -- encoder-level PASS / REJECT
    reason          VARCHAR,
    run_id          VARCHAR,
    PRIMARY KEY (candidate_id, encoder)
);

-- which variant (the image itself or a benign transform of it) came closest to a source
ALTER TABLE verdicts ADD COLUMN IF NOT EXISTS worst_transform VARCHAR;

-- gates besides identity: 'realism' (a coherent face) and 'reuse' (no region of a source photo)
CREATE TABLE IF NOT EXISTS gate_verdicts (
    candidate_id    VARCHAR,
    gate            VARCHAR,
    score           DOUBLE,                -- realism: failed criteria; reuse: evidence / threshold
    threshold       DOUBLE,                -- reject at score >= threshold
    nearest_source  VARCHAR,               -- reuse: the source photo the evidence points to
    verdict         VARCHAR,
    reason          VARCHAR,
    run_id          VARCHAR,
    PRIMARY KEY (candidate_id, gate)
);

CREATE TABLE IF NOT EXISTS candidate_verdicts (
    candidate_id    VARCHAR PRIMARY KEY,
    verdict         VARCHAR,               -- ensemble PASS / REJECT
    reason          VARCHAR,
    run_id          VARCHAR
);

CREATE TABLE IF NOT EXISTS ics (
    release_id      VARCHAR,
    encoder         VARCHAR,
    donor           VARCHAR,
    factor          VARCHAR,
    method          VARCHAR,               -- 'shapley' or 'drop'
    score           DOUBLE,                -- similarity units
    share           DOUBLE,                -- fraction of the donor's likeness
    run_id          VARCHAR,
    PRIMARY KEY (release_id, encoder, donor, factor, method)
);

CREATE TABLE IF NOT EXISTS releases (
    release_id      VARCHAR PRIMARY KEY,
    candidate_id    VARCHAR,
    file            VARCHAR,
    content_hash    VARCHAR,               -- sha256 of the released PNG's pixels
    status          VARCHAR,               -- 'released' or 'revoked'
    revoked_reason  VARCHAR,
    run_id          VARCHAR,
    code_version    VARCHAR,
    backbone_state  VARCHAR,
    released_at     TIMESTAMP,
    revoked_at      TIMESTAMP,
    revoked_by_run  VARCHAR,
    last_audit_key  VARCHAR,               -- the audit (sources + encoders + taus) it last passed
    last_audited_at TIMESTAMP
);

-- Databases made before these columns existed get them here.
ALTER TABLE releases ADD COLUMN IF NOT EXISTS revoked_at TIMESTAMP;
ALTER TABLE releases ADD COLUMN IF NOT EXISTS revoked_by_run VARCHAR;
ALTER TABLE releases ADD COLUMN IF NOT EXISTS last_audit_key VARCHAR;
ALTER TABLE releases ADD COLUMN IF NOT EXISTS last_audited_at TIMESTAMP;
ALTER TABLE runs ADD COLUMN IF NOT EXISTS updated_at TIMESTAMP;
ALTER TABLE runs ADD COLUMN IF NOT EXISTS source_set_hash VARCHAR;
ALTER TABLE sources ADD COLUMN IF NOT EXISTS role VARCHAR DEFAULT 'donor';
ALTER TABLE sources ADD COLUMN IF NOT EXISTS role_code VARCHAR;
ALTER TABLE sources ADD COLUMN IF NOT EXISTS role_reason VARCHAR;

-- A revocation is permanent: a later run that judges the same candidate again
-- cannot turn it back into a release (``Writer.upsert`` re-applies this table
-- to ``releases``). The face still looks like the person who caused it.
CREATE TABLE IF NOT EXISTS revocations (
    release_id      VARCHAR PRIMARY KEY,
    reason          VARCHAR,
    audit_key       VARCHAR,
    source_set_hash VARCHAR,
    run_id          VARCHAR,
    revoked_at      TIMESTAMP
);

-- Every re-check of a released face against a (new) source set.
CREATE TABLE IF NOT EXISTS release_audits (
    release_id      VARCHAR,
    audit_key       VARCHAR,               -- hash of source set, encoder versions and taus
    source_set_hash VARCHAR,
    verdict         VARCHAR,               -- PASS (kept) / REJECT (revoked)
    reason          VARCHAR,
    similarity_json VARCHAR,               -- encoder -> max cosine to the new sources
    nearest_json    VARCHAR,               -- encoder -> nearest source content hash
    run_id          VARCHAR,
    audited_at      TIMESTAMP,
    PRIMARY KEY (release_id, audit_key)
);
