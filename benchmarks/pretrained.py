"""A real pretrained model: SmolLM2-135M-Instruct (Q4_1 GGUF, dequantised) on raw WikiText-2, and compression of it.

Two parts, each a subcommand that updates its own block of one results file (``--out``, read by
``curmoe.app.report_pretrained.pretrained_page``):

``agree``: the same perplexity from five engines on a fixed prefix of raw valid: the NumPy float64 reference (the
oracle), the torch twin (float32), ONNX Runtime CPU (float32 ONNX export), OpenVINO CPU (the same ONNX, f32
precision hint), and transformers itself (``LlamaForCausalLM`` loaded from the same GGUF by transformers' own GGUF
loader: an independent dequantisation and an independent Llama). Each must agree with the reference to 1e-3
relative in token perplexity.

``sweep``: every compression method at 30/50/70% of FFN parameters removed (each dense SwiGLU FFN is one
always-on expert, ``curmoe.models.pretrained.as_single_expert``: ratios count FFN parameters, the attention and
the tied 28.3 M-parameter embedding are untouched; ``ratio_all_params`` is the share of all parameters). Columns as
the shipped-model table: valid and test perplexity (``--runtime``: the NumPy reference in float32 by default, no
export needed; or ONNX Runtime CPU float32, shown by ``agree`` to match the reference), mean per-matrix output error on the calibration tokens, compression time. Calibration: the first
``--calib-tokens`` tokens of the word-level WikiText-2 train split (raw train is not in the shared data; word-level
train is disjoint from valid/test), tokenised with the model's own tokenizer, in windows of 512 tokens; computed
once and reused by every method (``compress_s`` then excludes it; ``calibration_s`` gives it).

Protocol (both parts): the raw split's text (every line followed by a newline, as in the file) tokenised as one
stream with the model's byte-level BPE, no BOS; the sliding-window recipe of the transformers perplexity guide
(``curmoe.perplexity``): window ``--context`` tokens, advanced by ``--stride``, each window scoring only the
targets no earlier window scored. Word-level perplexity divides the same total NLL by the words the scored tokens
stand for (the raw split's whitespace words plus one per line, prorated to the scored share of the stream).

    python benchmarks/pretrained.py agree --tokens 1024 --context 512 --stride 256
    python benchmarks/pretrained.py sweep --tokens 1024 --context 512 --stride 512 --calib-tokens 2048
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

import curmoe
from curmoe.app.results import provenance, write_results
from curmoe.eval import WikiText2Split, load_wikitext2, perplexity

NAME = "smollm2-135m"
JOINED = "raw split text (each line followed by '\\n'), one stream, model's byte-level BPE, no BOS"
METHODS: dict[str, Callable[[float], Any]] = {
    "cur-neuron global": lambda r: curmoe.NeuronConfig(ratio=r, allocation="global"),
    "cur-deim aware": lambda r: curmoe.CURConfig(ratio=r, selection="deim", activation_aware=True),
    "svd-llm": lambda r: curmoe.SVDConfig(ratio=r, activation_aware=True),
    "svd": lambda r: curmoe.SVDConfig(ratio=r),
}
ANCHOR = ("SVD-LLM (Wang et al., ICLR 2025), LLaMA-7B, WikiText-2, 20% of all weights removed: ppl 7.94 vs dense "
          "5.68 (their Table 1; a 7B model with far more redundancy, and a different ratio count)")


def _load(args: argparse.Namespace) -> tuple[curmoe.Model, Any, Path]:
    from curmoe.models.pretrained import pretrained_dir
    from curmoe.models.tokenizer import load_hf_tokenizer

    folder = pretrained_dir(NAME)
    return curmoe.load(folder), load_hf_tokenizer(folder), folder


def _stream(tok: Any, split: str, data_dir: str | None) -> tuple[np.ndarray, int]:
    from curmoe.models.tokenizer import encode_text

    s = load_wikitext2(split, raw=True, data_dir=data_dir)
    return encode_text(tok, s), s.n_words


def _ppl(fn: Callable[[np.ndarray], np.ndarray], ids: np.ndarray, n_words: int, args: argparse.Namespace,
         split: str) -> dict[str, Any]:
    t0 = time.perf_counter()
    r = perplexity(fn, ids, n_words=n_words, context=args.context, stride=args.stride, batch_size=1,
                   split=f"{split} (raw)", joined=JOINED, max_tokens=args.tokens)
    return {"ppl_token": r.ppl_token, "ppl_word": r.ppl_word, "tokens": r.tokens, "nll_total": r.nll_total,
            "eval_s": round(time.perf_counter() - t0, 1)}


def _results(path: str) -> dict[str, Any]:
    p = Path(path)
    if p.is_file():
        return json.loads(p.read_text())
    return {"provenance": {}, "rows": [], "model": NAME}


def _protocol(args: argparse.Namespace, stream_len: dict[str, int]) -> dict[str, Any]:
    return {"context": args.context, "stride": args.stride, "tokens": args.tokens, "joined": JOINED,
            "stream_tokens": stream_len,
            "word_count": "raw split's whitespace words + one per line, prorated to the scored share"}


def _export(model: curmoe.Model, folder: Path, name: str) -> Path:
    from curmoe.exporters import OnnxExportConfig, export

    return export(model, OnnxExportConfig(), folder / f"{name}.onnx")


def _session_fn(path: Path, runtime: str, threads: int) -> Callable[[np.ndarray], np.ndarray]:
    from curmoe.runtimes import load
    from curmoe.runtimes.evaluate import session_logits_fn

    return session_logits_fn(load(path, runtime, threads=threads))


def _hf_from_gguf() -> Any:
    """transformers' own GGUF loader: an independent dequantisation (about 2 min on a quiet 2-core machine)."""
    from transformers import AutoModelForCausalLM

    from curmoe.models.pretrained import source_file

    src = source_file(NAME)
    return AutoModelForCausalLM.from_pretrained(str(src.parent), gguf_file=src.name).eval()


