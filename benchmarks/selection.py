"""Data selection (``make bench-apps``): does training on what AirRep picks help a task more?

    python -m benchmarks.selection [-c configs/bench.yaml] [--set SECTION.KEY=VALUE]

The paper's first application (§5.1): given a few examples of a target task, choose a
training budget from a mixed pool, fine-tune on it, and measure the loss on held-out examples
of that task. Here on Natural Instructions with the bench config: the trained AirRep is the
bench run's registered champion (or, when the registry has none for the current index and
benchmark, the model of a Natural Instructions pipeline run, which reuses every cache).

Every record used here (targets, evaluation examples, candidates) comes from groups that no
split, subset, benchmark or pretraining slice of that run touches, so AirRep never trained
on them. The target tasks are those with the most such records (ties broken by a seeded
shuffle); the candidate pool is one random draw of every task's unused records, shared by
all target tasks. Each method ranks the candidates by the mean of its pair scores over a
task's target examples (the registry's scorers, :mod:`airrep.methods`); ``random`` draws a
new selection per seed. Each selection is fine-tuned on the bench's base LM with its
fine-tune settings, once per seed, and every fine-tune's per-example losses are published in
the run's artifact store under :func:`airrep.keys.finetune_key`, so a re-run only fine-tunes
what changed.

Writes ``benchmarks/results/selection.json``, ``benchmarks/results/selection.png`` and the
section "Data selection (Natural Instructions)" of ``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from airrep.config import FinetuneConfig, PipelineConfig
    from airrep.data import Record
    from airrep.methods import ScoreFn
    from airrep.sampling import SubsetIndex
    from infra.storage import ArtifactStore

log = logging.getLogger("benchmarks.selection")

DATASET = "natural_instructions"
ROOT = Path(__file__).resolve().parent
SECTION = "## Data selection (Natural Instructions)"
# Registry methods ranked by their mean pair score; ``random`` is the seeded reference.
SCORED = ("airrep", "tfidf", "encoder", "logra")
METHODS = ("airrep", "random", "tfidf", "encoder", "logra")
RANDOM = "random"


@dataclass(frozen=True)
class SelectionSizes:
    """How many target tasks, and per task: target examples (what a method sees), held-out
    evaluation examples (what the fine-tune is measured on); the shared candidate pool, the
    budget chosen from it, and the fine-tune seeds per selection."""

    tasks: int = 4
    targets: int = 50
    eval: int = 100
    candidates: int = 1000
    budget: int = 100
    seeds: int = 3


@dataclass(frozen=True)
class TaskDraw:
    task: str
    targets: list[str]
    eval: list[str]


@dataclass(frozen=True)
class Draw:
    """The target tasks' examples and the candidate pool, all from unused groups."""

    tasks: list[TaskDraw]
    candidates: list[str]


def used_groups(index: SubsetIndex, by_id: Mapping[str, Record]) -> set[str]:
    """The groups of every record a run's index hands to training, validation, its benchmark
    or base-LM pretraining: nothing of these may be a target, evaluation example or candidate."""
    ids = [*index.pretrain, *index.benchmark.test, *index.benchmark.pool]
    for split in index.splits:
        ids += [*split.dev, *split.pool, *(i for subset in split.subsets for i in subset)]
    return {by_id[i].group_id for i in ids if i in by_id}


def _take_groups(groups: Sequence[list[str]], start: int, count: int) -> tuple[list[str], int]:
    """``count`` ids from whole groups from ``groups[start]``; the last group's rest is dropped."""
    taken: list[str] = []
    while len(taken) < count and start < len(groups):
        taken += groups[start][: count - len(taken)]
        start += 1
    return taken, start


