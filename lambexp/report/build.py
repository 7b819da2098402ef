"""Run folders → REPORT.md, report.html and PNG figures: the claims table, the figures, the environment.

Every number comes from the run files (metrics.jsonl, summary.json, config.yaml, environment.json).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable
from datetime import datetime, timezone
from functools import partial
from pathlib import Path

from lambexp.base.divergence import DEFINITION
from lambexp.base.measures import DEFAULT_THRESHOLD, MEASURES, as_percent, fmt
from lambexp.base.statuses import MIXED, NO_DATA, NOT_REPRODUCED, REPRODUCED, VERDICTS
from lambexp.config.expect import Expectation
from lambexp.errors import UserError
from lambexp.folders.layout import find_experiments, own_folder, writable_folder, write_text_atomically
from lambexp.output import optimizer_text
from lambexp.report import figures, scaling, variants
from lambexp.report.claims import ClaimResult, decades, judge, mean_std, measure, widest_run
from lambexp.report.collect import ExperimentRuns, collect, folder_labels
from lambexp.report.document import Block, Heading, Image, Para, Table, to_html, to_markdown
from lambexp.report.tuning import tuning_blocks
from lambexp.report.variants import variant_grid

MAX_ARMS_PER_PANEL_FIGURE = 12  # figures with a panel per arm: large_batch's 12 fit, a 42-arm sweep does not


def _reference(e: Expectation, result: ClaimResult) -> str:
    if e.comparator == "equals":
        return f"= {_shown(e, float(e.equals))}"
    if e.comparator == "between":
        return f"in [{_shown(e, e.between[0])}, {_shown(e, e.between[1])}]"
    sign = ">" if e.comparator == "above" else "<"
    if isinstance(e.reference, float | int):
        return f"{sign} {_shown(e, float(e.reference))}"
    mean, std = mean_std(result.references)
    return f"{sign} {_name(e.reference, e)}: {_shown(e, mean)} ± {_shown(e, std)}"


def _name(ref, e: Expectation) -> str:
    """An arm, or a pair [a, b] written as "a − b" (or "a / b")."""
    return ref if isinstance(ref, str) else f"{ref[0]} {'/' if e.pair == 'ratio' else '−'} {ref[1]}"


def _shown(e: Expectation, value: float, name: str | None = None) -> str:
    """A value of the claim's measure (or of ``name``, one of its `also:`) as a person reads it; a
    ratio of two arms' as 2.5×; for a pair whose side never reached its target, which side (a − b
    is +∞ when a did not, −∞ when b did not)."""
    if (not isinstance(e.arm, str) and value is not None and math.isinf(value)
            and MEASURES[name or e.measure].takes_target):
        return f"{e.arm[0] if value > 0 else e.arm[1]} not reached"
    if e.pair == "ratio" and not isinstance(e.arm, str):
        return "n/a" if value is None or math.isnan(value) else f"{value:.3g}×"
    return fmt(name or e.measure, value)


def _verdict(result: ClaimResult) -> str:
    """The verdict with k of n seeds, so every row says how many seeds it stands on."""
    k, n = sum(result.holds), len(result.holds)
    if n == 0 or result.verdict.startswith(MIXED):
        return result.verdict
    if result.expectation.judge == "mean":
        return f"{result.verdict} (on the mean of {n} seed{'s' * (n > 1)})"
    return f"{result.verdict} ({k} of {n})"


def _claim_text(e: Expectation) -> str:
    """The claim in our words, then the sentence it tests, quoted, with where it comes from."""
    return e.claim + (f" — “{e.quote}” ({e.source})" if e.quote else "")


def _summary(measure: str, values: list[float], show=None) -> str:
    """Mean ± std over seeds (k of n seeds for a yes/no measure), each as ``show`` writes it (by
    default, as the measure reads); seeds whose value is infinite (a target never reached) are
    counted beside it, not averaged."""
    if MEASURES[measure].is_boolean:
        return f"{sum(v == 1.0 for v in values)} of {len(values)} seeds"
    show = show or (lambda v: fmt(measure, v))
    mean, std = mean_std(values)
    never = sum(v is not None and math.isinf(v) for v in values)
    text = show(values[0]) if never and never == len(values) else f"{show(mean)} ± {show(std)}"
    return text + (f" ({never} of {len(values)} seeds not reached)" if never and never < len(values) else "")


def claim_rows(runs: ExperimentRuns, label: str) -> list[list[str]]:
    rows = []
    for e in runs.experiment.expect:
        result = judge(e, runs.seeds)
        per_seed = " · ".join(f"s{s}: {_shown(e, v)}" for s, v in zip(result.seeds, result.values))
        summary = _summary(e.measure, result.values, partial(_shown, e))
        missing = sum(not math.isfinite(v) for v in result.values)
        if e.judge == "mean" and missing:  # the verdict is on the mean of every seed: none to show
            summary = f"n/a ({missing} of {len(result.values)} seeds have no value)"
        for name, values in result.also.items():  # shown beside, not judged, as the claim's pair is
            show = partial(_shown, e, name=name)
            per_seed += f" ({name}: {', '.join(show(v) for v in values)})"
            summary += f" ({name}: {_summary(name, values, show)})"
        what = f"{_name(e.arm, e)}: {e.measure}" + (f" [{e.layer}]" if e.layer else "")
        if e.within_epochs is not None:
            what += f" in the first {e.within_epochs:g} epoch{'s' * (e.within_epochs != 1)}"
        rows.append([label, _claim_text(e), what, per_seed or "n/a", summary,
                     _reference(e, result), _verdict(result)])
    return rows


ARM_COLUMNS = ["arm", "optimizer (rule)", "lr", "weight decay", "seeds", "final test accuracy",
               "diverged", "max r", "median r", "wall s / arm", "samples/s"]


def arm_rows(runs: ExperimentRuns) -> list[list[str]]:
    """One row per arm (ARM_COLUMNS): its rule and settings, and over its seeds the mean ± std of
    the final test accuracy, how many diverged, and the means of r's max and median over training
    and every layer (the claims' r_max and r_median)."""
    rows = []
    for arm in runs.experiment.arms:
        series = runs.arm_runs(arm.name)
        head = [arm.name, optimizer_text(arm.optimizer, arm.rule, arm.bias_correction), f"{arm.lr:g}",
                f"{arm.weight_decay:g}", str(len(series))]
        if not series:
            rows.append([*head, "not finished", "", "", "", "", ""])
            continue
        acc = mean_std([s.summary.final_test_accuracy for s in series])
        r_max, r_median = (mean_std([measure(s, name) for s in series])[0]
                           for name in ("r_max", "r_median"))
        wall = mean_std([s.summary.wall_seconds for s in series])
        speed = mean_std([s.summary.samples_per_second for s in series])
        bad = sum(s.diverged for s in series)
        rows.append([*head, f"{acc[0]:.2%} ± {acc[1]:.2%}", f"{bad} of {len(series)}",
                     fmt("r_max", r_max), fmt("r_median", r_median), f"{wall[0]:.0f}", f"{speed[0]:.0f}"])
    return rows


def experiment_figures(runs: ExperimentRuns, out_dir: Path, label: str,
                       grid: variants.Grid | None = None) -> list[Block]:
    """The experiment's figures, as files ``figures/<label>_*.png`` (``label``: unique per folder);
    ``grid``: its variant grid, when it compares LAMB rules (``variants.variant_grid``)."""
    exp = runs.experiment
    colors = figures.arm_colors([(a.name, a.optimizer) for a in exp.arms])
    by_arm = {a.name: runs.arm_runs(a.name) for a in exp.arms if runs.arm_runs(a.name)}
    if not by_arm:
        return [Para("No finished arms yet.")]
    first_seed = {name: series[0] for name, series in by_arm.items()}
    folder = own_folder(out_dir / "figures")
    title = f"{exp.name}: {exp.description}" if exp.description else exp.name
    curves_path, per_epoch = folder / f"{label}_curves.png", _samples_per_epoch(by_arm)
    if len(by_arm) <= MAX_ARMS_PER_PANEL_FIGURE:
        curves = figures.curves(title, by_arm, colors, curves_path, samples_per_epoch=per_epoch)
    else:  # one line per arm in one panel would be a legend of 42 entries: a row per group
        curves = figures.curves_by_group(title, arm_groups(exp, by_arm), curves_path, per_epoch)
    made = [(curves, "training loss and test accuracy")]
    if grid is not None:
        made.append((figures.variant_grid(title, grid, folder / f"{label}_variants.png"),
                     "each LAMB variant at each setting: final test accuracy and the largest r"))
    blocks: list[Block] = []
    if len(by_arm) <= MAX_ARMS_PER_PANEL_FIGURE:
        made += [
            (figures.trust_ridges(title, first_seed, colors, folder / f"{label}_trust.png"),
             "r, r1, r2 across layers over training (first seed)"),
            (figures.layer_norms(title, first_seed, folder / f"{label}_r1_layers.png"),
             "per-layer weight norm r1 (first seed)"),
        ]
    else:
        blocks.append(Para(f"{len(by_arm)} arms: the ridge plots of r, r1, r2 and the per-layer r1"
                           f" figure (one panel per arm) are drawn for at most {MAX_ARMS_PER_PANEL_FIGURE}"
                           " arms; TensorBoard has them for every arm."))
    if scaling.applies(exp):
        made += scaling.scaling_figures(runs, title, folder, label)
        what, header, rows = scaling.scaling_rows(runs)
        blocks += [Para(what), Table(header, rows)]
    elif len({a.batch_size for a in exp.arms}) >= 3:
        blocks.append(Para("No batch-scaling figures: some optimizer has several arms at one batch size"
                           " (other learning rates, say), and one mean over them would say nothing."))
    if len({a.lr for a in exp.arms}) >= 4 and not runs.lr_per_arm:  # a learning-rate sweep
        thresholds = lr_thresholds(exp)
        made.append((figures.accuracy_vs_lr(title, lr_points(runs), folder / f"{label}_lr.png", thresholds),
                     "final test accuracy against learning rate, per optimizer and weight decay"))
        blocks += [Table(["optimizer", f"learning rates reaching {as_percent(t)} (mean over seeds)",
                          "widest run of consecutive ones"], lr_range_rows(runs, t)) for t in thresholds]
    return [Image(path.relative_to(out_dir), alt) for path, alt in made] + blocks


def arm_groups(exp, by_arm: dict) -> dict[str, dict[str, list]]:
    """The finished arms by ``lr_group`` (optimizer, rule, weight decay), each group's arms by
    learning rate and then batch size, labelled by what tells them apart within the group. A
    batch-scaling experiment (``scaling.applies``) instead by model and batch size, a line per
    optimizer: the arms a row compares then share a batch, and its lines say which optimizer."""
    if scaling.applies(exp):
        rows: dict[str, dict[str, list]] = {}
        for arm in sorted((a for a in exp.arms if a.name in by_arm), key=lambda a: (a.model, a.batch_size)):
            row = rows.setdefault(f"{arm.model}, batch {arm.batch_size}", {})
            row[scaling.line_of(arm)] = by_arm[arm.name]
        return rows
    groups: dict[str, list] = {}
    for arm in sorted((a for a in exp.arms if a.name in by_arm), key=lambda a: (a.lr, a.batch_size)):
        groups.setdefault(lr_group(arm), []).append(arm)
    out = {}
    for group, arms in groups.items():
        by_lr = len({a.lr for a in arms}) == len(arms)
        by_batch = len({a.batch_size for a in arms}) == len(arms)
        out[group] = {(f"lr {a.lr:g}" if by_lr else f"batch {a.batch_size}" if by_batch else a.name):
                      by_arm[a.name] for a in arms}
    return out


def lr_group(arm) -> str:
    """What a learning-rate sweep's line is: the optimizer (and LAMB rule) and weight decay."""
    return f"{optimizer_text(arm.optimizer, arm.rule)}, wd {arm.weight_decay:g}"


def lr_points(runs: ExperimentRuns) -> dict[str, list[tuple[float, list[float], int]]]:
    """group → [(lr, the seeds' final accuracies, seeds diverged)] over the finished arms."""
    points: dict[str, list] = {}
    for arm in runs.experiment.arms:
        finished = runs.arm_runs(arm.name)
        if finished:
            accs = [s.summary.final_test_accuracy for s in finished
                    if s.summary.final_test_accuracy is not None]
            points.setdefault(lr_group(arm), []).append((arm.lr, accs, sum(s.diverged for s in finished)))
    return points


def lr_thresholds(exp) -> list[float]:
    """The final test accuracies the experiment's lr_range claims count an lr at, lowest first;
    lr_range's default when it has none."""
    used = {e.threshold for e in exp.expect if MEASURES[e.measure].over_pattern}
    return sorted(used) or [DEFAULT_THRESHOLD]


def lr_range_rows(runs: ExperimentRuns, threshold: float = DEFAULT_THRESHOLD) -> list[list[str]]:
    """Per optimizer and weight decay, on the mean over seeds: the lrs that reach ``threshold``, and
    the widest run of consecutive ones (what `measure: lr_range` measures per seed)."""
    rows = []
    for group, pts in lr_points(runs).items():
        ok = sorted(lr for lr, accs, _ in pts if accs and statistics.fmean(accs) >= threshold)
        run = widest_run([lr for lr, _, _ in pts], set(ok))
        span = f"{fmt('lr_range', decades(run))} ({run[0]:g} to {run[-1]:g})" if run else "none"
        rows.append([group, ", ".join(f"{lr:g}" for lr in ok) or "none", span])
    return rows


def _samples_per_epoch(by_arm: dict) -> int | None:
    """Training samples in one epoch (None if unknown)."""
    return next((s.samples_per_epoch for series in by_arm.values() for s in series if s.samples_per_epoch),
                None)


def environment_rows(all_runs: list[ExperimentRuns]) -> list[list[str]]:
    rows = []
    for runs, label in zip(all_runs, folder_labels([(r.experiment.name, r.folder) for r in all_runs])):
        env = runs.environment
        devices = sorted({s.summary.device for arms in runs.seeds.values()
                          for s in arms.values()})
        rows.append([label, ", ".join(devices), env.get("torch", "?"),
                     env.get("python", "?"), str(env.get("cpu_threads", "?")),
                     env.get("cuda") or "none", (env.get("git_commit") or "?")[:10]])
    return rows


def load_runs(paths: list[Path]) -> list[ExperimentRuns]:
    """Every experiment folder under ``paths``; a UserError when not one arm has finished."""
    all_runs = [collect(p) for p in find_experiments(paths)]
    if not any(r.seeds for r in all_runs):
        raise UserError(f"no finished arms in {', '.join(map(str, paths))}: nothing to report yet;"
                        " `lambexp resume RUN_DIR` finishes them")
    return all_runs


def claim_verdicts(all_runs: list[ExperimentRuns]) -> list[tuple[str, str]]:
    """(claim, verdict) for every claim of ``all_runs`` (for --strict)."""
    return [(e.claim, judge(e, r.seeds).verdict) for r in all_runs for e in r.experiment.expect]


def tally_line(all_runs: list[ExperimentRuns]) -> str:
    """The report's answer in one line: how many claims got each verdict, and over how many seeds,
    e.g. "18 of 20 claims REPRODUCED, 2 MIXED, 0 NOT REPRODUCED over 3 seeds" (NO DATA only when
    some claim has it). The seeds are each experiment's (those with a finished arm) over the
    experiments that state claims: "over 1 to 3 seeds" when they differ."""
    words = [verdict.split(" (")[0] for _, verdict in claim_verdicts(all_runs)]
    if not words:
        return "No claims to judge: these experiments state none (`expect:` in their configs)."
    n = {word: words.count(word) for word in VERDICTS}
    line = (f"{n[REPRODUCED]} of {len(words)} claim{'s' * (len(words) != 1)} {REPRODUCED},"
            f" {n[MIXED]} {MIXED}, {n[NOT_REPRODUCED]} {NOT_REPRODUCED}")
    line += f", {n[NO_DATA]} {NO_DATA}" if n[NO_DATA] else ""
    seeds = sorted({len(r.seeds) for r in all_runs if r.experiment.expect and r.seeds})
    if not seeds:
        return f"{line}, no seed finished"
    if seeds[0] == seeds[-1]:
        return f"{line} over {seeds[0]} seed{'s' * (seeds[0] != 1)}"
    return f"{line} over {seeds[0]} to {seeds[-1]} seeds"


def build_report(paths: list[Path], out_dir: Path, all_runs: list[ExperimentRuns] | None = None) -> Path:
    """Write REPORT.md, report.html and figures/ into ``out_dir`` from the finished runs under
    ``paths`` (``all_runs``: those runs, when the caller has loaded them already); return the path
    of REPORT.md. Experiment folders with the same experiment get figures of their own."""
    all_runs = all_runs if all_runs is not None else load_runs(paths)
    labels = folder_labels([(r.experiment.name, r.folder) for r in all_runs])
    writable_folder(out_dir, "--out")
    trainings = {s.folder: s for r in all_runs for arms in r.seeds.values() for s in arms.values()}
    total = sum(s.summary.wall_seconds for s in trainings.values())  # shared ones once
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    blocks: list[Block] = [
        Heading("lambexp: does 'An intuitive understanding of the LAMB optimizer' reproduce?", 1),
        Para(tally_line(all_runs)),
        Para(f"Built {stamp} from {len(all_runs)} experiment folder(s); every number below is read"
             f" from the run files. {len(trainings)} trainings (arms that are the same training are"
             f" trained once and shared), training wall time {total / 60:.1f} min."),
        Heading("Claims"),
        Para("Each claim quotes the sentence it tests. Per seed: the measured value (s<seed>: value);"
             " in parentheses, measures shown beside it but not judged. REPRODUCED (k of n): the claim"
             " held for every seed; NOT REPRODUCED: for none; MIXED: for some; \"on the mean\": judged"
             f" once, on the means over seeds. Diverged: {DEFINITION} (decided by the trainer, read"
             " from summary.json)."),
        Table(["experiment", "claim", "measured", "per seed", "mean ± std", "compared with",
               "verdict"], [row for r, label in zip(all_runs, labels) for row in claim_rows(r, label)]),
    ]
    for runs, label in zip(all_runs, labels):
        exp = runs.experiment
        blocks += [Heading(label), Para(exp.description or ""),
                   Table(ARM_COLUMNS, arm_rows(runs))]
        grid = variant_grid(runs)
        if grid is not None:
            blocks += [Para("Final test accuracy of each variant at each setting, mean ± std over seeds"
                            " (and how many seeds diverged; \"not tested\": every seed diverged, and"
                            " stopped, before its first evaluation):"), Table(*variants.table(grid))]
        blocks += tuning_blocks(runs, out_dir, label)
        blocks += experiment_figures(runs, out_dir, label, grid)
    blocks += [Heading("Environment"),
               Table(["experiment", "device", "torch", "python", "CPU threads", "GPU", "commit"],
                     environment_rows(all_runs))]
    title = "lambexp reproduction report"
    write_text_atomically(out_dir / "REPORT.md", to_markdown(blocks))
    write_text_atomically(out_dir / "report.html", to_html(blocks, out_dir, title))
    return out_dir / "REPORT.md"


def write_report(paths: list[Path], out_dir: Path, say: Callable[[str], None],
                 tell: Callable[[str], None]) -> list[ExperimentRuns]:
    """``build_report`` of the finished runs under ``paths`` into ``out_dir``; ``say`` gets the tally
    line, ``tell`` where the report is. Returns the runs it read."""
    runs = load_runs(paths)
    report = build_report(paths, out_dir, runs)
    say(tally_line(runs))
    tell(f"report: {report}")
    return runs
