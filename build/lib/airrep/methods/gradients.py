"""Gradient attribution on the base LM, from dattri (airrep/baselines/gradient.py): LoGra,
TracIn and TRAK. Their scores are summed over a subset (the paper's group score for them).
Each takes a storage budget (``evaluate.frontier``), so the table can hold them at AirRep's
storage and at several times it."""

from __future__ import annotations

from airrep.methods import Method, MethodContext, Stored


def _gradient(name: str):
    def build(context: MethodContext, numbers: int | None = None):
        if context.llm_path is None:
            return None
        config, llm_path = context.config, context.llm_path

        def score(test, pool):
            from airrep.baselines.gradient import gradient_scores, proj_dim_for
            from airrep.llm import load_base_llm

            model, tokenizer = load_base_llm(llm_path, config.base_llm)
            proj_dim = (config.evaluate.gradient_proj_dim.get(name) if numbers is None
                        else proj_dim_for(name, model, numbers))
            result = gradient_scores(name, model, tokenizer, pool, test,
                                     max_length=config.evaluate.gradient_max_length,
                                     proj_dim=proj_dim, seed=config.seed)
            return result.scores, Stored.dense(result.dim)
        return score
    return build


METHODS = [Method(name, _gradient(name), poolings=("sum",), summary=summary, sized=True) for name, summary in (
    ("logra", "LoGra: influence functions on per-layer projected gradients"),
    ("tracin", "TracIn, one checkpoint (Grad-Dot), projected gradients"),
    ("trak", "TRAK, one checkpoint, projected gradients"))]