def _hf_same_weights(model: curmoe.Model) -> Any:
    """transformers' LlamaForCausalLM holding the curmoe model's (dequantised) weights. The weights are the same as
    transformers' own GGUF loader gives: all 272 tensors compared bit-identical (docs/pretrained.md)."""
    import torch
    import transformers

    c = model.config
    hc = transformers.LlamaConfig(
        vocab_size=c.vocab_size, hidden_size=c.d_model, intermediate_size=c.dense_d_ff, num_hidden_layers=c.n_layers,
        num_attention_heads=c.n_heads, num_key_value_heads=c.kv_heads, head_dim=c.head_dim_,
        rope_parameters={"rope_type": "default", "rope_theta": c.rope_theta}, rms_norm_eps=c.norm_eps,
        max_position_embeddings=c.max_seq_len, tie_word_embeddings=c.tie_embeddings, attn_implementation="eager")
    m = transformers.LlamaForCausalLM(hc).eval()
    names = {"attn.q": "self_attn.q_proj", "attn.k": "self_attn.k_proj", "attn.v": "self_attn.v_proj",
             "attn.o": "self_attn.o_proj", "mlp.gate": "mlp.gate_proj", "mlp.up": "mlp.up_proj",
             "mlp.down": "mlp.down_proj", "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm"}
    sd = {"model.embed_tokens.weight": model.tensors["embed.weight"], "model.norm.weight": model.tensors["norm.weight"]}
    for k, v in model.tensors.items():
        if k.startswith("layers."):
            _, l, rest = k.split(".", 2)
            base, kind = rest.rsplit(".", 1)
            sd[f"model.layers.{l}.{names[base]}.{kind}"] = v
    missing, unexpected = m.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in sd.items()}, strict=False)
    if unexpected or [k for k in missing if k != "lm_head.weight"]:
        raise RuntimeError(f"weight mapping failed: missing {missing}, unexpected {unexpected}")
    m.tie_weights()
    return m


