"""Markdown tables of a benchmark's JSON (the five figures), with its header: machine, command, date."""

from __future__ import annotations

from typing import Any

from loraprune.bench.loop import PHASES

MEMORY_TARGET = 0.5  # loraprune / grad peak at the 1B shape in bf16 on CPU (paper at 7B: 0.47)
LOOP_TARGET = 0.9  # loraprune / lora tokens/s
PREFILL_TARGET = 0.9  # 50%-pruned prefill speed-up against what its FLOP count predicts


def _row(cells: list[Any]) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def _table(head: list[str], rows: list[list[Any]]) -> list[str]:
    return [_row(head), _row(["---"] * len(head)), *(_row(r) for r in rows), ""]


def _verdict(value: float, target: float, higher: bool = True) -> str:
    ok = value >= target if higher else value <= target
    return f"{'met' if ok else 'missed'} (target {'≥' if higher else '≤'} {target})"


def header(result: dict[str, Any]) -> list[str]:
    m, s = result["machine"], result["settings"]
    gpu = f", GPU {m['gpu']}" if m.get("gpu") else ""
    weights = "random" if s["weights"] == "random" else "pretrained"
    base = f", base {s['quantize']}" if s.get("quantize") else ""
    return [
        f"**{s['model']}** ({s['dtype']}, {s['device']}{base}), weights: {weights}",
        "",
        f"- date: {m['date']}; commit {m.get('commit')}",
        f"- command: `{m['command']}`",
        f"- machine: {m['cpu']}, {m['cores']} cores ({m['torch_threads']} torch threads), "
        f"{m['memory_gib']} GiB{gpu}; load average at start {m['load_average_start']}, "
        f"at end {m.get('load_average_end')}",
        f"- torch {m['versions']['torch']}, transformers {m['versions']['transformers']}, "
        f"peft {m['versions']['peft']}",
        "",
    ]


def memory_lines(loops: dict[str, dict], settings: dict) -> list[str]:
    cuda = any("cuda_peak_above_model_gib" in r for r in loops.values())
    key = "cuda_peak_above_model_gib" if cuda else "cpu_peak_above_model_gib"
    unit = "CUDA max allocated" if cuda else "peak RSS (VmHWM)"
    lines = [
        f"### 1. Peak memory of fine-tune-and-prune ({unit} above the loaded model; "
        f"{settings['steps']} steps of {settings['batch']}×{settings['seq_len']}"
        f"{', gradient checkpointing' if settings.get('gradient_checkpointing') else ''})",
        "",
    ]
    rows = [
        [m, f"{r[key]:.3f}", f"{r['rss_baseline_gib']:.3f}", f"{r['prepare_s']:.1f}"]
        for m, r in loops.items()
    ]
    lines += _table(["variant", "peak above model (GiB)", "model RSS (GiB)", "prepare (s)"], rows)
    for other in ("grad", "llm_pruner"):
        if "loraprune" in loops and other in loops:
            ratio = loops["loraprune"][key] / max(loops[other][key], 1e-12)
            verdict = f" — {_verdict(ratio, MEMORY_TARGET, higher=False)}" if other == "grad" else ""
            lines.append(f"- loraprune / {other}: **{ratio:.3f}**{verdict}")
    for variant, r in loops.items():  # a variant on a quantized base against the same on the unquantized
        base = variant.partition(":")[0]
        if variant != base and base in loops:
            above = r[key] / max(loops[base][key], 1e-12)
            total = (r[key] + r["rss_baseline_gib"]) / max(
                loops[base][key] + loops[base]["rss_baseline_gib"], 1e-12
            )
            lines.append(
                f"- {variant} / {base}: peak above the model **{above:.3f}**, model + peak **{total:.3f}**"
            )
    return [*lines, ""]


def loop_lines(loops: dict[str, dict], settings: dict) -> list[str]:
    lines = [
        f"### 2. Loop throughput ({settings['batch']}×{settings['seq_len']} tokens per step; means over "
        f"steps 2..{settings['steps']}, seconds per step)",
        "",
    ]
    head = ["variant", "tokens/s", "step (s)", *PHASES, "CPU user/sys (s)", "minor faults"]
    rows = []
    for m, r in loops.items():
        p = r["phase_s"]
        rows.append(
            [m, f"{r['tokens_per_s']:.1f}", f"{r['step_s']:.3f}", *(f"{p[k]:.3f}" for k in PHASES)]
            + [
                f"{r['cpu_user_s_per_step']:.2f}/{r['cpu_sys_s_per_step']:.2f}",
                f"{r['minor_faults_per_step']:.0f}",
            ]
        )
    lines += _table(head, rows)
    if "loraprune" in loops and "lora" in loops:
        ratio = loops["loraprune"]["tokens_per_s"] / loops["lora"]["tokens_per_s"]
        lines.append(f"- loraprune / lora tokens/s: **{ratio:.3f}** — {_verdict(ratio, LOOP_TARGET)}")
    if "peft" in loops:  # plain peft LoRA in a user's own loop: the reference of the loop's target
        for variant, r in loops.items():
            if variant != "peft":
                ratio = r["tokens_per_s"] / loops["peft"]["tokens_per_s"]
                lines.append(
                    f"- {variant} / plain peft tokens/s: **{ratio:.3f}** — {_verdict(ratio, LOOP_TARGET)}"
                )
    return [*lines, ""]


