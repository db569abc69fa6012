"""sbatch options, the ``--signal`` directive, and the renderer of the job scripts in ``slurm_templates/``.

Every value that reaches a script is quoted where it lands: ``shlex.quote`` on shell lines, and sbatch's own double
quotes on ``#SBATCH`` lines, which sbatch parses itself (no shell expands ``$`` there). Values with a line break or a
NUL byte are rejected, because no quoting keeps them on one ``#SBATCH`` line.
"""

from __future__ import annotations

import re
import shlex
import signal
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

from runner import protocol
from runner.preemption import DEFAULT_SIGNAL, UNCATCHABLE_SIGNALS, parse_signal
from runner.stop_reason import SIGNAL_LEAD_VAR

_CHECKOUT_TEMPLATES = Path(__file__).resolve().parents[2] / "slurm_templates"
_INSTALLED_TEMPLATES = Path(__file__).resolve().parents[1] / "slurm_templates"
TEMPLATES_DIR = _CHECKOUT_TEMPLATES if _CHECKOUT_TEMPLATES.is_dir() else _INSTALLED_TEMPLATES
"""The sbatch skeletons: ``slurm_templates/`` of a source checkout, else the copy that a wheel installs as
``runner/slurm_templates/``."""

LAYOUTS = {"single": "single_task.sbatch", "multi": "multi_task.sbatch"}
"""Template file of each job layout: one task started by ``exec``, or tasks started by ``srun``."""

DEFAULT_LEAD_S = 90
"""Seconds before the time limit that SLURM sends the preemption signal; 90 is also submitit's default."""

MAX_LEAD_S = 0xFFFF
"""sbatch rejects a ``--signal`` delay above 65535 seconds."""

RESERVED_OPTIONS = {
    "signal": "runner sets it, and the job must watch the same signal; use --signal",
    "requeue": "runner always sets it, so that the job can requeue itself",
    "no-requeue": "it would keep the job from requeueing itself; use --max-requeues 0 to end the job at its first stop",
    "open-mode": "runner sets it to append, so that the log keeps the output of earlier runs",
    "output": "runner sets the log path; choose its folder with --folder",
    "error": "runner sets the log path; choose its folder with --folder",
    **{name: f"it has its own option; use --{name}" for name in
       ("job-name", "partition", "time", "cpus-per-task", "gpus", "mem", "ntasks", "nodes")},
}
"""sbatch options that runner writes itself or that have their own option, with what to do instead. A second
directive of the same name would contradict runner's, and sbatch would take whichever comes last."""

_BARE_VALUE = re.compile(r"[A-Za-z0-9_@%+=:,./-]+")
_OPTION_NAME = re.compile(r"[a-z][a-z0-9-]*")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_PLACEHOLDER = re.compile(r"\{\{\s*([a-z_]+)\s*\}\}")
_TIME = re.compile(r"(?:(?P<days>\d+)-(?P<d_hours>\d+)(?::(?P<d_minutes>\d+)(?::(?P<d_seconds>\d+))?)?"
                   r"|(?P<hours>\d+):(?P<minutes>\d+):(?P<seconds>\d+)"
                   r"|(?P<m_minutes>\d+):(?P<m_seconds>\d+)"
                   r"|(?P<only_minutes>\d+))")
_MEMORY = re.compile(r"\d+[KMGT]?")
_GPUS = re.compile(r"(?:[A-Za-z0-9_.-]+:)?\d+")


@dataclass(frozen=True)
class SignalSpec:
    """The value of sbatch's ``--signal=[B:]SIG@LEAD``: which signal, to which processes, how long before the end.

    With ``B:`` (``batch_only`` true) SLURM signals only the batch shell; without it, only the processes of ``srun``
    steps. On preemption, with ``SlurmctldParameters=preempt_send_user_signal``, SLURM sends the same signal to the
    same processes. ``batch_only`` None means that the user did not write ``B:``, so the job layout chooses.
    """

    signal: signal.Signals = DEFAULT_SIGNAL
    lead_s: int = DEFAULT_LEAD_S
    batch_only: bool | None = None

    def __post_init__(self) -> None:
        if self.signal in UNCATCHABLE_SIGNALS:
            raise ValueError(f"invalid --signal {self.signal.name.removeprefix('SIG')}: no process can catch it, so "
                             "the job could not save before SLURM stops it; use USR1, USR2 or TERM")

    @classmethod
    def parse(cls, text: str) -> "SignalSpec":
        """Parse ``USR1``, ``USR1@90``, ``B:USR1@90`` or ``SIGUSR2@120``; the lead defaults to 90 s."""
        value = text.strip()
        batch_only = True if value.upper().startswith("B:") else None
        if batch_only:
            value = value[2:]
        name, _, lead = value.partition("@")
        try:
            lead_s = int(lead) if lead else DEFAULT_LEAD_S
        except ValueError:
            raise ValueError(f"invalid --signal {text!r}: the part after '@' must be whole seconds, "
                             "such as USR1@90") from None
        if not 0 <= lead_s <= MAX_LEAD_S:
            raise ValueError(f"invalid --signal {text!r}: the lead must be 0 to {MAX_LEAD_S} seconds")
        return cls(parse_signal(name), lead_s, batch_only)

    def directive_value(self) -> str:
        prefix = "B:" if self.batch_only else ""
        return f"{prefix}{self.signal.name.removeprefix('SIG')}@{self.lead_s}"

    def for_layout(self, batch_only: bool) -> "SignalSpec":
        """Return this spec with the target that a layout needs; raise ValueError when ``B:`` was given for steps."""
        if self.batch_only and not batch_only:
            raise ValueError(
                f"--signal {self.directive_value()} sends the signal only to the batch shell, but this job runs "
                f"its program as an srun step, so the program would never get it; drop the 'B:'")
        return SignalSpec(self.signal, self.lead_s, batch_only)


