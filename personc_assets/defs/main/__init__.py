"""The main pipeline: sources → backbone → factors and indexes → candidates → guard → ICS reports.

Its assets (group ``personc``), the checks on the released faces, the
``personc_main`` job and the daily regeneration schedule.
"""

from dagster import Definitions, load_assets_from_modules

from . import assets
from .checks import released_faces_below_tau, released_faces_mix_both_groups
from .jobs import daily_regeneration, main_job

defs = Definitions(
    assets=load_assets_from_modules([assets]),
    asset_checks=[released_faces_below_tau, released_faces_mix_both_groups],
    jobs=[main_job],
    schedules=[daily_regeneration],
)
