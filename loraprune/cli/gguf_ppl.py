"""``python -m loraprune.cli.gguf_ppl FILE.gguf... [--sets ...] [--max-windows N]``: perplexity of
GGUF files through llama.cpp over the project's own windows (:mod:`loraprune.evaluation.gguf_ppl`)."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from loraprune.evaluation.gguf_ppl import KV_TYPES, gguf_perplexities, llama_cpp_module, load_streams, render


def load_tokenizer(spec: str):
    """``embedded`` (the embedded SmolLM2's tokenizer) or a directory holding a saved tokenizer."""
    from transformers import AutoTokenizer

    if spec == "embedded":
        from loraprune.models.loading import embedded_model_dir

        return AutoTokenizer.from_pretrained(embedded_model_dir())
    if not Path(spec).is_dir():
        raise ValueError(f"--tokenizer {spec!r}: neither 'embedded' nor a directory")
    return AutoTokenizer.from_pretrained(spec, trust_remote_code=True)


def main(argv: list[str] | None = None) -> None:
    """The command (see the module)."""
    ap = argparse.ArgumentParser(prog="python -m loraprune.cli.gguf_ppl", description=__doc__.splitlines()[0])
    ap.add_argument("files", nargs="+", help="GGUF files (all with the same tokenizer)")
    ap.add_argument("--sets", default="wiki_embedded", help="comma-separated evaluation sets")
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--max-windows", type=int, default=64, help="0: every window")
    ap.add_argument("--tokenizer", default="embedded", help="embedded | a directory with the tokenizer")
    ap.add_argument("--threads", type=int, default=None, help="llama.cpp threads (default: its own)")
    ap.add_argument("--kv-cache", default="f16", choices=list(KV_TYPES))
    ap.add_argument("--out", default=None, help="write the rows (per-window losses included) as JSON")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    sets = [s.strip() for s in args.sets.split(",") if s.strip()]
    try:
        llama_cpp_module("GGUF perplexity")
        missing = [f for f in args.files if not Path(f).is_file()]
        if missing:
            raise ValueError(f"no such GGUF file: {', '.join(missing)}")
        streams = load_streams(sets, load_tokenizer(args.tokenizer))
        rows = gguf_perplexities(
            args.files,
            streams,
            args.seq_len,
            args.max_windows or None,
            threads=args.threads,
            kv_cache=args.kv_cache,
        )
    except ValueError as e:
        raise SystemExit(f"loraprune: error: {e}") from None
    sys.stdout.write(render(rows, sets))
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
