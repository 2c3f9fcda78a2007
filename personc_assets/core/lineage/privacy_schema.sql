-- PersonC privacy modes (DuckDB): created by personc_assets.core.lineage.privacy,
-- next to the shared lineage schema. Keys make re-running the same inputs upsert.

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
