"""Explanations and provenance of released faces (framework-free).

- ``ics``: exact Shapley Identity Contribution Scores of factors towards the
  likeness to each donor, per encoder (and the first-version drop scores).
- ``attribution``: occlusion-sensitivity maps (any encoder, black box) and
  gradient maps through captum (torch encoders), with PNG overlays.
- ``watermark``: invisible watermark + PNG text metadata on released files,
  and their verification.
- ``report``: per-face HTML report and PNG card, run report, Dagster markdown.
- ``manifest``: the run's release manifest (JSON dataset card).
"""

from .attribution import (
    AttributionMap, dlib_gradient_map, embed_at_landmarks, face_occlusion_map, gradient_map, landmark_roi,
    occlusion_map, overlay_png_bytes, save_overlay_png,
)
from .ics import (
    CallableSimilarity, CoalitionSimilarity, CoalitionTable, EncoderSimilarity, ICSResult, ICSUndefinedError,
    SimilarityBatch, build_coalition_table, coalition_locator, compute_ics, identity_contribution_scores,
    shapley_values,
)
from .manifest import (
    DonorRecord, EncoderRecord, EncoderVerdictRecord, ReleaseManifest, ReleaseRecord, RunFigures, ics_digest,
    known_releases, load_manifest, merge_manifest, revoked_releases, write_manifest,
)
from .report import (
    AttributionPanel, DonorPanel, FaceReport, ReportFiles, RunReport, SimilarityBar, face_card_png,
    gallery_markdown, ics_chart_png, ics_markdown, render_face_report_html, render_run_report_html,
    write_face_report, write_run_report,
)
from .watermark import (
    ReleasedFile, VerifyResult, WatermarkError, embed_watermark, payload_bits, read_watermark_bits, verify_png,
    write_released_png,
)

__all__ = [
    # ics
    "CallableSimilarity", "CoalitionSimilarity", "CoalitionTable", "EncoderSimilarity", "ICSResult",
    "ICSUndefinedError", "SimilarityBatch", "build_coalition_table", "coalition_locator", "compute_ics",
    "identity_contribution_scores", "shapley_values",
    # attribution
    "AttributionMap", "dlib_gradient_map", "embed_at_landmarks", "face_occlusion_map", "gradient_map",
    "landmark_roi", "occlusion_map", "overlay_png_bytes", "save_overlay_png",
    # watermark
    "ReleasedFile", "VerifyResult", "WatermarkError", "embed_watermark", "payload_bits", "read_watermark_bits",
    "verify_png", "write_released_png",
    # report
    "AttributionPanel", "DonorPanel", "FaceReport", "ReportFiles", "RunReport", "SimilarityBar", "face_card_png",
    "gallery_markdown", "ics_chart_png", "ics_markdown", "render_face_report_html", "render_run_report_html",
    "write_face_report", "write_run_report",
    # manifest
    "DonorRecord", "EncoderRecord", "EncoderVerdictRecord", "ReleaseManifest", "ReleaseRecord", "RunFigures",
    "ics_digest", "known_releases", "load_manifest", "merge_manifest", "revoked_releases", "write_manifest",
]
