-- Views over the lineage tables (created after schema.sql).

-- The release manifest as a table: one row per released (or revoked) face with
-- its donors (source hashes and groups, never images), per-encoder verdict
-- figures and ICS summary. The JSON twin is manifest.json beside the files.
CREATE OR REPLACE VIEW release_manifest AS
SELECT
    r.release_id,
    r.file,
    r.content_hash,
    r.status,
    r.revoked_reason,
    r.run_id,
    r.code_version,
    c.candidate_id,
    c.recipe_id,
    c.backbone_state,
    rc.context_donor,
    (SELECT list({'encoder': v.encoder, 'encoder_version': v.encoder_version, 'max_similarity': v.max_similarity,
                  'nearest_source': v.nearest_source, 'tau': v.tau, 'margin': v.tau - v.max_similarity}
                 ORDER BY v.encoder)
       FROM verdicts v WHERE v.candidate_id = r.candidate_id) AS verdicts,
    (SELECT list(DISTINCT {'source_hash': s.content_hash, 'source_id': s.source_id, 'group': s.grp})
       FROM ics i JOIN sources s ON s.source_id = i.donor
      WHERE i.release_id = r.release_id) AS ics_sources,
    (SELECT list({'encoder': i.encoder, 'donor': i.donor, 'factor': i.factor, 'share': round(i.share, 4)}
                 ORDER BY i.encoder, i.donor, i.factor)
       FROM ics i WHERE i.release_id = r.release_id AND i.method = 'shapley') AS ics_shares,
    rc.recipe_json,
    r.released_at
FROM releases r
LEFT JOIN candidates c USING (candidate_id)
LEFT JOIN recipes rc ON rc.recipe_id = c.recipe_id;