def draw_tasks(records: Sequence[Record], excluded_groups: set[str], sizes: SelectionSizes, seed: int) -> Draw:
    """Pick the target tasks, their target and evaluation examples (no group in both), and
    the candidate pool (no group shared with any of them); deterministic in ``seed``."""
    rng = np.random.default_rng([seed, 5])
    fresh = [r for r in records if r.group_id not in excluded_groups and r.label]
    counts = Counter(r.label for r in fresh)
    tie_break = {task: rng.random() for task in sorted(counts)}
    ranked = sorted(counts, key=lambda t: (-counts[t], tie_break[t]))
    needed = sizes.targets + sizes.eval
    tasks = [t for t in ranked if counts[t] >= needed][: sizes.tasks]
    if len(tasks) < sizes.tasks:
        raise ValueError(f"only {len(tasks)} tasks have {needed} unused records; {sizes.tasks} were asked for")
    drawn = []
    for task in tasks:
        by_group: dict[str, list[str]] = {}
        for r in fresh:
            if r.label == task:
                by_group.setdefault(r.group_id, []).append(r.id)
        names = list(by_group)
        groups = [by_group[names[i]] for i in rng.permutation(len(names))]
        targets, cursor = _take_groups(groups, 0, sizes.targets)
        held_out, cursor = _take_groups(groups, cursor, sizes.eval)
        if len(targets) < sizes.targets or len(held_out) < sizes.eval:
            raise ValueError(f"task {task}: its unused groups hold fewer than {needed} records")
        drawn.append(TaskDraw(task, targets, held_out))
    group_of = {r.id: r.group_id for r in fresh}
    # A group whose records were only partly taken (its rest dropped) stays out of the pool too.
    taken_groups = {group_of[i] for t in drawn for i in (*t.targets, *t.eval)}
    remaining = [r.id for r in fresh if r.group_id not in taken_groups]
    if len(remaining) < sizes.candidates:
        raise ValueError(f"{len(remaining)} unused records are left for a pool of {sizes.candidates}")
    candidates = [remaining[i] for i in rng.choice(len(remaining), size=sizes.candidates, replace=False)]
    return Draw(drawn, candidates)


def scored_selections(scorer: ScoreFn, draw: Draw, by_id: Mapping[str, Record],
                      budget: int) -> tuple[dict[str, list[str]], float]:
    """Each task's ``budget`` candidates with the highest mean pair score over its targets
    (ties keep pool order), from one scorer call for all tasks' targets; and its seconds."""
    test = [by_id[i] for t in draw.tasks for i in t.targets]
    pool = [by_id[i] for i in draw.candidates]
    start = time.perf_counter()
    pair_scores, _ = scorer(test, pool)  # (n_tasks * n_targets, n_candidates)
    seconds = time.perf_counter() - start
    pair_scores = np.asarray(pair_scores, dtype=np.float64)
    chosen, row = {}, 0
    for t in draw.tasks:
        task_scores = pair_scores[row: row + len(t.targets)].mean(axis=0)  # (n_candidates,)
        row += len(t.targets)
        chosen[t.task] = [draw.candidates[i] for i in np.argsort(-task_scores, kind="stable")[:budget]]
    return chosen, seconds


def random_selection(draw: Draw, task_position: int, budget: int, seed: int, repeat: int) -> list[str]:
    """A uniform draw of ``budget`` candidates, new for every task and seed."""
    rng = np.random.default_rng([seed, 11, task_position, repeat])
    return [draw.candidates[i] for i in rng.choice(len(draw.candidates), size=budget, replace=False)]


def finetune_seed(settings: FinetuneConfig, repeat: int) -> int:
    """The fine-tune's data-order seed: the same ``repeat`` gets the same seed for every method."""
    return settings.seed + repeat


