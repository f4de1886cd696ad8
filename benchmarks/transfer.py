"""Transfer across base LMs (``make bench-transfer``): does an AirRep trained on one LM's labels
rank training data for another LM?

    python -m benchmarks.transfer [-c configs/bench.yaml] [--set SECTION.KEY=VALUE]

The paper trains AirRep on the fine-tunes of one LLM and applies it to others (its transfer
table). Here on Natural Instructions with the bench config and two base LMs of different
architecture and size: A, the bench's general Llama (its run is the one ``make bench`` and
``make bench-apps`` use: the registered champion, or a pipeline run that reuses every cache),
and B, a GPT-2 (:data:`GPT2_OVERRIDES`) pretrained once on a capped draw of the same general
text, with its own pipeline run: its own labels, AirRep, registered model and held-out
benchmark. Both runs sample the same subset index, so the two benchmarks hold the same test
records and held-out subsets; only the LM that was fine-tuned on them differs. B's run
evaluates only what the table needs (no frontier, no noise ceiling).

On each LM's benchmark, LDS×100 of AirRep trained on A's labels, AirRep trained on B's
labels, and the baselines the registry builds for that LM (the untrained encoder, TF-IDF,
and LoGra on that LM's own gradients). Writes ``benchmarks/results/transfer.json``,
``benchmarks/results/transfer.png`` and the section "Transfer across base LMs (Natural
Instructions)" of ``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from airrep.config import PipelineConfig
    from airrep.evaluate import BenchmarkData
    from airrep.model import AirRep

log = logging.getLogger("benchmarks.transfer")

DATASET = "natural_instructions"
ROOT = Path(__file__).resolve().parent
SECTION = "## Transfer across base LMs (Natural Instructions)"
LM_A, LM_B = "llama", "gpt2"
# LM B: a GPT-2 of another width and depth, pretrained on ~1.2M tokens of the general text
# (A: 27.7M tokens, 124 min; this cap keeps B's one-time pretraining near a quarter hour on
# 2 cores), registered under its own name so it never competes with A's champion, and
# evaluated on the table's methods only.
GPT2_OVERRIDES = [
    "base_llm.tiny.architecture=gpt2", "base_llm.tiny.hidden_size=96", "base_llm.tiny.num_layers=3",
    "base_llm.tiny.num_heads=3", "base_llm.tiny.intermediate_size=384", "base_llm.tiny.batch_size=16",
    "base_llm.tiny.max_pretrain_tokens=1200000",
    f"name=bench-{DATASET}-gpt2", "tracking.registered_model=airrep-natural-instructions-gpt2",
    "evaluate.methods=[airrep,encoder,tfidf,logra]", "evaluate.noise_ceiling=false", "evaluate.frontier={}",
]
BASELINES = ("encoder", "tfidf", "logra")


@dataclass
class LMInputs:
    """One base LM's side of the table: its run's config, held-out benchmark, trained AirRep,
    local LM directory and fingerprint, and what :func:`benchmarks.quality.base_lm_report`
    says about the LM (parameters, pretraining, test loss before and after a fine-tune)."""

    config: PipelineConfig
    bench: BenchmarkData
    trained: AirRep
    llm_path: str
    fingerprint: str
    report: dict[str, Any]
    source: dict[str, Any]


def _with_methods(cfg: PipelineConfig, methods: list[str]) -> PipelineConfig:
    evaluate = cfg.evaluate.model_copy(update={"methods": methods, "frontier": {}})
    return cfg.model_copy(update={"evaluate": evaluate})


def transfer_table(lms: Mapping[str, LMInputs]) -> tuple[dict[str, dict[str, float]], dict[str, dict[str, int]]]:
    """``{benchmark LM: {column: LDS}}`` and ``{benchmark LM: {column: numbers kept per pool
    example}}``: ``airrep<-X`` is the AirRep trained on X's labels; the baselines' rows as
    :func:`airrep.evaluate.evaluate_methods` names them (``logra-sum``). Every score comes from
    the registry's scorers, built with that benchmark's config and LM."""
    from airrep.evaluate import evaluate_methods
    from airrep.methods import build_methods

    table: dict[str, dict[str, float]] = {}
    numbers: dict[str, dict[str, int]] = {}
    for bench_lm, inputs in lms.items():
        rows = {}
        for trained_on, other in lms.items():
            scorer = build_methods(_with_methods(inputs.config, ["airrep"]), other.trained)
            rows[f"airrep<-{trained_on}"] = next(r for r in evaluate_methods(inputs.bench, scorer).rows
                                                 if r.method == "airrep")
        baselines = build_methods(_with_methods(inputs.config, list(BASELINES)), None, inputs.llm_path)
        rows.update({r.method: r for r in evaluate_methods(inputs.bench, baselines).rows})
        table[bench_lm] = {column: row.lds for column, row in rows.items()}
        numbers[bench_lm] = {column: row.dim for column, row in rows.items()}
        log.info("benchmark of %s: %s", bench_lm, {k: round(100 * v, 2) for k, v in table[bench_lm].items()})
    return table, numbers


def transfer_results(lms: Mapping[str, LMInputs]) -> dict[str, Any]:
    """The table with each LM's description, and the transfer ratios: on each LM's benchmark,
    the AirRep trained on the other LM's labels over the one trained on its own."""
    table, numbers = transfer_table(lms)
    ratios = {}
    for bench_lm in lms:
        own = table[bench_lm][f"airrep<-{bench_lm}"]
        for trained_on in lms:
            if trained_on != bench_lm:
                moved = table[bench_lm][f"airrep<-{trained_on}"]
                ratios[f"{trained_on}->{bench_lm}"] = moved / own if own else math.nan
    return {"lms": {name: {**inputs.report, "fingerprint": inputs.fingerprint, "source": inputs.source}
                    for name, inputs in lms.items()},
            "table": table, "numbers": numbers, "ratios": ratios}


