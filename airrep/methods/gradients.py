"""Gradient attribution on the base LM, from dattri (airrep/baselines/gradient.py): LoGra,
TracIn and TRAK. Their scores are summed over a subset (the paper's group score for them)."""

from __future__ import annotations

from airrep.methods import Method, MethodContext


def _gradient(name: str):
    def build(context: MethodContext):
        if context.llm_path is None:
            return None
        config, llm_path = context.config, context.llm_path

        def score(test, pool):
            from airrep.baselines.gradient import gradient_scores
            from airrep.llm import load_base_llm

            model, tokenizer = load_base_llm(llm_path, config.base_llm)
            result = gradient_scores(name, model, tokenizer, pool, test,
                                     max_length=config.evaluate.gradient_max_length,
                                     proj_dim=config.evaluate.gradient_proj_dim.get(name), seed=config.seed)
            return result.scores, result.dim
        return score
    return build


METHODS = [Method(name, _gradient(name), poolings=("sum",), summary=summary) for name, summary in (
    ("logra", "LoGra: influence functions on per-layer projected gradients"),
    ("tracin", "TracIn, one checkpoint (Grad-Dot), projected gradients"),
    ("trak", "TRAK, one checkpoint, projected gradients"))]
