"""The ``curmoe`` command line: a thin layer over the Python API.

Each subcommand parses its arguments and calls one library function; heavy modules are imported inside the
handlers so ``curmoe --help`` stays fast. Commands that produce figures accept ``--json`` and then print one JSON
object on stdout.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

__all__ = ["main"]

_COMMANDS: dict[str, tuple[Callable[[argparse.ArgumentParser], None], str]] = {}


def command(name: str, help: str) -> Callable:
    """Register ``fn(args) -> int`` as subcommand ``name``; ``fn.configure(parser)`` adds its options."""

    def deco(fn: Callable) -> Callable:
        _COMMANDS[name] = (fn, help)
        return fn

    return deco


# export formats that write a folder (ort-genai, ov-genai, hf, ...): name -> (help, write(model, tmp_dir, args))
_FOLDER_FORMATS: dict[str, tuple[str, Callable[..., dict[str, Any]]]] = {}


def folder_format(name: str, help: str) -> Callable:
    """Register ``write(model, folder, args) -> dict`` as ``curmoe export --format NAME -o FOLDER``.

    ``write`` fills ``folder`` (a fresh temporary directory that replaces ``-o`` atomically when it returns) and
    returns a record to print; it may raise :class:`curmoe.CurmoeError` before writing anything it cannot do.
    """

    def deco(fn: Callable) -> Callable:
        _FOLDER_FORMATS[name] = (help, fn)
        return fn

    return deco


def _load_command_modules() -> None:
    """Import every module of :mod:`curmoe.app.commands`: each registers its subcommands or export formats."""
    import importlib
    import pkgutil

    from curmoe.app import commands

    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        importlib.import_module(f"{commands.__name__}.{info.name}")


def _emit(result: dict[str, Any], as_json: bool, render: Callable[[dict[str, Any]], str]) -> None:
    print(json.dumps(result, indent=None if as_json else 2, default=str) if as_json else render(result))


def _load_calib(spec: str | None, model: Any, data_dir: str | None, n_tokens: int) -> Any:
    """--calib wikitext2:train | FILE (text) -> (B, T) token ids, tokenised with the model's tokenizer."""
    if spec is None:
        return None
    from curmoe.app.calibdata import calibration_ids

    return calibration_ids(spec, model, data_dir=data_dir, n_tokens=n_tokens)


def _check_parent(out: Any) -> None:
    """Refuse an output path below a file (``some/file.onnx/x.onnx``): say so instead of a FileExistsError."""
    from curmoe.common.errors import InvalidInputError

    for d in out.parents:
        if d.exists() or d.is_symlink():
            if not d.is_dir():
                raise InvalidInputError(f"cannot write {str(out)!r}: {str(d)!r} is a file, not a folder; "
                                        "choose another -o")
            return


def _check_outputs(paths: Sequence[Any], force: bool) -> None:
    """Refuse to overwrite any of ``paths`` unless ``--force``."""
    from curmoe.common.errors import InvalidInputError

    for p in paths:
        _check_parent(p)
        if (p.exists() or p.is_symlink()) and not force:
            raise InvalidInputError(f"{str(p)!r} already exists; pass --force to replace it, or choose another -o")


def _check_model_output(output: str, force: bool) -> None:
    """A model directory output: refuse an existing one unless ``--force``; never replace a file or a folder that
    is not a curmoe model directory (--force or not), so a typo cannot delete a file or someone's folder."""
    from pathlib import Path

    from curmoe.common.errors import InvalidInputError

    out = Path(output)
    _check_parent(out)
    if not (out.exists() or out.is_symlink()):
        return
    if not out.is_dir() or out.is_symlink():
        raise InvalidInputError(f"{output!r} is a file, and the output is a model directory; remove it or choose "
                                "another -o (--force replaces only an existing curmoe model directory)")
    if not (out / "config.json").is_file():
        raise InvalidInputError(f"{output!r} is a folder but not a curmoe model directory (no config.json); "
                                "refusing to replace it: choose another -o")
    if not force:
        raise InvalidInputError(f"{output!r} already exists; pass --force to replace it, or choose another -o")


