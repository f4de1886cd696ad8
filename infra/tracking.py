"""MLflow tracking and model registry for the pipeline: runs, the attribution pyfunc, promotion.

Defaults need no server: a sqlite file under the work directory holds runs and the registry,
and artifacts go to ``<work_dir>/mlartifacts`` (or ``<storage uri>/mlflow`` when the artifact
store is S3). The experiment is always created with an explicit artifact location, so
artifacts never land in ``./mlruns`` of whatever directory a worker happens to run from.

Registry model: one registered model per corpus (``airrep-<data source>``). Every trained
AirRep becomes a new version with alias ``challenger``; alias ``champion`` moves to it only
when it beats the champion's LDS on the same benchmark (see :func:`promote`). Everything a
promotion decision reads (``lds``, ``benchmark_fingerprint``) is a tag on the model version,
never on the registered model, so it cannot be overwritten by a later version.
"""

from __future__ import annotations

import json
import logging
import math
import random
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterable, Mapping
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

import mlflow
import mlflow.pyfunc
import numpy as np
import yaml
from mlflow import MlflowClient
from mlflow.entities import Metric
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException

from airrep.config import PipelineConfig

if TYPE_CHECKING:  # torch-heavy modules; promotion and param logging must stay light
    from airrep.evaluate import LDSTable
    from airrep.train import TrainingCurve

logger = logging.getLogger(__name__)

CHAMPION = "champion"
CHALLENGER = "challenger"
MODEL_NAME = "attribution"  # the logged model's name inside its run
PROMOTION_REQUEST_TAG = "promotion_requested"
MAX_PARAM_VALUE = 6000  # MLflow's limit on a param value
# Promotion re-reads until the alias is stable; each round is a few registry calls.
MAX_PROMOTION_ROUNDS = 20

_SECRET_WORDS = ("secret", "password", "token", "key")
# Config fields whose names contain a secret word but hold no secret.
_SAFE_KEYS = frozenset({"max_tokens"})
_URI_PASSWORD = re.compile(r"(?P<head>[a-zA-Z][a-zA-Z0-9+.\-]*://[^:/@\s]*:)[^@/\s]+@")
# Everything the serving environment imports (airrep.model → airrep.data → airrep.config).
_SERVING_DISTRIBUTIONS = ("transformers", "tokenizers", "safetensors", "numpy", "pandas", "pydantic",
                          "pyyaml", "tqdm", "mlflow")
_PROJECT_ROOT = Path(__file__).resolve().parent.parent
_MODEL_CODE = """import mlflow.models

from infra.serving import AttributionModel

mlflow.models.set_model(AttributionModel())
"""


def tracking_uri(config: PipelineConfig) -> str:
    """``tracking.uri``, or a sqlite file (runs + registry) in the work directory."""
    if config.tracking.uri:
        return config.tracking.uri
    return f"sqlite:///{config.work_path.resolve() / 'mlflow.db'}"


def artifact_location(config: PipelineConfig) -> str:
    """Where the experiment's artifacts (and logged models) go."""
    if config.tracking.artifact_location:
        return config.tracking.artifact_location
    if config.storage.uri.startswith("s3://"):
        return config.storage.uri.rstrip("/") + "/mlflow"
    return (config.work_path.resolve() / "mlartifacts").as_uri()


def registered_model_name(config: PipelineConfig) -> str:
    """``tracking.registered_model``, or ``airrep-<corpus>``: one registered model per corpus."""
    if config.tracking.registered_model:
        return config.tracking.registered_model
    source = config.data.source
    if Path(source).suffix.lower() in (".jsonl", ".json", ".parquet"):
        source = Path(source).stem  # a local file: its name, not the directory it sits in
    slug = re.sub(r"[^a-z0-9]+", "-", source.lower()).strip("-")
    return f"airrep-{slug or 'corpus'}"


# MLflow 3's UI opens an experiment without this tag on its GenAI traces overview, which is
# empty here; tagged as model development, it opens on the training runs.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"


