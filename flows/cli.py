"""The ``airrep`` command line: run the pipeline or one stage, attribute, watch.

Each pipeline command runs the same Prefect flow as the deployment of the same name in
``prefect.yaml``, with the same parameters (a config path and ``--set`` overrides).
Without ``PREFECT_API_URL`` Prefect starts a temporary local API for the run.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from airrep.config import ConfigError, load_config
from airrep.data import CorpusError
from airrep.extras import MissingExtraError
from airrep.sampling import SamplingError
from infra.supervisor import join_supervisor, run_supervised

DESCRIPTION = """\
AirRep: learned training-data attribution, as an orchestrated pipeline.

  run        the whole pipeline: sample splits, fine-tune the base LLM on every subset,
             normalize labels, train AirRep, evaluate by LDS against baselines, register
             the model in MLflow and promote it to champion if it beats the current one
  labels     stages 1-3 only (sample, fine-tune subsets, normalize)
  train      train, evaluate, register and promote on published labels
  evaluate   the LDS table for a trained AirRep directory on the benchmark
  attribute  top-k training examples for texts, from a registered model or a path
  select     choose the training data most useful for a target task, within a budget
  watch      retrain when the base LLM's fingerprint differs from the champion's

Configuration: a YAML file or a packaged config by name (tiny for CPU, bench, gpu, paper for
the paper's GPU setting; their files are in configs/), then AIRREP__SECTION__KEY environment
variables, then --set overrides.
Finished subset fine-tunes are published under content keys and never recomputed.
On SIGTERM, SIGINT or SIGHUP a run stops within --stop-grace seconds, with everything it
started, and exits with 128 + the signal (143 for SIGTERM); a re-run resumes.
"""


def _add_config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-c", "--config", default="tiny",
                        help="YAML config file, or a packaged config by name: tiny, bench, gpu, paper "
                             "(default: %(default)s)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override one config value, e.g. --set finetune.lr=1e-4 (repeatable)")


STOP_GRACE_ENV = "AIRREP_STOP_GRACE"
DEFAULT_STOP_GRACE = 30.0


def _seconds(text: str) -> float:
    try:
        seconds = float(text)
    except ValueError:
        seconds = -1.0
    if not seconds >= 0:  # NaN too
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds (0 or more)")
    return seconds


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="airrep", description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--stop-grace", type=_seconds, metavar="SECONDS",
                        help="after a stop signal, how long the run may take to finish before it is killed "
                             f"(default: ${STOP_GRACE_ENV}, else {DEFAULT_STOP_GRACE:.0f})")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = commands.add_parser("run", help="the whole pipeline (the 'pipeline' deployment)",
                              description="Run every stage in order and print the LDS table.")
    _add_config_args(run)

    labels = commands.add_parser("labels", help="sample, fine-tune every subset, normalize",
                                 description="Generate attribution labels (the 'label-generation' "
                                             "deployment). A re-run resumes where the last stopped.")
    _add_config_args(labels)

    train = commands.add_parser("train", help="train, evaluate, register and promote",
                                description="Train AirRep on the labels (generated first if missing), "
                                            "evaluate it and promote it if it beats the champion.")
    _add_config_args(train)
    train.add_argument("--processes", type=int, metavar="N",
                       help="train the encoder in N processes under accelerate launch, one per GPU "
                            "(train.processes; default: the config's, 1)")

    evaluate = commands.add_parser("evaluate", help="LDS table for a trained AirRep directory",
                                   description="Evaluate a saved AirRep (an HF directory) and the "
                                               "baselines on the config's held-out benchmark.")
    _add_config_args(evaluate)
    evaluate.add_argument("model", help="path to a saved AirRep model directory")

    attribute = commands.add_parser("attribute", help="top-k training examples for texts",
                                    description="Print the training examples that AirRep attributes "
                                                "each text to, from a registered model.")
    _add_config_args(attribute)
    attribute.add_argument("texts", nargs="*", help="texts to attribute, formatted like training examples "
                                                    "(or give --prompt and --response)")
    attribute.add_argument("--prompt", action="append", default=[],
                           help="a prompt to attribute, with its --response (repeatable, in pairs)")
    attribute.add_argument("--response", action="append", default=[], help="the response to the --prompt before it")
    attribute.add_argument("--model", help="models:/NAME@champion (default) or a path to a logged pyfunc")
    attribute.add_argument("-k", "--top-k", type=int, default=5, help="how many examples (default: %(default)s)")
    attribute.add_argument("--json", action="store_true", help="print JSON lines instead of a table")

    select = commands.add_parser("select", help="choose training data for a target task",
                                 description="Choose the --budget candidates whose mean AirRep score over the "
                                             "target examples is highest, and write their ids as JSON lines "
                                             "(best first). Both files are read with the config's data.fields.")
    _add_config_args(select)
    select.add_argument("--targets", required=True, metavar="FILE",
                        help="examples of the target task (.jsonl, .json or .parquet)")
    select.add_argument("--candidates", required=True, metavar="FILE", help="the pool to choose from")
    select.add_argument("--budget", required=True, type=int, metavar="N", help="how many candidates to choose")
    select.add_argument("--model", help="models:/NAME@champion (default), a logged pyfunc, or a saved AirRep "
                                        "directory")
    select.add_argument("-o", "--out", default="-", metavar="FILE",
                        help="where to write the JSON lines (default: standard output)")

    watch = commands.add_parser("watch", help="retrain if the base LLM changed",
                                description="Compare the base LLM's fingerprint with the champion's "
                                            "tag and run the pipeline on a change.")
    _add_config_args(watch)
    watch.add_argument("--trigger", choices=["inline", "event"], default="inline",
                       help="inline: run the pipeline here; event: only emit the Prefect event that "
                            "the deployment trigger in prefect.yaml reacts to (default: %(default)s)")
    return parser


def _print_result(result: dict) -> None:
    evaluation, registry = result["evaluation"], result["registry"]
    print(f"\nfine-tunes: {result['finetunes_computed']} run now, "
          f"{result['finetunes_skipped']} already finished and skipped")
    curve = result["model"]["curve"]
    print(f"AirRep training: {len(curve['step'])} steps, {curve['seconds']:.0f} s, final loss {curve['loss'][-1]:.4f}"
          + (" (reused: labels and settings unchanged)" if result["model"]["skipped"] else ""))
    print("\nLDS on held-out subsets (×100):\n")
    print(evaluation["markdown"])
    print(f"\nplot: {evaluation['files']['plot']}")
    state = "champion" if registry["promoted"] else f"challenger (champion is v{registry['champion']})"
    again = " (already registered: nothing changed)" if registry.get("skipped") else ""
    print(f"registered model: {registry['name']} version {registry['version']}, {state}{again}")


def cmd_run(args: argparse.Namespace) -> int:
    from flows.pipeline import pipeline

    config = load_config(args.config, args.overrides)
    result = pipeline(config)
    _print_result(result)
    _print_ui_hints(config)
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from flows.train_evaluate_promote import train_evaluate_promote

    processes = [f"train.processes={args.processes}"] if args.processes is not None else []
    config = load_config(args.config, [*args.overrides, *processes])
    _print_result(train_evaluate_promote(config))
    _print_ui_hints(config)
    return 0


def cmd_labels(args: argparse.Namespace) -> int:
    from flows.label_generation import label_generation

    result = label_generation(load_config(args.config, args.overrides))
    print(f"\nfine-tunes: {result['computed']} run now, {result['skipped']} already finished and skipped")
    print(f"base LLM fingerprint: {result['llm']['fingerprint']}")
    print("labels published at:\n  " + "\n  ".join(result["label_keys"]))
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from flows.evaluate import evaluate_model

    result = evaluate_model(load_config(args.config, args.overrides), args.model)
    print("\nLDS on held-out subsets (×100):\n")
    print(result["markdown"])
    print(f"\nplot: {result['files']['plot']}")
    return 0


def _load_registered(config, args: argparse.Namespace):
    """The pyfunc at ``--model``, else the registered champion; ``None`` (with the reason on
    stderr) when there is no champion yet."""
    import mlflow
    from mlflow.exceptions import MlflowException

    from infra import tracking

    tracking.ensure_experiment(config)
    uri = args.model or f"models:/{tracking.registered_model_name(config)}@champion"
    try:
        return mlflow.pyfunc.load_model(uri)
    except MlflowException as exc:
        if args.model or exc.error_code not in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"):
            raise
        print(f"airrep: no champion of {tracking.registered_model_name(config)} in {tracking.tracking_uri(config)} "
              f"yet: run `airrep run -c {args.config}` first, or pass --model", file=sys.stderr)
        return None


def cmd_attribute(args: argparse.Namespace) -> int:
    from airrep.data import format_example

    if len(args.prompt) != len(args.response):
        print(f"airrep: {len(args.prompt)} --prompt but {len(args.response)} --response: give them in pairs",
              file=sys.stderr)
        return 2
    texts = [*args.texts, *(format_example(p, r) for p, r in zip(args.prompt, args.response, strict=True))]
    if not texts:
        print("airrep: nothing to attribute: give texts, or --prompt and --response", file=sys.stderr)
        return 2
    config = load_config(args.config, args.overrides)
    model = _load_registered(config, args)
    if model is None:
        return 2
    import pandas as pd

    hits = model.predict(pd.DataFrame({"text": texts}), params={"top_k": args.top_k})
    if args.json:
        for row in hits.to_dict(orient="records"):
            print(json.dumps(row, ensure_ascii=False))
        return 0
    for query, group in hits.groupby("query"):
        print(f"\n[{query}] {texts[int(query)][:100]}")
        for row in group.itertuples():
            print(f"  {row.rank}. {row.train_id}  score {row.score:.3f}  {row.text[:90]!r}")
    return 0


def cmd_select(args: argparse.Namespace) -> int:
    from airrep.api import select
    from airrep.atomic import atomic_path
    from airrep.corpora import load_records
    from airrep.model import AirRep

    if args.budget <= 0:
        print(f"airrep: --budget must be positive, got {args.budget}", file=sys.stderr)
        return 2
    config = load_config(args.config, args.overrides)
    targets, _ = load_records(config.data.model_copy(update={"source": args.targets, "limit": None}))
    candidates, _ = load_records(config.data.model_copy(update={"source": args.candidates, "limit": None}))
    if args.budget > len(candidates):
        print(f"airrep: --budget {args.budget} exceeds the {len(candidates)} usable candidates in {args.candidates}",
              file=sys.stderr)
        return 2
    if args.model and Path(args.model).is_dir() and any(Path(args.model).glob("*.safetensors")):
        model = AirRep.from_pretrained(args.model)
    else:
        registered = _load_registered(config, args)
        if registered is None:
            return 2
        model = registered.unwrap_python_model().airrep
    chosen = select(model, targets, candidates, args.budget, show_progress_bar=len(candidates) >= 1000)
    lines = [json.dumps({"rank": rank, "id": candidates[i].id, "score": float(chosen.scores[i])}, ensure_ascii=False)
             for rank, i in enumerate(chosen.indices, start=1)]
    if args.out == "-":
        print("\n".join(lines))
    else:
        with atomic_path(args.out) as temp:
            Path(temp).write_text("\n".join(lines) + "\n", encoding="utf-8")
        print(f"{len(lines)} of {len(candidates)} candidates chosen for {len(targets)} targets: {args.out}",
              file=sys.stderr)
    return 0


def cmd_watch(args: argparse.Namespace) -> int:
    from flows.watch_base_llm import watch_base_llm

    result = watch_base_llm(load_config(args.config, args.overrides), trigger=args.trigger)
    if not result["changed"]:
        print(f"base LLM unchanged ({result['fingerprint']}): nothing to retrain")
    else:
        print(f"base LLM changed: {result['previous']} -> {result['fingerprint']}")
        if result["pipeline"]:
            _print_result(result["pipeline"])
    return 0


def _print_ui_hints(config) -> None:
    from infra import tracking

    print("\nlook at it:")
    print(f"  MLflow:  .venv/bin/mlflow ui --backend-store-uri {tracking.tracking_uri(config)} "
          "--port 5000   (then http://127.0.0.1:5000)")
    home = os.environ.get("PREFECT_HOME", "~/.prefect")
    print(f"  Prefect: PREFECT_HOME={home} .venv/bin/prefect server start   (then http://127.0.0.1:4200)")


COMMANDS = {"run": cmd_run, "labels": cmd_labels, "train": cmd_train, "evaluate": cmd_evaluate,
            "attribute": cmd_attribute, "select": cmd_select, "watch": cmd_watch}


# Kept at WARNING unless `-v`. ``distributed``: a local fan-out's worker processes start and
# stop once per stage.
NOISY_LOGGERS = ("httpx", "httpcore", "botocore", "urllib3", "alembic", "distributed")


def quiet_noisy_loggers() -> None:
    """Keep HTTP and Dask connection chatter out of the run log (warnings still show).

    ``distributed`` sets its own loggers from dask's config when it is first imported, which
    would undo a level set here; its config key, read from the environment, keeps them at
    WARNING, in the local cluster's worker processes too (they inherit the environment).
    """
    for noisy in NOISY_LOGGERS:
        logging.getLogger(noisy).setLevel(logging.WARNING)
    os.environ.setdefault("DASK_DISTRIBUTED__LOGGING__DISTRIBUTED", "warning")


def setup_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    if not verbose:
        quiet_noisy_loggers()


def _exit_on_sigterm(signum: int, _frame) -> None:
    """SIGTERM as a normal exit with the shell's status for it (143), so that exit handlers
    run: without them Prefect's temporary API server, a child process, outlives the run.
    During a flow run Prefect's own handler comes first (it marks the run Crashed once the
    in-flight tasks finish) and then re-sends the signal to this one."""
    raise SystemExit(128 + signum)


# What the Makefile exports, set here too (without overriding the environment) for runs that do
# not go through make: ``airrep`` on its own, ``python -m benchmarks.quality``. Offline (no model
# hub at run time), no telemetry (whose failed sends log errors without a network), and a
# start-up limit for Prefect's temporary API server that 2 busy cores meet (its default, 20 s,
# is missed when another job shares the cores).
QUIET_DEFAULTS = {
    "HF_HUB_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "DO_NOT_TRACK": "1",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "TOKENIZERS_PARALLELISM": "false",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
}


def prepare_environment() -> None:
    """:data:`QUIET_DEFAULTS` where the environment sets nothing, and ``PREFECT_HOME``'s folder.

    Called before Prefect, MLflow or the hub client is imported: they read these once."""
    for name, value in QUIET_DEFAULTS.items():
        os.environ.setdefault(name, value)
    ensure_prefect_home()


def ensure_prefect_home() -> None:
    """Create ``PREFECT_HOME`` (with its parents) before Prefect first reads it.

    Prefect creates only the last folder of its home, so on a fresh clone, where ``make``
    points it at ``.work/prefect`` and ``.work`` does not exist yet, its temporary API
    server cannot open its database and start-up times out after two minutes.
    """
    if os.environ.get("PREFECT_HOME"):
        Path(os.environ["PREFECT_HOME"]).expanduser().mkdir(parents=True, exist_ok=True)


def user_errors() -> tuple[type[Exception], ...]:
    """Errors whose message says what to fix, shown as one line with exit status 2: bad input,
    a missing extra, a base LLM that cannot load, an artifact store or a Dask cluster that is not
    set up. Those of modules not imported yet cannot have been raised, so they are not imported
    for this."""
    errors: list[type[Exception]] = [ConfigError, CorpusError, SamplingError, MissingExtraError]
    for module, name in (("airrep.llm", "BaseLLMError"), ("infra.storage", "ArtifactStoreError"),
                         ("flows.runners", "ClusterError")):
        if module in sys.modules:
            errors.append(getattr(sys.modules[module], name))
    return tuple(errors)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    prepare_environment()
    try:
        return COMMANDS[args.command](args)
    except Exception as exc:
        if not isinstance(exc, user_errors()):
            raise
        print(f"airrep: {exc}", file=sys.stderr)  # the message says what to do
        return 2


def entry() -> NoReturn:
    """The ``airrep`` command (``[project.scripts]``, ``python -m flows.cli``): :func:`main` in
    a child process that :func:`infra.supervisor.run_supervised` stops, with everything it
    started, within the stop grace of a stop signal. Prefect's own SIGTERM handling cannot
    bound that alone (see :mod:`infra.supervisor`). Tests call :func:`main` in-process."""
    argv = sys.argv[1:]
    if join_supervisor():  # this is the child
        sys.exit(main(argv))
    parser = build_parser()
    args = parser.parse_args(argv)  # --help and usage errors are answered here, at once
    grace = args.stop_grace
    if grace is None:
        try:
            grace = _seconds(os.environ.get(STOP_GRACE_ENV, str(DEFAULT_STOP_GRACE)))
        except argparse.ArgumentTypeError as exc:
            parser.error(f"{STOP_GRACE_ENV}: {exc}")
    setup_logging(args.verbose)
    sys.exit(run_supervised([sys.executable, "-m", "flows.cli", *argv], os.environ, grace))


if __name__ == "__main__":
    entry()