def _check_model_config(model_dir: Any) -> None:
    """Refuse a model directory whose config.json lacks its ``moe`` block (loading would invent defaults for the
    experts and router, and the model would silently be another one)."""
    from pathlib import Path

    from curmoe.common.errors import CheckpointError

    cfg = Path(model_dir) / "config.json"
    if not cfg.is_file():
        return  # curmoe.load says what is missing
    try:
        d = json.loads(cfg.read_text())
    except (ValueError, UnicodeDecodeError):
        return  # curmoe.load names the corrupt file
    if isinstance(d, dict) and "moe" not in d:
        raise CheckpointError(f"{str(cfg)!r} has no 'moe' block (n_experts, d_ff, router, ...): it is not a curmoe "
                              "model config; convert a Hugging Face model with curmoe convert, or restore the block")


def _load_model(model_dir: str) -> Any:
    import curmoe

    _check_model_config(model_dir)
    return curmoe.load(model_dir)


# compress ---------------------------------------------------------------------------------------------------
METHOD_HELP = {
    "cur-neuron": "neuron CUR (default, interpretable): keep real expert neurons, refit W_down; needs --calib",
    "cur": "per-matrix CUR: real columns and rows of each expert matrix (activation-aware with --calib)",
    "svd-llm": "SVD with truncation-aware whitening (SVD-LLM); needs --calib",
    "svd": "plain truncated SVD of each expert matrix",
}


