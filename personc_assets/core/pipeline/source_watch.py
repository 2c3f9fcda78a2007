"""When the source folders have changed, and when a change counts as handled.

The source sensor (``defs/sensors.py``) takes a cheap snapshot of the source
folders (sizes and modification times, see ``faces/ingest.snapshot_folders``)
and compares its digest with the digest the last *successful* refresh read. A
change asks for one refresh run; the change is handled — the cursor's
``refreshed`` digest moves on — only once that run has succeeded. A failed or
canceled refresh is asked for again, at most ``MAX_REFRESH_ATTEMPTS`` times per
change; then the sensor waits for the next change and says so.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Literal

#: Refresh runs asked for one change before the sensor stops asking and waits for the next change.
MAX_REFRESH_ATTEMPTS = 3

#: What became of the refresh run asked for the pending change (the sensor looks it up by its key).
RefreshState = Literal["absent", "running", "succeeded", "failed"]
#: What the sensor does on a tick.
Action = Literal["baseline", "unchanged", "wait", "refresh", "gave_up"]


@dataclass(frozen=True)
class WatchCursor:
    """The sensor's cursor: what was refreshed, and the change a refresh was asked for."""

    refreshed: str | None = None  # digest of the folders the last successful refresh read
    pending: str | None = None    # digest a refresh run was asked for and has not yet succeeded
    attempt: int = 0              # refresh runs asked for ``pending`` so far

    def encode(self) -> str:
        return json.dumps({"refreshed": self.refreshed, "pending": self.pending, "attempt": self.attempt},
                          sort_keys=True)

    @classmethod
    def decode(cls, text: str | None) -> "WatchCursor":
        """The cursor in ``text``; a bare digest (the cursor of earlier versions) counts as refreshed."""
        if not text:
            return cls()
        try:
            data = json.loads(text)
        except json.JSONDecodeError:
            return cls(refreshed=text)
        if not isinstance(data, dict):
            return cls(refreshed=text)
        return cls(data.get("refreshed"), data.get("pending"), int(data.get("attempt") or 0))

    @property
    def refresh_key(self) -> str:
        """Names the refresh run asked for ``pending`` (its run key): one per change and attempt."""
        if self.pending is None:
            raise ValueError("no refresh is pending, so there is no refresh key")
        return f"sources-{(self.refreshed or 'none')[:12]}-{self.pending[:12]}-{self.attempt}"


@dataclass(frozen=True)
class WatchStep:
    action: Action
    cursor: WatchCursor
    message: str


def next_step(cursor: WatchCursor, digest: str, pending_state: RefreshState) -> WatchStep:
    """The sensor's move given the folders' ``digest`` now and the state of the pending refresh run.

    ``pending_state`` is ignored when no refresh is pending.
    """
    if cursor.refreshed is None and cursor.pending is None:
        return WatchStep("baseline", WatchCursor(refreshed=digest), "baseline recorded")
    if cursor.pending is not None:
        if pending_state == "succeeded":
            cursor = WatchCursor(refreshed=cursor.pending)
        elif digest == cursor.pending:
            return _same_change(cursor, pending_state)
    if digest == cursor.refreshed:
        return WatchStep("unchanged", WatchCursor(refreshed=cursor.refreshed),
                         "no change since the last successful refresh")
    return WatchStep("refresh", WatchCursor(cursor.refreshed, digest, 1), "source folders changed")


def _same_change(cursor: WatchCursor, pending_state: RefreshState) -> WatchStep:
    """The folders still hold the change a refresh was asked for, which has not succeeded yet."""
    if pending_state != "failed":
        return WatchStep("wait", cursor, f"refresh {cursor.refresh_key} is queued or running")
    if cursor.attempt >= MAX_REFRESH_ATTEMPTS:
        return WatchStep("gave_up", cursor, (
            f"the refresh for this change failed {cursor.attempt} times (last: {cursor.refresh_key}); see that "
            "run's logs. Fix the cause, then change a source file or reset the sensor's cursor to try again"))
    retry = WatchCursor(cursor.refreshed, cursor.pending, cursor.attempt + 1)
    return WatchStep("refresh", retry, f"refresh {cursor.refresh_key} failed; asking again "
                                       f"(attempt {retry.attempt} of {MAX_REFRESH_ATTEMPTS})")