def ensure_experiment(config: PipelineConfig) -> str:
    """Point MLflow at the configured store and make the experiment the active one; its id.

    The experiment is created with an explicit artifact location. An existing experiment keeps
    the location it was created with (MLflow cannot move it); a mismatch is logged.
    """
    uri = tracking_uri(config)
    if uri.startswith("sqlite:///"):
        Path(uri[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
    location = artifact_location(config)
    if location.startswith("file://"):
        Path(location[len("file://"):]).mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(uri)
    client = MlflowClient(tracking_uri=uri)
    name = config.tracking.experiment
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        try:
            experiment_id = client.create_experiment(name, artifact_location=location)
        except MlflowException:
            # Another worker created it between our lookup and create.
            experiment = client.get_experiment_by_name(name)
            if experiment is None:
                raise
            experiment_id = experiment.experiment_id
    else:
        experiment_id = experiment.experiment_id
        if experiment.lifecycle_stage == "deleted":
            client.restore_experiment(experiment_id)
        if experiment.artifact_location.rstrip("/") != location.rstrip("/"):
            logger.warning("experiment %r keeps its artifact location %s (config asks for %s)",
                           name, experiment.artifact_location, location)
    if experiment is None or experiment.tags.get(EXPERIMENT_KIND_TAG) != EXPERIMENT_KIND:
        client.set_experiment_tag(experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
    mlflow.set_experiment(experiment_id=experiment_id)
    return experiment_id


def _is_secret(key: str) -> bool:
    name = key.rsplit(".", 1)[-1].lower()
    return name not in _SAFE_KEYS and any(word in name for word in _SECRET_WORDS)


def _param_value(value: Any) -> str:
    if isinstance(value, str):
        text = value
    elif value is None or isinstance(value, list | dict):
        text = json.dumps(value)
    else:
        text = str(value)
    text = _URI_PASSWORD.sub(r"\g<head>***@", text)  # scheme://user:password@host → user:***
    return text[:MAX_PARAM_VALUE]


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> Iterable[tuple[str, Any]]:
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping):
            yield from _flatten(value, dotted + ".")
        else:
            yield dotted, value


def config_params(config: PipelineConfig) -> dict[str, str]:
    """The whole config as MLflow params with dotted keys (``finetune.lr``).

    Built from the config object alone (never from the environment); fields whose name says
    secret/password/token/key are dropped and passwords inside URIs are masked, so a
    credential put in a config file by mistake does not reach the tracking server.
    """
    return {key: _param_value(value) for key, value in _flatten(config.model_dump(mode="json"))
            if not _is_secret(key)}


def _run_id(run_id: str | None) -> str:
    if run_id is not None:
        return run_id
    run = mlflow.active_run()
    if run is None:
        raise RuntimeError("no active MLflow run: call inside `with mlflow.start_run():` or pass run_id")
    return run.info.run_id


def log_training(curve: TrainingCurve, run_id: str | None = None) -> None:
    """Training loss and pair accuracy per step, validation LDS (held-out splits) at each
    evaluation step, and the step whose weights were kept."""
    run_id = _run_id(run_id)
    now = int(1000 * time.time())
    metrics = [Metric("train_loss", float(v), now, int(s))
               for s, v in zip(curve.step, curve.loss, strict=False)]
    metrics += [Metric("train_pair_accuracy", float(v), now, int(s))
                for s, v in zip(curve.step, curve.pair_accuracy, strict=False)]
    metrics += [Metric("validation_lds", float(v), now, int(s))
                for s, v in zip(curve.eval_step, curve.eval_lds, strict=False)]
    if curve.best_step is not None:
        metrics.append(Metric("kept_step", float(curve.best_step), now, 0))
    if curve.seconds:
        metrics.append(Metric("train_seconds", float(curve.seconds), now, 0))
    MlflowClient().log_batch(run_id, metrics=metrics)  # chunked by the client (1000 per request)


def log_lds_table(table: LDSTable, artifacts: Mapping[str, Path], run_id: str | None = None) -> None:
    """``lds_<method>`` (raw LDS, not ×100) per method, ``noise_ceiling``, and the table files.

    A method whose LDS is NaN (it could not run) gets a tag ``lds_<method>_skipped`` instead of
    a metric, so dashboards do not plot it as a number.
    """
    run_id = _run_id(run_id)
    client = MlflowClient()
    now = int(1000 * time.time())
    metrics = []
    for row in table.rows:
        key = lds_metric_name(row.method)
        if row.lds is None or not math.isfinite(row.lds):
            client.set_tag(run_id, f"{key}_skipped", row.note or "LDS is not finite")
            continue
        metrics.append(Metric(key, float(row.lds), now, 0))
    if table.noise_ceiling is not None and math.isfinite(table.noise_ceiling):
        metrics.append(Metric("noise_ceiling", float(table.noise_ceiling), now, 0))
    if metrics:
        client.log_batch(run_id, metrics=metrics)
    for path in artifacts.values():
        client.log_artifact(run_id, str(path), artifact_path="evaluation")


def lds_metric_name(method: str) -> str:
    """The MLflow metric of an LDS table row: ``lds_<row>``, with a storage budget's ``@``
    (``logra-sum@384``) as ``_``, since MLflow's names allow no ``@``."""
    return f"lds_{method.replace('@', '_')}"


def serving_requirements() -> list[str]:
    """Exact pins of what the pyfunc imports; torch without its local tag (``+cpu``), because
    any unpinned torch pulls a multi-GB CUDA build."""
    import torch

    pins = [f"torch=={torch.__version__.split('+')[0]}"]
    pins += [f"{dist}=={metadata.version(dist)}" for dist in _SERVING_DISTRIBUTIONS]
    return pins


def _stage_code(target: Path) -> list[str]:
    """Sources for ``code_paths``: the ``airrep`` package and ``infra.serving``.

    Only ``.py`` files, and from ``infra`` only what the model script imports: the model
    artifacts must not carry deployment files or anything else that may hold credentials.
    """
    airrep_dir, infra_dir = target / "airrep", target / "infra"
    for source in (_PROJECT_ROOT / "airrep").rglob("*.py"):
        if "__pycache__" not in source.parts:
            destination = airrep_dir / source.relative_to(_PROJECT_ROOT / "airrep")
            destination.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, destination)
    infra_dir.mkdir(parents=True)
    for name in ("__init__.py", "serving.py"):
        shutil.copyfile(_PROJECT_ROOT / "infra" / name, infra_dir / name)
    return [str(airrep_dir), str(infra_dir)]


def log_attribution_model(model_dir: Path, corpus_ids: list[str], corpus_texts: list[str],
                          registered_name: str, top_k: int, tags: Mapping[str, str]) -> ModelVersion:
    """Embed the corpus, log the attribution pyfunc, register it and point ``challenger`` at it.

    The pyfunc carries the AirRep directory and the embedded corpus as artifacts and copies of
    ``airrep``/``infra`` as code, so it loads in a fresh environment from its own
    requirements. Logged into the active run if there is one. ``tags`` go on the version.
    """
    # Imported here: torch/transformers are only needed to log a model, not to promote one.
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema

    from airrep.model import AirRep
    from infra.serving import EMBEDDINGS_FILE, IDS_FILE, TEXTS_FILE

    if len(corpus_ids) != len(corpus_texts):
        raise ValueError(f"{len(corpus_ids)} corpus ids but {len(corpus_texts)} texts")
    if len(set(corpus_ids)) != len(corpus_ids):
        raise ValueError("corpus ids are not unique")
    if not corpus_ids:
        raise ValueError("the corpus is empty")
    signature = ModelSignature(
        # One unnamed string column: accepts a list of texts and a DataFrame with a ``text`` column.
        inputs=Schema([ColSpec("string")]),
        outputs=Schema([ColSpec("long", "query"), ColSpec("long", "rank"), ColSpec("string", "train_id"),
                        ColSpec("double", "score"), ColSpec("string", "text")]),
        params=ParamSchema([ParamSpec("top_k", "long", int(top_k))]),
    )
    with tempfile.TemporaryDirectory(prefix="airrep-pyfunc-") as tmp:
        corpus_dir = Path(tmp) / "corpus"
        corpus_dir.mkdir()
        embeddings = AirRep.from_pretrained(model_dir).encode(corpus_texts)  # (n_corpus, dim)
        np.save(corpus_dir / EMBEDDINGS_FILE, embeddings.astype(np.float32), allow_pickle=False)
        (corpus_dir / IDS_FILE).write_text(json.dumps(list(corpus_ids)))
        (corpus_dir / TEXTS_FILE).write_text(json.dumps(list(corpus_texts)))
        # "Model from code": MLflow stores this script instead of a cloudpickle (which it warns
        # about and can be set to refuse) and runs it at load time, after code_paths are on sys.path.
        model_code = Path(tmp) / "attribution_model.py"
        model_code.write_text(_MODEL_CODE)
        # The input example (one corpus text) shows users the request shape in the UI and in
        # `mlflow models serve`; MLflow checks it by loading the model once and predicting.
        info = mlflow.pyfunc.log_model(
            name=MODEL_NAME,
            python_model=str(model_code),
            artifacts={"model": str(model_dir), "corpus": str(corpus_dir)},
            code_paths=_stage_code(Path(tmp) / "code"),
            pip_requirements=serving_requirements(),
            signature=signature,
            input_example=[corpus_texts[0]],
            model_config={"top_k": int(top_k)},
            registered_model_name=registered_name,
        )
    client = MlflowClient()
    version = str(info.registered_model_version)
    for key, value in tags.items():
        client.set_model_version_tag(registered_name, version, key, str(value))
    client.set_registered_model_alias(registered_name, CHALLENGER, version)
    return client.get_model_version(registered_name, version)


def _alias_version(client: MlflowClient, name: str, alias: str) -> ModelVersion | None:
    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException as err:
        if err.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"):
            return None
        raise


def _tag_lds(version: ModelVersion) -> float:
    try:
        return float(version.tags.get("lds", "nan"))
    except ValueError:
        return float("nan")


def _promotion_target(client: MlflowClient, name: str, champion: ModelVersion | None,
                      benchmark_fingerprint: str, margin: float) -> ModelVersion | None:
    """The version that should be champion given every promotion request so far.

    Candidates are versions tagged ``promotion_requested`` with a finite ``lds`` on the
    champion's benchmark (or, with no champion, on ``benchmark_fingerprint``); the best one
    replaces the champion if it beats the champion's LDS by more than ``margin``.
    """
    benchmark = champion.tags.get("benchmark_fingerprint") if champion else benchmark_fingerprint
    floor = _tag_lds(champion) + margin if champion else -math.inf
    if math.isnan(floor):
        return champion  # a champion without a readable LDS is never displaced automatically
    eligible = [v for v in client.search_model_versions(f"name = '{name}'")
                if PROMOTION_REQUEST_TAG in v.tags and v.tags.get("benchmark_fingerprint") == benchmark
                and math.isfinite(_tag_lds(v)) and _tag_lds(v) > floor]
    if not eligible:
        return champion
    # Highest LDS; on a tie the older version, so every worker picks the same one.
    return max(eligible, key=lambda v: (_tag_lds(v), -int(v.version)))


def promote(registered_name: str, version: str, lds: float, benchmark_fingerprint: str,
            margin: float = 0.0) -> bool:
    """Make ``version`` the champion if it beats the champion on the same benchmark.

    Rules: a non-finite LDS never promotes; with no champion, the version becomes champion;
    otherwise it must have been evaluated on the champion's benchmark fingerprint and score
    ``lds > champion_lds + margin``. Returns whether ``version`` is the champion afterwards.

    Concurrency: MLflow has no compare-and-set on aliases, so two workers could each read the
    old champion and then overwrite each other's alias. Instead of deciding from one read,
    each worker first records its request on its own version (tags ``lds``,
    ``benchmark_fingerprint``, ``promotion_requested``), then repeatedly computes the best
    version over *all* requests and the current champion, sets the alias if it differs, and
    re-reads until the alias already points at that best version. The last writer always
    re-reads after its write and sees every request made before then, and any later request
    is decided against that final champion, so the alias settles on a version no request
    beats; "exactly one champion" holds by construction (an alias is a single pointer) and its
    tags are consistent because they live on the version it points to.
    """
    client = MlflowClient()
    version = str(version)
    if lds is None or not math.isfinite(lds):
        logger.info("%s v%s not promoted: its LDS is %s", registered_name, version, lds)
        return False
    client.set_model_version_tag(registered_name, version, "lds", repr(float(lds)))
    client.set_model_version_tag(registered_name, version, "benchmark_fingerprint", benchmark_fingerprint)
    client.set_model_version_tag(registered_name, version, PROMOTION_REQUEST_TAG, "true")

    before = _alias_version(client, registered_name, CHAMPION)
    write_error: MlflowException | None = None
    final: ModelVersion | None = None
    for _ in range(MAX_PROMOTION_ROUNDS):
        champion = _alias_version(client, registered_name, CHAMPION)
        target = _promotion_target(client, registered_name, champion, benchmark_fingerprint, margin)
        if target is None or (champion is not None and target.version == champion.version):
            # Decided from this read, where the alias had settled: a read after it could see
            # a slower writer's transient alias, which that writer then corrects.
            final = champion
            break
        try:
            client.set_registered_model_alias(registered_name, CHAMPION, target.version)
        except MlflowException as err:
            # Writers that create the alias at the same time collide on the store's unique key
            # (the SQL store reads, then inserts); back off, re-read and decide again.
            write_error = err
            time.sleep(random.uniform(0.05, 0.25))
    else:
        if write_error is not None:
            raise write_error
        logger.warning("%s: champion alias still moving after %d rounds", registered_name,
                       MAX_PROMOTION_ROUNDS)
        final = _alias_version(client, registered_name, CHAMPION)
    promoted = final is not None and str(final.version) == version
    if promoted:
        logger.info("%s v%s is champion (LDS %.4f; previous: %s)", registered_name, version, lds,
                    f"v{before.version}, LDS {before.tags.get('lds')}" if before else "none")
    elif before is not None and before.tags.get("benchmark_fingerprint") != benchmark_fingerprint:
        logger.info("%s v%s not promoted: champion v%s was evaluated on benchmark %s, this version on %s; "
                    "LDS on different benchmarks is not comparable", registered_name, version,
                    before.version, before.tags.get("benchmark_fingerprint"), benchmark_fingerprint)
    elif final is not None:
        logger.info("%s v%s not promoted: LDS %.4f does not beat champion v%s (LDS %s) by more than %g",
                    registered_name, version, lds, final.version, final.tags.get("lds"), margin)
    return promoted


def champion_info(registered_name: str) -> dict[str, Any] | None:
    """The champion's version, tags, run and model URI; ``None`` if there is none yet."""
    champion = _alias_version(MlflowClient(), registered_name, CHAMPION)
    if champion is None:
        return None
    return {"version": str(champion.version), "tags": dict(champion.tags), "run_id": champion.run_id,
            "model_uri": f"models:/{registered_name}@{CHAMPION}"}


# On the registered model: the base LLM whose pipeline run last finished registering, promoted
# or not. The watch compares with it, so a retrain whose model loses is not triggered again.
EVALUATED_BASE_LLM_TAG = "evaluated_base_llm_fingerprint"


def record_evaluated_base_llm(registered_name: str, fingerprint: str) -> None:
    MlflowClient().set_registered_model_tag(registered_name, EVALUATED_BASE_LLM_TAG, fingerprint)


def evaluated_base_llm(registered_name: str) -> str | None:
    """The base LLM last evaluated for ``registered_name`` (the champion's, for a registry from
    before the tag existed); ``None`` if nothing was registered."""
    try:
        tags = MlflowClient().get_registered_model(registered_name).tags
    except MlflowException:
        return None
    if EVALUATED_BASE_LLM_TAG in tags:
        return tags[EVALUATED_BASE_LLM_TAG]
    champion = champion_info(registered_name)
    return champion["tags"].get("base_llm_fingerprint") if champion else None


def find_version(registered_name: str, tags: Mapping[str, str]) -> str | None:
    """The newest version of ``registered_name`` carrying all of ``tags``, or ``None``."""
    try:
        versions = MlflowClient().search_model_versions(f"name = '{registered_name}'")
    except MlflowException:
        return None
    matching = [v for v in versions if all(v.tags.get(k) == str(val) for k, val in tags.items())]
    return str(max(matching, key=lambda v: int(v.version)).version) if matching else None


def champion_model_dir(registered_name: str, dest: Path) -> Path | None:
    """Download the champion's AirRep directory (the pyfunc's ``model`` artifact) into ``dest``."""
    if champion_info(registered_name) is None:
        return None
    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{registered_name}@{CHAMPION}",
                                                     dst_path=str(dest)))
    meta = yaml.safe_load((local / "MLmodel").read_text())
    return local / meta["flavors"]["python_function"]["artifacts"]["model"]["path"]