def inference_lines(inf: dict[str, Any]) -> list[str]:
    s = inf["settings"]
    lines = [
        f"### 3. Pruned vs dense (prefill {s['batch']}×{s['seq_len']}; decode batch 1, greedy, "
        f"{s['new_tokens']} new tokens after a {s['prompt_len']}-token prompt)",
        "",
    ]
    rounded = any(r.get("round_to") for r in inf["rows"])
    head = ["ratio", *(["round_to"] if rounded else []), "params", "param ratio", "FLOP ratio"]
    head += ["prefill tok/s", "prefill ×", "decode ms/tok", "decode ×", "prefill × · FLOP ratio"]
    rows = [
        [
            r["ratio"],
            *([r.get("round_to") or "—"] if rounded else []),
            f"{r['params'] / 1e6:.2f}M",
            f"{r['param_ratio']:.3f}",
            f"{r['flop_ratio']:.3f}",
            f"{r['prefill_tokens_per_s']:.1f}",
            f"{r['prefill_speedup']:.2f}",
            f"{r['decode_ms_per_token']:.2f}",
            f"{r['decode_speedup']:.2f}",
            f"{r['prefill_vs_flops']:.2f}",
        ]
        for r in inf["rows"]
    ]
    lines += _table(head, rows)
    half = [r for r in inf["rows"] if abs(r["ratio"] - 0.5) < 1e-9 and not r.get("round_to")]
    if half:
        lines.append(
            f"- 50%: prefill speed-up / FLOP-predicted speed-up = **{half[0]['prefill_vs_flops']:.2f}** — "
            f"{_verdict(half[0]['prefill_vs_flops'], PREFILL_TARGET)}"
        )
    return [*lines, ""]


def gguf_lines(g: dict[str, Any]) -> list[str]:
    """The ``gguf`` figure: one row per (model, type); ratios against the dense file of the same type."""
    s = g["settings"]
    threads = s["threads"] if s["threads"] is not None else "llama.cpp's default"
    lines = [
        f"### 5. GGUF in llama.cpp (llama-cpp-python {s['llama_cpp_python']}, threads {threads}; prompt "
        f"processing: {s['pp_tokens']} tokens in one eval; generation: greedy, {s['new_tokens']} tokens "
        f"after a {s['prompt_len']}-token prompt; median of {s['repeats']})",
        "",
    ]
    sets = s.get("ppl_sets") or []
    head = ["model", "type", "arch", "params", "param ratio", "MiB", "size ratio", "pp tok/s", "pp ×"]
    head += ["tg tok/s", "tg ×", *(f"{name} ppl" for name in sets)]
    rows = [
        [
            r["model"],
            r["quant"],
            r["arch"],
            f"{r['params'] / 1e6:.2f}M",
            f"{r['param_ratio']:.3f}",
            f"{r['mib']:.1f}",
            f"{r['size_ratio']:.3f}",
            f"{r['pp_tokens_per_s']:.1f}",
            f"{r['pp_speedup']:.2f}",
            f"{r['tg_tokens_per_s']:.1f}",
            f"{r['tg_speedup']:.2f}",
            *(f"{r['ppl'][name]:.3f}" for name in sets),
        ]
        for r in g["rows"]
    ]
    lines += _table(head, rows)
    if sets:
        lines.append(
            f"- perplexity: llama.cpp's logits over the project's windows ({s['ppl_windows']} windows of "
            f"{s['seq_len']} tokens per set, f16 KV cache)"
        )
    return [*lines, ""]


def evaluation_lines(ev: dict[str, Any]) -> list[str]:
    s = ev["settings"]
    return [
        f"### 4. Evaluation throughput (dense model, batch {s['batch']})",
        "",
        *_table(
            ["what", "throughput", "amount", "seconds"],
            [
                *(
                    [
                        [
                            f"perplexity, windows of {s['seq_len']}: whole fp32 logits, batch 8 (before)",
                            f"{ev['ppl_tokens_per_s_before']:.1f} tokens/s",
                            f"{ev['ppl_windows']} windows",
                            f"{ev['ppl_seconds_before']:.2f}",
                        ]
                    ]
                    if "ppl_seconds_before" in ev
                    else []
                ),
                [
                    f"perplexity, windows of {s['seq_len']}: chunked loss, batch {s['batch']}"
                    + (f" (**{ev['ppl_speedup']:.2f}×**)" if "ppl_speedup" in ev else ""),
                    f"{ev['ppl_tokens_per_s']:.1f} tokens/s",
                    f"{ev['ppl_windows']} windows",
                    f"{ev['ppl_seconds']:.2f}",
                ],
                [
                    f"zero-shot ({', '.join(ev['zeroshot_tasks'])}, lm-eval offline)",
                    f"{ev['zeroshot_examples_per_s']:.2f} examples/s",
                    f"{ev['zeroshot_examples']} examples",
                    f"{ev['zeroshot_seconds']:.2f}",
                ],
            ],
        ),
    ]


def render(result: dict[str, Any]) -> str:
    """The whole benchmark as Markdown."""
    lines = header(result)
    s = result["settings"]
    loops = result.get("loops", {})
    if "memory" in result["figures"] and loops:
        lines += memory_lines(loops, s)
    if "loop" in result["figures"] and loops:
        lines += loop_lines(loops, s)
    if "inference" in result:
        lines += inference_lines(result["inference"])
    if "evaluation" in result:
        lines += evaluation_lines(result["evaluation"])
    if "gguf" in result:
        lines += gguf_lines(result["gguf"])
    return "\n".join(lines).rstrip() + "\n"
