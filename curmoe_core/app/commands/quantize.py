"""``curmoe quantize IN -o OUT --bits 8|4 [--runtime onnxruntime|openvino] [--block-size N] [--what experts|all]
[--symmetric] [--validate MODEL_DIR]``: weight-only quantisation of an exported model with the runtime's own tool.

IN is what ``curmoe export`` wrote: an ``.onnx`` file (either runtime) or an OpenVINO IR ``.xml`` (openvino only).
OUT is an ``.onnx`` file (ONNX Runtime's MatMulNBits; runs on ONNX Runtime only) or an IR ``.xml`` (+ ``.bin``;
NNCF weight compression); its suffix is added when it has none. ``--validate MODEL_DIR`` then checks the written
file against the float64 reference of the model it was exported from, within the budget of its bit width
(``curmoe.runtimes.quantized``); the exit status is 1 when it is over budget.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from curmoe.app.cli import _check_model_config, _check_outputs, _emit, command

__all__: list[str] = []

_SUFFIX = {"onnxruntime": ".onnx", "openvino": ".xml"}


def _configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("input", help="an exported model: X.onnx (curmoe export) or X.xml (curmoe export --format openvino)")
    p.add_argument("-o", "--output", required=True, help="the quantised file: .onnx (onnxruntime) or .xml (openvino)")
    p.add_argument("--bits", type=int, required=True, help="8 or 4")
    p.add_argument("--runtime", choices=list(_SUFFIX), default=None,
                   help="whose tool and format: onnxruntime (MatMulNBits) or openvino (NNCF); default: from the "
                        "output suffix, else the input's (.onnx -> onnxruntime, .xml -> openvino)")
    p.add_argument("--block-size", type=int, default=128,
                   help="block (ORT) / group (NNCF int4) along K, a power of two >= 16 (default: %(default)s)")
    p.add_argument("--what", choices=["experts", "all"], default="experts",
                   help="experts: expert matrices only; all: also attention, dense FFN and the LM head (never the "
                        "router or the embedding) (default: %(default)s)")
    p.add_argument("--symmetric", action="store_true", help="symmetric quantisation (no zero points)")
    p.add_argument("--validate", metavar="MODEL_DIR", default=None,
                   help="validate the output against this model (the one IN was exported from) within the budget")
    p.add_argument("--threads", type=int, default=None, help="intra-op threads for --validate")
    p.add_argument("--force", action="store_true", help="replace an existing output")
    p.add_argument("--json", action="store_true", help="print one JSON object")


def _runtime(args: argparse.Namespace) -> str:
    if args.runtime:
        return args.runtime
    out = Path(args.output).suffix
    if out in (".onnx", ".xml"):
        return "onnxruntime" if out == ".onnx" else "openvino"
    return "openvino" if Path(args.input).suffix == ".xml" else "onnxruntime"


def _target(output: str, runtime: str) -> Path:
    from curmoe.common.errors import InvalidInputError

    out, suffix = Path(output), _SUFFIX[runtime]
    if out.suffix == suffix:
        return out
    if out.suffix == "":
        return out.with_name(out.name + suffix)
    raise InvalidInputError(f"-o {output!r}: --runtime {runtime} writes a {suffix} file; pass -o ending in {suffix}")


def _render(r: dict[str, Any]) -> str:
    q = r["quantize"]
    line = (f"wrote {q['path']} ({q['config']['bits']}-bit {q['config']['what']}, {len(q['quantized'])} matrices, "
            f"{q['bytes_on_disk']:,} bytes; from {r['input_bytes']:,}) with {q['tool']}")
    v = r.get("validation")
    if v:
        line += (f"\n{'PASSED' if v['passed'] else 'FAILED'} {v['runtime']} against the reference: max_rel_err "
                 f"{v['max_rel_err']:.3g} (all sequences {v['max_rel_err_all']:.3g}), routing agreement "
                 f"{v['routing_agreement']}, top-1 agreement {v['top1_agreement']:.3f}, ppl ratio - 1 "
                 f"{v['ppl_rel_diff']:.3g} (budget {v['budget']})")
        if v["failures"]:
            line += f"\nfailures: {v['failures']}"
    return line


@command("quantize", "8/4-bit weight-only quantisation of an export (ORT MatMulNBits, OpenVINO NNCF)")
def _quantize(args: argparse.Namespace) -> int:
    from curmoe.common.errors import InvalidInputError
    from curmoe.exporters.quantize import QuantizeConfig, disk_bytes, quantize

    runtime = _runtime(args)
    config = QuantizeConfig(bits=args.bits, runtime=runtime, block_size=args.block_size, what=args.what,
                            symmetric=args.symmetric)
    src = Path(args.input)
    if not src.is_file():
        raise InvalidInputError(f"input {args.input!r} does not exist; pass an .onnx or .xml written by curmoe export")
    out = _target(args.output, runtime)
    _check_outputs([out] + ([out.with_suffix(".bin")] if runtime == "openvino" else []), args.force)
    if args.validate is not None:
        _check_model_config(args.validate)
    res = quantize(src, config, out)
    record: dict[str, Any] = {"input": str(src), "input_bytes": disk_bytes(src), "quantize": res.to_dict()}
    if args.validate is not None:
        from curmoe.runtimes.quantized import validate_quantized

        opts = {} if args.threads is None else {"threads": args.threads}
        v = validate_quantized(out, args.validate, **opts).to_dict()
        v.pop("report", None)
        record["validation"] = v
    _emit(record, args.json, _render)
    return 0 if record.get("validation", {"passed": True})["passed"] else 1


_quantize.configure = _configure  # type: ignore[attr-defined]