def agree(args: argparse.Namespace) -> int:
    import torch

    torch.set_num_threads(args.threads)
    model, tok, folder = _load(args)
    ids, n_words = _stream(tok, "valid", args.data_dir)
    tmp = Path(tempfile.mkdtemp(prefix="curmoe-pretrained-"))
    out = _results(args.out)
    out["provenance"] = provenance(sys.argv[1:] if args.argv is None else args.argv)
    rows: dict[str, Any] = {}
    m64 = model.astype(np.float64)
    engines: list[tuple[str, Callable[[], Callable[[np.ndarray], np.ndarray]]]] = [
        ("reference float64", lambda: (lambda x: m64.forward(x))),
    ]

    def twin() -> Callable[[np.ndarray], np.ndarray]:
        from curmoe.models import TorchMoE

        tm = TorchMoE.from_reference(model).eval()

        def fn(x: np.ndarray) -> np.ndarray:
            with torch.no_grad():
                return tm(torch.tensor(x)).double().numpy()
        return fn

    onnx_path: list[Path] = []

    def ort() -> Callable[[np.ndarray], np.ndarray]:
        onnx_path.append(_export(model, tmp, "dense"))
        return _session_fn(onnx_path[0], "onnxruntime:cpu", args.threads)

    def ov() -> Callable[[np.ndarray], np.ndarray]:
        return _session_fn(onnx_path[0], "openvino:cpu", args.threads)

    def hf() -> Callable[[np.ndarray], np.ndarray]:
        m = _hf_from_gguf() if args.hf_gguf else _hf_same_weights(model)

        def fn(x: np.ndarray) -> np.ndarray:
            with torch.no_grad():
                return m(input_ids=torch.tensor(x)).logits.double().numpy()
        return fn

    hf_name = "transformers (own GGUF loader)" if args.hf_gguf else "transformers LlamaForCausalLM (same weights)"
    engines += [("torch twin float32", twin), ("onnxruntime cpu float32", ort), ("openvino cpu f32", ov),
                (f"{hf_name} float32", hf)]
    for name, make in engines:
        if args.engines and not any(name.startswith(e) for e in args.engines.split(",")):
            continue
        t0 = time.perf_counter()
        fn = make()
        load_s = time.perf_counter() - t0
        rows[name] = _ppl(fn, ids, n_words, args, "valid") | {"load_s": round(load_s, 1)}
        print(f"{name}: ppl_token {rows[name]['ppl_token']:.6f} ppl_word {rows[name]['ppl_word']:.4f}", flush=True)
    ref = rows["reference float64"]["ppl_token"]
    for r in rows.values():
        r["rel_diff_vs_reference"] = abs(r["ppl_token"] / ref - 1.0)
        r["agrees_1e-3"] = r["rel_diff_vs_reference"] <= 1e-3
    out["agreement"] = {"split": "valid (raw)", "protocol": _protocol(args, {"valid": int(ids.size)}),
                        "engines": rows, "tolerance": 1e-3, "provenance": out["provenance"],
                        "model_card": (folder / "README.md").read_text()}
    write_results(args.out, out)
    shutil.rmtree(tmp, ignore_errors=True)
    return 0 if all(r["agrees_1e-3"] for r in rows.values()) else 1