def _configure_compress(p: argparse.ArgumentParser) -> None:
    p.add_argument("model_dir", help="a curmoe model directory (curmoe convert makes one from Hugging Face)")
    p.add_argument("--method", choices=list(METHOD_HELP), default="cur-neuron",
                   help="; ".join(f"{k}: {v}" for k, v in METHOD_HELP.items()) + " (default: %(default)s)")
    p.add_argument("--ratio", type=float, required=True, help="fraction of expert parameters to remove, in (0, 1)")
    p.add_argument("--allocation", choices=["uniform", "global"], default=None,
                   help="uniform: every expert/matrix removes RATIO; global: one budget spent where it costs least "
                        "(cur-neuron, svd-llm; default: global for cur-neuron, uniform otherwise)")
    p.add_argument("--sequential", action="store_true",
                   help="calibrate each layer on the already-compressed layers before it")
    p.add_argument("--selection", default=None,
                   help="cur: deim | qdeim | leverage | seed (default deim); cur-neuron: greedy | energy | leverage | "
                        "qdeim (default greedy)")
    p.add_argument("--u", default="optimal", help="cur middle matrix: optimal | intersection (default: %(default)s)")
    p.add_argument("--whiten", action="store_true", help="cur: select on the whitened matrix (needs --calib)")
    p.add_argument("--calib", default=None, help="calibration text: wikitext2:train or a text FILE")
    p.add_argument("--calib-tokens", type=int, default=16384, help="calibration tokens (default: %(default)s)")
    p.add_argument("--no-calib-cache", action="store_true",
                   help="calibrate again instead of reusing statistics stored for the same model, text and token "
                        "count ($CURMOE_CACHE_DIR/calib, default ~/.cache/curmoe/calib; reused across methods and ratios)")
    p.add_argument("--data-dir", default=None, help="WikiText-2 folder (default: $CURMOE_DATA_DIR)")
    p.add_argument("--include-shared", action="store_true", help="compress shared experts too")
    p.add_argument("--fold-u", action="store_true", help="cur: fold U into C (C then holds no real columns)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    p.add_argument("-o", "--output", required=True, help="output model directory (must not exist unless --force)")
    p.add_argument("--force", action="store_true", help="replace an existing model directory at -o")
    p.add_argument("--json", action="store_true", help="print the record as JSON")
    p.add_argument("--stream", action="store_true",
                   help="stream: read one tensor at a time, write shards + index, resume after an interruption "
                        "(default for a sharded model_dir with model.safetensors.index.json; --allocation uniform)")
    p.add_argument("--workers", type=int, default=None,
                   help="--stream: run the (layer, expert) units as tasks on N Ray workers (a local Ray cluster "
                        "unless --ray-address); same output as serial; needs pip install 'curmoe[ray]'")
    p.add_argument("--ray-address", default=None,
                   help="--stream --workers: join this Ray cluster (auto, ray://host:10001); the model and output "
                        "folders must be at the same paths on every node")


def _compress_streamed(args: argparse.Namespace) -> dict[str, Any]:
    """``curmoe compress --stream``: curmoe.compress_checkpoint (the model is never held whole); the record."""
    import json
    from pathlib import Path
    from types import SimpleNamespace

    import curmoe
    from curmoe.compress import compress_checkpoint

    src = Path(args.model_dir)
    tok = src / "tokenizer.json"
    cfg_model = curmoe.ModelConfig.from_dict(json.loads((src / "config.json").read_text()))
    stand_in = SimpleNamespace(config=cfg_model, tokenizer_path=tok if tok.is_file() else None)  # tokenising only
    calib = _load_calib(args.calib, stand_in, args.data_dir, args.calib_tokens)
    cfg = _compress_config(args, aware=calib is not None)
    out = compress_checkpoint(src, args.output, cfg, calib_ids=calib, force=args.force, progress=not args.json,
                              workers=args.workers, ray_address=args.ray_address)
    return out.compression


def _compress_config(args: argparse.Namespace, aware: bool) -> Any:
    """The config the arguments describe, built (and so validated) before any calibration work."""
    import curmoe

    common = dict(ratio=args.ratio, seed=args.seed, include_shared=args.include_shared, sequential=args.sequential)
    if args.method == "cur-neuron":
        sel = {} if args.selection is None else {"selection": args.selection}
        return curmoe.NeuronConfig(**common, allocation=args.allocation or "global", **sel)
    if args.method == "cur":
        return curmoe.CURConfig(**common, selection=args.selection or "deim", u=args.u, activation_aware=aware,
                                whiten=args.whiten, fold_u=args.fold_u, allocation=args.allocation or "uniform")
    if args.method == "svd-llm" and not aware:
        raise curmoe.InvalidInputError("--method svd-llm whitens with calibration statistics; pass --calib "
                                       "wikitext2:train (or a text FILE), or use --method svd")
    return curmoe.SVDConfig(**common, activation_aware=args.method == "svd-llm",
                            allocation=args.allocation or "uniform")


@command("compress", "compress a model's experts (neuron CUR, per-matrix CUR, SVD-LLM or SVD)")
def _compress(args: argparse.Namespace) -> int:
    import curmoe

    _compress_config(args, aware=args.calib is not None)  # fail on bad options before loading or calibrating
    _check_model_output(args.output, args.force)
    from pathlib import Path

    if args.stream or args.workers is not None or (Path(args.model_dir) / "model.safetensors.index.json").is_file():
        return _emit_compress(_compress_streamed(args), args)  # --workers implies --stream (Ray runs streamed units)
    model = _load_model(args.model_dir)
    if not model.n_expert_params():  # an all-dense model (a converted Llama/SmolLM2): each FFN = one always-on expert
        from curmoe.models.pretrained import as_single_expert

        model = as_single_expert(model)
    calib = _load_calib(args.calib, model, args.data_dir, args.calib_tokens)
    cfg = _compress_config(args, aware=calib is not None)
    from curmoe.compress import default_cache_dir

    out = curmoe.compress(model, cfg, calib_ids=calib, progress=not args.json,
                          calib_cache=None if args.no_calib_cache else default_cache_dir(), calib_source=args.calib)
    out.save(args.output)
    return _emit_compress(out.config.compression, args)


def _emit_compress(compression: dict[str, Any], args: argparse.Namespace) -> int:
    rec = {k: v for k, v in compression.items() if k != "matrices"}
    mats = compression["matrices"].values()
    errs = [m["weight_error"] for m in mats if m.get("weight_error") is not None]
    oerrs = [m["output_error"] for m in mats if m.get("output_error") is not None]
    rec |= {"output": args.output, "mean_weight_error": sum(errs) / len(errs) if errs else None,
            "mean_output_error": sum(oerrs) / len(oerrs) if oerrs else None}
    _emit(rec, args.json, lambda r: (
        f"saved {r['output']}: {r['method']} removed {100 * r['ratio_expert_params']:.1f}% of expert parameters "
        f"({100 * r['ratio_all_params']:.1f}% of all)"
        + (f", mean weight error {r['mean_weight_error']:.4f}" if r["mean_weight_error"] is not None else "")
        + (f", mean output error {r['mean_output_error']:.4f}" if r["mean_output_error"] is not None else "")
        + f", {r['time_s']:.1f} s"
        + ("; calibration read from the cache (--no-calib-cache to recompute)"
           if r.get("calibration_cache", {}).get("status") == "hit" else "")))
    return 0


_compress.configure = _configure_compress  # type: ignore[attr-defined]


# convert ----------------------------------------------------------------------------------------------------
def _configure_convert(p: argparse.ArgumentParser) -> None:
    p.add_argument("hf_model_dir", help="a Hugging Face model directory (config.json + safetensors)")
    p.add_argument("-o", "--output", required=True, help="output model directory (must not exist unless --force)")
    p.add_argument("--force", action="store_true", help="replace an existing model directory at -o")


@command("convert", "convert a Hugging Face MoE model directory to a curmoe model directory")
def _convert(args: argparse.Namespace) -> int:
    from curmoe.models.hf import convert

    _check_model_output(args.output, args.force)
    path = convert(args.hf_model_dir, args.output)
    print(f"saved {path}")
    return 0


_convert.configure = _configure_convert  # type: ignore[attr-defined]


# info -------------------------------------------------------------------------------------------------------
def _configure_info(p: argparse.ArgumentParser) -> None:
    p.add_argument("model_dir", help="a curmoe model directory")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")


@command("info", "describe a model directory (architecture, parameters, compression)")
def _info(args: argparse.Namespace) -> int:
    import curmoe

    m = _load_model(args.model_dir)
    rec = {"model": repr(m), "params": m.n_params(), "expert_params": m.n_expert_params(),
           "compression": None if m.config.compression is None else
           {k: v for k, v in m.config.compression.items() if k != "matrices"}}
    _emit(rec, args.json, _render_info)
    return 0


def _render_info(r: dict[str, Any]) -> str:
    lines = [r["model"], f"parameters: {r['params']:,} ({r['expert_params']:,} in experts)"]
    c = r["compression"]
    if c is None:
        lines.append("compression: none (a dense model)")
    else:
        lines.append("compression:")
        for k, v in c.items():
            v = json.dumps(v, default=str) if isinstance(v, (dict, list)) else v
            lines.append(f"  {k}: {v}")
    return "\n".join(lines)


_info.configure = _configure_info  # type: ignore[attr-defined]


# export -----------------------------------------------------------------------------------------------------
def _configure_export(p: argparse.ArgumentParser) -> None:
    p.add_argument("model_dir", help="a curmoe model directory (dense or compressed)")
    p.add_argument("--format", choices=["onnx", "openvino", "coreml", *_FOLDER_FORMATS], default="onnx",
                   help="onnx: X.onnx; openvino: X.xml + X.bin (IR); coreml: X.mlpackage"
                   + "".join(f"; {k}: {h}" for k, (h, _) in _FOLDER_FORMATS.items()) + " (default: %(default)s)")
    p.add_argument("--dispatch", choices=["sparse", "dense"], default="sparse",
                   help="sparse: run only the selected experts; dense: every expert, masked by its gates "
                        "(default: %(default)s)")
    p.add_argument("--dtype", choices=["float32", "float16"], default="float32",
                   help="weight and compute dtype of the graph (default: %(default)s)")
    p.add_argument("--fold-u", action=argparse.BooleanOptionalAction, default=None,
                   help="fold CUR's U into C in the graph (the default for graph exports: one MatMul less, measured "
                        "in docs/runtime_scale.md; the checkpoint keeps C, U, R); --no-fold-u keeps three MatMuls")
    p.add_argument("--no-cache", action="store_true", help="full-sequence graph without KV cache inputs")
    p.add_argument("--fused-moe", action="store_true", help="ORT com.microsoft.MoE for dense experts")
    p.add_argument("-o", "--output", required=True,
                   help="output file; its suffix is the format's (.onnx, .xml, .mlpackage) or none (then added). "
                        "tokenizer.json is written beside it unless one is there")
    p.add_argument("--force", action="store_true", help="replace existing output files")
    p.add_argument("--json", action="store_true", help="print the record as JSON")


_SUFFIX = {"onnx": ".onnx", "openvino": ".xml", "coreml": ".mlpackage"}


def _export_target(output: str, fmt: str) -> Any:
    """-o as the format's file: its suffix added when it has none; a different suffix is refused."""
    from pathlib import Path

    from curmoe.common.errors import InvalidInputError

    out, suffix = Path(output), _SUFFIX[fmt]
    if out.suffix == suffix:
        return out
    if out.suffix == "":
        return out.with_name(out.name + suffix)
    raise InvalidInputError(f"-o {output!r}: --format {fmt} writes a {suffix} file; pass -o ending in {suffix}")


@command("export", "export a model (ONNX with factorised experts; OpenVINO IR; Core ML)")
def _export(args: argparse.Namespace) -> int:
    import shutil
    import tempfile
    from pathlib import Path

    import curmoe
    from curmoe.exporters import OnnxExportConfig, export

    if args.format in _FOLDER_FORMATS:
        return _export_folder(args)
    path = _export_target(args.output, args.format)
    written = [path] + ([path.with_suffix(".bin")] if args.format == "openvino" else [])
    written += [path.with_name(path.name + ".data")] if args.format == "onnx" else []
    _check_outputs(written, args.force)
    model = _load_model(args.model_dir)
    tokenizer_path = model.tokenizer_path
    path.parent.mkdir(parents=True, exist_ok=True)
    cfg = OnnxExportConfig(dispatch=args.dispatch, dtype=args.dtype, fold_u=args.fold_u is not False,
                           with_cache=not args.no_cache, fused_moe=args.fused_moe)
    if args.format == "onnx":
        path = export(model, cfg, path)
    elif args.format == "openvino":
        from curmoe.exporters.openvino import export_openvino_ir

        # the intermediate ONNX file lives in a hidden temporary folder beside the output, removed whatever happens
        # (an error, Ctrl-C): only the declared X.xml + X.bin are written, an X.onnx beside them is never touched
        with tempfile.TemporaryDirectory(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent) as tmp:
            onnx_path = export(model, cfg, Path(tmp) / path.with_suffix(".onnx").name)
            del model  # OpenVINO reads the weights from the ONNX file: the NumPy copy is not needed beside its own
            path = export_openvino_ir(onnx_path, path, routing_outputs=True)
    else:
        from curmoe.exporters.coreml import CoreMLExportConfig

        path = export(model, CoreMLExportConfig(dtype=args.dtype), path)
    tok = path.parent / "tokenizer.json"
    tok_written = tokenizer_path is not None and not tok.exists()
    if tok_written:
        shutil.copyfile(tokenizer_path, tok)  # so eval/generate on the file find the tokenizer
    dispatch = "dense (every expert masked by its gates)" if args.format == "coreml" else args.dispatch
    _emit({"output": str(path), "format": args.format, "dispatch": dispatch, "dtype": args.dtype,
           "tokenizer": str(tok) if tok_written else None},
          args.json, lambda r: f"wrote {r['output']} ({r['format']}, {r['dispatch']} dispatch, {r['dtype']})"
          + (f" and {r['tokenizer']}" if r["tokenizer"] else ""))
    return 0


_export.configure = _configure_export  # type: ignore[attr-defined]


def _export_folder(args: argparse.Namespace) -> int:
    """A folder format: refuse an existing -o unless --force, then fill a temporary folder that replaces it."""
    from pathlib import Path

    from curmoe.common.errors import InvalidInputError
    from curmoe.common.io import atomic_dir

    out = Path(args.output)
    _check_parent(out)
    if out.exists() or out.is_symlink():
        if not out.is_dir() or out.is_symlink():
            raise InvalidInputError(f"{args.output!r} is a file; --format {args.format} writes a folder: choose "
                                    "another -o")
        if not args.force:
            raise InvalidInputError(f"{args.output!r} already exists; pass --force to replace it, or choose "
                                    "another -o")
    model = _load_model(args.model_dir)
    _, write = _FOLDER_FORMATS[args.format]
    with atomic_dir(out) as tmp:
        rec = dict(write(model, tmp, args))
    rec = {"output": str(out), "format": args.format, **rec}
    _emit(rec, args.json, lambda r: f"wrote {r['output']} ({r['format']})")
    return 0


# validate ---------------------------------------------------------------------------------------------------
def _configure_validate(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", help="what curmoe export wrote: X.onnx, X.xml (OpenVINO IR) or X.mlpackage (Core ML)")
    p.add_argument("--model", required=True, help="the curmoe model directory it was exported from")
    p.add_argument("--runtime", default=None,
                   help="default: from the file: onnxruntime:cpu for .onnx, openvino:cpu for .xml, coreml (macOS) "
                        "or coreml:mil for .mlpackage")
    p.add_argument("--threads", type=int, default=None, help="intra-op threads (default: the runtime's)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random test inputs (default: %(default)s)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")


def _check_onnx_readable(path: str) -> None:
    """An ``.onnx`` file that does not parse (a text file, a truncated copy) is refused with one line."""
    from pathlib import Path

    from curmoe.common.errors import CheckpointError, require

    p = Path(path)
    if p.suffix != ".onnx" or not p.is_file():
        return
    onnx = require("onnx", "onnx")
    try:
        onnx.load(str(p), load_external_data=False)
    except Exception as e:  # google.protobuf DecodeError (and RuntimeError from newer parsers)
        raise CheckpointError(f"{path!r} is not a readable ONNX model ({type(e).__name__}); pass a file written by "
                              "curmoe export") from None


_READS = {"onnxruntime": (".onnx",), "openvino": (".onnx", ".xml"), "coreml": (".mlpackage",)}
_FORMAT = {".onnx": "onnx", ".xml": "openvino", ".mlpackage": "coreml"}


def _check_runtime_reads(runtime: str, path: str) -> None:
    """Refuse a runtime that cannot read the file's format, naming the export command that makes one it can."""
    from pathlib import Path

    from curmoe.common.errors import InvalidInputError

    suffix = Path(path).suffix
    if suffix not in _FORMAT:
        raise InvalidInputError(f"{path!r} is not an exported model; validate takes what curmoe export writes "
                                "(.onnx, .xml or .mlpackage)")
    reads = _READS.get(runtime.split(":")[0])
    if reads is not None and suffix not in reads:
        fmt = _FORMAT[reads[-1]]
        raise InvalidInputError(f"--runtime {runtime} does not read {suffix} files; export one with: curmoe export "
                                f"MODEL --format {fmt} -o X{reads[-1]} (or omit --runtime to use the file's own)")


@command("validate", "run an exported model on a runtime and compare it with the NumPy float64 reference")
def _validate(args: argparse.Namespace) -> int:
    from curmoe.runtimes import validate

    runtime = args.runtime or _default_runtime(args.file)
    _check_runtime_reads(runtime, args.file)
    _check_onnx_readable(args.file)
    opts = {} if args.threads is None else {"threads": args.threads}
    if args.file.rstrip("/").endswith(".mlpackage"):  # a Core ML package: same cases without the cached decode
        from curmoe.runtimes.adapters.coreml import validate_coreml

        rep = validate_coreml(args.file.rstrip("/"), _load_model(args.model), runtime, seed=args.seed).to_dict()
    else:  # the model's directory: the runtime opens before the reference is read (their load peaks do not add)
        _check_model_config(args.model)
        rep = validate(args.file, args.model, runtime, seed=args.seed, **opts).to_dict()
    rep.pop("cases", None)
    _emit(rep, args.json, lambda r: (
        f"{'PASSED' if r['passed'] else 'FAILED'} {r['runtime']} ({r['dtype']}): max_abs_err {r['max_abs_err']:.3g}, "
        f"max_rel_err {r['max_rel_err']:.3g} (bound {r['max_rel_err_bound']:.3g}), "
        f"routing agreement {r['routing_agreement']}, "
        f"ppl {r['ppl_runtime']:.4f} vs reference {r['ppl_ref']:.4f}"
        + (f"\nfailures: {r['failures']}" if r["failures"] else "")))
    return 0 if rep["passed"] else 1


_validate.configure = _configure_validate  # type: ignore[attr-defined]


def _default_runtime(path: str) -> str:
    """The runtime a path opens on when --runtime is not given: chosen from what the path is."""
    from pathlib import Path

    p = Path(path)
    if p.suffix == ".mlpackage":
        from curmoe.common.errors import require

        require("coremltools", "coreml")
        from curmoe.runtimes.adapters.coreml import can_predict

        return "coreml" if can_predict() else "coreml:mil"
    if p.suffix == ".xml":
        return "openvino:cpu"
    return "reference" if p.is_dir() else "onnxruntime:cpu"


def _open(path: str, runtime: str | None, threads: int | None = None) -> Any:
    """Open ``path`` on ``runtime``, or on the one its kind calls for (:func:`_default_runtime`)."""
    from pathlib import Path

    from curmoe.runtimes import load

    if Path(path).is_dir() and Path(path).suffix != ".mlpackage":
        _check_model_config(path)
    return load(path, runtime or _default_runtime(path), threads=threads)


# eval -------------------------------------------------------------------------------------------------------
def _configure_eval(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="a model directory (reference) or an exported file (with --runtime)")
    p.add_argument("--runtime", default=None,
                   help="default: from the path: reference for a model directory, onnxruntime:cpu for .onnx, "
                        "openvino:cpu for .xml, coreml (macOS) or coreml:mil for .mlpackage")
    p.add_argument("--dataset", choices=["wikitext2"], default="wikitext2", help="(default: %(default)s)")
    p.add_argument("--split", choices=["valid", "test", "train"], default="valid", help="(default: %(default)s)")
    p.add_argument("--data-dir", default=None, help="WikiText-2 folder (default: $CURMOE_DATA_DIR)")
    p.add_argument("--tokenizer", default=None,
                   help="tokenizer.json (default: the model directory's, or the one beside an exported file)")
    p.add_argument("--context", type=int, default=None, help="window length (default: the model's max_seq_len)")
    p.add_argument("--stride", type=int, default=None, help="sliding-window stride (default: non-overlapping)")
    p.add_argument("--max-tokens", type=int, default=None, help="score only the first N tokens (stated in output)")
    p.add_argument("--threads", type=int, default=None, help="intra-op threads (default: the runtime's)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")


@command("eval", "perplexity (token and word level) on WikiText-2 through the reference or a runtime")
def _eval(args: argparse.Namespace) -> int:
    from curmoe.runtimes.evaluate import evaluate_wikitext2, find_tokenizer

    sess = _open(args.model, args.runtime, args.threads)
    if not args.json:
        name = sess.info().name
        note = (" (the NumPy reference: exact but slow on a whole split; export the model and pass X.onnx for "
                "ONNX Runtime, or --max-tokens N)") if name.startswith("reference") else ""
        print(f"evaluating {args.model} on {name}{note}", file=sys.stderr, flush=True)
    res = evaluate_wikitext2(sess, find_tokenizer(args.model, args.tokenizer), split=args.split,
                             data_dir=args.data_dir, context=args.context, stride=args.stride,
                             max_tokens=args.max_tokens, progress=not args.json)
    out = res.to_dict() | {"runtime": sess.info().to_dict(), "model": args.model}
    _emit(out, args.json, lambda r: (
        f"{r['model']} on {r['runtime']['name']}: ppl_token {r['ppl_token']:.3f}, ppl_word {r['ppl_word']:.3f} "
        f"({r['tokens']} tokens scored)\nprotocol: {json.dumps(r['protocol'])}"))
    return 0


_eval.configure = _configure_eval  # type: ignore[attr-defined]


# generate ---------------------------------------------------------------------------------------------------
def _configure_generate(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="a model directory or an exported file (.onnx, .xml, .mlpackage)")
    p.add_argument("--runtime", default=None, help="default: chosen from the path, as for eval")
    p.add_argument("--prompt", required=True, help="the text to continue (not empty)")
    p.add_argument("--max-new-tokens", type=int, default=40, help="tokens to generate, >= 1 (default: %(default)s)")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default: %(default)s)")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass in (0, 1] (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (default: %(default)s)")
    p.add_argument("--tokenizer", default=None,
                   help="tokenizer.json (default: the model directory's, or the one beside an exported file)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")


