"""Every artifact key of a run, from one hashing scheme.

A key names what produced the bytes under it: :func:`content_key` is the first 32 hex
digits of the sha256 of its inputs' canonical JSON, so equal inputs give equal keys in
every process and a retried task writes where its first try did. Keys are ``/``-joined
relative paths; :func:`safe_key` percent-escapes each component, so no id can address
anything outside the store, and :func:`check_key` rejects keys that could.

The builders below are the only places keys are made (the store, the tasks and the
benchmarks call them); :mod:`airrep.plan` uses them to lay out label generation.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Sequence
from pathlib import PurePath
from typing import Any
from urllib.parse import quote

MARKER_SUFFIX = ".complete.json"  # the store's completion markers; no payload key may end so


class UnsafeKeyError(ValueError):
    """A key that could address something outside the store's prefix."""


def safe_key(*parts: str) -> str:
    """Join key components with ``/``, percent-escaping each so no id can leave the store.

    ``safe_key("runs", "../x")`` is ``"runs/..%2Fx"``: one segment, inside ``runs/``.
    Empty, ``.`` and ``..`` components are rejected.
    """
    if not parts:
        raise UnsafeKeyError("safe_key needs at least one component")
    escaped = []
    for part in parts:
        if not isinstance(part, str):
            raise UnsafeKeyError(f"key component {part!r} is a {type(part).__name__}, not a str")
        if part in ("", ".", ".."):
            raise UnsafeKeyError(f"key component {part!r} is not allowed (empty, '.' or '..')")
        escaped.append(quote(part, safe=""))
    return check_key("/".join(escaped))


def check_key(key: str, *, what: str = "key") -> str:
    """Return ``key`` if it is a safe relative ``/``-path inside the store, else raise."""
    if not isinstance(key, str):
        raise UnsafeKeyError(f"{what} {key!r} is a {type(key).__name__}, not a str")
    if not key:
        raise UnsafeKeyError(f"{what} is empty")
    if "\x00" in key:
        raise UnsafeKeyError(f"{what} {key!r} contains a NUL character")
    if "\\" in key:
        raise UnsafeKeyError(f"{what} {key!r} contains a backslash; use '/' (or safe_key for ids)")
    if key.startswith("/"):
        raise UnsafeKeyError(f"{what} {key!r} is absolute; keys are relative to the store")
    for segment in key.split("/"):
        if segment in ("", ".", ".."):
            raise UnsafeKeyError(
                f"{what} {key!r} has an empty, '.' or '..' segment; build keys with safe_key()")
    if key.endswith(MARKER_SUFFIX):
        raise UnsafeKeyError(f"{what} {key!r} ends with {MARKER_SUFFIX!r}, reserved for completion markers")
    return key


def _canonical_default(value: Any) -> Any:
    if hasattr(value, "model_dump"):  # pydantic models (configs)
        return value.model_dump(mode="json")
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if isinstance(value, PurePath):
        return value.as_posix()
    if isinstance(value, set | frozenset):
        return sorted(value)
    raise TypeError(f"content_key: {type(value).__name__} is not JSON-serialisable; pass plain values")


def content_key(**payload: Any) -> str:
    """The first 32 hex digits of the sha256 of the payload's canonical JSON.

    Canonical: sorted keys, no whitespace, UTF-8, NaN rejected; so equal payloads give
    equal keys in every process, and a key says exactly which inputs produced it.
    """
    blob = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False, default=_canonical_default)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:32]


# --- the artifact keys of a run -------------------------------------------------------------

def index_key(corpus_fingerprint: str, sampling: Any, seed: int) -> str:
    """The sampled subset index: same corpus, sampling settings and seed → same index."""
    return safe_key("index", content_key(corpus=corpus_fingerprint, sampling=sampling, seed=seed) + ".json")


def base_llm_key(llm_fingerprint: str) -> str:
    """The base LLM's directory, published so that every worker loads the same weights."""
    return safe_key("base-llm", llm_fingerprint.replace(":", "-"))


def finetune_key(llm_fingerprint: str, members: Sequence[str], eval_ids: Sequence[str], settings: Any,
                 seed: int) -> str:
    """One subset fine-tune's per-example losses: same base LLM, data, settings and seed →
    same losses. ``settings``: the fine-tune settings as they ran (the resolved precision:
    ``auto`` gives bf16 or fp32 by machine), without their own seed."""
    return safe_key("finetunes", content_key(llm=llm_fingerprint, members=sorted(members), eval=list(eval_ids),
                                             settings=settings, seed=seed) + ".npy")


def label_run_key(index: str, llm_fingerprint: str, finetune: Any) -> str:
    """The folder of one label-generation run's normalised splits."""
    return content_key(index=index, llm=llm_fingerprint, finetune=finetune)


def label_key(run: str, split: int) -> str:
    return safe_key("labels", run, f"split_{split:03d}.npz")


def model_id(label_keys: Sequence[str], train: Any, seed: int) -> str:
    """A trained AirRep: same labels, training settings and seed → the same model."""
    return content_key(labels=list(label_keys), train=train, seed=seed)


def model_key(model: str) -> str:
    return safe_key("models", model)


def model_curve_key(model: str) -> str:
    return safe_key("models", f"{model}-curve.json")


def evaluated_model_key(model_fingerprint: str) -> str:
    """A model evaluated from a local directory (``airrep evaluate``), by its weights' fingerprint."""
    return model_key("evaluated-" + content_key(model=model_fingerprint))


def evaluation_id(model_key: str) -> str:
    """The LDS evaluation of the model published under ``model_key``."""
    return content_key(model=model_key)


def evaluation_key(model_key: str, filename: str) -> str:
    """A file of that evaluation (table, markdown, plot)."""
    return safe_key("evaluations", evaluation_id(model_key), filename)


def benchmark_fingerprint(llm_fingerprint: str, index: str, benchmark: Any, finetune: Any) -> str:
    """Same benchmark ⇔ same base LLM, same held-out subsets and test set, same fine-tune settings."""
    return content_key(llm=llm_fingerprint, index=index, benchmark=benchmark, finetune=finetune)
