"""Stage 7: retrain when the base LLM changes.

The base LLM's fingerprint (hub commit, or a hash of local weights) is compared with the one
the last pipeline run evaluated (a tag on the registered model, set whether or not its model
was promoted, so a retrain whose model loses is not started again every hour). On a change,
``trigger="event"`` (the ``watch-base-llm`` deployment) emits the Prefect event
``airrep.base-llm.changed`` with the run's whole config, and the ``pipeline`` deployment's
trigger in ``prefect.yaml`` starts the retrain on a worker; ``trigger="inline"`` (the
default of ``airrep watch``) runs the pipeline as a subflow right here and emits nothing.

Before either, with ``retrain.check_first`` (the default) and a champion, the watch builds
only the new base LLM's held-out benchmark and scores the champion and the baselines on it
(:func:`airrep.retrain.decide`). A champion that still transfers is kept, and none of the
label fine-tunes run; the benchmark's fine-tunes are published either way, so a retrain
reuses them.
"""

from __future__ import annotations

from typing import Any, Literal

from prefect import flow
from prefect.events import emit_event
from prefect.logging import get_run_logger

from flows.common import ConfigParameter, config_data, run_config
from flows.pipeline import pipeline
from flows.train_evaluate_promote import benchmark_losses
from tasks.labels import prepare_base_llm, sample_splits
from tasks.model import decide_retrain, evaluate_task, fingerprint_base_llm, publish_champion

EVENT = "airrep.base-llm.changed"


@flow(name="watch-base-llm", log_prints=True)
def watch_base_llm(config: ConfigParameter = None, trigger: Literal["inline", "event"] = "inline") -> dict[str, Any]:
    """Compare the base LLM's fingerprint with the champion's; retrain on a change."""
    from infra import tracking

    logger = get_run_logger()
    cfg = run_config(config)
    config = config_data(cfg)
    index = sample_splits(config)
    current = fingerprint_base_llm(config, index["key"])
    tracking.ensure_experiment(cfg)
    name = tracking.registered_model_name(cfg)
    previous = tracking.evaluated_base_llm(name)
    if previous == current:
        logger.info("base LLM unchanged (%s); nothing to do", current)
        return {"changed": False, "fingerprint": current}
    decision = None
    if cfg.retrain.check_first and tracking.champion_info(name) is not None:
        logger.info("base LLM changed: %s -> %s; scoring the champion on the new benchmark first", previous, current)
        decision = check_champion(config, index["key"], previous)
        if not decision["retrain"]:
            return {"changed": True, "fingerprint": current, "previous": previous, "decision": decision,
                    "pipeline": None}
    logger.info("base LLM changed: %s -> %s; retraining", previous, current)
    if trigger == "inline":
        return {"changed": True, "fingerprint": current, "previous": previous, "decision": decision,
                "pipeline": pipeline(cfg)}
    # The deployment's trigger starts the retrain with this run's whole config (its overrides
    # included). Inline, no event: where deployments are set up it would start a second one.
    emit_event(event=EVENT, resource={"prefect.resource.id": f"airrep.registered-model.{name}"},
               payload={"previous": previous, "current": current, "config": config})
    return {"changed": True, "fingerprint": current, "previous": previous, "decision": decision, "pipeline": None}


def check_champion(config: dict[str, Any], index_key: str, previous: str | None) -> dict[str, Any]:
    """Fine-tune the new base LLM on the benchmark subsets only, score the champion and the
    baselines there, and decide whether to retrain (logged to MLflow and as an artifact)."""
    llm = prepare_base_llm(config, index_key)
    loss_keys, repeat_keys, _ = benchmark_losses(config, index_key, llm)
    evaluation = evaluate_task(config, index_key, llm, publish_champion(config), loss_keys, repeat_keys,
                               rescore_champion=False)  # the model evaluated is the champion
    return decide_retrain(config, index_key, llm, evaluation, previous)