@dataclass
class FinetuneCache:
    """Fine-tunes of the base LM, each published under its content key (base LM, members,
    evaluation ids, settings as run, seed) in ``store``: equal inputs are fine-tuned once."""

    store: ArtifactStore
    model: Any
    tokenizer: Any
    llm_fingerprint: str
    settings: FinetuneConfig
    computed: int = 0
    reused: int = 0
    seconds: float = 0.0

    def losses(self, members: list[str], eval_ids: list[str], seed: int, by_id: Mapping[str, Record]) -> np.ndarray:
        """Per-example losses ``(n_eval,)`` after fine-tuning on ``members``."""
        from airrep.finetune import finetune_and_evaluate
        from airrep.keys import finetune_key
        from airrep.plan import settings_as_run
        from tasks.labels import npy_bytes, npy_load

        key = finetune_key(self.llm_fingerprint, members, eval_ids, settings_as_run(self.settings), seed)
        if self.store.exists(key):
            self.reused += 1
            return npy_load(self.store.get_bytes(key))
        start = time.perf_counter()
        losses, _ = finetune_and_evaluate(self.model, self.tokenizer, [by_id[i] for i in members],
                                          [by_id[i] for i in eval_ids], self.settings, seed)
        self.store.put_bytes(key, npy_bytes(losses))
        self.seconds += time.perf_counter() - start
        self.computed += 1
        return losses


def base_losses(model, tokenizer, records: Sequence[Record], settings: FinetuneConfig) -> np.ndarray:
    """The base LM's per-example response loss, before any fine-tune."""
    from airrep.finetune import make_accelerator, per_example_loss, tokenize_records

    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    examples = tokenize_records(tokenizer, records, settings.max_length)
    return per_example_loss(model, examples, pad_id, settings.eval_batch_size, make_accelerator(settings.precision))


def run_selection(by_id: Mapping[str, Record], excluded_groups: set[str], scorers: Mapping[str, ScoreFn],
                  finetunes: FinetuneCache, sizes: SelectionSizes, seed: int) -> dict[str, Any]:
    """The benchmark's core: draw, select with every method, fine-tune, measure.

    ``scorers``: registry scorers by name; ``random`` is added here. Returns the draw, every
    selection (one per seed; a scored method's is the same for every seed), the losses and
    target fractions, the base LM's losses, and each method's selection seconds."""
    draw = draw_tasks(list(by_id.values()), excluded_groups, sizes, seed)
    selections: dict[str, dict[str, list[list[str]]]] = {}
    seconds: dict[str, float] = {}
    for name in [n for n in METHODS if n in scorers or n == RANDOM]:
        if name == RANDOM:
            start = time.perf_counter()
            selections[name] = {t.task: [random_selection(draw, j, sizes.budget, seed, s) for s in range(sizes.seeds)]
                                for j, t in enumerate(draw.tasks)}
            seconds[name] = time.perf_counter() - start
        else:
            chosen, seconds[name] = scored_selections(scorers[name], draw, by_id, sizes.budget)
            selections[name] = {task: [ids] * sizes.seeds for task, ids in chosen.items()}
        log.info("%s selected in %.1f s", name, seconds[name])
    label_of = {i: by_id[i].label for i in draw.candidates}
    tasks = []
    for t in draw.tasks:
        eval_records = [by_id[i] for i in t.eval]
        entry = {**asdict(t), "pool_share": sum(label_of[i] == t.task for i in draw.candidates) / len(draw.candidates),
                 "base_loss": float(base_losses(finetunes.model, finetunes.tokenizer, eval_records,
                                                finetunes.settings).mean()), "methods": {}}
        for name, by_task in selections.items():
            per_seed = [float(finetunes.losses(ids, t.eval, finetune_seed(finetunes.settings, s), by_id).mean())
                        for s, ids in enumerate(by_task[t.task])]
            entry["methods"][name] = {
                "losses": per_seed, "mean": float(np.mean(per_seed)), "std": float(np.std(per_seed)),
                "target_fraction": float(np.mean([[label_of[i] == t.task for i in ids] for ids in by_task[t.task]])),
                "selections": by_task[t.task] if name == RANDOM else by_task[t.task][:1]}
            log.info("%s / %s: loss %.4f ± %.4f, %.0f%% from the task", t.task, name, entry["methods"][name]["mean"],
                     entry["methods"][name]["std"], 100 * entry["methods"][name]["target_fraction"])
        tasks.append(entry)
    return {"sizes": asdict(sizes), "seed": seed, "candidates": draw.candidates,
            "pool_tasks": len(set(label_of.values())), "tasks": tasks,
            "mean": summary(tasks, list(selections), sizes.seeds), "selection_seconds": seconds,
            "finetunes_computed": finetunes.computed, "finetunes_reused": finetunes.reused,
            "finetune_seconds": round(finetunes.seconds, 1)}


