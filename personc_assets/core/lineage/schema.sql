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

-- The privacy modes (personc anonymize / cancelable / dp; docs/privacy_modes.md).

CREATE TABLE IF NOT EXISTS privacy_factor_ranking (
    ranking_id      VARCHAR,               -- hash of backbone state + probes + encoders
    backbone_state  VARCHAR,
    encoder         VARCHAR,
    factor          VARCHAR,               -- identity factor, or '_context' for the kept context
    per_unit        DOUBLE,                -- 1 - cosine per population unit of change
    swap_drop       DOUBLE,                -- 1 - cosine after swapping the factor for a donor's
    swap_drop_sd    DOUBLE,
    mean_unit       DOUBLE,
    n               INTEGER,
    undetected      INTEGER,
    rank            INTEGER,               -- 1 = most identity per unit (NULL for context)
    run_id          VARCHAR,
    created_at      TIMESTAMP,
    PRIMARY KEY (ranking_id, encoder, factor)
);

CREATE TABLE IF NOT EXISTS privacy_anonymized (
    output_id       VARCHAR PRIMARY KEY,
    input_hash      VARCHAR,               -- content hash of the face that was anonymized
    backbone_state  VARCHAR,
    ranking_id      VARCHAR,
    strength        DOUBLE,                -- requested
    strength_used   DOUBLE,                -- of the chosen attempt
    attempts        INTEGER,
    passed          BOOLEAN,               -- guard vs all sources and vs the original
    reason          VARCHAR,
    alphas_json     VARCHAR,               -- factor -> blend weight
    recipe_json     VARCHAR,               -- factor -> [(donor hash, weight)]
    sim_original_json VARCHAR,             -- encoder -> cosine to the original
    max_sim_sources_json VARCHAR,          -- encoder -> max cosine to any source
    gender_in       VARCHAR,
    gender_out      VARCHAR,
    age_in          INTEGER,
    age_out         INTEGER,
    image_path      VARCHAR,               -- NULL when no attempt passed (nothing released)
    run_id          VARCHAR,
    code_version    VARCHAR,
    created_at      TIMESTAMP
);

CREATE TABLE IF NOT EXISTS privacy_keys (
    key_id          VARCHAR PRIMARY KEY,   -- sha256(sha256(key)) prefix; the key is never stored
    first_seen      TIMESTAMP,
    revoked         BOOLEAN DEFAULT FALSE,
    revoked_at      TIMESTAMP,
    revoked_reason  VARCHAR
);

CREATE TABLE IF NOT EXISTS privacy_cancelable (
    template_id     VARCHAR PRIMARY KEY,
    key_id          VARCHAR,
    input_hash      VARCHAR,
    backbone_state  VARCHAR,
    beta            DOUBLE,                -- v1 (code-face blend) templates only; NULL from v2 on
    context_mode    VARCHAR,
    passed          BOOLEAN,
    reason          VARCHAR,
    sim_original_json VARCHAR,
    max_sim_sources_json VARCHAR,
    image_path      VARCHAR,               -- NULL when refused
    status          VARCHAR,               -- 'active', 'refused' or 'revoked'
    run_id          VARCHAR,
    code_version    VARCHAR,
    created_at      TIMESTAMP
);
ALTER TABLE privacy_cancelable ADD COLUMN IF NOT EXISTS transform VARCHAR;  -- e.g. signed-permutation/v2/block=1

-- The required properties measured before any template is made; a failing
-- required property refuses the whole run (the reason names it).
CREATE TABLE IF NOT EXISTS privacy_cancelable_assessment (
    assessment_id   VARCHAR,               -- hash of backbone state + transform + encoders
    backbone_state  VARCHAR,
    transform       VARCHAR,
    encoder         VARCHAR,
    property        VARCHAR,               -- consistency, unlinkability, revocability, irreversibility, discriminability
    want            VARCHAR,               -- 'match' (>= tau) or 'no_match' (< tau)
    tau             DOUBLE,
    n               INTEGER,               -- pairs with a face in both templates
    no_face         INTEGER,               -- pairs where a template shows no face (counted as misses)
    min_score       DOUBLE,
    median_score    DOUBLE,
    max_score       DOUBLE,
    ok_rate         DOUBLE,
    required        BOOLEAN,
    passed          BOOLEAN,
    persons         INTEGER,
    run_id          VARCHAR,
    created_at      TIMESTAMP,
    PRIMARY KEY (assessment_id, encoder, property)
);

CREATE TABLE IF NOT EXISTS privacy_attribute_directions (
    direction_id    VARCHAR PRIMARY KEY,
    attribute       VARCHAR,
    backbone_state  VARCHAR,
    labeller_version VARCHAR,
    positive        VARCHAR,
    negative        VARCHAR,
    n_train         INTEGER,
    train_accuracy  DOUBLE,
    cv_accuracy     DOUBLE,                -- leave-one-person-out
    coord_sd        DOUBLE,
    path            VARCHAR,
    run_id          VARCHAR,
    created_at      TIMESTAMP
);
-- the DP mode fits one direction per person without that person's photos (NULL: fitted on all)
ALTER TABLE privacy_attribute_directions ADD COLUMN IF NOT EXISTS held_out VARCHAR;
ALTER TABLE privacy_attribute_directions ADD COLUMN IF NOT EXISTS n_persons INTEGER;

CREATE TABLE IF NOT EXISTS privacy_dp_ledger (
    entry_id        VARCHAR PRIMARY KEY,
    release_id      VARCHAR,
    face_key        VARCHAR,               -- content hash of the face
    run_id          VARCHAR,
    attribute       VARCHAR,
    mechanism       VARCHAR,               -- 'laplace' or 'gaussian' (OpenDP)
    epsilon         DOUBLE,
    delta           DOUBLE,
    sensitivity     DOUBLE,                -- clip_hi - clip_lo
    clip_lo         DOUBLE,
    clip_hi         DOUBLE,
    status          VARCHAR,               -- 'spent' or 'refused'
    reason          VARCHAR,
    created_at      TIMESTAMP
);

CREATE TABLE IF NOT EXISTS privacy_dp_releases (
    release_id      VARCHAR PRIMARY KEY,
    face_key        VARCHAR,
    backbone_state  VARCHAR,
    run_id          VARCHAR,
    epsilon         DOUBLE,                -- total of this release
    delta           DOUBLE,
    coordinates_json VARCHAR,              -- attribute -> {t, clipped, released}
    gender_in       VARCHAR,
    gender_out      VARCHAR,
    age_in          INTEGER,
    age_out         INTEGER,
    image_path      VARCHAR,
    code_version    VARCHAR,
    created_at      TIMESTAMP
);
ALTER TABLE privacy_dp_releases ADD COLUMN IF NOT EXISTS held_out VARCHAR;          -- person left out of the fit
ALTER TABLE privacy_dp_releases ADD COLUMN IF NOT EXISTS direction_ids_json VARCHAR; -- attribute -> direction id
ALTER TABLE privacy_dp_releases ADD COLUMN IF NOT EXISTS watermark_payload VARCHAR;  -- 64-bit payload (hex)
ALTER TABLE privacy_dp_releases ADD COLUMN IF NOT EXISTS pixel_sha256 VARCHAR;
ALTER TABLE privacy_dp_releases ADD COLUMN IF NOT EXISTS file_sha256 VARCHAR;
