"""The main job and its daily schedule.

The main job runs in-process: the graph is a chain whose steps share loaded
models, and the multiprocess executor costs 3–7 s per step on a 2-core
machine for no parallelism in return.
"""


import datetime as dt

from dagster import (AssetSelection, DefaultScheduleStatus, RunRequest, ScheduleEvaluationContext,
                     define_asset_job, in_process_executor, schedule)

main_job = define_asset_job(
    "personc_main", selection=AssetSelection.groups("personc"), executor_def=in_process_executor,
    description="Ingest sources, fit the backbone, build indexes, generate, guard, release and explain.")


@schedule(job=main_job, cron_schedule="0 3 * * *", default_status=DefaultScheduleStatus.STOPPED,
          description="Daily regeneration of new faces with a fresh seed (off until enabled in the UI).")
def daily_regeneration(context: ScheduleEvaluationContext) -> RunRequest:
    when = context.scheduled_execution_time or dt.datetime.now(dt.timezone.utc)
    seed = int(when.strftime("%Y%m%d"))
    return RunRequest(run_key=f"regenerate-{seed}",
                      run_config={"resources": {"personc": {"config": {"seed": seed}}}},
                      tags={"personc/seed": str(seed)})