def summary(tasks: list[dict[str, Any]], methods: list[str], seeds: int) -> dict[str, Any]:
    """Over the tasks: each method's mean loss (± std over seeds of the task-averaged loss) and
    target fraction, and the base LM's mean loss."""
    out: dict[str, Any] = {"base_loss": float(np.mean([t["base_loss"] for t in tasks]))}
    for name in methods:
        per_seed = [float(np.mean([t["methods"][name]["losses"][s] for t in tasks])) for s in range(seeds)]
        out[name] = {"mean": float(np.mean(per_seed)), "std": float(np.std(per_seed)),
                     "target_fraction": float(np.mean([t["methods"][name]["target_fraction"] for t in tasks]))}
    return out


def selection_scorers(cfg: PipelineConfig, trained, llm_path: str) -> dict[str, ScoreFn]:
    """The registry's scorers for :data:`SCORED` (LoGra at the config's ``gradient_proj_dim``)."""
    from airrep.methods import build_methods

    evaluate = cfg.evaluate.model_copy(update={"methods": list(SCORED), "frontier": {}})
    built = build_methods(cfg.model_copy(update={"evaluate": evaluate}), trained, llm_path)
    return {name: scorer for name, (scorer, _) in built.items()}


@dataclass(frozen=True)
class BenchModel:
    """The trained AirRep and base LM of the Natural Instructions bench run, and where from."""

    config: dict[str, Any]
    index_key: str
    model_dir: Path
    llm: dict[str, str]
    source: dict[str, Any]


def bench_model(config_path: str, extra: list[str], workdir: Path) -> BenchModel:
    """The registered champion when it was evaluated on the current config's index and
    benchmark (its tags say so); otherwise the model of a pipeline run as ``make bench`` does
    it (every cached fine-tune and model is reused)."""
    import mlflow

    from airrep.config import load_config
    from airrep.data import corpus_fingerprint
    from airrep.keys import base_llm_key, index_key
    from benchmarks.quality import dataset_overrides, run_dataset
    from flows.common import config_data
    from infra import tracking
    from tasks.common import records_by_id, store_for
    from tasks.model import benchmark_fingerprint, fetch_model_dir

    cfg = load_config(config_path, dataset_overrides(DATASET, extra))
    config = config_data(cfg)
    key = index_key(corpus_fingerprint(list(records_by_id(cfg).values())), cfg.sampling.model_dump(), cfg.seed)
    mlflow.set_tracking_uri(tracking.tracking_uri(cfg))
    name = tracking.registered_model_name(cfg)
    champion = tracking.champion_info(name) if store_for(cfg).exists(key) else None
    llm_fp = champion["tags"].get("base_llm_fingerprint", "") if champion else ""
    if champion and champion["tags"].get("benchmark_fingerprint") == benchmark_fingerprint(llm_fp, key, config):
        model_dir = tracking.champion_model_dir(name, workdir)
        llm = {"path": "", "fingerprint": llm_fp, "key": base_llm_key(llm_fp)}  # fetched by its key
        log.info("AirRep: %s champion v%s (%s)", name, champion["version"], champion["tags"].get("model_key"))
        return BenchModel(config, key, model_dir, llm, {"registered": name, "version": champion["version"],
                                                        "model_key": champion["tags"].get("model_key")})
    log.info("no champion of %s for this index and benchmark: running the %s pipeline", name, DATASET)
    run = run_dataset(config_path, DATASET, extra)
    return BenchModel(config, run["index_key"], fetch_model_dir(config, run["model_key"]), run["llm"],
                      {"pipeline_run": True, "model_key": run["model_key"], **run["registry"]})


