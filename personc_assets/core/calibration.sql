-- Per-encoder calibration figures (one row per run and encoder) and the
-- thresholds derived from them (one row per run, encoder and target).
-- Written by personc_assets.core.calibration.write_calibration.

CREATE TABLE IF NOT EXISTS calibration (
    run_id            VARCHAR NOT NULL,
    created_at        TIMESTAMPTZ NOT NULL,
    folder            VARCHAR NOT NULL,   -- labelled folder (one subfolder per person)
    encoder           VARCHAR NOT NULL,
    encoder_version   VARCHAR NOT NULL,   -- weights hash: a new version needs a new calibration
    n_people          INTEGER NOT NULL,
    n_faces           INTEGER NOT NULL,
    same_count        INTEGER NOT NULL,   -- same-person pairs
    same_min          DOUBLE,
    same_p1           DOUBLE,
    same_p5           DOUBLE,
    same_p50          DOUBLE,
    same_p95          DOUBLE,
    same_max          DOUBLE,
    same_mean         DOUBLE,
    same_std          DOUBLE,
    diff_count        INTEGER NOT NULL,   -- different-person pairs
    diff_min          DOUBLE,
    diff_p5           DOUBLE,
    diff_p50          DOUBLE,
    diff_p95          DOUBLE,
    diff_p99          DOUBLE,
    diff_max          DOUBLE,
    diff_mean         DOUBLE,
    diff_std          DOUBLE,
    best_threshold    DOUBLE NOT NULL,    -- minimises FMR + FNMR on the sample
    best_fmr          DOUBLE NOT NULL,
    best_fnmr         DOUBLE NOT NULL,
    skipped_photos    INTEGER NOT NULL,
    PRIMARY KEY (run_id, encoder)
);

CREATE TABLE IF NOT EXISTS calibration_tau (
    run_id                VARCHAR NOT NULL,
    encoder               VARCHAR NOT NULL,
    encoder_version       VARCHAR NOT NULL,
    target_fmr            DOUBLE NOT NULL,  -- false-match rate per released face
    gallery_size          BIGINT NOT NULL,  -- N sources searched
    per_pair_fmr          DOUBLE NOT NULL,  -- 1 - (1 - target)^(1/N)
    tau                   DOUBLE NOT NULL,
    method                VARCHAR NOT NULL, -- empirical-bound | parametric-normal | empirical-point
    supported_by_data     BOOLEAN NOT NULL,
    tau_empirical         DOUBLE,           -- NULL when the sample is too small for a bound
    tau_parametric        DOUBLE NOT NULL,
    n_diff                INTEGER NOT NULL,
    n_diff_needed         BIGINT NOT NULL,
    empirical_fmr_at_tau  DOUBLE NOT NULL,
    fnmr_at_tau           DOUBLE NOT NULL,  -- same-person pairs below tau
    note                  VARCHAR NOT NULL,
    PRIMARY KEY (run_id, encoder, target_fmr, gallery_size)
);