def sweep(args: argparse.Namespace) -> int:
    from curmoe.models.pretrained import as_single_expert
    from curmoe.models.tokenizer import encode_text

    model, tok, folder = _load(args)
    moe = as_single_expert(model)
    streams = {s: _stream(tok, s, args.data_dir) for s in args.splits.split(",")}
    train = load_wikitext2("train", data_dir=args.data_dir)
    n_calib = args.calib_tokens // 512 * 512
    head = WikiText2Split("train", False, train.lines[:4000])  # ~300k characters, plenty of tokens
    calib = encode_text(tok, head)[:n_calib].reshape(-1, 512)
    tmp = Path(tempfile.mkdtemp(prefix="curmoe-pretrained-"))
    cache = Path(args.calib_cache) if args.calib_cache else tmp / "calib"
    out = _results(args.out)
    prov = provenance(sys.argv[1:] if args.argv is None else args.argv)
    out["provenance"] = prov
    sw = out.get("sweep") if args.resume else None
    sw = sw or {"rows": []}
    sw |= {"provenance": prov, "protocol": _protocol(args, {s: int(v[0].size) for s, v in streams.items()}),
           "splits": list(streams), "calib": f"word-level WikiText-2 train, first {n_calib} tokens (model's "
           f"tokenizer), {calib.shape[0]} windows of 512", "ratio_count": "share of FFN parameters removed "
           "(ratio_expert_params: each dense FFN = one always-on expert); ratio_all_params: of all parameters",
           "runtime": ("NumPy reference float32" if args.runtime == "reference" else "onnxruntime cpu float32")
           + f", {args.threads} thread(s)", "anchor": ANCHOR,
           "n_params": model.n_params(), "ffn_params": moe.n_expert_params(),
           "test_scope": "best method per ratio (chosen on valid) and dense" if args.test_best else "every row"}
    out["sweep"] = sw
    done = {(r["method"], r["ratio_target"]) for r in sw["rows"]}

    def evaluate(m: curmoe.Model, name: str, which: dict[str, tuple[np.ndarray, int]] | None = None
                 ) -> dict[str, Any]:
        which = streams if which is None else which
        if args.runtime == "reference":  # float32 NumPy: no export, cheaper than ORT on a short prefix
            return {s: _ppl(m.forward, ids, nw, args, s) for s, (ids, nw) in which.items()}
        path = _export(m, tmp, name)
        fn = _session_fn(path, "onnxruntime:cpu", args.threads)
        row = {s: _ppl(fn, ids, nw, args, s) for s, (ids, nw) in which.items()}
        path.unlink(missing_ok=True)
        Path(str(path) + ".data").unlink(missing_ok=True)
        return row

    def save(row: dict[str, Any]) -> None:
        sw["rows"].append(row)
        write_results(args.out, out)
        ppl = ", ".join(f"{s} {row[s]['ppl_token']:.3f}" for s in streams if s in row)
        print(f"{row['method']} @ {row['ratio_target']}: {ppl} ({row.get('compress_s', 0)} s)", flush=True)

    if "calibration_s" not in sw or not args.resume:  # once, before any method: every method then reads it from the cache
        from curmoe.compress import cached_calibrate

        t0 = time.perf_counter()
        cached_calibrate(moe, calib, cache_dir=cache, batch_size=8, progress=False, source="wikitext2:train")
        sw["calibration_s"] = round(time.perf_counter() - t0, 1)
        print(f"calibration: {sw['calibration_s']} s", flush=True)
    if ("dense", 0.0) not in done:
        save({"method": "dense", "ratio_target": 0.0, "ratio_expert_params": 0.0, "ratio_all_params": 0.0,
              "mean_output_error": 0.0, "compress_s": 0.0} | evaluate(model, "dense"))
    test_split = "test" in streams and args.test_best
    sweep_streams = {k: v for k, v in streams.items() if not (test_split and k == "test")}
    for ratio in (float(x) for x in args.ratios.split(",")):
        best: tuple[float, dict[str, Any], curmoe.Model] | None = None
        for name in args.methods.split(","):
            if (name, ratio) in done:
                continue
            t0 = time.perf_counter()
            small = curmoe.compress(moe, METHODS[name](ratio), calib_ids=calib, progress=False, calib_cache=cache)
            dt = time.perf_counter() - t0
            rec = small.config.compression
            oe = [m["output_error"] for m in rec["matrices"].values() if m.get("output_error") is not None]
            cal = rec.get("calibration_cache") or {}
            row = {"method": name, "ratio_target": ratio, "ratio_expert_params": rec["ratio_expert_params"],
                   "ratio_all_params": rec["ratio_all_params"], "mean_output_error": float(np.mean(oe)),
                   "compress_s": round(dt, 1), "calibration": rec["calibration"],
                   "calib_cache": cal.get("status") if isinstance(cal, dict) else cal}
            row |= evaluate(small, f"{name}-{ratio}".replace(" ", "_"), sweep_streams)
            save(row)
            if test_split and (best is None or row["valid"]["ppl_token"] < best[0]):
                best = (row["valid"]["ppl_token"], row, small)
            del small
        rows_r = [r for r in sw["rows"] if r["ratio_target"] == ratio and "valid" in r]
        top = min(rows_r, key=lambda r: r["valid"]["ppl_token"]) if test_split and rows_r else None
        if top is not None and "test" not in top:  # the test split for the best method (chosen on valid)
            if best is None or best[1] is not top:  # a row of an earlier (resumed) run: compress it again
                small = curmoe.compress(moe, METHODS[top["method"]](ratio), calib_ids=calib, progress=False,
                                        calib_cache=cache)
                best = (top["valid"]["ppl_token"], top, small)
            best[1]["test"] = evaluate(best[2], "best", {"test": streams["test"]})["test"]
            best[1]["best_on_valid"] = True
            write_results(args.out, out)
            print(f"  test for {best[1]['method']} @ {ratio}: {best[1]['test']['ppl_token']:.3f}", flush=True)
    shutil.rmtree(tmp, ignore_errors=True)  # exported files and the temporary calibration cache
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="part", required=True)
    for name in ("agree", "sweep"):
        s = sub.add_parser(name)
        s.add_argument("--tokens", type=int, default=1024,
                       help="score the first N tokens of each split (a fixed, stated prefix)")
        s.add_argument("--context", type=int, default=512)
        s.add_argument("--stride", type=int, default=256 if name == "agree" else 512)
        s.add_argument("--threads", type=int, default=1)
        s.add_argument("--data-dir", default=None)
        s.add_argument("--out", default="docs/results/data/pretrained.json")
    sub.choices["agree"].add_argument("--engines", default=None, help="comma-separated name prefixes (default: all)")
    sub.choices["agree"].add_argument("--hf-gguf", action="store_true",
                                      help="transformers loads the GGUF itself (slow) instead of the same weights")
    sw = sub.choices["sweep"]
    sw.add_argument("--splits", default="valid,test")
    sw.add_argument("--ratios", default="0.5,0.7,0.3")
    sw.add_argument("--runtime", choices=["reference", "onnxruntime"], default="reference",
                    help="what computes the sweep's logits (reference: float32 NumPy, no export)")
    sw.add_argument("--methods", default=",".join(METHODS))
    sw.add_argument("--calib-tokens", type=int, default=2048)
    sw.add_argument("--calib-cache", default=None, help="calibration cache folder (default: a temporary one)")
    sw.add_argument("--test-best", action="store_true",
                    help="score test only for the best method of each ratio (chosen on valid); dense always")
    sw.add_argument("--resume", action="store_true", help="keep the rows already in --out, run the missing ones")
    args = p.parse_args(argv)
    args.argv = argv
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    return agree(args) if args.part == "agree" else sweep(args)


if __name__ == "__main__":
    sys.exit(main())