def run_benchmark(config_path: str, extra: list[str], sizes: SelectionSizes) -> dict[str, Any]:
    """Resolve the bench run's AirRep and base LM, then :func:`run_selection` on its corpus."""
    import tempfile

    from airrep.llm import load_base_llm
    from airrep.model import AirRep
    from tasks.common import records_by_id, store_for, typed
    from tasks.labels import load_index, local_llm_path

    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        resolved = bench_model(config_path, extra, Path(tmp))
        cfg = typed(resolved.config)
        trained = AirRep.from_pretrained(resolved.model_dir, precision=cfg.train.precision)
    by_id = records_by_id(cfg)
    excluded = used_groups(load_index(resolved.config, resolved.index_key), by_id)
    llm_path = local_llm_path(resolved.config, resolved.llm)
    model, tokenizer = load_base_llm(llm_path, cfg.base_llm)
    finetunes = FinetuneCache(store_for(cfg), model, tokenizer, resolved.llm["fingerprint"], cfg.finetune)
    results = run_selection(by_id, excluded, selection_scorers(cfg, trained, llm_path), finetunes, sizes, cfg.seed)
    results.update({"model": resolved.source, "index_key": resolved.index_key,
                    "llm": {**resolved.llm, "path": llm_path},
                    "excluded_groups": len(excluded), "seconds": round(time.perf_counter() - start, 1)})
    return results


def selection_markdown(results: dict[str, Any]) -> str:
    """The RESULTS.md section: loss per task and method, target fractions, selection times."""
    from benchmarks.quality import describe_machine

    methods = [m for m in METHODS if m in results["mean"]]
    s = results["sizes"]
    lines = [SECTION, "",
             f"Generated by `make bench-apps` (`python -m benchmarks.selection`); numbers from "
             "`benchmarks/results/selection.json`. For each target task a method sees "
             f"{s['targets']} examples of the task and picks {s['budget']} training examples from a shared pool "
             f"of {s['candidates']} records drawn at random from every task ({results['pool_tasks']} tasks appear "
             "in it; the target task's own records at their natural share, column pool share); the base LM is "
             "fine-tuned on the selection with the "
             f"bench's settings, {s['seeds']} seeds, and scored on {s['eval']} held-out examples of the task "
             "(mean response-token loss, lower is better). Targets, evaluation examples and candidates come "
             "from groups that no split, subset, benchmark or pretraining slice of the bench run uses, so AirRep "
             "never trained on them. Target tasks: the tasks with the most such records, ties broken by a "
             f"seeded shuffle (seed {results['seed']}). AirRep: {_model_source(results['model'])}.",
             "",
             "Each cell: loss after fine-tuning, mean ± std over seeds (random: a new selection per seed), and "
             "in brackets the share of the selection that is from the target task.",
             "",
             "| task | pool share | base LM | " + " | ".join(methods) + " |",
             "|---|---|---|" + "---|" * len(methods)]
    for t in results["tasks"]:
        cells = [f"{t['methods'][m]['mean']:.3f} ± {t['methods'][m]['std']:.3f} "
                 f"({100 * t['methods'][m]['target_fraction']:.0f}%)" for m in methods]
        lines.append(f"| {t['task']} | {100 * t['pool_share']:.1f}% | {t['base_loss']:.3f} | " + " | ".join(cells)
                     + " |")
    mean = results["mean"]
    share = np.mean([t["pool_share"] for t in results["tasks"]])
    lines.append(f"| **mean** | {100 * share:.1f}% | {mean['base_loss']:.3f} | " + " | ".join(
        f"**{mean[m]['mean']:.3f}** ± {mean[m]['std']:.3f} ({100 * mean[m]['target_fraction']:.0f}%)"
        for m in methods) + " |")
    lines.append("| selection time (s) | | | " + " | ".join(
        f"{results['selection_seconds'][m]:.1f}" for m in methods) + " |")
    machine = results.get("machine")
    lines += ["", "Selection time: one scorer call for all tasks' targets against the pool (LoGra's includes "
              "loading the base LM and the pool's gradients); random draws are instant.",
              "", *comparison_lines(results),
              f"The run took {results['seconds'] / 60:.1f} min ({results['finetunes_computed']} fine-tunes run, "
              f"{results['finetunes_reused']} reused from the artifact store)"
              + (f" on {describe_machine(machine)}" if machine else "") + _load_note(results) + ".",
              "", "![Data selection](results/selection.png)"]
    return "\n".join(lines) + "\n"