def benchmark_loss_keys(config: dict[str, Any], index_key: str, llm_fingerprint: str) -> list[str]:
    """Where a run's held-out benchmark fine-tunes published their test losses (one per subset)."""
    from airrep.plan import benchmark_jobs
    from tasks.common import typed
    from tasks.labels import load_index

    first, _ = benchmark_jobs(load_index(config, index_key), typed(config).finetune, llm_fingerprint)
    return [job.key for job in first]


def lm_inputs(config_path: str, extra: list[str], workdir: Path) -> LMInputs:
    """One LM's run, resolved as the data-selection benchmark resolves it (the registered
    champion for this index and benchmark, else a pipeline run reusing every cache)."""
    import numpy as np

    from airrep.assemble import benchmark_data
    from airrep.model import AirRep
    from benchmarks.quality import base_lm_report, dataset_overrides
    from benchmarks.selection import bench_model
    from tasks.common import records_by_id, store_for, typed
    from tasks.labels import load_index, local_llm_path, npy_load

    resolved = bench_model(config_path, extra, workdir)
    cfg = typed(resolved.config)
    loss_keys = benchmark_loss_keys(resolved.config, resolved.index_key, resolved.llm["fingerprint"])
    store = store_for(cfg)
    losses = np.stack([npy_load(store.get_bytes(k)) for k in loss_keys])  # (n_subsets, n_test)
    bench = benchmark_data(load_index(resolved.config, resolved.index_key), records_by_id(cfg), losses, None)
    llm_path = local_llm_path(resolved.config, resolved.llm)
    run = {"overrides": dataset_overrides(DATASET, extra), "llm": {**resolved.llm, "path": llm_path},
           "index_key": resolved.index_key, "loss_keys": loss_keys}
    return LMInputs(cfg, bench, AirRep.from_pretrained(resolved.model_dir, precision=cfg.train.precision), llm_path,
                    resolved.llm["fingerprint"], base_lm_report(config_path, run),
                    {**resolved.source, "index_key": resolved.index_key})


def run_benchmark(config_path: str, extra: list[str], extra_b: list[str] = ()) -> dict[str, Any]:
    """Resolve LM A's run (the bench's), then LM B's (pretraining the GPT-2 and running its
    pipeline the first time), then :func:`transfer_results`. ``extra`` applies to both runs,
    ``extra_b`` to B's alone (after :data:`GPT2_OVERRIDES`)."""
    import tempfile

    seconds: dict[str, float] = {}
    lms: dict[str, LMInputs] = {}
    overrides_b = [*extra, *GPT2_OVERRIDES, *extra_b]
    with tempfile.TemporaryDirectory() as tmp:
        for name, overrides in ((LM_A, extra), (LM_B, overrides_b)):
            start = time.perf_counter()
            lms[name] = lm_inputs(config_path, overrides, Path(tmp) / name)
            seconds[name] = round(time.perf_counter() - start, 1)
            log.info("%s: run resolved in %.1f min", name, seconds[name] / 60)
        start = time.perf_counter()
        results = transfer_results(lms)
    seconds["table"] = round(time.perf_counter() - start, 1)
    return {**results, "overrides": {LM_A: extra, LM_B: overrides_b}, "seconds": seconds}


COLUMNS = (f"airrep<-{LM_A}", f"airrep<-{LM_B}", "encoder", "tfidf", "logra-sum")
TITLES = {f"airrep<-{LM_A}": "AirRep (A's labels)", f"airrep<-{LM_B}": "AirRep (B's labels)",
          "encoder": "encoder (untrained)", "tfidf": "TF-IDF", "logra-sum": "LoGra"}


