"""Older checkpoints kept beside the newest one, as fallbacks when the newest cannot be loaded.

The checkpoint path always contains the newest checkpoint. Before a save renames its temp file over it, the current
one gets a numbered name beside it, ``<checkpoint>.<n>``, with n one higher than any number in use: a hard link,
which is atomic and copies nothing. After the rename, numbered checkpoints of the same run beyond the newest
``keep - 1`` are removed. A kill at any point leaves at least the previous checkpoints in place: before the rename the checkpoint
path and its newest numbered name are one file, and an interrupted clean-up only leaves extra files that the next
save removes. A save needs room for ``keep + 1`` checkpoints while it runs.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import shutil

from runner.checkpoint import discard, faults, fileformat, known_good, locks, tempfiles
from runner.errors import CheckpointError

logger = logging.getLogger(__name__)

_NO_HARD_LINKS = {errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EMLINK, errno.ENOSYS}
_LINK_ATTEMPTS = 8


def numbered_checkpoints(path: str) -> list[tuple[int, str]]:
    """Return ``(n, path)`` of each ``<path>.<n>`` beside ``path``, highest n (newest) first."""
    folder, name = os.path.split(path)
    pattern = re.escape(name) + r"\.([0-9]+)"
    try:
        entries = os.listdir(folder or ".")
    except (FileNotFoundError, NotADirectoryError):
        return []
    found = []
    for entry in entries:
        match = re.fullmatch(pattern, entry)
        if match:
            found.append((int(match.group(1)), os.path.join(folder, entry)))
    return sorted(found, reverse=True)


def family_of(path: str) -> str:
    """Return the checkpoint path of which ``path`` is a kept copy (``c.pkl`` for ``c.pkl.3``), or ``path`` itself.

    Loading a kept copy takes its family's lock, which saves hold while they rename kept copies.
    """
    match = re.fullmatch(r"(.+)\.[0-9]+", path)
    if match is None:
        return path
    base = match.group(1)
    return base if os.path.isfile(base) or os.path.lexists(locks.lock_path(base)) else path


def keep_current(path: str, keep: int) -> str | None:
    """Give the checkpoint at ``path`` its next numbered name, unless ``keep`` is 1 or it has one; return the name."""
    if keep <= 1:
        return None
    try:
        current = os.stat(path)
    except FileNotFoundError:
        return None
    if not _intact(path):
        return None
    numbered = numbered_checkpoints(path)
    if numbered and _same_file(numbered[0][1], current):
        return None  # an earlier save linked it and was killed before its rename
    number = numbered[0][0] + 1 if numbered else 1
    for attempt in range(_LINK_ATTEMPTS):
        target = f"{path}.{number + attempt}"
        try:
            _link_or_copy(path, target)
        except FileExistsError:
            continue
        faults.reached("linked")
        return target
    raise FileExistsError(errno.EEXIST, f"numbered names up to {target} are all taken", target)


def prune(path: str, keep: int, run_id: str | None) -> list[str]:
    """Remove numbered checkpoints of run ``run_id`` beyond the newest ``keep - 1``; return their paths.

    A numbered file that is not a runner checkpoint, or that belongs to another run, is neither counted nor
    removed: ``<path>.<n>`` could be a file of the user's or another run's checkpoint path. Each file to remove
    is renamed to a trash name and unlinked by a worker thread (see ``discard``). A file that cannot be
    removed is logged and left for the next save, because the new checkpoint is committed by then and the save
    must not fail.
    """
    removed, renamed = [], []
    own = [old_path for _, old_path in numbered_checkpoints(path) if _belongs_to_run(old_path, run_id)]
    for old_path in own[keep - 1:]:
        faults.reached("pruning")
        trash = tempfiles.trash_path_for(path)
        try:
            os.rename(old_path, trash)
        except FileNotFoundError:
            continue
        except OSError as error:
            logger.warning("could not remove old checkpoint %s: %s; the next save tries again", old_path, error)
            continue
        logger.debug("removed old checkpoint %s", old_path)
        removed.append(old_path)
        renamed.append(trash)
    discard.unlink_later(renamed)
    faults.reached("pruned")
    return removed


def _belongs_to_run(path: str, run_id: str | None) -> bool:
    """Return whether ``path`` is a runner checkpoint of ``run_id``, or a runner file too damaged to tell its run."""
    try:
        with open(path, "rb") as file:
            if file.read(len(fileformat.MAGIC)) != fileformat.MAGIC:
                return False
            header = fileformat.read_header(file, path)
    except CheckpointError:
        return True
    except OSError:
        return False
    return header.get("run_id") == run_id


def _intact(path: str) -> bool:
    """Return whether the checkpoint at ``path`` is intact, so that a damaged or unfinished one does not take a
    fallback slot and push out a valid one.

    The commit record is always checked. The whole file is read only when this process neither committed nor
    verified it before (see ``known_good``), as for a checkpoint that another process wrote and this one never loaded.
    """
    try:
        with open(path, "rb") as file:
            fileformat.check_commit_record(file, path)
            if not known_good.is_known(os.fstat(file.fileno())):
                fileformat.verify(file, path)
    except CheckpointError as error:
        logger.warning("not keeping %s as a fallback: %s", path, error)
        return False
    except OSError:
        return True  # the rename replaces it anyway; the link attempt reports a real error
    return True


def _same_file(path: str, other: os.stat_result) -> bool:
    try:
        return os.path.samestat(os.stat(path), other)
    except FileNotFoundError:
        return False


def _link_or_copy(path: str, target: str) -> None:
    try:
        os.link(path, target, follow_symlinks=False)
    except OSError as error:
        if error.errno not in _NO_HARD_LINKS:
            raise
        logger.warning("the filesystem of %s has no hard links (%s), so the previous checkpoint is copied to %s",
                       path, os.strerror(error.errno), target)
        _copy_durably(path, target)


def _copy_durably(path: str, target: str) -> None:
    """Copy ``path`` to ``target`` through a temp file, so ``target`` appears only complete."""
    fd, temp_path = tempfiles.create_temp(path)
    try:
        with open(path, "rb") as source, os.fdopen(fd, "wb") as copy:
            shutil.copyfileobj(source, copy)
            copy.flush()
            os.fsync(copy.fileno())
        if os.path.lexists(target):
            raise FileExistsError(errno.EEXIST, "numbered checkpoint exists", target)
        os.rename(temp_path, target)
    except BaseException:
        tempfiles.remove_temp(temp_path)
        raise
