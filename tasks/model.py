"""Model tasks: train AirRep, evaluate it by LDS, register and promote it, fingerprint the LLM."""

from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from prefect import task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NONE
from prefect.logging import get_run_logger
from prefect.tasks import exponential_backoff

from airrep import keys
from airrep.assemble import benchmark_data, training_splits
from airrep.evaluate import evaluate_methods, group_lds
from airrep.launch import train_to_dir
from airrep.llm import fingerprint
from airrep.methods import build_methods
from airrep.methods.encoders import embedding_scores
from airrep.model import AirRep
from airrep.paths import cache_dir, cache_lock
from tasks.common import records_by_id, store_for, typed
from tasks.labels import load_index, load_label_split, local_llm_path, npy_load


@task(cache_policy=NONE, retries=1, retry_delay_seconds=10)
def train_airrep_task(config: dict[str, Any], index_key: str, label_keys: list[str]) -> dict[str, Any]:
    """Train AirRep on the published labels and publish the model directory and its curve.

    Keyed by the labels and training settings: a re-run with nothing changed reuses it. The
    number of processes is not part of the key (they compute the one-process gradient), and
    with several (``train.processes``) only this task, not the launched processes, publishes.
    """
    cfg = typed(config)
    store = store_for(cfg)
    model = keys.model_id(label_keys, cfg.train.model_dump(exclude={"processes"}), cfg.seed)
    key, curve_key = keys.model_key(model), keys.model_curve_key(model)
    logger = get_run_logger()
    if store.exists(key) and store.exists(curve_key):
        logger.info("AirRep for these labels and settings already published at %s, skipped", key)
        return {"key": key, "curve": store.get_json(curve_key), "skipped": True}
    index = load_index(config, index_key)
    splits = training_splits(index, records_by_id(cfg), [load_label_split(config, k) for k in label_keys])
    with tempfile.TemporaryDirectory() as tmp:
        curve = train_to_dir(splits, cfg.train, tmp)
        store.put_dir(key, tmp)
    curve_dict = dataclasses.asdict(curve)
    store.put_json(curve_key, curve_dict)
    logger.info("trained AirRep in %.0f s (%d steps, %d processes; frozen layers %.0f s), final loss %.4f; kept "
                "step %s (validation LDS %s)", curve.seconds, len(curve.step), curve.processes, curve.cache_seconds,
                curve.loss[-1],
                curve.best_step if curve.best_step is not None else curve.step[-1],
                f"{max(curve.eval_lds):.4f}" if curve.eval_lds else "not measured")
    return {"key": key, "curve": curve_dict, "skipped": False}


def fetch_model_dir(config: dict[str, Any], key: str) -> Path:
    """A published model directory on this machine (downloaded once into the cache)."""
    target = cache_dir("airrep-models", key.replace("/", "_"))
    if (target / "config.json").exists():
        return target
    with cache_lock(target):
        if not (target / "config.json").exists():
            store_for(typed(config)).get_dir(key, target)
    return target


def benchmark_fingerprint(llm_fingerprint: str, index_key: str, config: dict[str, Any]) -> str:
    """Same benchmark ⇔ same base LLM, same held-out subsets and test set, same fine-tune settings."""
    cfg = typed(config)
    return keys.benchmark_fingerprint(llm_fingerprint, index_key, cfg.sampling.benchmark.model_dump(),
                                      cfg.finetune.model_dump())


