"""tau from a stored calibration for a target false-match rate per released face.

``personc calibrate --db FILE`` stores each encoder's same-person and
different-person score figures. Given a target false-match rate per released
face and the gallery size N (the number of sources), the per-pair rate must be
``p* = 1 - (1 - target)^(1/N)`` (see ``core/calibration.py``) and the
different-person tail is extrapolated with the stored normal fit, never below
the highest different-person score observed when the sample cannot show p*.

A 1:N false-match target alone would *raise* tau as N grows (fewer strangers
flagged), which makes the guard laxer against look-alikes of a source. The
guard therefore never gates above the calibrated same-person minimum: the
tau used is ``min(tau_target, same_min)``, and the reason says which bound won.
"""

from __future__ import annotations

from scipy.stats import norm

from ..calibration import per_pair_target
from ..lineage.store import LineageStore
from .config import TauChoice


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
            tau, bound = float(same_min), "capped at the same-person minimum"
        else:
            tau, bound = tau_target, "below the same-person minimum"
        out[name] = TauChoice(name, tau, (
            f"target FMR {target_fmr:g} per face over N={gallery_size} sources → per-pair {p:.2g}, "
            f"normal-tail tau {tau_target:.3f} (calibration on {folder}); {bound}"))
    return out
