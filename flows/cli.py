"""The ``airrep`` command line: run the pipeline or one of its stages."""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
from collections.abc import Sequence

from airrep.config import ConfigError, load_config

DESCRIPTION = """\
AirRep: learned training-data attribution.

Stages: sample cross-validation splits and subsets, fine-tune the base LLM on every
subset and record per-example dev losses, normalize them into attribution labels.
Configuration comes from a YAML file (configs/tiny.yaml for CPU, configs/paper.yaml for
the paper's GPU setting), then AIRREP__SECTION__KEY environment variables, then
--set section.key=value overrides.
"""


def _add_config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-c", "--config", default="configs/tiny.yaml",
                        help="YAML config file (default: %(default)s)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override one config value, e.g. --set finetune.lr=1e-4 (repeatable)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="airrep", description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    labels = commands.add_parser(
        "labels", help="generate attribution labels (sample, fine-tune every subset, normalize)",
        description="Fine-tune the base LLM on every subset of every split and normalize the dev "
                    "losses into labels. Finished fine-tunes are skipped, so a re-run resumes.")
    _add_config_args(labels)
    labels.add_argument("--out", help="output directory (default: <work_dir>/<name>/labels)")
    run = commands.add_parser(
        "run", help="the whole pipeline: labels, benchmark, train AirRep, LDS table against baselines",
        description="Generate labels, fine-tune the held-out benchmark subsets, train AirRep and "
                    "evaluate it by LDS against TF-IDF, the untrained encoder and gradient methods.")
    _add_config_args(run)
    return parser


def cmd_run(args: argparse.Namespace) -> int:
    from airrep.local_run import run_all

    config = load_config(args.config, args.overrides)
    result = run_all(config)
    print(f"\nfine-tunes: {result.finetunes_computed} run now, "
          f"{result.finetunes_skipped} already finished and skipped")
    print(f"trained AirRep: {result.model_dir}")
    print(f"training: {len(result.curve.step)} steps in {result.curve.seconds:.0f} s, final loss "
          f"{result.curve.loss[-1]:.4f}; held-out LDS by step: "
          + ", ".join(f"{s}: {100 * v:.2f}" for s, v in zip(result.curve.eval_step, result.curve.eval_lds)))
    print("\nLDS on held-out subsets (×100):\n")
    print(result.table.to_markdown())
    print(f"\nplot: {result.artifacts['plot']}")
    return 0


def cmd_labels(args: argparse.Namespace) -> int:
    from airrep.label_generation import generate_labels, load_split_labels

    config = load_config(args.config, args.overrides)
    run = generate_labels(config, args.out)
    print(f"\nlabels written to {run.out_dir}")
    print(f"base LLM: {run.llm_path} ({run.llm_fingerprint})")
    print(f"fine-tunes: {run.computed} run now, {run.skipped} already finished and skipped")
    if run.seconds_per_finetune:
        print(f"time per subset fine-tune: {statistics.mean(run.seconds_per_finetune):.2f} s "
              f"({3600 / statistics.mean(run.seconds_per_finetune):.0f} per hour), "
              f"training throughput {statistics.mean(run.tokens_per_second):.0f} tokens/s")
    for path in run.split_files:
        split = load_split_labels(path)
        losses = split["losses"]
        print(f"  {path.name}: losses {losses.shape} (subsets x dev) mean {losses.mean():.3f} "
              f"std across subsets {losses.std(axis=0).mean():.4f}; labels in "
              f"[{split['labels'].min():.2f}, {split['labels'].max():.2f}]")
    return 0


COMMANDS = {"labels": cmd_labels, "run": cmd_run}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    try:
        return COMMANDS[args.command](args)
    except ConfigError as exc:
        print(f"airrep: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
