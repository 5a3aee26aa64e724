"""From measured runs to figures: medians and spreads, ratios to kubetune round by round,
model FLOP utilisation, the checks that void a comparison, a printed table and JSON."""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from bench.contenders import KUBETUNE, KUBETUNES, ROW_BATCHED
from bench.workload import Setting

DEFAULT_TOLERANCE = 0.03
"""Largest relative difference of eval loss from kubetune's before a comparison is void."""
BUSY_SHARE = 0.8
"""A CPU run whose training loop had less than this share of its threads' CPU time was
slowed by other work on the machine."""


@dataclass(frozen=True)
class Run:
    """One contender's run in one round, with the figures computed from it."""

    contender: str
    round: int
    wall_seconds: float
    train_seconds: float
    tokens: int
    """Trained (non-padding) tokens."""
    steps: int
    peak_rss_mib: float
    cpu_share: float
    """CPU time of the training loop over (its wall time x the trainer's threads)."""
    busy_before: float
    """Share of the machine's CPUs other work used just before the run started."""
    attempts: int
    """Runs made to get this one (others were slowed by other work on the machine)."""
    eval_loss: float
    model_flops: float
    matmul_flops_per_second: float
    """A plain matrix product of the model's shapes, measured before the round began."""
    tokens_counted: int | None = None
    """Trained tokens as the contender counted them, where it says."""
    accelerator_peak_mib: float | None = None
    """Peak accelerator memory allocated by the trainer (GPU runs)."""

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.train_seconds

    @property
    def memory_mib(self) -> float:
        """The memory that counts: the accelerator's on GPU runs, resident memory on CPU runs."""
        return self.accelerator_peak_mib if self.accelerator_peak_mib is not None else self.peak_rss_mib

    @property
    def slowed(self) -> bool:
        """Whether other work on the machine took the CPUs from this run (CPU runs only)."""
        return self.accelerator_peak_mib is None and self.cpu_share < BUSY_SHARE


@dataclass(frozen=True)
class Spread:
    median: float
    low: float
    high: float

    @classmethod
    def of(cls, values: Sequence[float]) -> Spread:
        return cls(statistics.median(values), min(values), max(values))


