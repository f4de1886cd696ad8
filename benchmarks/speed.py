"""Speed benchmarks: every figure is a ratio of two timings measured in the same run.

    python -m benchmarks.speed [--out benchmarks/results/speed.json] [--only encode,lds,...]

Each entry records both timings, the sizes and the machine (cores, the CPU capability
torch dispatches to), not only the ratio: these machines are noisy, so a ratio from two
different runs would mean little.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import copy
import json
import logging
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from scipy.stats import spearmanr

from flows.cli import prepare_environment

log = logging.getLogger("benchmarks.speed")


def cpu_model() -> str:
    """The CPU's model name: ``platform.processor()`` is empty on Linux, so /proc/cpuinfo first."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def cpu_flags() -> dict[str, bool]:
    """The instruction sets torch's CPU kernels check for (``torch.cpu._is_<set>_supported``):
    whether bf16 matmuls can use AMX tiles or AVX512-BF16 explains most of a bf16 figure."""
    return {name.removeprefix("_is_").removesuffix("_supported"): bool(getattr(torch.cpu, name)())
            for name in sorted(dir(torch.cpu)) if name.startswith("_is_") and name.endswith("_supported")}


def machine() -> dict:
    return {"cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(), "cpu_flags": cpu_flags(),
            "processor": cpu_model(), "torch": torch.__version__,
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


def timed(fn: Callable, *args, **kwargs) -> tuple[object, float]:
    start = time.perf_counter()
    result = fn(*args, **kwargs)
    return result, time.perf_counter() - start


def sharegpt_texts(n: int) -> list[str]:
    from airrep.config import DataConfig
    from airrep.corpora import load_records
    from airrep.data import format_record

    records, _ = load_records(DataConfig())
    return [format_record(r) for r in records[:n]]


def bench_encode(n_texts: int = 2000) -> dict:
    """``AirRep.encode`` (bf16, length-sorted batches) vs sentence-transformers' ``encode`` of
    the same MiniLM weights on the same ShareGPT texts; and ``AirRep(compile=True)``, whose
    one-off compile time is reported beside its throughput, not hidden in it."""
    from sentence_transformers import SentenceTransformer

    from airrep.model import AirRep, resolve_encoder

    texts = sharegpt_texts(n_texts)
    ours = AirRep.from_encoder("minilm")
    ours.model.config.max_tokens = 256  # sentence-transformers' max_seq_length for this model
    reference = SentenceTransformer(resolve_encoder("minilm"), device="cpu")
    batch = 32  # both libraries' default
    ours.encode(texts[:64], batch_size=batch)  # warm-up both: first calls pay one-off allocation costs
    reference.encode(texts[:64], batch_size=batch)
    _, ours_s = timed(ours.encode, texts, batch_size=batch)
    _, ref_s = timed(reference.encode, texts, batch_size=batch)
    compiled = AirRep(ours.model, ours.tokenizer, compile=True)
    # Compiling traces a few shapes: the longest and a short batch cover the dynamic sizes.
    _, compile_s = timed(compiled.encode, sorted(texts, key=len)[-batch:] + texts[:batch], batch_size=batch)
    _, compiled_s = timed(compiled.encode, texts, batch_size=batch)
    lengths = ours.tokenizer(texts, truncation=True, max_length=256)["input_ids"]
    return {"encode_texts_per_s": n_texts / ours_s, "sentence_transformers_texts_per_s": n_texts / ref_s,
            "encode_speedup_vs_sentence_transformers": ref_s / ours_s, "airrep_seconds": ours_s,
            "sentence_transformers_seconds": ref_s, "encode_compiled_texts_per_s": n_texts / compiled_s,
            "encode_compiled_speedup_vs_sentence_transformers": ref_s / compiled_s,
            "compiled_seconds": compiled_s, "compile_warmup_seconds": compile_s, "n_texts": n_texts,
            "batch_size": batch, "mean_tokens": float(np.mean([len(x) for x in lengths]))}


def slow_group_lds(query: np.ndarray, pool: np.ndarray, subsets: np.ndarray, losses: np.ndarray) -> float:
    """The straightforward version: one subset at a time, then scipy per test example."""
    scores = np.empty((len(query), len(subsets)))
    for j, members in enumerate(subsets):
        sims = query @ pool[members].T  # (n_test, subset_size)
        weights = np.exp(np.abs(sims) - np.abs(sims).max(axis=1, keepdims=True))
        weights /= weights.sum(axis=1, keepdims=True)
        scores[:, j] = (weights * sims).sum(axis=1)
    rhos = [spearmanr(scores[i], -losses[:, i]).statistic for i in range(len(query))]
    return float(np.mean(np.nan_to_num(rhos)))


def bench_lds(n_test: int = 1000, n_pool: int = 10_000, n_subsets: int = 100, size: int = 1000) -> dict:
    """``score_groups`` + ``lds`` vs ``slow_group_lds`` on the same float64 inputs, warm, best of 3."""
    from airrep.metrics import lds
    from airrep.model import AirRep

    rng = np.random.default_rng(0)
    query = rng.normal(size=(n_test, 384)) / 8
    pool = rng.normal(size=(n_pool, 384)) / 8
    subsets = np.stack([rng.choice(n_pool, size, replace=False) for _ in range(n_subsets)])
    losses = rng.normal(size=(n_subsets, n_test))

    def fast() -> float:
        return lds(AirRep.score_groups(query, pool, subsets), losses.T)

    # One untimed call each first: a cold call pays one-off costs (BLAS thread start-up, page
    # faults on the first large buffers) that dwarf the fast path's ~0.1 s. The loop's warm-up
    # goes first: numpy's BLAS threads keep spinning for a while after a call and would take
    # the cores from torch's threads right after it. Then the best of three calls each.
    slow_group_lds(query, pool, subsets, losses)
    fast()
    fast_value, fast_s = min((timed(fast) for _ in range(3)), key=lambda r: r[1])
    slow_value, slow_s = min((timed(slow_group_lds, query, pool, subsets, losses) for _ in range(3)),
                             key=lambda r: r[1])
    return {"lds_eval_speedup": slow_s / fast_s, "fast_seconds": fast_s, "loop_seconds": slow_s,
            "abs_difference": abs(fast_value - slow_value), "equal_to_1e-9": abs(fast_value - slow_value) < 1e-9,
            "shape": {"n_test": n_test, "n_pool": n_pool, "n_subsets": n_subsets, "subset_size": size}}


def bench_topk(n_corpus: int = 1_000_000, n_query: int = 256, k: int = 10) -> dict:
    """Top-10 over 1M stored 384-d float32 embeddings; the bound is reading them once."""
    from airrep.model import AirRep

    rng = np.random.default_rng(0)
    corpus = rng.standard_normal((n_corpus, 384), dtype=np.float32)
    query = rng.standard_normal((n_query, 384), dtype=np.float32)
    AirRep.top_k(query[:8], corpus[:10_000], k=k)
    _, seconds = timed(AirRep.top_k, query, corpus, k=k)
    single, single_s = timed(AirRep.top_k, query[:1], corpus, k=k)
    corpus_bytes = corpus.nbytes
    return {"topk_ms_per_query_1m": 1000 * seconds / n_query, "batch_queries": n_query,
            "batch_seconds": seconds, "single_query_ms": 1000 * single_s,
            "single_query_effective_GB_per_s": corpus_bytes / single_s / 1e9, "corpus_bytes": corpus_bytes}


_label_worker: dict = {}


def _start_label_worker(model_dir: str, base_llm, threads: int, all_started) -> None:
    """Worker-process setup, as a fan-out worker has it: its share of the cores, the base LLM loaded once."""
    from airrep.llm import load_base_llm

    torch.set_num_threads(threads)
    _label_worker["model"], _label_worker["tokenizer"] = load_base_llm(model_dir, base_llm)
    _label_worker["all_started"] = all_started


def _label_worker_ready(_: int) -> int:
    _label_worker["all_started"].wait()  # returns once every worker holds one of these calls
    return os.getpid()


def _label_job(subset, dev, settings, seed: int) -> np.ndarray:
    from airrep.finetune import finetune_and_evaluate

    return finetune_and_evaluate(_label_worker["model"], _label_worker["tokenizer"], subset, dev, settings,
                                 seed=seed)[0]


def bench_label_generation(n_subsets: int = 8, subset_size: int = 100, n_dev: int = 100) -> dict:
    """The pipeline's fine-tune task body (bf16, LM head on scored positions only) in worker
    processes of one torch thread each, as the local runner fans it out, vs a plain
    sequential fp32 loop (HF loss over full logits, all cores to torch) on the same subsets.
    Both start timing with the model loaded; the workers' start-up (spawn, imports, model
    load: paid once per fan-out, not per fine-tune) is reported beside the ratio."""
    import multiprocessing

    from airrep.config import BaseLLMConfig, DataConfig, FinetuneConfig, TinyLMConfig
    from airrep.corpora import load_records
    from airrep.finetune import collate, tokenize_records
    from airrep.llm import build_tiny_lm, load_base_llm
    from flows.runners import default_workers, torch_threads_per_worker

    records, _ = load_records(DataConfig())
    base = BaseLLMConfig(tiny=TinyLMConfig(epochs=1))
    model_dir = str(build_tiny_lm(records[:2000], base, 160))
    model, tokenizer = load_base_llm(model_dir, base)
    rng = np.random.default_rng(0)
    pool, dev = records[3000:4000], records[5000 : 5000 + n_dev]
    subsets = [[pool[i] for i in rng.choice(len(pool), subset_size, replace=False)] for _ in range(n_subsets)]
    settings = FinetuneConfig()  # the tiny config's: 2 epochs, lr 3e-4, batch 16, bf16

    def plain(subset) -> np.ndarray:
        lm = copy.deepcopy(model).train()
        optimizer = torch.optim.AdamW(lm.parameters(), lr=settings.lr)
        examples = tokenize_records(tokenizer, subset, settings.max_length)
        generator = torch.Generator().manual_seed(0)
        for _ in range(settings.epochs):
            order = torch.randperm(len(examples), generator=generator).tolist()
            for first in range(0, len(order), settings.batch_size):
                batch = collate([examples[i] for i in order[first : first + settings.batch_size]],
                                tokenizer.pad_token_id)
                lm(**batch).loss.backward()
                optimizer.step()
                optimizer.zero_grad()
        lm.eval()
        losses = []
        with torch.no_grad():
            for example in tokenize_records(tokenizer, dev, settings.max_length):
                batch = collate([example], tokenizer.pad_token_id)
                losses.append(lm(**batch).loss.item())
        return np.array(losses)

    _, plain_s = timed(lambda: [plain(s) for s in subsets])
    workers = int(os.environ.get("AIRREP_BENCH_WORKERS", 0)) or default_workers()
    threads = torch_threads_per_worker(workers)
    spawn = multiprocessing.get_context("spawn")
    start = time.perf_counter()
    with concurrent.futures.ProcessPoolExecutor(
            max_workers=workers, mp_context=spawn, initializer=_start_label_worker,
            initargs=(model_dir, base, threads, spawn.Barrier(workers, timeout=600))) as workers_pool:
        pids = set(workers_pool.map(_label_worker_ready, range(workers)))
        start_s = time.perf_counter() - start
        _, fast_s = timed(lambda: [job.result() for job in [
            workers_pool.submit(_label_job, subsets[j], dev, settings, j) for j in range(n_subsets)]])
    return {"label_generation_speedup": plain_s / fast_s,
            "pipeline_finetunes_per_hour": 3600 * n_subsets / fast_s,
            "plain_fp32_finetunes_per_hour": 3600 * n_subsets / plain_s,
            "pipeline_seconds": fast_s, "plain_seconds": plain_s, "worker_start_seconds": start_s,
            "workers": workers, "worker_processes_seen": len(pids), "torch_threads_per_worker": threads,
            "subsets": n_subsets, "subset_size": subset_size, "n_dev": n_dev}


def bench_attribution(n_test: int = 20, n_train: int = 100, proj_dim: int = 16) -> dict:
    """Scoring a test set against a training set: LoGra (dattri) on SmolLM2-135M, a real
    pretrained LLM (a gradient method's cost grows with the LLM), vs AirRep with MiniLM
    (encode both sets, then one matrix product). Also the bytes each stores per example."""
    from airrep.baselines.gradient import gradient_scores
    from airrep.config import BaseLLMConfig, DataConfig
    from airrep.corpora import load_records
    from airrep.llm import load_base_llm, smollm2_dir
    from airrep.model import AirRep

    records, _ = load_records(DataConfig())
    test, train = records[6000 : 6000 + n_test], records[7000 : 7000 + n_train]
    model, tokenizer = load_base_llm(str(smollm2_dir()), BaseLLMConfig(name="smollm2"))
    gradient = gradient_scores("logra", model, tokenizer, train, test, max_length=160, proj_dim=proj_dim)
    airrep = AirRep.from_encoder("minilm")
    airrep.encode(test[:4])

    def airrep_scores() -> np.ndarray:
        return airrep.encode(test) @ airrep.encode(train).T

    _, airrep_s = timed(airrep_scores)
    return {"attribution_cost_ratio_vs_gradient": gradient.seconds / airrep_s,
            "gradient_method": "logra (dattri) on SmolLM2-135M", "gradient_seconds": gradient.seconds,
            "airrep_seconds": airrep_s, "n_test": n_test, "n_train": n_train,
            "gradient_dim": gradient.dim, "airrep_dim": airrep.dim,
            "bytes_per_train_example": {"airrep_float32": 4 * airrep.dim, "gradient_float32": 4 * gradient.dim,
                                        "ratio": gradient.dim / airrep.dim}}


PAPER_AMORTISATION_EXAMPLES = 475_000  # the paper's break-even corpus size, on GPUs (Qwen2.5-0.5B)


def bench_amortisation(config_path: str = "configs/bench.yaml", n_train: int = 24, n_test: int = 8,
                       n_finetune: int = 16, n_encode: int = 256) -> dict:
    """The paper's amortisation figure on this machine: the corpus size at which AirRep's
    whole cost (its label fine-tunes, its training, encoding the corpus and the queries)
    drops below LoGra's cost of attributing the same corpus, with SmolLM2-135M as the base
    LLM (the real LLM this machine runs) and the bench config's label budget.

    Measured in this run: SmolLM2's fine-tune tokens/s and its scoring seconds per dev
    example (one epoch on ``n_finetune`` records), LoGra's (dattri) seconds per example on
    SmolLM2 (16 numbers per linear layer), and the bench AirRep's seconds per text
    (its encoder and the TF-IDF term). Derived, not timed whole: one bench-config fine-tune
    (``subset_size × epochs`` records at the measured tokens/s, plus scoring ``n_dev``
    examples), and AirRep's training as one pass of its frozen blocks over every distinct
    training text (the 100 projection steps take about 3 s, see ``train_pairs``).
    """
    from airrep.baselines.gradient import gradient_scores
    from airrep.config import BaseLLMConfig, DataConfig, load_config
    from airrep.corpora import load_records
    from airrep.data import format_record
    from airrep.finetune import finetune_and_evaluate, tokenize_records
    from airrep.lexical import lexical_similarity
    from airrep.llm import load_base_llm, smollm2_dir
    from airrep.model import AirRep

    cfg = load_config(config_path, environ={})
    s, train = cfg.sampling, cfg.train
    records, _ = load_records(DataConfig())
    model, tokenizer = load_base_llm(str(smollm2_dir()), BaseLLMConfig(name="smollm2"))
    probe = cfg.finetune.model_copy(update={"epochs": 1})
    _, stats = finetune_and_evaluate(model, tokenizer, records[8000 : 8000 + n_finetune],
                                     records[8100 : 8100 + n_finetune], probe, seed=0)
    sample = tokenize_records(tokenizer, records[9000:9200], cfg.finetune.max_length)
    tokens_per_record = float(np.mean([len(e.input_ids) for e in sample]))  # as FinetuneStats counts them
    finetune_s = (s.subset_size * cfg.finetune.epochs * tokens_per_record / stats.tokens_per_second
                  + s.n_dev * stats.eval_seconds / n_finetune)
    n_finetunes = s.n_splits * s.n_subsets

    test, pool = records[6000 : 6000 + n_test], records[7000 : 7000 + n_train]
    logra = gradient_scores("logra", model, tokenizer, pool, test, max_length=cfg.evaluate.gradient_max_length,
                            proj_dim=16, seed=0)  # the smallest per-layer size; LoGra's cost barely depends on it
    logra_s = logra.seconds / (n_train + n_test)

    airrep = AirRep.from_encoder(train.encoder, precision=train.precision, layers=train.encoder_layers,
                                 normalize=train.normalize)
    airrep.model.config.max_tokens = train.max_tokens
    texts = [format_record(r) for r in records[10000 : 10000 + n_encode]]
    airrep.encode(texts[:8])
    _, encode_s = timed(airrep.encode, texts)
    _, lexical_s = timed(lexical_similarity, texts[: n_encode // 2], texts[n_encode // 2 :])
    airrep_s = (encode_s + lexical_s) / n_encode
    training_s = s.n_splits * (s.n_dev + s.n_pool) * encode_s / n_encode
    fixed_s = n_finetunes * finetune_s + training_s
    break_even = fixed_s / (logra_s - airrep_s) if logra_s > airrep_s else float("inf")
    return {"amortisation_examples": break_even, "paper_amortisation_examples": PAPER_AMORTISATION_EXAMPLES,
            "base_llm": "SmolLM2-135M", "label_finetunes": n_finetunes, "finetune_seconds_each": finetune_s,
            "finetune_tokens_per_s": stats.tokens_per_second, "train_tokens_per_record": tokens_per_record,
            "airrep_training_seconds": training_s, "airrep_fixed_seconds": fixed_s,
            "airrep_seconds_per_example": airrep_s, "logra_seconds_per_example": logra_s,
            "logra_numbers_per_example": logra.dim, "airrep_numbers_per_example": airrep.dim,
            "measured_on": {"finetune_records": n_finetune, "logra_examples": n_train + n_test,
                            "encoded_texts": n_encode}}


def bench_train_pairs(config_path: str = "configs/bench.yaml", steps: int = 3) -> dict:
    """Label pairs (dev example × subset) per second of AirRep training steps: the bench
    config's step (its encoder, frozen-layer cache, one backward pass when it fits, every
    dev example × every subset of a split) vs the earlier recipe (the whole 6-block MiniLM,
    32 dev × 8 subsets, the top 2 blocks trained but every block recomputed at every step,
    two passes), on the same real split, same machine.

    The cache is paid once per run (``cache_seconds``, reported apart); each rate is the
    best of ``steps`` timed steps after one untimed step.
    """
    from airrep.config import TrainConfig, load_config
    from airrep.model import AirRep
    from airrep.train import TextBank, ranking_step

    cfg = load_config(config_path, environ={})
    sampling, train = cfg.sampling, cfg.train
    texts = sharegpt_texts(sampling.n_dev + sampling.n_pool)
    rng = np.random.default_rng(0)
    subsets = np.stack([rng.choice(sampling.n_pool, sampling.subset_size, replace=False)
                        for _ in range(sampling.n_subsets)])
    labels = rng.normal(size=(sampling.n_subsets, sampling.n_dev))
    earlier = TrainConfig(**{**train.model_dump(), "reference_size": 32, "topk": 8, "trainable_layers": 2,
                             "frozen_cache": False, "activation_budget_mb": 0, "encoder_layers": None,
                             "normalize": False, "initial_scale": 1.0, "scale_candidates": []})
    results = {}
    for name, config in (("earlier", earlier), ("current", train)):
        airrep = AirRep.from_encoder(config.encoder, precision=config.precision, layers=config.encoder_layers,
                                     normalize=config.normalize, initial_scale=config.initial_scale)
        model = airrep.model
        model.freeze_below(config.trainable_layers)
        bank = TextBank(airrep.tokenizer, texts, config.max_tokens)
        cache_s = 0.0
        if config.frozen_cache and config.trainable_layers is not None:
            cache_s = bank.build_cache(model, len(model.blocks()) - config.trainable_layers, config.encode_chunk,
                                       config.precision)
        dev_rows, pool_rows = bank.rows(texts[: sampling.n_dev]), bank.rows(texts[sampling.n_dev :])
        n_ref, n_sets = min(config.reference_size, sampling.n_dev), min(config.topk, sampling.n_subsets)

        def step(model=model, bank=bank, dev_rows=dev_rows, pool_rows=pool_rows, config=config,
                 n_ref=n_ref, n_sets=n_sets) -> None:  # bound now: timed within this iteration
            chosen_dev = rng.choice(sampling.n_dev, n_ref, replace=False)
            chosen = rng.choice(sampling.n_subsets, n_sets, replace=False)
            target = torch.as_tensor(labels[np.ix_(chosen, chosen_dev)].T, dtype=torch.float32)
            ranking_step(model, bank, dev_rows[chosen_dev], pool_rows[subsets[chosen]], target, config)
            model.zero_grad(set_to_none=True)

        step()
        seconds = min(timed(step)[1] for _ in range(steps))
        results[name] = {"seconds_per_step": seconds, "label_pairs_per_step": n_ref * n_sets,
                         "label_pairs_per_s": n_ref * n_sets / seconds, "cache_seconds": cache_s,
                         "reference_size": n_ref, "topk": n_sets, "trainable_layers": config.trainable_layers,
                         "frozen_cache": bool(cache_s), "texts_in_bank": len(bank)}
    current, earlier_rate = results["current"]["label_pairs_per_s"], results["earlier"]["label_pairs_per_s"]
    return {"train_pairs_per_s": current, "train_pairs_per_s_speedup": current / earlier_rate,
            **results, "split": {"n_dev": sampling.n_dev, "n_pool": sampling.n_pool, "n_subsets": sampling.n_subsets,
                                 "subset_size": sampling.subset_size}}


BENCHES = {"encode": bench_encode, "lds": bench_lds, "topk": bench_topk, "label_generation": bench_label_generation,
           "attribution": bench_attribution, "train_pairs": bench_train_pairs, "amortisation": bench_amortisation}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="benchmarks/results/speed.json")
    parser.add_argument("--only", default=",".join(BENCHES),
                        help="comma-separated subset of: " + ", ".join(BENCHES) + "; the other entries of an "
                             "existing --out file are kept when it was written on the same machine")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    prepare_environment()
    results: dict = {"machine": machine()}
    out = Path(args.out)
    if out.exists():  # each entry holds both timings of its ratio, so entries of two runs can sit side by side
        previous = json.loads(out.read_text())
        if previous.get("machine") == results["machine"]:
            results.update({k: v for k, v in previous.items() if k != "machine"})
    for name in args.only.split(","):
        log.info("benchmark %s", name)
        results[name] = BENCHES[name]()
        log.info("%s: %s", name, json.dumps(results[name]))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