def _lm_line(tag: str, name: str, lm: Mapping[str, Any]) -> str:
    pre = lm.get("pretraining", {})
    return (f"| {tag}: {name} | {lm['parameters'] / 1e6:.2f}M | {pre.get('tokens', 0) / 1e6:.1f}M | "
            f"{pre.get('seconds', math.nan) / 60:.0f} | {lm['test_loss_base']:.3f} | {lm['test_loss_finetuned']:.3f} | "
            f"`{lm['fingerprint']}` |")


def transfer_markdown(results: Mapping[str, Any]) -> str:
    """The RESULTS.md section: the two LMs, the table, and the figures stated as measured."""
    from benchmarks.quality import describe_machine
    from benchmarks.selection import _load_note

    lms, table = results["lms"], results["table"]
    names = list(lms)
    tags = dict(zip(names, "AB", strict=False))
    lines = [SECTION, "",
             "Generated by `make bench-transfer` (`python -m benchmarks.transfer`, also run by `make bench-apps`); "
             "numbers from `benchmarks/results/transfer.json`. Two base LMs of different architecture and size, "
             "both pretrained here on the general text (one-time, timed separately below): A, the bench's Llama, "
             "and B, a GPT-2. Each has its own pipeline run on Natural Instructions with the bench config: its own "
             "label fine-tunes, its own AirRep and its own held-out benchmark. Both runs sample the same subset "
             "index, so the benchmarks hold the same test records and held-out subsets, fine-tuned on different "
             "LMs. Test loss: the benchmark's test examples (response tokens), before any fine-tune and averaged "
             "over the held-out subset fine-tunes.", "",
             "| base LM | parameters | pretraining tokens | pretraining (min, once) | test loss, base | "
             "test loss, fine-tuned | fingerprint |", "|---|---|---|---|---|---|---|"]
    lines += [_lm_line(tags[n], n, lms[n]) for n in names]
    overrides = results.get("overrides", {})
    own_b = [o for o in overrides.get(names[1], []) if o not in GPT2_OVERRIDES and o not in overrides.get(names[0], [])]
    if own_b:
        lines += ["", "B's run also set " + ", ".join(f"`{o}`" for o in own_b) + "."]
    lines += ["", "LDS×100 on each LM's held-out benchmark (rows); AirRep trained on A's labels and on B's, and the "
              "baselines built for that LM (LoGra on its own gradients, summed over a subset).", "",
              "| benchmark of | " + " | ".join(TITLES[c] for c in COLUMNS) + " |", "|---|" + "---|" * len(COLUMNS)]
    for n in names:
        lines.append(f"| {tags[n]}: {n} | " + " | ".join(
            f"{100 * table[n][c]:.2f}" if c in table[n] else "—" for c in COLUMNS) + " |")
    numbers = results.get("numbers", {})
    if all(numbers.get(n, {}).get(c) for n in names for c in ("logra-sum", "encoder")):
        lines += ["", "Numbers kept per pool example (the paper's count): LoGra " + ", ".join(
            f"{numbers[n]['logra-sum']} on {tags[n]}" for n in names) + f" (256 per linear layer); the encoder "
            f"{numbers[names[0]]['encoder']}; AirRep {numbers[names[0]][COLUMNS[0]]} on A (its embedding and its "
            "TF-IDF rows, counted as the TF-IDF method's are)."]
    for sentence in transfer_sentences(results):
        lines += ["", sentence]
    lines.append("")
    machine = results.get("machine")
    s = results["seconds"]
    lines.append(f"The run took {sum(s.values()) / 60:.1f} min: resolving A's run {s[names[0]] / 60:.1f} min, B's "
                 f"{s[names[1]] / 60:.1f} min (its pipeline; pretraining and fine-tunes where not cached), the table "
                 f"{s['table'] / 60:.1f} min" + (f", on {describe_machine(machine)}" if machine else "")
                 + _load_note(dict(results)) + ". AirRep A: " + _source(lms[names[0]]["source"])
                 + "; AirRep B: " + _source(lms[names[1]]["source"]) + ".")
    lines += ["", "![Transfer across base LMs](results/transfer.png)"]
    return "\n".join(lines) + "\n"