# On a re-scored version: its LDS on the benchmark of the base LLM it was trained for. The
# retrain check compares with it, so a champion kept across several base-LLM changes cannot
# drift down by ``keep_fraction`` at each one.
REGISTERED_LDS_TAG = "lds_as_registered"


def registered_lds(champion: Mapping[str, Any]) -> float:
    """The champion's LDS on its own training base LLM's benchmark (from :func:`champion_info`)."""
    tags = champion["tags"]
    try:
        return float(tags.get(REGISTERED_LDS_TAG, tags.get("lds", "nan")))
    except ValueError:
        return float("nan")


def log_retrain_decision(config: PipelineConfig, decision: Mapping[str, Any], markdown: str,
                         previous: str | None, current: str) -> str:
    """One MLflow run per retrain check: the decision, the figures behind it, the fine-tunes it
    saved, and its table as ``retrain_decision.md``. Returns the run id."""
    tags = {"airrep.kind": "retrain-check", "decision": "retrain" if decision["retrain"] else "keep",
            "base_llm_fingerprint": current, "previous_base_llm_fingerprint": str(previous)}
    with mlflow.start_run(run_name=f"{config.name}-retrain-check-{current[:8]}", tags=tags) as run:
        mlflow.log_params({"keep_fraction": config.retrain.keep_fraction, "best_baseline": decision["best_baseline"]})
        mlflow.log_metrics({name: float(decision[name]) for name in
                            ("champion_lds_before", "champion_lds_now", "threshold", "finetunes_saved")
                            if decision[name] is not None and math.isfinite(float(decision[name]))})
        if decision["best_baseline_lds"] is not None:
            mlflow.log_metric("best_baseline_lds", float(decision["best_baseline_lds"]))
        mlflow.log_text(markdown, "retrain_decision.md")
    return run.info.run_id


