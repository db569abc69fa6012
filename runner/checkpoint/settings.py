"""Checkpoint settings that a call's arguments give or, failing that, the environment.

=============================  ====================================================================  ============
variable                       sets                                                                  default
=============================  ====================================================================  ============
``RUNNER_KEEP_CHECKPOINTS``    how many committed checkpoints a save keeps, the newest included      2
``RUNNER_LOCK``                ``flock`` (kernel lock) or ``soft`` (a marker file, for filesystems   ``flock``
                               without working ``flock``)
``RUNNER_RUN_ID``              the run that checkpoints belong to; another run's are not loaded      none
``RUNNER_TRUST_CHECKPOINTS``   ``1`` loads checkpoints that another user owns or could have written  unset
=============================  ====================================================================  ============
"""

from __future__ import annotations

import math
import os
from typing import Any

KEEP_ENV_VAR = "RUNNER_KEEP_CHECKPOINTS"
LOCK_ENV_VAR = "RUNNER_LOCK"
RUN_ID_ENV_VAR = "RUNNER_RUN_ID"
TRUST_ENV_VAR = "RUNNER_TRUST_CHECKPOINTS"

DEFAULT_KEEP = 2
"""The newest checkpoint and one fallback: enough to survive one damaged file at twice the disk space of one."""
LOCK_KINDS = ("flock", "soft")
_MAX_RUN_ID_CHARS = 200


def resolve_keep(keep: int | None) -> int:
    """Return ``keep``, else ``RUNNER_KEEP_CHECKPOINTS``, else 2; raise ValueError unless it is a whole number >= 1."""
    if keep is None:
        text = os.environ.get(KEEP_ENV_VAR, "").strip()
        if not text:
            return DEFAULT_KEEP
        try:
            keep = int(text)
        except ValueError:
            raise ValueError(
                f"{KEEP_ENV_VAR}={text!r} is not a whole number: set it to 1 or more, or unset it to keep "
                f"{DEFAULT_KEEP}") from None
        source = f"{KEEP_ENV_VAR}={text}"
    else:
        source = f"keep={keep!r}"
    if isinstance(keep, bool) or not isinstance(keep, int) or keep < 1:
        raise ValueError(f"invalid {source}: give the number of checkpoints to keep, 1 or more")
    return keep


def resolve_lock_kind(lock: str | None) -> str:
    """Return ``lock``, else ``RUNNER_LOCK``, else ``flock``; raise ValueError for any other kind."""
    source = f"lock={lock!r}"
    if lock is None:
        lock = os.environ.get(LOCK_ENV_VAR, "").strip() or "flock"
        source = f"{LOCK_ENV_VAR}={lock}"
    if lock not in LOCK_KINDS:
        raise ValueError(f"invalid {source}: use 'flock' (the default) or 'soft' on filesystems without flock")
    return lock


def check_lock_timeout(timeout_s: Any) -> float:
    """Return ``timeout_s`` as a float; raise for anything but a number of seconds (negative waits forever)."""
    if isinstance(timeout_s, bool) or not isinstance(timeout_s, (int, float)):
        raise TypeError(f"invalid lock_timeout_s={timeout_s!r}: give a number of seconds, such as 30")
    if math.isnan(timeout_s):
        raise ValueError("invalid lock_timeout_s=nan: give a number of seconds, such as 30")
    return float(timeout_s)


def resolve_run_id(run_id: str | None) -> str | None:
    """Return ``run_id``, else ``RUNNER_RUN_ID``, else None; raise ValueError for an empty or unprintable id."""
    source = f"run_id={run_id!r}"
    if run_id is None:
        run_id = os.environ.get(RUN_ID_ENV_VAR)
        if run_id is None:
            return None
        source = f"{RUN_ID_ENV_VAR}={run_id!r}"
    if not isinstance(run_id, str) or not run_id.strip() or not run_id.isprintable():
        raise ValueError(f"invalid {source}: a run id is a non-empty string of printable characters")
    if len(run_id) > _MAX_RUN_ID_CHARS:
        raise ValueError(f"invalid {source}: a run id has at most {_MAX_RUN_ID_CHARS} characters")
    return run_id


def trust_from_environment() -> bool:
    return os.environ.get(TRUST_ENV_VAR) == "1"
