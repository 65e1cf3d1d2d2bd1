"""``loraprune-bench``: the performance figures side by side in one invocation.

1. ``memory``: peak memory of fine-tune-and-prune, plain peft LoRA, ``loraprune``, ``grad`` and
   LLM-Pruner's scoring, each in a process of its own, above the loaded model (CUDA max allocated, or the
   CPU resident-set high-water mark); ratios loraprune/grad and loraprune/llm_pruner.
2. ``loop``: tokens/s of the LoRAPrune loop against plain LoRA on the same model, batch and data, and the
   seconds per phase (from the same runs as ``memory`` when both are asked for).
3. ``inference``: pruned (20%, 50%) against dense: prefill tokens/s, decode ms/token, parameter and FLOP
   ratios.
4. ``eval``: perplexity tokens/s and zero-shot examples/s.
5. ``gguf``: the dense and pruned models as GGUF in llama.cpp (llama-cpp-python) at each ``--gguf-quants``
   type: file size, prompt-processing and generation tokens/s, parameter ratio, and with
   ``--gguf-ppl-sets`` the perplexity of each file (prune then quantize). Not in the default set.

Prints Markdown; ``--out DIR`` also writes ``bench.json`` and ``bench.md`` there. Example::

    loraprune-bench --model embedded --steps 5 --batch 4 --seq-len 128
    loraprune-bench --model shape:tinyllama_1b --dtype bf16 --figures memory,loop --steps 10
    loraprune-bench --model embedded --figures gguf --gguf-quants f16,q4_k_m --gguf-ppl-sets wiki_embedded
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

import torch

import loraprune.run.quiet  # noqa: F401 - silences third-party import noise
from loraprune.bench import tables
from loraprune.bench.loop import DTYPES, load, run_variant
from loraprune.bench.machine import load_now, machine_info
from loraprune.bench.process import run_isolated

FIGURES = ("memory", "loop", "inference", "eval", "gguf")
DEFAULT_FIGURES = ("memory", "loop", "inference", "eval")
MEMORY_VARIANTS = ("lora", "loraprune", "grad", "llm_pruner")
LOOP_VARIANTS = ("peft", "lora", "loraprune", "mask_fisher")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="loraprune-bench", description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="embedded", help="embedded | tiny | shape:<name> | hub id | local dir")
    ap.add_argument("--layers", type=int, default=None, help="shape: keep only this many layers")
    ap.add_argument(
        "--figures", default=",".join(DEFAULT_FIGURES), help=f"comma-separated subset of {FIGURES}"
    )
    ap.add_argument("--dtype", default="fp32", choices=list(DTYPES))
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--quantize", default=None, choices=["int8", "nf4"], help="the frozen base's weights")
    ap.add_argument("--steps", type=int, default=10, help="fine-tune steps per loop variant")
    ap.add_argument("--batch", type=int, default=4, help="fine-tune batch")
    ap.add_argument("--seq-len", type=int, default=128, help="fine-tune sequence length")
    ap.add_argument("--ratio", type=float, default=0.2, help="pruning ratio of the loop variants")
    ap.add_argument(
        "--variants",
        default=None,
        help="loop variants (default: those the figures need); NAME:int8 runs NAME on an int8 base",
    )
    ap.add_argument("--ratios", default="0.2,0.5", help="inference: pruned ratios against the dense model")
    ap.add_argument(
        "--round-to",
        default="none",
        help="inference, gguf: each pruned ratio once per value, e.g. none,64 (prune.round_to)",
    )
    ap.add_argument("--gguf-quants", default="f16,q4_k_m", help="gguf: the GGUF types, side by side")
    ap.add_argument(
        "--gguf-run", default=None, help="gguf: a finished run dir whose saved model joins the rows"
    )
    ap.add_argument("--gguf-ppl-sets", default="", help="gguf: perplexity sets (--ppl-windows of --seq-len)")
    ap.add_argument("--gguf-dir", default=None, help="gguf: keep the files here (default: a temporary dir)")
    ap.add_argument("--prefill-batch", type=int, default=8)
    ap.add_argument("--prefill-len", type=int, default=512)
    ap.add_argument("--prompt-len", type=int, default=32)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3, help="inference: timed runs (median)")
    ap.add_argument("--eval-batch", type=int, default=8)
    ap.add_argument("--ppl-windows", type=int, default=32)
    ap.add_argument("--zeroshot-tasks", default="piqa")
    ap.add_argument("--zeroshot-limit", type=int, default=20)
    ap.add_argument(
        "--gradient-checkpointing",
        action="store_true",
        help="the loop variants recompute activations in the backward (trainer.gradient_checkpointing)",
    )
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    ap.add_argument("--out", default=None, help="directory for bench.json and bench.md")
    args = ap.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    args.figures = [f.strip() for f in args.figures.split(",") if f.strip()]
    unknown = sorted(set(args.figures) - set(FIGURES))
    if unknown:
        ap.error(f"unknown figure(s) {unknown}; choose from {', '.join(FIGURES)}")
    try:
        args.round_to = [
            None if v.strip().lower() in ("none", "null") else int(v) for v in args.round_to.split(",")
        ]
    except ValueError:
        ap.error(f"--round-to takes none or positive integers, got {args.round_to!r}")
    if any(n is not None and n < 1 for n in args.round_to):
        ap.error(f"--round-to takes none or positive integers, got {args.round_to}")
    args.gguf_quants = _names(args.gguf_quants)
    args.gguf_ppl_sets = _names(args.gguf_ppl_sets)
    return args


def _names(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def loop_variants(args: argparse.Namespace) -> list[str]:
    if args.variants:
        return [v.strip() for v in args.variants.split(",") if v.strip()]
    wanted = (MEMORY_VARIANTS if "memory" in args.figures else ()) + (
        LOOP_VARIANTS if "loop" in args.figures else ()
    )
    return list(dict.fromkeys(wanted))


def run_loops(args: argparse.Namespace) -> dict[str, dict]:
    """Every loop variant, one process each, one after the other."""
    out = {}
    for variant in loop_variants(args):
        method, quantize = split_variant(variant, args.quantize)
        logging.getLogger("loraprune").info("bench: %s loop", variant)
        out[variant] = run_isolated(
            run_variant,
            model=args.model,
            method=method,
            dtype=args.dtype,
            device=args.device,
            steps=args.steps,
            batch=args.batch,
            seq_len=args.seq_len,
            ratio=args.ratio,
            layers=args.layers,
            quantize=quantize,
            threads=args.threads,
            gradient_checkpointing=args.gradient_checkpointing,
        )
    return out


def split_variant(variant: str, default_quantize: str | None) -> tuple[str, str | None]:
    """``loraprune:int8`` → ``("loraprune", "int8")``: a loop variant on a quantized base beside the
    unquantized ones of the same invocation; ``loraprune`` → the ``--quantize`` of the invocation."""
    method, _, quantize = variant.partition(":")
    return method, quantize or default_quantize


def check_model(spec: str) -> None:
    """A one-line ValueError for a model that cannot load (unknown shape, missing local dir), cheaply."""
    from loraprune.models.loading import model_location

    if spec.startswith("shape:"):
        model_location("shape", spec.split(":", 1)[1])
    elif spec == "embedded":
        model_location("embedded", None)
    elif spec != "tiny":
        try:
            model_location("hub", spec)
        except FileNotFoundError as e:
            raise ValueError(str(e)) from e


def bench(args: argparse.Namespace) -> dict[str, Any]:
    """Run the figures ``args`` asks for; returns the JSON-able result."""
    from loraprune.models.quantize import check_backend

    check_model(args.model)
    check_backend(args.quantize)
    if "gguf" in args.figures:
        from loraprune.bench.llamacpp import check_gguf_figure

        check_gguf_figure(args.gguf_quants)
        if args.gguf_run:
            from loraprune.run.exporting import ExportError, model_dir_of

            try:
                model_dir_of(Path(args.gguf_run))
            except ExportError as e:
                raise ValueError(f"--gguf-run: {e}") from None
    if {"memory", "loop"} & set(args.figures):
        for variant in loop_variants(args):
            check_backend(split_variant(variant, args.quantize)[1])
    if args.threads:
        torch.set_num_threads(args.threads)
    result: dict[str, Any] = {
        "machine": machine_info(args.device, args.argv),
        "figures": args.figures,
        "settings": {k: v for k, v in vars(args).items() if k not in ("figures", "out", "argv")},
    }
    if {"memory", "loop"} & set(args.figures):
        result["loops"] = run_loops(args)
    if {"inference", "eval", "gguf"} & set(args.figures):
        model, tokenizer, weights = load(args.model, args.dtype, args.device, args.layers)
        ratios = [float(r) for r in args.ratios.split(",") if r.strip()]
        if "inference" in args.figures:
            from loraprune.bench.inference import measure_inference

            result["inference"] = measure_inference(
                model,
                ratios,
                batch=args.prefill_batch,
                seq_len=args.prefill_len,
                prompt_len=args.prompt_len,
                new_tokens=args.new_tokens,
                repeats=args.repeats,
                round_to=args.round_to,
            )
        if "gguf" in args.figures:
            from loraprune.bench.llamacpp import measure_gguf

            result["gguf"] = measure_gguf(
                model,
                tokenizer,
                ratios=ratios,
                quants=args.gguf_quants,
                round_to=args.round_to,
                run=args.gguf_run,
                pp_tokens=args.prefill_len,
                prompt_len=args.prompt_len,
                new_tokens=args.new_tokens,
                repeats=args.repeats,
                threads=args.threads,
                ppl_sets=args.gguf_ppl_sets,
                ppl_windows=args.ppl_windows,
                seq_len=args.seq_len,
                keep_dir=args.gguf_dir,
            )
        if "eval" in args.figures:
            from loraprune.bench.evaluation import measure_evaluation

            result["evaluation"] = measure_evaluation(
                model,
                tokenizer,
                seq_len=args.seq_len,
                batch=args.eval_batch,
                windows=args.ppl_windows,
                tasks=[t.strip() for t in args.zeroshot_tasks.split(",")],
                limit=args.zeroshot_limit,
            )
    result["settings"]["weights"] = _weights(args.model)
    result["machine"]["load_average_end"] = load_now()
    return result


def _weights(model: str) -> str:
    return "random" if model == "tiny" or model.startswith("shape:") else "pretrained"


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = parse_args(argv)
    try:
        result = bench(args)
    except ValueError as e:  # bad input (unknown shape, missing backend): one line
        raise SystemExit(f"loraprune: error: {e}") from None
    markdown = tables.render(result)
    print(markdown, end="")
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "bench.json").write_text(json.dumps(result, indent=2, default=str))
        (out / "bench.md").write_text(markdown)


if __name__ == "__main__":
    main()