def comparison_lines(results: dict[str, Any]) -> list[str]:
    """AirRep's mean loss against random's and TF-IDF's, and on how many tasks it is lower."""
    mean = results["mean"]
    if "airrep" not in mean:
        return []
    airrep = mean["airrep"]["mean"]
    parts = []
    for other in ("random", "tfidf"):
        if other in mean:
            wins = sum(t["methods"]["airrep"]["mean"] < t["methods"][other]["mean"] for t in results["tasks"])
            gap = mean[other]["mean"] - airrep
            parts.append(f"{other} {mean[other]['mean']:.3f} (AirRep {'lower' if gap > 0 else 'not lower'} by "
                         f"{abs(gap):.3f}; lower on {wins} of {len(results['tasks'])} tasks)")
    return [f"Mean loss after fine-tuning: AirRep {airrep:.3f}; " + "; ".join(parts) + ".", ""]


def _load_note(results: dict[str, Any]) -> str:
    """Whether other work shared the cores: the 1-minute load average at the start and the end."""
    load, cores = results.get("load_average"), (results.get("machine") or {}).get("cores")
    if not load or not cores or max(load) <= cores:
        return ""
    return (f"; other work shared the machine (1-minute load average {load[0]:.1f} at the start and "
            f"{load[1]:.1f} at the end, on {cores} cores), so these timings are those of a busy machine")


def _model_source(source: Mapping[str, Any]) -> str:
    if source.get("pipeline_run"):
        return f"the model of this run's pipeline ({source.get('model_key')})"
    return f"registered champion v{source.get('version')} of `{source.get('registered')}` ({source.get('model_key')})"


def place_section(report: str, section: str, before: str | None, heading: str = SECTION) -> str:
    """``report`` with its section under ``heading`` (the data-selection one by default)
    replaced by ``section`` (up to the next ``## `` heading), or inserted before the line
    ``before`` (else at the end)."""
    lines = report.splitlines(keepends=True)
    start = next((i for i, line in enumerate(lines) if line.rstrip("\n") == heading), None)
    if start is not None:
        end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
        return "".join(lines[:start]) + section + ("\n" if end < len(lines) else "") + "".join(lines[end:])
    at = next((i for i, line in enumerate(lines) if before and line.rstrip("\n") == before), len(lines))
    head = "".join(lines[:at])
    if head and not head.endswith("\n\n"):
        head += "\n" if head.endswith("\n") else "\n\n"
    return head + section + ("\n" if at < len(lines) else "") + "".join(lines[at:])


