"""Privacy modes on PersonC's factor model (backbone-agnostic, framework-free).

- ``disentangle``: how much identity each factor carries (per unit of change);
- ``anonymize``: feature-preserving de-identification of one face, guard-checked;
- ``cancelable``: keyed, revocable synthetic templates;
- ``attributes`` + ``dp``: age/gender directions and differentially private
  attribute coordinates with a DuckDB privacy ledger.
"""

from ..lineage.store import PRIVACY_TABLES
from .anonymize import Anonymized, AnonymizeKnobs, Anonymizer, measure_strength_curve, strength_alphas
from ..faces.age_gender import AgeGenderLabeller, FaceAttributes, LabellerUnavailableError
from .attributes import AttributeDirection, fit_direction
from .cancelable import (Assessment, CancelableEnroller, CancelableKeyError, CancelableKnobs,
                         CancelableUnavailableError, KeyTransform, Template, derive_seed, key_id, key_transform,
                         measure_properties)
from .disentangle import FactorRanking, rank_factors
from .dp import BudgetExceededError, DPSpec, PrivacyBudget, PrivacyLedger, measure_accuracy, privatize_factors
from .population import FactorScale, IdentityProbe, Population, context_frame

__all__ = [
    "AgeGenderLabeller", "Anonymized", "AnonymizeKnobs", "Anonymizer", "Assessment", "AttributeDirection",
    "BudgetExceededError", "CancelableEnroller", "CancelableKeyError", "CancelableKnobs",
    "CancelableUnavailableError", "DPSpec", "FaceAttributes", "FactorRanking", "FactorScale", "IdentityProbe",
    "KeyTransform", "LabellerUnavailableError", "PRIVACY_TABLES", "Population", "PrivacyBudget", "PrivacyLedger",
    "Template", "context_frame", "derive_seed", "fit_direction", "key_id",
    "key_transform", "measure_accuracy", "measure_properties", "measure_strength_curve", "privatize_factors",
    "rank_factors", "strength_alphas",
]
