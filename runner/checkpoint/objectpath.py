"""Paths to objects inside a strategy, written as Python expressions such as ``plugins[2].iterator``.

``save_checkpoint(exclude=...)`` takes them, and the error for unpicklable state prints them, so that the path in
the error can be pasted into ``exclude``.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from typing import Any

_NAME = re.compile(r"[^\W\d]\w*")
_NEXT_STEP = re.compile(
    r"""\.(?P<attribute>[^\W\d]\w*)
      | \[(?P<index>-?[0-9]+)\]
      | \[(?P<key>'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*")\]""",
    re.VERBOSE,
)


@dataclass(frozen=True)
class Step:
    """One step of a path: an attribute (``.name``) or an item (``[0]``, ``['key']``)."""

    value: Any
    is_attribute: bool

    def __str__(self) -> str:
        return f".{self.value}" if self.is_attribute else f"[{self.value!r}]"


def attribute(name: str) -> Step:
    return Step(name, True)


def item(key: Any) -> Step:
    return Step(key, False)


def parse(path: str) -> tuple[Step, ...]:
    """Parse ``path`` relative to the strategy, for example ``"optimizer"`` or ``"plugins[2].iterator"``."""
    if not isinstance(path, str):
        raise TypeError(f"an object path must be a str such as 'plugins[2].iterator', not {path!r}")
    match = _NAME.match(path)
    if match is None:
        raise ValueError(f"invalid object path {path!r}: it must start with the name of an attribute of the strategy")
    steps = [attribute(match.group())]
    position = match.end()
    while position < len(path):
        match = _NEXT_STEP.match(path, position)
        if match is None:
            raise ValueError(
                f"invalid object path {path!r} at character {position}: write attributes and items as in Python, "
                "relative to the strategy, for example 'optimizer' or \"plugins[2].iterator\"")
        if match["attribute"] is not None:
            steps.append(attribute(match["attribute"]))
        elif match["index"] is not None:
            steps.append(item(int(match["index"])))
        else:
            steps.append(item(ast.literal_eval(match["key"])))
        position = match.end()
    return tuple(steps)


def format_path(steps: tuple[Step, ...] | list[Step], root: str = "") -> str:
    """Write ``steps`` back as a path; ``root`` (such as ``"strategy"``) is put in front when given."""
    text = "".join(str(step) for step in steps)
    return root + text if root else text.removeprefix(".")


def resolve(root: Any, steps: tuple[Step, ...] | list[Step]) -> Any:
    """Follow ``steps`` from ``root``; raise AttributeError, KeyError, IndexError or TypeError if one is missing."""
    target = root
    for step in steps:
        target = getattr(target, step.value) if step.is_attribute else target[step.value]
    return target