@dataclass
class SettingReport:
    """Every run of one setting (one table), in the order they ran."""

    setting: Setting
    title: str
    steps: int
    tokens: int
    flops_formula: str
    runs: list[Run] = field(default_factory=list)
    tolerance: float = DEFAULT_TOLERANCE
    estimate_mib: float | None = None
    """`kubetune estimate`'s memory per device for kubetune's run, to hold against the
    accelerator memory it measured."""

    def estimate_error(self) -> float | None:
        """How far the estimate is from kubetune's measured peak accelerator memory, as a
        fraction of the measured figure (positive: the estimate is higher); None on a CPU."""
        measured = [run.accelerator_peak_mib for run in self.counted(KUBETUNE) if run.accelerator_peak_mib]
        if self.estimate_mib is None or not measured:
            return None
        peak = statistics.median(measured)
        return (self.estimate_mib - peak) / peak

    @property
    def contenders(self) -> list[str]:
        return list(dict.fromkeys(run.contender for run in self.runs))

    def of(self, contender: str) -> list[Run]:
        return [run for run in self.runs if run.contender == contender]

    def counted(self, contender: str) -> list[Run]:
        """The contender's runs the figures come from: those other work did not slow, if any."""
        runs = self.of(contender)
        return [run for run in runs if not run.slowed] or runs

    def spread(self, contender: str, figure: Callable[[Run], float]) -> Spread:
        return Spread.of([figure(run) for run in self.counted(contender)])

    def ratio(self, contender: str, figure: Callable[[Run], float], kubetune_over_other: bool) -> Spread | None:
        """kubetune's figure over the contender's (or the other way round), round by round:
        over the rounds where neither run was slowed, if there are any."""
        if contender == KUBETUNE:
            return None
        mine = {run.round: run for run in self.of(KUBETUNE)}
        theirs = {run.round: run for run in self.of(contender)}
        rounds = sorted(mine.keys() & theirs.keys())
        clean = [r for r in rounds if not (mine[r].slowed or theirs[r].slowed)]
        pairs = [(figure(mine[r]), figure(theirs[r])) for r in clean or rounds]
        if not pairs:
            return None
        return Spread.of([a / b if kubetune_over_other else b / a for a, b in pairs])

    def ceiling(self) -> float:
        """The matrix-product rate of the model's shapes: the best measured (other work only
        ever lowers it)."""
        return max(run.matmul_flops_per_second for run in self.runs)

    def mfu(self, run: Run) -> float:
        """Model FLOP utilisation: the run's achieved model FLOP rate over the ceiling."""
        return run.model_flops / run.train_seconds / self.ceiling()

    def fastest_trl(self) -> str | None:
        """The TRL configuration with the most trained tokens per second (median over rounds)."""
        trl = [c for c in self.contenders if c not in KUBETUNES]
        return max(trl, key=lambda c: self.spread(c, lambda run: run.tokens_per_second).median, default=None)

    def problems(self) -> list[str]:
        """Why the comparison is void, if it is: unequal work or unequal result."""
        out = []
        for run in self.runs:
            # Whole packed rows make a step count near the others', within a quarter.
            slack = max(1, self.steps // 4) if run.contender in ROW_BATCHED else 0
            if abs(run.steps - self.steps) > slack:
                out.append(f"{run.contender} round {run.round} ran {run.steps} optimizer steps, not {self.steps}")
            if run.tokens_counted is not None and run.tokens_counted != self.tokens:
                out.append(
                    f"{run.contender} round {run.round} counted {run.tokens_counted} trained tokens, not {self.tokens}"
                )
        if KUBETUNE in self.contenders:
            reference = self.spread(KUBETUNE, lambda run: run.eval_loss).median
            for contender in self.contenders:
                loss = self.spread(contender, lambda run: run.eval_loss).median
                if abs(loss - reference) > self.tolerance * reference:
                    out.append(
                        f"eval loss of {contender} ({loss:.4f}) differs from kubetune's ({reference:.4f}) "
                        f"by more than {self.tolerance:.0%}"
                    )
        return out

    def slowed(self) -> list[Run]:
        return [run for run in self.runs if run.slowed]

    def as_dict(self) -> dict[str, Any]:
        contenders: dict[str, Any] = {}
        for contender in self.contenders:
            figures = {
                "wallSeconds": self.spread(contender, lambda run: run.wall_seconds),
                "trainSeconds": self.spread(contender, lambda run: run.train_seconds),
                "tokensPerSecond": self.spread(contender, lambda run: run.tokens_per_second),
                "peakRssMiB": self.spread(contender, lambda run: run.peak_rss_mib),
                "acceleratorPeakMiB": self.spread(contender, lambda run: run.accelerator_peak_mib or 0.0),
                "evalLoss": self.spread(contender, lambda run: run.eval_loss),
                "mfu": self.spread(contender, self.mfu),
                "kubetuneSpeedup": self.ratio(contender, lambda run: run.tokens_per_second, True),
                "wallOverKubetune": self.ratio(contender, lambda run: run.wall_seconds, False),
                "memoryOverKubetune": self.ratio(contender, lambda run: run.memory_mib, False),
            }
            contenders[contender] = {key: asdict(value) if value else None for key, value in figures.items()}
        fastest = self.fastest_trl()
        speedup = self.ratio(fastest, lambda run: run.tokens_per_second, True) if fastest else None
        return {
            "setting": self.setting.name,
            "method": self.setting.method,
            "precision": self.setting.precision,
            "zero3": self.setting.zero3,
            "tolerance": self.tolerance,
            "fastestTrl": fastest,
            "kubetuneSpeedupOverFastestTrl": asdict(speedup) if speedup else None,
            "title": self.title,
            "steps": self.steps,
            "trainedTokens": self.tokens,
            "flopsFormula": self.flops_formula,
            "void": bool(self.problems()),
            "problems": self.problems(),
            "ceilingFlopsPerSecond": self.ceiling(),
            "estimateMiB": self.estimate_mib,
            "estimateError": self.estimate_error(),
            "slowedRuns": len(self.slowed()),
            "contenders": contenders,
            "runs": [
                asdict(run) | {"tokensPerSecond": run.tokens_per_second, "mfu": self.mfu(run), "slowed": run.slowed}
                for run in self.runs
            ],
        }

    @classmethod
    def from_dict(cls, document: dict[str, Any]) -> SettingReport:
        """A report back from its JSON (to print the tables of an earlier run)."""
        names = {f.name for f in fields(Run)}
        return cls(
            setting=Setting(document["method"], document["precision"], document["zero3"]),
            title=document["title"],
            steps=document["steps"],
            tokens=document["trainedTokens"],
            flops_formula=document["flopsFormula"],
            runs=[Run(**{k: v for k, v in run.items() if k in names}) for run in document["runs"]],
            tolerance=document["tolerance"],
            estimate_mib=document.get("estimateMiB"),
        )


# ----------------------------------------------------------------------------- the table

ESTIMATE_TARGET = 0.15
"""How close `kubetune estimate` should come to the measured peak accelerator memory."""

COLUMNS = (
    "contender",
    "wall s",
    "train s",
    "tokens/s",
    "peak RSS (/ GPU) MiB",
    "eval loss",
    "kubetune speed-up",
    "wall vs kubetune",
    "memory vs kubetune",
)


def render(report: SettingReport) -> str:
    """The table of one setting: medians over the rounds; ratios as median (low-high)."""
    rows = [list(COLUMNS)]
    for contender in report.contenders:
        speedup = report.ratio(contender, lambda run: run.tokens_per_second, True)
        wall = report.ratio(contender, lambda run: run.wall_seconds, False)
        memory = report.ratio(contender, lambda run: run.memory_mib, False)
        rows.append(
            [
                contender,
                f"{report.spread(contender, lambda run: run.wall_seconds).median:.1f}",
                f"{report.spread(contender, lambda run: run.train_seconds).median:.1f}",
                f"{report.spread(contender, lambda run: run.tokens_per_second).median:,.0f}",
                _memory(report, contender),
                f"{report.spread(contender, lambda run: run.eval_loss).median:.4f}",
                _ratio(speedup),
                _ratio(wall),
                _ratio(memory),
            ]
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    lines = [f"== {report.setting.name}: {report.title}"]
    for index, row in enumerate(rows):
        cells = [
            cell.ljust(width) if i == 0 else cell.rjust(width)
            for i, (cell, width) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append("  ".join(cells))
        if index == 0:
            lines.append("  ".join("-" * width for width in widths))
    if KUBETUNE in report.contenders:
        kubetune = report.counted(KUBETUNE)
        mfu = report.spread(KUBETUNE, report.mfu)
        achieved = statistics.median(run.model_flops / run.train_seconds for run in kubetune) / 1e9
        ceiling = report.ceiling() / 1e9
        lines.append(
            f"ceiling: kubetune reaches {achieved:,.1f} GFLOP/s = {mfu.median:.1%} ({mfu.low:.1%}-{mfu.high:.1%}) "
            f"of a plain {report.setting.precision} matrix product of the model's shapes ({ceiling:,.1f} GFLOP/s)"
        )
    error = report.estimate_error()
    if error is not None and report.estimate_mib is not None:
        lines.append(
            f"memory estimate: kubetune estimate says {report.estimate_mib:,.0f} MiB per device, kubetune's run "
            f"peaked at {report.estimate_mib / (1 + error):,.0f} MiB allocated: {error:+.1%} "
            f"({'within' if abs(error) <= ESTIMATE_TARGET else 'outside'} the {ESTIMATE_TARGET:.0%} target)"
        )
    fastest = report.fastest_trl()
    speedup = report.ratio(fastest, lambda run: run.tokens_per_second, True) if fastest else None
    if fastest and speedup:
        lines.append(f"fastest TRL: {fastest}; kubetune's speed-up over it: {_ratio(speedup)}")
    lines.append(f"model FLOPs: {report.flops_formula}")
    for contender in ROW_BATCHED & set(report.contenders):
        steps = sorted({run.steps for run in report.of(contender)})
        lines.append(
            f"note: {contender} batches packed rows, not examples: one epoch of the same tokens in "
            f"{'/'.join(map(str, steps))} steps (the others: {report.steps})"
        )
    slowed = report.slowed()
    if slowed:
        lines.append(
            f"note: other work on the machine slowed {len(slowed)} of {len(report.runs)} runs (their training loops "
            f"had as little as {min(run.cpu_share for run in slowed):.0%} of their threads' CPU time); the figures "
            "leave them out where the same contender has runs it did not slow"
        )
    problems = report.problems()
    lines += [f"VOID: {problem}" for problem in problems]
    return "\n".join(lines)


def _memory(report: SettingReport, contender: str) -> str:
    host = f"{report.spread(contender, lambda run: run.peak_rss_mib).median:,.0f}"
    if report.of(contender)[0].accelerator_peak_mib is None:
        return host
    return f"{host} / {report.spread(contender, lambda run: run.accelerator_peak_mib or 0.0).median:,.0f}"


def _ratio(spread: Spread | None) -> str:
    if spread is None:
        return "-"
    if spread.low == spread.high:
        return f"{spread.median:.2f}x"
    return f"{spread.median:.2f}x ({spread.low:.2f}-{spread.high:.2f})"
