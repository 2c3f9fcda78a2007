"""A compact progress display for command-line runs of the asset graph.

Dagster's console logger prints every engine event; on a terminal a person
wants one bar over the steps, the step's own progress messages beside it, and
warnings and errors in full.
"""

import logging
import sys

from dagster import InitLoggerContext, logger
from tqdm import tqdm

STEP_EVENTS = {"STEP_START", "STEP_SUCCESS", "STEP_FAILURE", "STEP_SKIPPED"}


class ProgressHandler(logging.Handler):
    """Drives a tqdm bar from Dagster step events and shows user messages as its postfix."""

    def __init__(self, total_steps: int) -> None:
        super().__init__(level=logging.DEBUG)
        self.total_steps = total_steps
        self._bar: tqdm | None = None
        self._closed = False

    @property
    def bar(self) -> tqdm:
        if self._bar is None:  # created on the first event: Dagster may build loggers it never uses
            self._bar = tqdm(total=self.total_steps, unit="step", file=sys.stderr, dynamic_ncols=True,
                             bar_format="{l_bar}{bar:20}| {n_fmt}/{total_fmt} steps [{elapsed}] {postfix}")
        return self._bar

    def emit(self, record: logging.LogRecord) -> None:
        meta = getattr(record, "dagster_meta", None) or {}
        event = meta.get("dagster_event")
        kind = getattr(event, "event_type_value", None)
        step = meta.get("step_key") or ""
        message = str(meta.get("orig_message", record.getMessage()))
        if self._closed or (event is None and record.levelno < logging.INFO):
            return
        if kind == "STEP_START":
            self.bar.set_description(step)
            self.bar.set_postfix_str("")
        elif kind in ("STEP_SUCCESS", "STEP_SKIPPED"):
            self.bar.update(1)
        elif kind == "STEP_FAILURE" or (event is None and record.levelno >= logging.WARNING):
            self.bar.write(f"{record.levelname} {step}: {message}")
        elif event is None and record.levelno >= logging.INFO:
            self.bar.set_postfix_str(message[:70])
        if kind in ("PIPELINE_SUCCESS", "PIPELINE_FAILURE", "RUN_SUCCESS", "RUN_FAILURE"):
            self.bar.close()
            self._closed = True


@logger(config_schema={"total_steps": int}, description="one progress bar over the run's steps")
def progress_logger(init_context: InitLoggerContext) -> logging.Logger:
    log = logging.Logger("personc.progress", level=logging.DEBUG)
    log.addHandler(ProgressHandler(init_context.logger_config["total_steps"]))
    return log
