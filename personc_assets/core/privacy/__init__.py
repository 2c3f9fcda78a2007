"""Privacy modes on PersonC's factor model (backbone-agnostic, framework-free).

- ``disentangle``: how much identity each factor carries (per unit of change);
- ``anonymize``: feature-preserving de-identification of one face, guard-checked;
- ``cancelable``: keyed, revocable synthetic templates;
- ``attributes`` + ``dp``: age/gender directions and differentially private
  attribute coordinates with a DuckDB privacy ledger.
"""

from .anonymize import Anonymized, AnonymizeKnobs, Anonymizer, measure_strength_curve, strength_alphas
from .attributes import (AgeGenderLabeller, AttributeDirection, FaceAttributes, LabellerUnavailableError,
                         fit_direction)
from .cancelable import (CancelableEnroller, CancelableKeyError, CancelableKnobs, Template, derive_seed, key_id,
                         measure_properties)
from .disentangle import FactorRanking, rank_factors
from .dp import BudgetExceededError, DPSpec, PrivacyBudget, PrivacyLedger, measure_accuracy, privatize_factors
from .lineage import PRIVACY_TABLES, ensure_privacy_schema
from .population import FactorScale, IdentityProbe, Population

__all__ = [
    "AgeGenderLabeller", "Anonymized", "AnonymizeKnobs", "Anonymizer", "AttributeDirection", "BudgetExceededError",
    "CancelableEnroller", "CancelableKeyError", "CancelableKnobs", "DPSpec", "FaceAttributes", "FactorRanking",
    "FactorScale", "IdentityProbe", "LabellerUnavailableError", "PRIVACY_TABLES", "Population", "PrivacyBudget",
    "PrivacyLedger", "Template", "derive_seed", "ensure_privacy_schema", "fit_direction", "key_id",
    "measure_accuracy", "measure_properties", "measure_strength_curve", "privatize_factors", "rank_factors",
    "strength_alphas",
]