@command("generate", "generate text with a KV cache on any runtime")
def _generate(args: argparse.Namespace) -> int:
    from curmoe.common.errors import InvalidInputError
    from curmoe.models.tokenizer import load_tokenizer
    from curmoe.runtimes import generate
    from curmoe.runtimes.evaluate import find_tokenizer, session_config

    if not args.prompt.strip():
        raise InvalidInputError("--prompt is empty; pass the text to continue, e.g. --prompt 'The history of'")
    if args.max_new_tokens < 1:
        raise InvalidInputError(f"--max-new-tokens {args.max_new_tokens}: pass at least 1")
    if args.temperature < 0:
        raise InvalidInputError(f"--temperature {args.temperature}: pass 0 (greedy) or more")
    if not 0 < args.top_p <= 1:
        raise InvalidInputError(f"--top-p {args.top_p}: pass a value in (0, 1]")
    sess = _open(args.model, args.runtime)
    tok = load_tokenizer(find_tokenizer(args.model, args.tokenizer))
    prompt = tok.encode(args.prompt, add_special_tokens=False).ids
    cfg = session_config(sess)
    out = generate(sess, np.asarray(prompt or [cfg.eos_token_id or 0], np.int64), args.max_new_tokens,
                   temperature=args.temperature, top_p=args.top_p, seed=args.seed, eos_token_id=cfg.eos_token_id)
    text = tok.decode(out[len(prompt):].tolist())
    _emit({"prompt": args.prompt, "completion": text, "runtime": sess.info().name}, args.json,
          lambda r: r["prompt"] + " " + r["completion"])
    return 0


