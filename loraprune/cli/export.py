"""``loraprune-export RUN_DIR --out DIR [--dtype bf16] [--form auto|stock|per_layer|gguf] [--quant TYPE]
[--push-to-hub REPO]``.

Re-exports the model of a run (``RUN_DIR/model``, or a saved model directory itself): loads it, casts it
(e.g. to bfloat16), writes it in the chosen form with its model card, and optionally uploads the folder
to the Hugging Face Hub through ``huggingface_hub``. ``--form gguf --out FILE.gguf`` writes one GGUF file
for llama.cpp instead (``--quant``: f32, f16, bf16, or a llama.cpp type such as q8_0 or q4_k_m, made by
llama.cpp's own quantizer through llama-cpp-python).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from loraprune.run.exporting import PROG, ExportError, export, export_gguf


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[1])
    parser.add_argument("run_dir", type=Path, help="a run directory (with model/) or a saved model directory")
    parser.add_argument("--out", type=Path, required=True, help="the folder to write (a .gguf file: gguf)")
    parser.add_argument("--dtype", help="cast the weights: bf16, fp16, fp32 (default: as saved)")
    parser.add_argument(
        "--form",
        choices=("auto", "stock", "per_layer", "gguf"),
        default="auto",
        help="stock: the base's own class (uniform widths only); per_layer: custom code; "
        "auto (default): stock where possible; gguf: one file for llama.cpp",
    )
    parser.add_argument(
        "--quant",
        metavar="TYPE",
        help="--form gguf only: f32, f16 (default), bf16, or a llama.cpp type (q8_0, q4_0, q4_k_m, ...; "
        "needs llama-cpp-python)",
    )
    parser.add_argument(
        "--push-to-hub", metavar="REPO", help="upload the folder to this Hub repo (needs a token)"
    )
    parser.add_argument("--private", action="store_true", help="create the Hub repo private")
    args = parser.parse_args(argv)
    try:
        if args.form == "gguf":
            if args.dtype or args.push_to_hub:
                raise ExportError("--form gguf takes --quant for its type and writes a local file only")
            result = export_gguf(args.run_dir, args.out, args.quant or "f16")
            print(result["path"])
            return
        if args.quant:
            raise ExportError("--quant applies to --form gguf only")
        out = export(
            args.run_dir,
            args.out,
            dtype=args.dtype,
            form=args.form,
            push_to_hub=args.push_to_hub,
            private=args.private,
        )
    except (ExportError, FileNotFoundError) as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    print(out)


if __name__ == "__main__":
    main()