def plot_selection(results: dict[str, Any], path: Path) -> None:
    """Loss after fine-tuning per task and method (± std over seeds, the base LM dashed), and
    the share of each selection that is from the target task."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = [m for m in METHODS if m in results["mean"]]
    names = [t["task"].removeprefix("subtask") for t in results["tasks"]] + ["mean"]
    rows = [*results["tasks"], {"methods": results["mean"], "base_loss": results["mean"]["base_loss"]}]
    colors = {"airrep": "tab:red", "random": "tab:gray", "tfidf": "tab:blue", "encoder": "tab:green",
              "logra": "tab:purple"}
    width = 0.8 / len(methods)
    x = np.arange(len(names))
    fig, (loss_ax, share_ax) = plt.subplots(1, 2, figsize=(14, 4.8))
    for k, m in enumerate(methods):
        offset = x - 0.4 + (k + 0.5) * width
        loss_ax.bar(offset, [r["methods"][m]["mean"] for r in rows], width, yerr=[r["methods"][m]["std"] for r in rows],
                    color=colors.get(m, "black"), label=m, capsize=2)
        share_ax.bar(offset, [100 * r["methods"][m]["target_fraction"] for r in rows], width,
                     color=colors.get(m, "black"), label=m)
    for i, r in enumerate(rows):
        loss_ax.plot([i - 0.45, i + 0.45], [r["base_loss"]] * 2, "k--", lw=1, label="base LM" if i == 0 else None)
    lows = [r["methods"][m]["mean"] - r["methods"][m]["std"] for r in rows for m in methods]
    loss_ax.set_ylim(min(lows) - 0.1, max(max(r["base_loss"] for r in rows), max(lows)) + 0.1)
    for ax, label in ((loss_ax, "held-out loss after fine-tuning"),
                      (share_ax, "selection from the target task (%)")):
        ax.set_xticks(x, names, rotation=20, ha="right", fontsize=8)
        ax.set_ylabel(label)
    handles, labels = loss_ax.get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=8)
    fig.suptitle(f"Natural Instructions: {results['sizes']['budget']} of {results['sizes']['candidates']} "
                 f"candidates chosen from {results['sizes']['targets']} target examples", fontsize=10)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_report(results: dict[str, Any], out: Path, markdown: Path) -> list[Path]:
    """selection.json, selection.png and the RESULTS.md section (before the discussion)."""
    from airrep.atomic import write_text_atomic

    files = [out / "selection.json", out / "selection.png", markdown]
    write_text_atomic(files[0], json.dumps(results, indent=2, default=float) + "\n")
    plot_selection(results, files[1])
    discussion = ROOT / "discussion.md"
    first = discussion.read_text().splitlines()[0] if discussion.exists() else None
    report = markdown.read_text() if markdown.exists() else ""
    write_text_atomic(markdown, place_section(report, selection_markdown(results), first))
    return files


def main(argv: list[str] | None = None) -> dict[str, Any]:
    from benchmarks.speed import machine
    from flows.cli import prepare_environment, setup_logging

    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.selection", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 2)[2])
    parser.add_argument("-c", "--config", default="configs/bench.yaml", help="pipeline config (default: %(default)s)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="config override, as for make bench (repeatable)")
    defaults = SelectionSizes()
    for field, value in asdict(defaults).items():
        parser.add_argument(f"--{field}", type=int, default=value, help=f"(default: {value})")
    parser.add_argument("--out", default=str(ROOT / "results"), help="results directory (default: %(default)s)")
    parser.add_argument("--markdown", default=str(ROOT / "RESULTS.md"), help="report file (default: %(default)s)")
    parser.add_argument("--report-only", action="store_true", help="re-draw from OUT/selection.json")
    args = parser.parse_args(argv)
    setup_logging(verbose=False)
    prepare_environment()
    out = Path(args.out)
    if args.report_only:
        results = json.loads((out / "selection.json").read_text())
    else:
        sizes = SelectionSizes(**{f: getattr(args, f) for f in asdict(defaults)})
        load = os.getloadavg()[0]
        results = {"config": args.config, "overrides": args.overrides, "machine": machine(),
                   **run_benchmark(args.config, args.overrides, sizes)}
        results["load_average"] = [load, os.getloadavg()[0]]
    files = write_report(results, out, Path(args.markdown))
    log.info("wrote %s in %.1f min", ", ".join(str(f) for f in files), results["seconds"] / 60)
    return results


if __name__ == "__main__":
    main()
