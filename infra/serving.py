"""The registered attribution model: an MLflow pyfunc around a trained AirRep and its corpus.

Input: texts (a DataFrame with a ``text`` column, or a list of strings). Output: one row per
(query, hit) with the ``top_k`` training examples whose AirRep embeddings have the highest
dot product with the query's (paper §3.1: the example-level score ``Enc(x)·Enc(z)``), plus the
weighted TF-IDF cosine for a model with the lexical channel (airrep/lexical.py, its IDF from
the corpus), so ``mlflow models serve -m models:/<name>@champion`` answers attribution queries.

The corpus is embedded once, when the model is logged (``infra.tracking.log_attribution_model``),
and travels with the model as three files: ``corpus_embeddings.npy`` (float32, ``(n, dim)``),
``corpus_ids.json`` and ``corpus_texts.json`` (same order). The lexical channel's TF-IDF
index is fitted on the corpus texts when the model loads (seconds for 10^5 texts), so it
needs no file of its own.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import numpy as np
import pandas as pd

from airrep.model import AirRep

EMBEDDINGS_FILE = "corpus_embeddings.npy"
IDS_FILE = "corpus_ids.json"
TEXTS_FILE = "corpus_texts.json"
DEFAULT_TOP_K = 10
OUTPUT_COLUMNS = ["query", "rank", "train_id", "score", "text"]


def query_texts(model_input: Any) -> list[str]:
    """The query strings of a pyfunc input: a DataFrame with a ``text`` column (or a single
    column), a Series, a list of strings, or one string."""
    if isinstance(model_input, pd.DataFrame):
        if "text" in model_input.columns:
            column = model_input["text"]
        elif model_input.shape[1] == 1:
            column = model_input.iloc[:, 0]
        else:
            raise ValueError(f"input needs a 'text' column, got columns {list(model_input.columns)}")
        return [str(t) for t in column.tolist()]
    if isinstance(model_input, pd.Series):
        return [str(t) for t in model_input.tolist()]
    if isinstance(model_input, str):
        return [model_input]
    if isinstance(model_input, np.ndarray):
        return [str(t) for t in model_input.ravel().tolist()]
    if isinstance(model_input, list | tuple):
        return [t if isinstance(t, str) else str(t["text"]) if isinstance(t, dict) else str(t)
                for t in model_input]
    raise TypeError(f"cannot read query texts from {type(model_input).__name__}")


class AttributionModel(mlflow.pyfunc.PythonModel):
    """Top-k training examples for each query text, by AirRep's pair score."""

    def load_context(self, context: mlflow.pyfunc.PythonModelContext) -> None:
        corpus = Path(context.artifacts["corpus"])
        self.airrep = AirRep.from_pretrained(context.artifacts["model"])
        self.corpus_embeddings = np.load(corpus / EMBEDDINGS_FILE, allow_pickle=False)  # (n_corpus, dim)
        self.corpus_ids = json.loads((corpus / IDS_FILE).read_text())
        self.corpus_texts = json.loads((corpus / TEXTS_FILE).read_text())
        if not (len(self.corpus_ids) == len(self.corpus_texts) == len(self.corpus_embeddings)):
            raise ValueError(
                f"corpus files disagree: {len(self.corpus_ids)} ids, {len(self.corpus_texts)} texts, "
                f"{len(self.corpus_embeddings)} embeddings")
        self.default_top_k = int((context.model_config or {}).get("top_k", DEFAULT_TOP_K))
        self.lexical = self.airrep.lexical_index(self.corpus_texts)

    # Through ``mlflow.pyfunc`` the logged signature turns every input into a one-column
    # DataFrame; a DataFrame hint is also the one MLflow does not try to derive a schema from.
    def predict(self, context: mlflow.pyfunc.PythonModelContext, model_input: pd.DataFrame,
                params: dict[str, Any] | None = None) -> pd.DataFrame:
        texts = query_texts(model_input)
        k = int(params["top_k"]) if params and params.get("top_k") is not None else self.default_top_k
        if k <= 0:
            raise ValueError(f"top_k must be positive, got {k}")
        if not texts:
            return pd.DataFrame({c: [] for c in OUTPUT_COLUMNS})
        query_embeddings = self.airrep.encode(texts)  # (n_query, dim)
        extra = None if self.lexical is None else self.airrep.lexical_scores(texts, self.lexical)
        scores, indices = AirRep.top_k(query_embeddings, self.corpus_embeddings, k=k, extra=extra)  # (n_query, k) each
        n_query, n_hits = indices.shape
        flat = indices.ravel()
        return pd.DataFrame({
            "query": np.repeat(np.arange(n_query), n_hits),
            "rank": np.tile(np.arange(1, n_hits + 1), n_query),
            "train_id": [self.corpus_ids[i] for i in flat],
            "score": scores.ravel().astype(np.float64),
            "text": [self.corpus_texts[i] for i in flat],
        })
