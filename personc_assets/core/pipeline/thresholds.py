"""tau from a stored calibration for a target false-match rate per released face.

``personc calibrate --db FILE`` stores each encoder's same-person and
different-person score figures. Given a target false-match rate per released
face and the gallery size N (the number of sources), the per-pair rate must be
``p* = 1 - (1 - target)^(1/N)`` (see ``core/calibration.py``) and the
different-person tail is extrapolated with the stored normal fit, never below
the highest different-person score observed when the sample cannot show p*.

Which error this controls: a *false match* here is a face of nobody among the
sources that scores tau or more against one of them, so the guard rejects it.
The target bounds that rate per released face: a cost in faces released, not
a leak. The safety-relevant error is the other one: a likeness of a source
person scoring below tau and passing (the false non-match rate). A target
alone would *raise* tau as N grows (fewer strangers flagged), which makes the
guard laxer against look-alikes of a source. The tau used is therefore
``min(tau_target, same_min)``, and ``resolve_taus`` never lets it above the
encoder's default; the reason says which bound won and which rate it controls.
"""

from __future__ import annotations

from scipy.stats import norm

from ..calibration import per_pair_target
from ..ensemble import TauChoice
from ..lineage.store import LineageStore


def calibrated_taus(store: LineageStore, encoders: dict[str, str], target_fmr: float,
                    gallery_size: int) -> dict[str, TauChoice]:
    """TauChoice per encoder name (``encoders``: name → version) with a stored calibration.

    Encoders without a calibration for their exact weights version are left
    out (they keep their default tau, and the caller says so).
    """
    try:
        rows = store.query(
            "SELECT encoder_version, diff_mean, diff_std, diff_max, diff_count, same_min, folder, created_at "
            "FROM calibration WHERE encoder_version IN (SELECT unnest(?::VARCHAR[])) "
            "ORDER BY created_at DESC", [list(encoders.values())])
    except Exception:  # no calibration table yet
        return {}
    latest: dict[str, tuple] = {}
    for row in rows:
        latest.setdefault(row[0], row)
    p = per_pair_target(target_fmr, gallery_size)
    out = {}
    for name, version in encoders.items():
        if version not in latest:
            continue
        _, mean, std, diff_max, n_diff, same_min, folder, _ = latest[version]
        tau_target = float(mean + std * norm.isf(p))
        if p * n_diff < 1.0:  # the sample cannot show p*: stay above every observed stranger
            tau_target = max(tau_target, float(diff_max))
        if same_min is not None and float(same_min) < tau_target:
            tau, bound = float(same_min), f"capped at the same-person minimum {float(same_min):.3f}"
        else:
            tau, bound = tau_target, "below the same-person minimum"
        out[name] = TauChoice(name, tau, (
            f"--target-fmr {target_fmr:g} bounds the false-match rate: the share of faces of nobody among the "
            f"N={gallery_size} sources that the guard rejects as one of them (a cost in released faces, not a "
            f"leak); per pair {p:.2g}, normal-tail tau {tau_target:.3f} (calibration on {folder}); {bound}. "
            f"It does not bound leaks (a source person's likeness scoring below tau)"), "calibrated")
    return out