@dataclass(frozen=True)
class SbatchOptions:
    """sbatch's options for one job, named as sbatch names them. ``None`` leaves an option to the cluster's default."""

    job_name: str | None = None
    partition: str | None = None
    time: str | None = None
    """Time limit in sbatch's format: ``MINUTES``, ``MM:SS``, ``HH:MM:SS``, ``D-HH``, ``D-HH:MM`` or ``D-HH:MM:SS``."""
    cpus_per_task: int | None = None
    gpus: str | None = None
    """``N`` or ``TYPE:N``: GPUs for the whole job."""
    mem: str | None = None
    """Memory per node, such as ``4G`` or ``500M``."""
    ntasks: int | None = None
    nodes: int | None = None
    signal: SignalSpec = SignalSpec()
    extra: Mapping[str, str | bool] = field(default_factory=dict)
    """More directives, ``{"qos": "high", "exclusive": True}``: True writes the flag without a value."""

    def __post_init__(self) -> None:
        for name in ("job_name", "partition"):
            value = getattr(self, name)
            if value is not None and not str(value).strip():
                raise ValueError(f"invalid {_flag(name)} {value!r}: it must not be empty")
        if self.time is not None:
            time_limit_minutes(self.time)
        for name in ("cpus_per_task", "ntasks", "nodes"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f"invalid {_flag(name)} {value!r}: give a whole number, 1 or more")
        if self.mem is not None and not _MEMORY.fullmatch(self.mem):
            raise ValueError(f"invalid --mem {self.mem!r}: give a size such as 4G, 500M or 2048 (megabytes)")
        if self.gpus is not None and not _GPUS.fullmatch(self.gpus):
            raise ValueError(f"invalid --gpus {self.gpus!r}: give a count such as 2, or TYPE:COUNT such as a100:2")
        for key in self.extra:
            validate_extra_option(key)

    def directives(self) -> list[tuple[str, str | bool]]:
        """Return the ``(option, value)`` pairs of the set options, in a fixed order, ``--signal`` included."""
        pairs: list[tuple[str, str | bool]] = []
        for name in ("job_name", "partition", "time", "nodes", "ntasks", "cpus_per_task", "gpus", "mem"):
            value = getattr(self, name)
            if value is not None:
                pairs.append((name.replace("_", "-"), str(value)))
        pairs.append(("signal", self.signal.directive_value()))
        pairs.extend((key, value) for key, value in self.extra.items())
        return pairs


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def validate_option_name(name: str) -> None:
    if not _OPTION_NAME.fullmatch(name):
        raise ValueError(f"invalid sbatch option name {name!r}: use the long name without dashes, such as "
                         "qos or mail-type")


def validate_extra_option(name: str) -> None:
    """Raise ValueError unless ``name`` is a valid option name that runner does not write itself.

    sbatch 22.05 reads a unique prefix of a long option as the option, on ``#SBATCH`` lines too (``--sig=USR2@60``
    is ``--signal``), so a prefix of a reserved name is rejected as well.
    """
    validate_option_name(name)
    for reserved, advice in RESERVED_OPTIONS.items():
        if reserved.startswith(name):
            spelled = "" if reserved == name else f", which sbatch may read as --{reserved}"
            raise ValueError(f"invalid extra sbatch option {name!r}{spelled}: {advice}")


