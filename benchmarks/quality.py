"""Attribution quality (``make bench``): the paper's LDS table in miniature, on two datasets.

    python -m benchmarks.quality [-c configs/bench.yaml] [--datasets sharegpt,natural_instructions]

For each dataset the whole pipeline runs as a Prefect flow (``flows.pipeline``) with the
bench config and ``data.source`` set to that dataset: its own base LM, labels, AirRep,
held-out benchmark (fine-tuned twice for the noise ceiling), LDS table and registry entry.
On Natural Instructions, whose records carry their task name, the benchmark's records are
also classified by task with a logistic-regression probe on AirRep's embeddings and the
untrained encoder's (and, with ``--probe-gradients``, the base LM's projected gradients).

Writes ``benchmarks/results/quality.json``, one PNG per figure under ``benchmarks/results/``
and ``benchmarks/RESULTS.md`` (the generated tables, then ``benchmarks/discussion.md``), and
logs the same to an MLflow run in the bench config's tracking store. A re-run reuses every
published fine-tune and model, so it only re-does what changed.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.frontier import frontier_markdown, has_frontier, plot_frontier
from benchmarks.speed import machine
from flows.cli import prepare_environment, setup_logging

log = logging.getLogger("benchmarks.quality")

DATASETS = {
    "sharegpt": "ShareGPT (general chat; first human turn and the reply)",
    "natural_instructions": "Natural Instructions v1 from bigbench "
                            "(41 task-labelled subtasks; 20 more reserved for pretraining)",
}
# The paper's Table (LDS×100, Qwen2.5-0.5B) on the datasets nearest ours: Tulu (chat, like
# ShareGPT) and FLAN (task-labelled instructions, like Natural Instructions). The ablation rows
# (sum pooling, untrained encoder) exist only as the mean over its four datasets. Gradient
# methods score a group by the sum of per-example influences, hence their "-sum" rows.
PAPER = {
    "sharegpt": {"airrep": 15.14, "logra-sum": 14.88, "less-sum": 13.02, "tracin-sum": 10.75, "tfidf": 5.24},
    "natural_instructions": {"airrep": 21.11, "logra-sum": 19.75, "less-sum": 16.40, "tracin-sum": 14.75,
                             "tfidf": 2.52},
    "mean of 4": {"airrep": 26.23, "airrep-sum": 19.82, "encoder": 7.65, "logra-sum": 18.45, "less-sum": 16.16,
                  "tracin-sum": 11.33, "tfidf": 9.98},
}
PAPER_NAMES = {"sharegpt": "Tulu", "natural_instructions": "FLAN", "mean of 4": "mean of 4"}
# The paper's task-classification accuracy (%) on FLAN: AirRep, GTE-small, LoGra (18432-d).
PAPER_CLASSIFICATION = {"airrep": 86.41, "encoder": 50.59, "gradient": 85.44}
ROOT = Path(__file__).resolve().parent
PROBE_FOLDS = 5


def describe_machine(info: dict) -> str:
    """'2 CPU cores (AMD EPYC, AVX512; torch sees avx512_bf16, ...; not amx_tile, ...)'."""
    flags = info.get("cpu_flags", {})
    seen = ", ".join(name for name, on in flags.items() if on)
    missing = ", ".join(name for name, on in flags.items() if not on)
    details = [part for part in (info.get("processor"), info["cpu_capability"]) if part]
    if flags:
        details[-1] += f"; torch sees {seen or 'none of its checked sets'}" + (f"; not {missing}" if missing else "")
    return f"{info['cores']} CPU cores ({', '.join(details)})"


def dataset_overrides(dataset: str, extra: list[str]) -> list[str]:
    """The bench config's overrides for one dataset's run (its data source and run name)."""
    return [f"data.source={dataset}", f"name=bench-{dataset}", *extra]


def run_dataset(config_path: str, dataset: str, extra: list[str]) -> dict[str, Any]:
    """The whole pipeline on one dataset; returns its LDS table, training curve and timings."""
    from airrep.config import load_config
    from flows.pipeline import pipeline

    overrides = dataset_overrides(dataset, extra)
    start = time.perf_counter()
    result = pipeline(load_config(config_path, overrides))
    seconds = time.perf_counter() - start
    return {"overrides": overrides, "seconds": round(seconds, 1), "table": result["evaluation"]["table"],
            "curve": result["model"]["curve"], "model_key": result["model"]["key"], "llm": result["llm"],
            "index_key": result["index_key"], "registry": result["registry"],
            "label_keys": result["label_keys"], "loss_keys": result["loss_keys"],
            "finetunes_computed": result["finetunes_computed"], "finetunes_skipped": result["finetunes_skipped"]}


def _run_inputs(config_path: str, run: dict[str, Any]):
    """The typed config, index, records and benchmark of a finished pipeline run."""
    from airrep.assemble import benchmark_data
    from airrep.config import load_config
    from flows.common import config_data
    from tasks.common import records_by_id, store_for, typed
    from tasks.labels import load_index, npy_load

    config = config_data(load_config(config_path, run["overrides"]))
    cfg = typed(config)
    index = load_index(config, run["index_key"])
    by_id = records_by_id(cfg)
    store = store_for(cfg)
    losses = np.stack([npy_load(store.get_bytes(k)) for k in run["loss_keys"]])
    return config, cfg, index, by_id, benchmark_data(index, by_id, losses, None)


def base_lm_report(config_path: str, run: dict[str, Any]) -> dict[str, Any]:
    """What the base LM is: how it was pretrained, its loss on the benchmark's test examples
    (response tokens) before any fine-tune, and their mean loss after the held-out fine-tunes."""
    from airrep.finetune import make_accelerator, per_example_loss, tokenize_records
    from airrep.llm import load_base_llm
    from tasks.labels import local_llm_path

    config, cfg, _, _, bench = _run_inputs(config_path, run)
    path = Path(local_llm_path(config, run["llm"]))
    model, tokenizer = load_base_llm(str(path), cfg.base_llm)
    examples = tokenize_records(tokenizer, bench.test, cfg.finetune.max_length)
    before = per_example_loss(model, examples, tokenizer.pad_token_id, cfg.finetune.eval_batch_size,
                              make_accelerator(cfg.finetune.precision))
    pretraining = json.loads((path / "pretraining.json").read_text()) if (path / "pretraining.json").exists() else {}
    return {"parameters": sum(p.numel() for p in model.parameters()), "pretraining": pretraining,
            "test_loss_base": float(before.mean()), "test_loss_finetuned": float(bench.losses.mean()),
            "fingerprint": run["llm"]["fingerprint"]}


def scaling_curve(config_path: str, run: dict[str, Any], sizes: list[int]) -> dict[str, Any]:
    """AirRep trained on the first ``n`` training splits, for each ``n`` in ``sizes`` (plus the
    pipeline's own model on all of them), each validated on the same held-out splits and
    scored by LDS on the benchmark: how many labelled subsets and texts are worth having."""
    from airrep.assemble import training_splits
    from airrep.evaluate import group_lds
    from airrep.methods.encoders import embedding_scores
    from airrep.train import train_airrep
    from tasks.labels import load_label_split

    config, cfg, index, by_id, bench = _run_inputs(config_path, run)
    splits = training_splits(index, by_id, [load_label_split(config, k) for k in run["label_keys"]])
    n_train = len(splits) - cfg.train.validation_splits
    held_out = splits[n_train:]
    full = next(r for r in run["table"]["rows"] if r["method"] == "airrep")
    points = []
    for n in sorted({n for n in sizes if 0 < n < n_train}) + [n_train]:
        chosen = splits[:n]
        if n == n_train:  # the pipeline's own model: trained on all of them already
            curve, value = run["curve"], full["lds"]
            seconds = run["curve"]["seconds"] + run["curve"].get("cache_seconds", 0.0)  # as timed below
        else:
            start = time.perf_counter()
            trained, trained_curve = train_airrep([*chosen, *held_out], cfg.train, show_progress_bar=False)
            sims, _ = embedding_scores(trained, bench.test, bench.pool)
            value, seconds = group_lds(sims, bench, "attention"), time.perf_counter() - start
            curve = {"eval_step": trained_curve.eval_step, "eval_lds": trained_curve.eval_lds,
                     "best_step": trained_curve.best_step}
        points.append({
            "training_splits": n, "labelled_subsets": sum(len(s.subsets) for s in chosen),
            "distinct_texts": len({t for s in chosen for t in (*s.dev_texts, *s.pool_texts)}),
            "labels": sum(s.labels.size for s in chosen), "benchmark_lds": value,
            "validation_lds": max(curve["eval_lds"]) if curve["eval_lds"] else None,
            "kept_step": curve.get("best_step"), "seconds": round(seconds, 1)})
        log.info("scaling: %d training splits -> benchmark LDS %.4f", n, value)
    return {"points": points, "validation_splits": cfg.train.validation_splits}


def task_classification(config_path: str, run: dict[str, Any], gradients: bool = False) -> dict[str, Any]:
    """Task-label accuracy of a probe on each kind of feature, over the benchmark's records
    (test and pool); tasks with fewer records than probe folds are left out. The base LM's
    gradient features only with ``gradients`` (4 of the probe's 4.3 minutes on 2 cores)."""
    from airrep.baselines.gradient import gradient_features
    from airrep.config import load_config
    from airrep.llm import load_base_llm
    from airrep.metrics import classification_accuracy
    from airrep.model import AirRep
    from flows.common import config_data
    from tasks.common import records_by_id, typed
    from tasks.labels import load_index, local_llm_path
    from tasks.model import fetch_model_dir

    config = config_data(load_config(config_path, run["overrides"]))
    cfg = typed(config)
    bench = load_index(config, run["index_key"]).benchmark
    by_id = records_by_id(cfg)
    records = [by_id[i] for i in list(bench.test) + list(bench.pool)]
    counts = Counter(r.label for r in records)
    records = [r for r in records if counts[r.label] >= PROBE_FOLDS]
    labels = [r.label for r in records]
    trained = AirRep.from_pretrained(fetch_model_dir(config, run["model_key"]), precision=cfg.train.precision)
    untrained = AirRep.from_encoder(cfg.train.encoder, precision=cfg.train.precision)
    untrained.model.config.max_tokens = cfg.train.max_tokens
    features = {
        "airrep": lambda: trained.encode(records),
        "encoder": lambda: untrained.encode(records),
    }
    if gradients:
        lm, tokenizer = load_base_llm(local_llm_path(config, run["llm"]), cfg.base_llm)
        features["gradient"] = lambda: gradient_features(
            lm, tokenizer, records, max_length=cfg.evaluate.gradient_max_length, proj_dim=trained.dim, seed=cfg.seed)
    rows = []
    for name, make in features.items():
        start = time.perf_counter()
        matrix = make()
        accuracy = classification_accuracy(matrix, labels, folds=PROBE_FOLDS, seed=cfg.seed)
        rows.append({"features": name, "dim": int(matrix.shape[1]), "accuracy": accuracy,
                     "seconds": round(time.perf_counter() - start, 1)})
        log.info("task classification with %s features: %.3f", name, accuracy)
    majority = max(Counter(labels).values()) / len(labels)
    return {"rows": rows, "n_records": len(records), "n_tasks": len(set(labels)), "majority_baseline": majority}


def plot_lds(results: dict[str, Any], path: Path) -> None:
    """LDS×100 per method, one panel per dataset, the noise ceiling dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results["datasets"])
    fig, axes = plt.subplots(1, len(names), figsize=(6.5 * len(names), 4), squeeze=False)
    for ax, name in zip(axes[0], names, strict=True):
        table = results["datasets"][name]["table"]
        rows = [r for r in table["rows"] if r["lds"] is not None and np.isfinite(r["lds"])]
        colors = ["tab:red" if r["method"].startswith("airrep") else "tab:gray" for r in rows]
        ax.bar([r["method"] for r in rows], [100 * r["lds"] for r in rows], color=colors)
        if table["noise_ceiling"] is not None:
            ax.axhline(100 * table["noise_ceiling"], ls="--", color="black", lw=1, label="noise ceiling")
            ax.legend(loc="upper left")
        ax.axhline(0, color="black", lw=0.5)
        ax.set_title(name)
        ax.set_ylabel("LDS × 100")
        plt.setp(ax.get_xticklabels(), rotation=30, ha="right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_curves(results: dict[str, Any], path: Path) -> None:
    """AirRep's training loss, training pair accuracy and validation LDS per step, per dataset."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (loss_ax, acc_ax, val_ax) = plt.subplots(1, 3, figsize=(15, 3.6))
    for name, data in results["datasets"].items():
        curve = data["curve"]
        loss_ax.plot(curve["step"], _smooth(curve["loss"]), label=name)
        acc_ax.plot(curve["step"], _smooth(curve["pair_accuracy"]), label=name)
        if curve.get("eval_step"):
            line = val_ax.plot(curve["eval_step"], [100 * v for v in curve["eval_lds"]], marker=".", label=name)
            if curve.get("best_step") is not None:
                best = curve["eval_step"].index(curve["best_step"])
                val_ax.plot([curve["best_step"]], [100 * curve["eval_lds"][best]], "o", mfc="none", ms=10,
                            color=line[0].get_color())
    loss_ax.set(xlabel="step", ylabel="weighted RankNet loss (10-step mean)")
    acc_ax.set(xlabel="step", ylabel="training pair accuracy (10-step mean)")
    val_ax.set(xlabel="step", ylabel="validation LDS × 100 (held-out splits)")
    val_ax.set_title("circled: the kept step", fontsize=9)
    loss_ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_scaling(results: dict[str, Any], path: Path) -> None:
    """Benchmark LDS of AirRep against the labelled subsets it was trained on, per dataset,
    with the dataset's TF-IDF and untrained encoder as horizontal references."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [n for n, d in results["datasets"].items() if d.get("scaling")]
    fig, axes = plt.subplots(1, len(names), figsize=(5.5 * len(names), 3.8), squeeze=False)
    for ax, name in zip(axes[0], names, strict=True):
        data = results["datasets"][name]
        points = data["scaling"]["points"]
        ax.plot([p["labelled_subsets"] for p in points], [100 * p["benchmark_lds"] for p in points], "o-",
                color="tab:red", label="AirRep (benchmark)")
        if all(p["validation_lds"] is not None for p in points):
            ax.plot([p["labelled_subsets"] for p in points], [100 * p["validation_lds"] for p in points], "s--",
                    color="tab:red", alpha=0.5, label="AirRep (validation splits)")
        rows = {r["method"]: r["lds"] for r in data["table"]["rows"]}
        for method, style in (("tfidf", ":"), ("encoder", "-.")):
            if rows.get(method) is not None and np.isfinite(rows[method]):
                ax.axhline(100 * rows[method], ls=style, color="gray", label=method)
        ax.set(xlabel="labelled subsets used for training", ylabel="LDS × 100", title=name)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_classification(classification: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = classification["rows"]
    fig, ax = plt.subplots(figsize=(5, 3.4))
    ax.bar([r["features"] for r in rows], [100 * r["accuracy"] for r in rows],
           color=["tab:red" if r["features"] == "airrep" else "tab:gray" for r in rows])
    ax.axhline(100 * classification["majority_baseline"], ls=":", color="black", lw=1, label="majority class")
    ax.set_ylabel("task accuracy (%)")
    ax.set_title("Natural Instructions: task from features")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _smooth(values: list[float], window: int = 10) -> np.ndarray:
    values = np.asarray(values, dtype=float)
    if len(values) < window:
        return values
    kernel = np.ones(window) / window
    head = np.cumsum(values[: window - 1]) / np.arange(1, window)
    return np.concatenate([head, np.convolve(values, kernel, mode="valid")])


def results_markdown(results: dict[str, Any], config_path: str, extra: list[str]) -> str:
    """The generated part of RESULTS.md: setting, LDS tables beside the paper's, probe table."""
    from airrep.config import load_config

    cfg = load_config(config_path, extra)
    s, b = cfg.sampling, cfg.sampling.benchmark
    lines = [
        "# Benchmark results",
        "",
        "Generated by `make bench` (`python -m benchmarks.quality`) from `configs/bench.yaml`; the "
        "numbers below are those in `benchmarks/results/quality.json`. Speed figures: "
        "`make bench-quick`, `benchmarks/results/speed.json` (summarised in the README). "
        "Orchestration at paper scale (sqlite against PostgreSQL): `make bench-orchestration`, "
        "[ORCHESTRATION.md](ORCHESTRATION.md).",
        "",
        "## Setting",
        "",
        f"- Machine: {describe_machine(results['machine'])}, "
        f"torch {results['machine']['torch']}; the runs behind these figures took "
        f"{(results['seconds'] + results.get('previous_seconds', 0)) / 60:.0f} min together (per dataset below: "
        "what each computed and what it reused from an earlier run).",
        f"- Base LM: a Llama-architecture LM (hidden {cfg.base_llm.tiny.hidden_size}, "
        f"{cfg.base_llm.tiny.num_layers} layers, vocabulary {cfg.base_llm.tiny.vocab_size}) pretrained by the "
        "pipeline " + ("once for both datasets on the general corpus: ShareGPT's later turns and the reserved "
                       "Natural Instructions subtasks, text that no record of either dataset holds (see Base LM below)."
                       if cfg.base_llm.tiny.corpus == "general" else
                       f"on {s.pretrain_size} records of the same dataset that no split or benchmark uses."),
        f"- Labels: {s.n_splits} cross-validation splits × {s.n_subsets} subsets of {s.subset_size} from a pool of "
        f"{s.n_pool}; {s.n_dev} dev examples per split; fine-tune {cfg.finetune.epochs} epochs, lr {cfg.finetune.lr}.",
        f"- AirRep: the first {cfg.train.encoder_layers or 6} of MiniLM-L6's 6 blocks (384-d)"
        + (", L2-normalised embeddings times a learnable scale (its start picked on validation from "
           f"{cfg.train.scale_candidates or [cfg.train.initial_scale]})" if cfg.train.normalize else "")
        + (f"; each pair's score adds one TF-IDF cosine per field ({', '.join(cfg.train.lexical_fields)} of the "
           "formatted example, each with the IDF of the pool being attributed) times a learnable weight per "
           f"field, their starts picked jointly with the scale from {cfg.train.lexical_candidates} × the scale "
           "(rows airrep-dense and airrep-lexical: the embedding term and the lexical terms alone)"
           if cfg.train.lexical else "")
        + ("; every block, the projection and the scale" if cfg.train.trainable_layers is None
           else "; the projection and the scale (the blocks frozen, computed once per text)"
           if cfg.train.trainable_layers == 0
           else f"; the top {cfg.train.trainable_layers} block(s), the projection and the scale")
        + " "
        f"trained for up to {cfg.train.steps} steps ({cfg.train.topk} subsets × {cfg.train.reference_size} dev "
        f"examples per step); the last {cfg.train.validation_splits} splits are held out for validation every "
        f"{cfg.train.eval_every} steps, the best step is kept"
        + (f" and training stops after {cfg.train.patience} evaluations without improvement." if cfg.train.patience
           else "."),
        f"- Benchmark: {b.n_test} test examples, a pool of {b.n_pool}, {b.n_subsets} held-out subsets of "
        f"{b.subset_size}, disjoint (by conversation or input group) from everything used for training. Each subset "
        "is fine-tuned twice with independent seeds; the noise ceiling is the LDS of predicting the first run's "
        "losses with the second's.",
        "",
        "## LDS × 100 on held-out subsets",
        "",
    ]
    names = list(results["datasets"])
    by_method: dict[str, dict[str, dict]] = {}
    for name in names:
        for row in results["datasets"][name]["table"]["rows"]:
            by_method.setdefault(row["method"], {})[name] = row
    papers = [n for n in [*names, "mean of 4"] if n in PAPER]
    lines.append("| method | " + " | ".join(names) + " | dim | "
                 + " | ".join(f"paper: {PAPER_NAMES[n]}" for n in papers) + " |")
    lines.append("|---|" + "---|" * (len(names) + 1 + len(papers)))
    for method, cells in by_method.items():
        values = [f"{100 * cells[n]['lds']:.2f}" if n in cells and cells[n]["lds"] is not None
                  and np.isfinite(cells[n]["lds"]) else "-" for n in names]
        dim = next((c["dim"] for c in cells.values() if c["dim"] is not None), None)
        paper = [str(PAPER[n].get(method, "-")) for n in papers]
        lines.append(f"| {method} | " + " | ".join(values) + f" | {dim if dim is not None else '-'} | "
                     + " | ".join(paper) + " |")
    ceilings = [results["datasets"][n]["table"]["noise_ceiling"] for n in names]
    lines.append("| *noise ceiling* | " + " | ".join(f"{100 * c:.2f}" if c is not None else "-" for c in ceilings)
                 + " | - |" + " - |" * len(papers))
    lines += ["", "The paper's columns are Qwen2.5-0.5B fine-tuned on subsets of 1000 from pools of 100k, "
              "AirRep trained on 10^4 labelled subsets for 2000 steps; its ablation rows exist only as the "
              "mean over its four datasets."]
    lines += ["", "![LDS per method](results/quality-lds.png)", "",
              "![AirRep training curves](results/quality-training.png)", ""]
    for name in names:
        data = results["datasets"][name]
        curve = data["curve"]
        kept = (f", kept step {curve['best_step']} of {curve['step'][-1]} (validation LDS×100 "
                f"{100 * max(curve['eval_lds']):.2f})") if curve.get("best_step") is not None else ""
        lines.append(f"- {name}: pipeline {data['seconds'] / 60:.1f} min, {data['finetunes_computed']} fine-tunes run "
                     f"({data['finetunes_skipped']} reused), AirRep training {curve['seconds'] / 60:.1f} min "
                     f"(frozen layers once: {curve.get('cache_seconds', 0):.0f} s){kept}, final training pair "
                     f"accuracy {np.mean(curve['pair_accuracy'][-10:]):.3f}.")
    lines += frontier_markdown(results)
    lines += base_lm_markdown(results)
    lines += scaling_markdown(results)
    classification = results.get("classification")
    if classification:
        lines += ["", "## Task classification (Natural Instructions)", "",
                  f"A logistic-regression probe ({PROBE_FOLDS}-fold stratified cross-validation, scikit-learn) "
                  f"predicts the task of {classification['n_records']} benchmark records ({classification['n_tasks']} "
                  f"tasks; majority class {100 * classification['majority_baseline']:.1f}%) from each kind of feature.",
                  "", "| features | dim | accuracy (%) | paper, FLAN (%) |", "|---|---|---|---|"]
        for row in classification["rows"]:
            lines.append(f"| {row['features']} | {row['dim']} | {100 * row['accuracy']:.1f} | "
                         f"{PAPER_CLASSIFICATION.get(row['features'], '-')} |")
        lines += ["", "Paper: AirRep, GTE-small (untrained) and LoGra's 18432-d gradient features."]
        lines += ["", "![Task classification](results/quality-classification.png)"]
    return "\n".join(lines) + "\n"


def base_lm_markdown(results: dict[str, Any]) -> list[str]:
    """The base LM section: pretraining, and the benchmark test loss before and after fine-tuning,
    beside the same figures for the LM of a comparison run (``--compare``) when there is one."""
    runs = [(name, data["base_lm"]) for name, data in results["datasets"].items() if data.get("base_lm")]
    if not runs:
        return []
    lines = ["", "## Base LM", "", "| dataset | LM | parameters | pretraining tokens | pretraining min | "
             "test loss, base | test loss, after a subset fine-tune |", "|---|---|---|---|---|---|---|"]
    comparison = results.get("comparison", {})
    for name, info in runs:
        rows = [("this run", info)]
        other = comparison.get("datasets", {}).get(name, {}).get("base_lm")
        if other:
            rows.append((comparison.get("label", "comparison"), other))
        for label, lm in rows:
            pre = lm.get("pretraining", {})
            lines.append(f"| {name} | {label} ({pre.get('corpus', '?')}) | {lm['parameters'] / 1e6:.2f}M | "
                         f"{pre.get('tokens', 0) / 1e6:.1f}M | {pre.get('seconds', 0) / 60:.0f} | "
                         f"{lm['test_loss_base']:.3f} | {lm['test_loss_finetuned']:.3f} |")
    if comparison:
        lines += ["", f"LDS × 100 with each base LM ({comparison.get('label', 'comparison')}: "
                  f"`{' '.join(comparison.get('overrides', []))}`):", "",
                  "| method | " + " | ".join(f"{n}: this run | {n}: {comparison.get('label', 'comparison')}"
                                             for n in results["datasets"]) + " |",
                  "|---|" + "---|---|" * len(results["datasets"])]
        methods = [r["method"] for r in next(iter(results["datasets"].values()))["table"]["rows"]]
        for method in methods:
            cells = []
            for name, data in results["datasets"].items():
                for table in (data["table"], comparison.get("datasets", {}).get(name, {}).get("table")):
                    row = next((r for r in (table or {}).get("rows", []) if r["method"] == method), None)
                    cells.append(f"{100 * row['lds']:.2f}" if row and row["lds"] is not None
                                 and np.isfinite(row["lds"]) else "-")
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return lines


def scaling_markdown(results: dict[str, Any]) -> list[str]:
    names = [n for n, d in results["datasets"].items() if d.get("scaling")]
    if not names:
        return []
    lines = ["", "## How many labelled subsets? (scaling curve)", "",
             "AirRep trained on the first n training splits, validated on the same held-out splits, scored on the "
             "benchmark. The largest point is the pipeline's own model.", "",
             "| dataset | training splits | labelled subsets | distinct texts | labels | validation LDS×100 | "
             "benchmark LDS×100 | training s |", "|---|---|---|---|---|---|---|---|"]
    for name in names:
        for p in results["datasets"][name]["scaling"]["points"]:
            val = "-" if p["validation_lds"] is None else f"{100 * p['validation_lds']:.2f}"
            lines.append(f"| {name} | {p['training_splits']} | {p['labelled_subsets']} | {p['distinct_texts']} | "
                         f"{p['labels']} | {val} | {100 * p['benchmark_lds']:.2f} | {p['seconds']:.0f} |")
    lines += ["", "![Scaling](results/quality-scaling.png)"]
    return lines


def log_to_mlflow(config_path: str, extra: list[str], results: dict[str, Any], files: list[Path]) -> None:
    """One MLflow run in the bench config's tracking store with every figure and file."""
    import mlflow

    from airrep.config import load_config
    from infra import tracking

    cfg = load_config(config_path, extra)
    tracking.ensure_experiment(cfg.model_copy(update={"tracking": cfg.tracking.model_copy(
        update={"experiment": "airrep-benchmarks"})}))
    with mlflow.start_run(run_name="quality"):
        for name, data in results["datasets"].items():
            for row in data["table"]["rows"]:
                if row["lds"] is not None and np.isfinite(row["lds"]):
                    mlflow.log_metric(f"{name}.{tracking.lds_metric_name(row['method'])}", row["lds"])
            if data["table"]["noise_ceiling"] is not None:
                mlflow.log_metric(f"{name}.noise_ceiling", data["table"]["noise_ceiling"])
        for row in (results.get("classification") or {}).get("rows", []):
            mlflow.log_metric(f"classification_{row['features']}", row["accuracy"])
        for path in files:
            mlflow.log_artifact(str(path))


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.quality", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 2)[2])
    parser.add_argument("-c", "--config", default="configs/bench.yaml", help="pipeline config (default: %(default)s)")
    parser.add_argument("--datasets", default=",".join(DATASETS),
                        help="comma-separated data sources (default: %(default)s)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="config override applied to every dataset (repeatable)")
    parser.add_argument("--out", default=str(ROOT / "results"), help="results directory (default: %(default)s)")
    parser.add_argument("--keep-others", action="store_true",
                        help="keep the results of datasets not run now from OUT/quality.json (re-run one dataset)")
    parser.add_argument("--report-only", action="store_true",
                        help="re-draw the plots and RESULTS.md from OUT/quality.json without running anything")
    parser.add_argument("--markdown", default=str(ROOT / "RESULTS.md"), help="report file (default: %(default)s)")
    parser.add_argument("--scaling", default="2", metavar="N,N,...",
                        help="also train AirRep on the first N training splits, for the scaling curve "
                             "(default: %(default)s; empty: none)")
    parser.add_argument("--probe-gradients", action="store_true",
                        help="also classify tasks from the base LM's projected gradients (about 4 more minutes)")
    parser.add_argument("--compare", metavar="LABEL",
                        help="run every dataset again with --compare-set overrides (e.g. another base LM) and "
                             "add its tables to OUT/quality.json beside the main run's, which is kept as it is")
    parser.add_argument("--compare-set", dest="compare_overrides", action="append", default=[],
                        metavar="SECTION.KEY=VALUE", help="override for the --compare run (repeatable)")
    args = parser.parse_args(argv)
    setup_logging(verbose=False)  # the CLI's format and quieted loggers
    prepare_environment()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.compare:
        results = json.loads((out / "quality.json").read_text())
        start = time.perf_counter()
        comparison = {"label": args.compare, "overrides": args.compare_overrides, "datasets": {}}
        for dataset in args.datasets.split(","):
            log.info("comparison %s on %s", args.compare, dataset)
            run = run_dataset(args.config, dataset, [*args.overrides, *args.compare_overrides])
            run["base_lm"] = base_lm_report(args.config, run)
            comparison["datasets"][dataset] = run
        comparison["seconds"] = round(time.perf_counter() - start, 1)
        results["comparison"] = comparison
        (out / "quality.json").write_text(json.dumps(results, indent=2, default=float) + "\n")
        write_report(results, args, out)
        return results
    if args.report_only:
        results = json.loads((out / "quality.json").read_text())
        results["paper"] = PAPER  # reference figures only; the measurements are untouched
        (out / "quality.json").write_text(json.dumps(results, indent=2, default=float) + "\n")
        write_report(results, args, out)
        return results
    start = time.perf_counter()
    results: dict[str, Any] = {"config": args.config, "overrides": args.overrides, "machine": machine(),
                               "datasets": {}, "paper": PAPER}
    if (out / "quality.json").exists() and "comparison" in json.loads((out / "quality.json").read_text()):
        # A --compare run is measured on its own (another base LM, say) and kept until rerun.
        results["comparison"] = json.loads((out / "quality.json").read_text())["comparison"]
    if args.keep_others and (out / "quality.json").exists():
        previous = json.loads((out / "quality.json").read_text())
        results["datasets"] = {k: v for k, v in previous["datasets"].items() if k not in args.datasets.split(",")}
        if "classification" in previous and "natural_instructions" not in args.datasets.split(","):
            results["classification"] = previous["classification"]
        results["previous_seconds"] = previous.get("seconds", 0) + previous.get("previous_seconds", 0)
    for dataset in args.datasets.split(","):
        log.info("benchmark %s: %s", dataset, DATASETS.get(dataset, dataset))
        run = results["datasets"][dataset] = run_dataset(args.config, dataset, args.overrides)
        run["base_lm"] = base_lm_report(args.config, run)
        sizes = [int(n) for n in args.scaling.split(",") if n.strip()]
        if sizes:
            run["scaling"] = scaling_curve(args.config, run, sizes)
        if dataset == "natural_instructions":
            results["classification"] = task_classification(args.config, results["datasets"][dataset],
                                                            gradients=args.probe_gradients)
    results["seconds"] = round(time.perf_counter() - start, 1)
    (out / "quality.json").write_text(json.dumps(results, indent=2, default=float) + "\n")
    files = write_report(results, args, out)
    log_to_mlflow(args.config, args.overrides, results, files)
    log.info("wrote %s and %s in %.0f min", files[0], files[-1], results["seconds"] / 60)
    return results


def write_report(results: dict[str, Any], args: argparse.Namespace, out: Path) -> list[Path]:
    """The plots and RESULTS.md (generated tables, then benchmarks/discussion.md); their paths."""
    from airrep.atomic import write_text_atomic

    files = [out / "quality.json", out / "quality-lds.png", out / "quality-training.png"]
    plot_lds(results, files[1])
    plot_curves(results, files[2])
    if any(d.get("scaling") for d in results["datasets"].values()):
        files.append(out / "quality-scaling.png")
        plot_scaling(results, files[-1])
    if has_frontier(results):
        files.append(out / "quality-frontier.png")
        plot_frontier(results, files[-1])
    if results.get("classification"):
        files.append(out / "quality-classification.png")
        plot_classification(results["classification"], files[-1])
    report = Path(args.markdown)
    discussion = ROOT / "discussion.md"
    text = results_markdown(results, results.get("config", args.config), results.get("overrides", args.overrides))
    if (out / "selection.json").exists():  # make bench-apps' section, kept across a re-run of this one
        from benchmarks.selection import selection_markdown

        text += "\n" + selection_markdown(json.loads((out / "selection.json").read_text()))
    if (out / "transfer.json").exists():  # likewise bench-transfer's section
        from benchmarks.transfer import transfer_markdown

        text += "\n" + transfer_markdown(json.loads((out / "transfer.json").read_text()))
    if discussion.exists():
        text += "\n" + discussion.read_text()
    write_text_atomic(report, text)
    return [*files, report]


if __name__ == "__main__":
    main()