def rescore_champion(registered_name: str, lds: float, benchmark_fingerprint: str) -> None:
    """Record the champion's LDS on a new benchmark (after the base LLM changed), so the next
    promotion compares challenger and champion on the same held-out subsets."""
    champion = champion_info(registered_name)
    if champion is None:
        return
    client = MlflowClient()
    previous = champion["tags"].get("benchmark_fingerprint")
    if REGISTERED_LDS_TAG not in champion["tags"]:  # what it scored where it was trained, kept for good
        client.set_model_version_tag(registered_name, champion["version"], REGISTERED_LDS_TAG,
                                     champion["tags"].get("lds", "nan"))
    client.set_model_version_tag(registered_name, champion["version"], "lds", repr(float(lds)))
    client.set_model_version_tag(registered_name, champion["version"], "benchmark_fingerprint",
                                 benchmark_fingerprint)
    client.set_model_version_tag(registered_name, champion["version"], "rescored_from_benchmark", str(previous))
    logger.info("%s champion v%s re-scored on benchmark %s: LDS %.4f", registered_name, champion["version"],
                benchmark_fingerprint, lds)


def _git_commit() -> str | None:
    try:
        result = subprocess.run(["git", "rev-parse", "HEAD"], cwd=_PROJECT_ROOT, capture_output=True,
                                text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    commit = result.stdout.strip()
    return commit if result.returncode == 0 and re.fullmatch(r"[0-9a-f]{40}", commit) else None


def code_version() -> str:
    """The git commit of this checkout, or the installed package version outside a checkout."""
    commit = _git_commit()
    if commit:
        return commit
    try:
        return metadata.version("airrep")
    except metadata.PackageNotFoundError:
        return "unknown"


def standard_tags(config: PipelineConfig, llm_fingerprint: str, corpus_fingerprint: str,
                  benchmark_fingerprint: str, lds: float) -> dict[str, str]:
    """Tags for runs and model versions: what the model was made from and how it scored."""
    return {
        "base_llm_fingerprint": llm_fingerprint,
        "corpus_fingerprint": corpus_fingerprint,
        "config_hash": config.fingerprint(),
        "code_version": code_version(),
        "benchmark_fingerprint": benchmark_fingerprint,
        "lds": repr(float(lds)),
    }