@task(cache_policy=NONE, retries=1, retry_delay_seconds=10)
def evaluate_task(config: dict[str, Any], index_key: str, llm: dict[str, str], model_key: str,
                  loss_keys: list[str], repeat_keys: list[str], rescore_champion: bool = True) -> dict[str, Any]:
    """LDS table of AirRep and the baselines on the held-out benchmark; publishes the table,
    its markdown and plot, and shows the table as a Prefect artifact. ``rescore_champion``:
    also score the registered champion there when it was scored on another benchmark (off
    where the model evaluated is the champion: its ``airrep`` row is that score)."""
    cfg = typed(config)
    store = store_for(cfg)
    index = load_index(config, index_key)
    losses = np.stack([npy_load(store.get_bytes(k)) for k in loss_keys])
    repeat = np.stack([npy_load(store.get_bytes(k)) for k in repeat_keys]) if repeat_keys else None
    bench = benchmark_data(index, records_by_id(cfg), losses, repeat)
    trained = AirRep.from_pretrained(fetch_model_dir(config, model_key), precision=cfg.train.precision)
    table = evaluate_methods(bench, build_methods(cfg, trained, local_llm_path(config, llm)))
    out = cfg.work_path / cfg.name / "evaluation" / keys.evaluation_id(model_key)
    files = table.save(out)
    for path in files.values():
        store.put_file(keys.evaluation_key(model_key, path.name), path)
    create_markdown_artifact(
        key="lds-table",
        markdown="## LDS on held-out subsets (×100)\n\n" + table.to_markdown(),
        description=f"AirRep vs baselines, config {cfg.name}",
    )
    airrep_row = next((r for r in table.rows if r.method == "airrep"), None)
    return {"table": table.to_dict(), "files": {k: str(v) for k, v in files.items()},
            "lds": airrep_row.lds if airrep_row else float("nan"), "markdown": table.to_markdown(),
            "champion_lds": _rescore_champion(cfg, bench, benchmark_fingerprint(llm["fingerprint"], index_key, config))
            if rescore_champion else None}


def _rescore_champion(cfg, bench, bench_fp: str) -> float | None:
    """The registered champion's LDS on this benchmark, when it was scored on another one
    (the base LLM changed): LDS on different held-out fine-tunes is not comparable."""
    from infra import tracking

    tracking.ensure_experiment(cfg)
    name = tracking.registered_model_name(cfg)
    champion = tracking.champion_info(name)
    if champion is None or champion["tags"].get("benchmark_fingerprint") == bench_fp:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        model = AirRep.from_pretrained(tracking.champion_model_dir(name, Path(tmp)), precision=cfg.train.precision)
        sims, _ = embedding_scores(model, bench.test, bench.pool)
        lds = group_lds(sims, bench, "attention")
    get_run_logger().info("champion v%s re-scored on the current benchmark: LDS %.4f", champion["version"], lds)
    return lds


@task(cache_policy=NONE, retries=2, retry_delay_seconds=exponential_backoff(5))
def register_and_promote(config: dict[str, Any], index_key: str, llm: dict[str, str], model_key: str,
                         curve: dict[str, Any], evaluation: dict[str, Any], corpus_fingerprint: str,
                         bench_fp: str) -> dict[str, Any]:
    """Log the run to MLflow, register the attribution pyfunc as ``challenger``, and move
    ``champion`` to it only if it beats the champion on the same benchmark."""
    from airrep.evaluate import LDSTable, MethodResult
    from airrep.train import TrainingCurve
    from infra import tracking

    cfg = typed(config)
    logger = get_run_logger()
    index = load_index(config, index_key)
    by_id = records_by_id(cfg)
    corpus_ids = sorted({i for s in index.splits for i in s.pool} | set(index.benchmark.pool))
    table = LDSTable([MethodResult(**r) for r in evaluation["table"]["rows"]], evaluation["table"]["noise_ceiling"])
    name = tracking.registered_model_name(cfg)
    tags = tracking.standard_tags(cfg, llm["fingerprint"], corpus_fingerprint, bench_fp, evaluation["lds"])
    tags["model_key"] = model_key
    tracking.ensure_experiment(cfg)
    import mlflow

    existing = tracking.find_version(name, {"model_key": model_key, "config_hash": tags["config_hash"]})
    if existing is not None:  # a re-run with nothing changed: the registry already has this model
        champion = tracking.champion_info(name)
        tracking.record_evaluated_base_llm(name, llm["fingerprint"])
        logger.info("%s version %s already holds this model; not registered again", name, existing)
        return {"name": name, "version": existing, "promoted": bool(champion and champion["version"] == existing),
                "champion": champion["version"] if champion else None, "skipped": True}

    with mlflow.start_run(run_name=f"{cfg.name}-{keys.evaluation_id(model_key)[:8]}", tags=tags):
        mlflow.log_params(tracking.config_params(cfg))
        tracking.log_training(TrainingCurve(**curve))
        tracking.log_lds_table(table, {k: Path(v) for k, v in evaluation["files"].items()})
        version = tracking.log_attribution_model(
            fetch_model_dir(config, model_key), corpus_ids, [_text(by_id[i]) for i in corpus_ids],
            name, cfg.tracking.top_k, tags)
    if evaluation.get("champion_lds") is not None:
        tracking.rescore_champion(name, evaluation["champion_lds"], bench_fp)
    promoted = tracking.promote(name, version.version, evaluation["lds"], bench_fp, cfg.tracking.promotion_margin)
    tracking.record_evaluated_base_llm(name, llm["fingerprint"])  # promoted or not: the watch's reference
    champion = tracking.champion_info(name)
    logger.info("registered %s version %s (LDS %.4f): %s", name, version.version, evaluation["lds"],
                "promoted to champion" if promoted else "stays challenger")
    return {"name": name, "version": str(version.version), "promoted": promoted,
            "champion": champion["version"] if champion else None, "skipped": False}