def time_limit_minutes(text: str) -> int | None:
    """Return a time limit in sbatch's format as whole minutes, rounded up; None for UNLIMITED or INFINITE."""
    value = text.strip()
    if value.upper() in ("UNLIMITED", "INFINITE"):
        return None
    match = _TIME.fullmatch(value)
    if match is None:
        raise ValueError(f"invalid --time {text!r}: use MINUTES, MM:SS, HH:MM:SS, D-HH, D-HH:MM or D-HH:MM:SS, "
                         "such as 30 or 2:00:00")
    parts = {key: int(number) for key, number in match.groupdict().items() if number is not None}
    seconds = (parts.get("days", 0) * 86400
               + (parts.get("d_hours", 0) + parts.get("hours", 0)) * 3600
               + (parts.get("d_minutes", 0) + parts.get("minutes", 0) + parts.get("m_minutes", 0)
                  + parts.get("only_minutes", 0)) * 60
               + parts.get("d_seconds", 0) + parts.get("seconds", 0) + parts.get("m_seconds", 0))
    return -(-seconds // 60)


def check_one_line(value: str) -> None:
    """Raise ValueError naming ``value`` when it contains a line break or NUL byte, which would end a directive."""
    if "\n" in value or "\r" in value or "\0" in value:
        raise ValueError(f"invalid #SBATCH value {value!r}: it contains a line break or NUL byte, which would end "
                         "the directive; remove it")


def quote_directive_value(value: str) -> str:
    """Quote a value for an ``#SBATCH`` line, which sbatch splits at blanks and reads ``"``, ``\\"`` and ``\\\\`` in.

    sbatch 22.05 reads ``--job-name="a b\\"c"`` as ``a b"c``. A line break or NUL byte cannot be quoted there.
    """
    check_one_line(value)
    if _BARE_VALUE.fullmatch(value):
        return value
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def directive_lines(pairs: Sequence[tuple[str, str | bool]]) -> list[str]:
    lines = []
    for key, value in pairs:
        validate_option_name(key)
        if value is True:
            lines.append(f"#SBATCH --{key}")
        elif value is not False:
            lines.append(f"#SBATCH --{key}={quote_directive_value(str(value))}")
    return lines


def export_lines(environment: Mapping[str, str]) -> list[str]:
    lines = []
    for name, value in environment.items():
        if not _ENV_NAME.fullmatch(name):
            raise ValueError(f"invalid environment variable name {name!r}: use letters, digits and _, "
                             "not starting with a digit")
        lines.append(f"export {name}={shlex.quote(str(value))}")
    return lines


def render(template_text: str, sections: Mapping[str, str]) -> str:
    """Replace each ``{{ name }}`` in the template with ``sections[name]``, text that the caller has quoted.

    Raise ValueError when the template uses a section that is not given, or a section is given that it does not use.
    """
    used = set(_PLACEHOLDER.findall(template_text))
    missing = sorted(used - set(sections))
    unused = sorted(set(sections) - used)
    if missing or unused:
        raise ValueError(f"template and sections do not match: missing {missing}, not in the template {unused}")
    return _PLACEHOLDER.sub(lambda match: sections[match.group(1)], template_text)


def render_job_script(layout: str, command: Sequence[str], options: SbatchOptions, output: str,
                      environment: Mapping[str, str] | None = None, templates_dir: Path = TEMPLATES_DIR) -> str:
    """Fill the template of ``layout`` (``single`` or ``multi``) with the job's directives, exports and command.

    ``output`` is sbatch's ``--output`` pattern, such as ``logs/%j.out``. The signal target follows the layout:
    ``B:`` for ``single``, where Python replaces the batch shell, and none for ``multi``, where SLURM signals the
    ``srun`` tasks.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"unknown job layout {layout!r}; use one of {sorted(LAYOUTS)}")
    if not command:
        raise ValueError("the job's command is empty; give the program and its arguments")
    signal_spec = options.signal.for_layout(batch_only=layout == "single")
    pairs = [*_replace_signal(options.directives(), signal_spec), ("output", output)]
    exports = {**job_exports(signal_spec), **(environment or {})}
    template_text = (templates_dir / LAYOUTS[layout]).read_text()
    return render(template_text, {
        "directives": "\n".join(directive_lines(pairs)),
        "environment": "\n".join(export_lines(exports)),
        "command": shlex.join(str(word) for word in command),
    })


def _replace_signal(pairs: list[tuple[str, str | bool]], spec: SignalSpec) -> list[tuple[str, str | bool]]:
    return [(key, spec.directive_value() if key == "signal" else value) for key, value in pairs]


def job_exports(spec: SignalSpec) -> dict[str, str]:
    """Return the variables that tell runner inside the job which signal to watch and how early it comes."""
    return {protocol.PREEMPT_SIGNAL_VAR: spec.signal.name.removeprefix("SIG"), SIGNAL_LEAD_VAR: str(spec.lead_s)}