def transfer_sentences(results: Mapping[str, Any]) -> list[str]:
    """Each benchmark's figures in words: the transferred AirRep against the native one (their
    ratio) and against the best baseline; says plainly when transfer falls short."""
    table, lms = results["table"], list(results["lms"])
    tags = dict(zip(lms, "AB", strict=False))
    out = []
    for bench_lm in lms:
        cells = table[bench_lm]
        own = cells[f"airrep<-{bench_lm}"]
        baselines = {c: cells[c] for c in COLUMNS if not c.startswith("airrep") and c in cells}
        best = max(baselines, key=baselines.get)
        for trained_on in lms:
            if trained_on == bench_lm:
                continue
            moved = cells[f"airrep<-{trained_on}"]
            verdict = ("above" if moved > baselines[best] else "not above") + f" the best baseline ({TITLES[best]}, " \
                      f"{100 * baselines[best]:.2f})"
            out.append(f"On {tags[bench_lm]}'s benchmark ({bench_lm}), AirRep trained on {tags[trained_on]}'s labels "
                       f"scores {100 * moved:.2f} against {100 * own:.2f} for AirRep trained on {tags[bench_lm]}'s own "
                       f"labels (ratio {results['ratios'][f'{trained_on}->{bench_lm}']:.2f}), {verdict}; the native "
                       f"AirRep is {'above' if own > baselines[best] else 'not above'} it.")
    return out


def _source(source: Mapping[str, Any]) -> str:
    if source.get("pipeline_run"):
        return f"the model of a pipeline run ({source.get('model_key')})"
    return f"registered champion v{source.get('version')} of `{source.get('registered')}` ({source.get('model_key')})"


def plot_transfer(results: Mapping[str, Any], path: Path) -> None:
    """Grouped bars: per benchmark LM, LDS×100 of every column."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    names = list(results["lms"])
    colors = {f"airrep<-{LM_A}": "tab:red", f"airrep<-{LM_B}": "tab:orange", "encoder": "tab:green",
              "tfidf": "tab:blue", "logra-sum": "tab:purple"}
    width = 0.8 / len(COLUMNS)
    x = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for k, column in enumerate(COLUMNS):
        values = [100 * results["table"][n].get(column, math.nan) for n in names]
        ax.bar(x - 0.4 + (k + 0.5) * width, values, width, color=colors[column], label=TITLES[column])
    ax.set_xticks(x, [f"{tag}: {n} benchmark" for tag, n in zip("AB", names, strict=False)])
    ax.set_ylabel("LDS × 100")
    ax.axhline(0, color="black", lw=0.8)
    ax.legend(fontsize=8, ncol=2)
    ax.set_title("Natural Instructions: AirRep across base LMs", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_report(results: Mapping[str, Any], out: Path, markdown: Path) -> list[Path]:
    """transfer.json, transfer.png and the RESULTS.md section (before the discussion)."""
    from airrep.atomic import write_text_atomic
    from benchmarks.selection import place_section

    out.mkdir(parents=True, exist_ok=True)
    files = [out / "transfer.json", out / "transfer.png", markdown]
    write_text_atomic(files[0], json.dumps(results, indent=2, default=float) + "\n")
    plot_transfer(results, files[1])
    discussion = ROOT / "discussion.md"
    first = discussion.read_text().splitlines()[0] if discussion.exists() else None
    report = markdown.read_text() if markdown.exists() else ""
    write_text_atomic(markdown, place_section(report, transfer_markdown(results), first, heading=SECTION))
    return files


def main(argv: list[str] | None = None) -> dict[str, Any]:
    from benchmarks.speed import machine
    from flows.cli import prepare_environment, setup_logging

    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.transfer", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 2)[2])
    parser.add_argument("-c", "--config", default="configs/bench.yaml", help="pipeline config (default: %(default)s)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="config override for both LMs' runs, as for make bench (repeatable)")
    parser.add_argument("--set-b", dest="overrides_b", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="config override for LM B's run alone (repeatable); B's run is found in the "
                             "registry by its benchmark, so a B with other training settings needs its own "
                             "tracking.registered_model")
    parser.add_argument("--out", default=str(ROOT / "results"), help="results directory (default: %(default)s)")
    parser.add_argument("--markdown", default=str(ROOT / "RESULTS.md"), help="report file (default: %(default)s)")
    parser.add_argument("--report-only", action="store_true", help="re-draw from OUT/transfer.json")
    args = parser.parse_args(argv)
    setup_logging(verbose=False)
    prepare_environment()
    out = Path(args.out)
    if args.report_only:
        results = json.loads((out / "transfer.json").read_text())
    else:
        load = os.getloadavg()[0]
        results = {"config": args.config, "machine": machine(),
                   **run_benchmark(args.config, args.overrides, args.overrides_b)}
        results["load_average"] = [load, os.getloadavg()[0]]
    files = write_report(results, out, Path(args.markdown))
    log.info("wrote %s", ", ".join(str(f) for f in files))
    return results


if __name__ == "__main__":
    main()