def _text(record) -> str:
    from airrep.data import format_record

    return format_record(record)


@task(cache_policy=NONE, retries=2, retry_delay_seconds=exponential_backoff(2))
def fingerprint_base_llm(config: dict[str, Any], index_key: str) -> str:
    """The base LLM's current fingerprint (hub commit or hash of local weights)."""
    from tasks.labels import prepare_base_llm

    cfg = typed(config)
    if cfg.base_llm.name in ("tiny",):
        return prepare_base_llm.fn(config, index_key)["fingerprint"]
    from airrep.llm import resolve_base_llm

    return fingerprint(resolve_base_llm(cfg.base_llm), cfg.base_llm.revision)


@task(cache_policy=NONE, retries=2, retry_delay_seconds=exponential_backoff(5))
def publish_champion(config: dict[str, Any]) -> str | None:
    """Put the registered champion's AirRep directory in the artifact store, as ``airrep
    evaluate`` does a local one, so :func:`evaluate_task` can score it; ``None`` without one."""
    from infra import tracking

    cfg = typed(config)
    tracking.ensure_experiment(cfg)
    with tempfile.TemporaryDirectory() as tmp:
        path = tracking.champion_model_dir(tracking.registered_model_name(cfg), Path(tmp))
        if path is None:
            return None
        key = keys.evaluated_model_key(fingerprint(str(path)))
        store = store_for(cfg)
        if not store.exists(key):
            store.put_dir(key, path)
    return key


@task(cache_policy=NONE, retries=2, retry_delay_seconds=exponential_backoff(5))
def decide_retrain(config: dict[str, Any], index_key: str, llm: dict[str, str], evaluation: dict[str, Any],
                   previous_llm: str | None) -> dict[str, Any]:
    """Keep the champion or retrain (:func:`airrep.retrain.decide`), from its row and the
    baselines' in ``evaluation`` (the champion scored on the new base LLM's benchmark).

    The decision and its figures go to MLflow (a run of its own) and to a Prefect artifact. A
    kept champion is re-scored on the new benchmark, so later challengers are compared with it
    there, and the new base LLM is recorded as evaluated, so the watch does not fire again."""
    from airrep.retrain import baseline_lds, decide
    from infra import tracking

    cfg = typed(config)
    name = tracking.registered_model_name(cfg)
    champion = tracking.champion_info(name)
    index = load_index(config, index_key)
    label_finetunes = sum(len(split.subsets) for split in index.splits)
    decision = decide(tracking.registered_lds(champion), evaluation["lds"], baseline_lds(evaluation["table"]["rows"]),
                      cfg.retrain.keep_fraction, label_finetunes)
    markdown = decision.to_markdown()
    run_id = tracking.log_retrain_decision(cfg, decision.to_dict(), markdown, previous_llm, llm["fingerprint"])
    create_markdown_artifact(key="retrain-decision", markdown="## Base LLM changed: retrain or keep?\n\n" + markdown,
                             description=f"champion v{champion['version']} of {name} on the new base LLM")
    if not decision.retrain:
        tracking.rescore_champion(name, evaluation["lds"], benchmark_fingerprint(llm["fingerprint"], index_key, config))
        tracking.record_evaluated_base_llm(name, llm["fingerprint"])
    get_run_logger().info("%s: %s", "retrain" if decision.retrain else "champion kept", decision.reason)
    return {**decision.to_dict(), "mlflow_run_id": run_id}