_generate.configure = _configure_generate  # type: ignore[attr-defined]


# runtimes ---------------------------------------------------------------------------------------------------
def _configure_runtimes(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")


@command("runtimes", "list the runtimes and devices usable on this machine")
def _runtimes(args: argparse.Namespace) -> int:
    from curmoe.runtimes import available, names

    reasons: dict[str, str] = {}
    avail = dict(available(reasons))
    rows = [{"name": n, "available": n in avail, "devices": avail.get(n, []), "reason": reasons.get(n)}
            for n in names()]
    _emit({"runtimes": rows}, args.json, lambda r: "\n".join(
        f"{x['name']:<24} {'yes' if x['available'] else 'no ':<4} "
        + (", ".join(x["devices"]) if x["available"] else (x["reason"] or "")) for x in r["runtimes"]))
    return 0


_runtimes.configure = _configure_runtimes  # type: ignore[attr-defined]


# bench ------------------------------------------------------------------------------------------------------
def _configure_bench(p: argparse.ArgumentParser) -> None:
    from curmoe.app.bench import build_parser

    build_parser(p)
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")


@command("bench", "decode tokens/s, prefill latency and roofline for every runtime row, in one run")
def _bench(args: argparse.Namespace) -> int:
    from curmoe.app.bench import run

    out = run(args)
    if args.json:
        print(json.dumps(out, default=str))
    return 0


_bench.configure = _configure_bench  # type: ignore[attr-defined]


# demo -------------------------------------------------------------------------------------------------------
def _configure_demo(p: argparse.ArgumentParser) -> None:
    p.add_argument("--shape", default="1024x2816", help="matrix shape (out x in) of the decomposition demo")
    p.add_argument("--model", default=None, help="model directory (default: the shipped models/wt2-moe-8x)")
    p.add_argument("--data-dir", default=None, help="WikiText-2 folder (default: $CURMOE_DATA_DIR)")
    p.add_argument("--max-eval-tokens", type=int, default=None, help="score only the first N valid tokens")
    p.add_argument("--skip-decompositions", action="store_true", help="skip step [1], the single-matrix comparison")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")


@command("demo", "the main job: decompositions side by side, then the shipped model compressed and evaluated")
def _demo(args: argparse.Namespace) -> int:
    from curmoe.app.demo import run_cli

    return run_cli(args)


_demo.configure = _configure_demo  # type: ignore[attr-defined]


# report -----------------------------------------------------------------------------------------------------
def _configure_report(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", default="docs/results/data", help="folder of the benchmarks' results files")
    p.add_argument("--out", default=None, help="where the pages and figures go (default: the parent of --data)")
    p.add_argument("--readme", default=None, help="also rewrite the results block of this README")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")


@command("report", "write docs/results/ (Markdown + figures) from the stored benchmark measurements")
def _report(args: argparse.Namespace) -> int:
    from curmoe.app.report import report

    out = report(args.data, args.out, readme=args.readme)
    if args.json:
        print(json.dumps(out))
    else:
        print("\n".join(f"wrote {p}" for p in out["written"]))
        for n in out["missing"]:
            print(f"not measured yet: {n} (its page says which command makes it)")
    return 0


_report.configure = _configure_report  # type: ignore[attr-defined]


def build_parser() -> argparse.ArgumentParser:
    import curmoe

    p = argparse.ArgumentParser(prog="curmoe", description="Compress MoE models with CUR; export, run, validate.")
    p.add_argument("--version", action="version", version=f"curmoe {curmoe.__version__}")
    p.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv: debug)")
    sub = p.add_subparsers(dest="command", required=True)
    _load_command_modules()
    for name, (fn, help) in _COMMANDS.items():
        sp = sub.add_parser(name, help=help, description=help)
        fn.configure(sp)
        sp.set_defaults(func=fn)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING - 10 * args.verbose, format="%(levelname)s %(name)s: %(message)s")
    if not args.verbose:  # coremltools warns at import about torch versions and macOS-only proxies: noise on Linux
        logging.getLogger("coremltools").setLevel(logging.ERROR)
    from curmoe.common.errors import CurmoeError

    try:
        return int(args.func(args) or 0)
    except CurmoeError as e:
        print(f"curmoe {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # outputs are written atomically and temporary files removed on the way out
        print(f"curmoe {args.command}: interrupted; no output was written (anything already there is unchanged)",
              file=sys.stderr)
        return 130
    except OSError as e:  # the file system said no (permissions, a full disk, a path that cannot be made)
        if args.verbose:
            raise
        print(f"curmoe {args.command}: error: {e} (run with -v for details)", file=sys.stderr)
        return 2


if __name__ == "__main__":
    # `python -m curmoe.app.cli` runs this file as __main__, while curmoe.app.commands modules register into the
    # imported curmoe.app.cli: run that one, or their subcommands would be missing.
    from curmoe.app.cli import main as _main

    sys.exit(_main())
