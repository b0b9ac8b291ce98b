"""Decode tokens/s of the vendors' LLM stacks beside curmoe's own adapters, in one run (issue 16).

Rows, for the dense shipped model and its CUR-compressed copy (``CURConfig(ratio=0.5)``: DEIM selection, no
calibration data, 50% of expert parameters), batch 1, greedy, a 16-token prompt then ``--steps`` decode steps:

- ``OpenVINO GenAI LLMPipeline``: the ``--format ov-genai`` folder; tok/s = (steps - 1) / (wall time of
  ``generate`` - its own time to first token); ``tpot_tok_s_runs`` = 1000 / its perf_metrics mean TPOT.
- ``OpenVINO stateful IR (make_stateful_ir)``: the same IR on a plain ``InferRequest`` (what issue 15's adapter
  compiles): timed decode loop, the cache stays inside OpenVINO.
- ``curmoe OpenVINO adapter``: ``curmoe.runtimes.load(X.onnx, "openvino:cpu")``: the cache goes out and back in
  as numpy arrays each step.
- ``ONNX Runtime GenAI``: the ``--format ort-genai`` folder; timed ``generate_next_token`` loop.
- ``curmoe ORT adapter``: ``curmoe.runtimes.load(X.onnx, "onnxruntime:cpu")``.

Every row computes in float32 (OpenVINO ``INFERENCE_PRECISION_HINT=f32``), sparse expert dispatch, ``--threads``
intra-op threads (``OMP_NUM_THREADS`` is set to the same). Each row reports the best and the median of ``--repeats`` runs
(all ten rows interleaved within each repeat, so load from other jobs falls on all of them alike) and the greedy tokens it
produced, which must equal the curmoe ORT adapter's up to the first eos (``tokens_agree``; the GenAI stacks
mask eos to decode every step). This machine is shared and noisy: compare rows
of one run, not runs. Not a test.

    OMP_NUM_THREADS=1 python benchmarks/genai.py --threads 1 --steps 64 --repeats 3 --out docs/results/data/genai.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import curmoe
from curmoe.app.results import provenance, write_results
from curmoe.exporters import OnnxExportConfig, export
from curmoe.exporters.genai import export_ort_genai, export_ov_genai, make_stateful_ir
from curmoe.runtimes import load
from curmoe.runtimes.generate import empty_cache

ROOT = Path(__file__).resolve().parents[1]


def _adapter(session, prompt: list[int], steps: int) -> tuple[float, list[int]]:
    ids = np.asarray([prompt], np.int64)
    mask = np.ones_like(ids)
    res = session.run({"input_ids": ids, "attention_mask": mask} | empty_cache(session, 1))
    toks = [int(np.argmax(res["logits"][0, -1]))]
    t0 = time.perf_counter()
    for _ in range(steps - 1):
        past = {n.replace("present", "past"): v for n, v in res.items() if n.startswith("present")}
        mask = np.concatenate([mask, np.ones((1, 1), np.int64)], 1)
        res = session.run({"input_ids": np.asarray([[toks[-1]]], np.int64), "attention_mask": mask} | past)
        toks.append(int(np.argmax(res["logits"][0, -1])))
    return (steps - 1) / (time.perf_counter() - t0), toks


def _stateful(compiled, prompt: list[int], steps: int) -> tuple[float, list[int]]:
    req = compiled.create_infer_request()
    req.reset_state()
    n = len(prompt)
    beam = np.zeros(1, np.int32)
    out = req.infer({"input_ids": np.asarray([prompt], np.int64), "attention_mask": np.ones((1, n), np.int64),
                     "beam_idx": beam})
    toks = [int(np.argmax(out["logits"][0, -1]))]
    t0 = time.perf_counter()
    for i in range(steps - 1):
        out = req.infer({"input_ids": np.asarray([[toks[-1]]], np.int64),
                         "attention_mask": np.ones((1, n + i + 1), np.int64), "beam_idx": beam})
        toks.append(int(np.argmax(out["logits"][0, -1])))
    return (steps - 1) / (time.perf_counter() - t0), toks


def _ort_genai(folder: Path, prompt: list[int], steps: int) -> tuple[float, list[int]]:
    import onnxruntime_genai as og

    m = og.Model(str(folder))
    p = og.GeneratorParams(m)
    # min_length: decode every step (the stack would stop at eos; it masks eos until then, as LLMPipeline does
    # with min_new_tokens, so the two GenAI rows may differ from the adapters' after the first eos)
    p.set_search_options(max_length=len(prompt) + steps, min_length=len(prompt) + steps, do_sample=False)
    g = og.Generator(m, p)
    g.append_tokens(np.asarray([prompt], np.int32))  # prefill
    g.generate_next_token()
    toks = [int(g.get_next_tokens()[0])]
    t0 = time.perf_counter()
    while not g.is_done():
        g.generate_next_token()
        toks.append(int(g.get_next_tokens()[0]))
    return (len(toks) - 1) / (time.perf_counter() - t0), toks


def _ov_genai(pipe, prompt: list[int], steps: int) -> tuple[float, list[int]]:
    import openvino as ov

    gc = pipe.get_generation_config()
    gc.max_new_tokens, gc.min_new_tokens, gc.do_sample, gc.ignore_eos = steps, steps, False, True
    t0 = time.perf_counter()
    res = pipe.generate(ov.Tensor(np.asarray([prompt], np.int64)), gc)
    wall = time.perf_counter() - t0
    # wall clock minus LLMPipeline's own time to first token (the prefill), as the other rows time their loops;
    # its perf_metrics TPOT is kept beside it (tpot_tok_s)
    decode_s = wall - res.perf_metrics.get_ttft().mean / 1000.0
    return (steps - 1) / decode_s, [int(t) for t in res.tokens[0]], 1000.0 / res.perf_metrics.get_tpot().mean


def tokenizer_agreement(model_dir: Path, tmp: Path, n_lines: int) -> dict:
    """Ids (and decoded text) of both stacks' tokenizers against curmoe's on WikiText-2 raw valid+test lines."""
    import onnxruntime_genai as og
    import openvino as ov
    from tokenizers import Tokenizer

    raw = Path(curmoe.data_dir()) / "wikitext-2-raw"
    lines = [" ".join(x.split()) for f in ("valid", "test") for x in (raw / f"{f}.txt").read_text().splitlines()]
    lines = [x for x in lines if x][:n_lines]
    model = curmoe.load(model_dir)
    export_ort_genai(model, tmp / "tok-ort")
    export_ov_genai(model, tmp / "tok-ov")
    ref = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    conv = Tokenizer.from_file(str(tmp / "tok-ort" / "tokenizer.json"))
    otok = og.Tokenizer(og.Model(str(tmp / "tok-ort")))
    venc = ov.compile_model(str(tmp / "tok-ov" / "openvino_tokenizer.xml"), "CPU")
    vdec = ov.compile_model(str(tmp / "tok-ov" / "openvino_detokenizer.xml"), "CPU")
    V, unk = model.config.vocab_size, conv.token_to_id("<unk>")
    counts = {k: {"ids_equal": 0, "differ_with_unk": 0, "differ_without_unk": 0, "decode_equal": 0,
                  "decode_differ_without_unk": 0}
              for k in ("hf_converted", "openvino_tokenizers", "ort_genai")}
    for x in lines:
        ids = ref.encode(x, add_special_tokens=False).ids
        text = ref.decode(ids)
        got = {"hf_converted": conv.encode(x, add_special_tokens=False).ids,
               "openvino_tokenizers": [int(i) for i in venc([x])["input_ids"][0]],
               "ort_genai": [int(i) for i in otok.encode(x)]}
        dec = {"hf_converted": conv.decode(ids),
               "openvino_tokenizers": str(vdec(np.asarray([ids], np.int64))["string_output"][0]),
               "ort_genai": otok.decode(np.asarray(ids, np.int32)).lstrip(" ")}  # see docs/genai.md
        for k, g in got.items():
            g = [i if i < V else unk for i in g]  # what the exported graph reads
            c = counts[k]
            c["ids_equal"] += g == ids
            if g != ids:
                c["differ_with_unk" if unk in ids else "differ_without_unk"] += 1
            c["decode_equal"] += dec[k] == text
            c["decode_differ_without_unk"] += dec[k] != text and unk not in ids
    return {"model": str(model_dir), "lines": len(lines), "split": "WikiText-2 raw valid then test, non-empty "
            "lines, whitespace runs collapsed", "ort_genai_decode": "compared after removing leading spaces",
            **counts}


def runners(model: curmoe.Model, name: str, tmp: Path, threads: int, steps: int, prompt: list[int]) -> dict:
    """{(model name, row): fn() -> (tok/s, tokens[, tpot tok/s])}: every row's exports and sessions, built once."""
    import openvino as ov
    import openvino_genai

    onnx_path = export(model, OnnxExportConfig(), tmp / f"{name}.onnx")
    export_ort_genai(model, tmp / f"{name}-ort-genai", threads=threads)
    export_ov_genai(model, tmp / f"{name}-ov-genai")
    ov_cfg = {"INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": threads}
    ir = make_stateful_ir(ov.Core().read_model(str(onnx_path)))
    compiled = ov.Core().compile_model(ir, "CPU", ov_cfg)
    pipe = openvino_genai.LLMPipeline(str(tmp / f"{name}-ov-genai"), "CPU", **ov_cfg)
    ort = load(onnx_path, "onnxruntime:cpu", threads=threads)
    ovad = load(onnx_path, "openvino:cpu", threads=threads)
    return {
        (name, "OpenVINO GenAI LLMPipeline"): lambda: _ov_genai(pipe, prompt, steps),
        (name, "OpenVINO stateful IR (make_stateful_ir)"): lambda: _stateful(compiled, prompt, steps),
        (name, "curmoe OpenVINO adapter"): lambda: _adapter(ovad, prompt, steps),
        (name, "ONNX Runtime GenAI"): lambda: _ort_genai(tmp / f"{name}-ort-genai", prompt, steps),
        (name, "curmoe ORT adapter"): lambda: _adapter(ort, prompt, steps),
    }


def bench(rows: dict, repeats: int) -> list[dict]:
    """Every row once per repeat, all rows (both models) interleaved, so that load from other jobs falls on every
    row alike; best and median of the repeats."""
    for fn in rows.values():
        fn()  # warm-up (first-inference allocations)
    runs: dict[tuple[str, str], list] = {key: [] for key in rows}
    for _ in range(repeats):
        for key, fn in rows.items():
            runs[key].append(fn())
    out = []
    for (name, row), rs in runs.items():
        out.append({"row": row, "model": name, "decode_tok_s": max(r[0] for r in rs),
                    "decode_tok_s_median": float(np.median([r[0] for r in rs])),
                    "decode_tok_s_runs": [r[0] for r in rs], "tokens": rs[0][1]})
        if len(rs[0]) > 2:
            out[-1]["tpot_tok_s_runs"] = [r[2] for r in rs]
        print(f"{name:6s} {row:42s} {out[-1]['decode_tok_s']:8.1f} tok/s", flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=str(ROOT / "models" / "wt2-moe-8x"))
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--steps", type=int, default=64, help="decode steps after a 16-token prompt")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--tokenizer-lines", type=int, default=2000,
                   help="WikiText-2 raw lines for the tokenizer agreement (0: skip; needs $CURMOE_DATA_DIR)")
    p.add_argument("--out", default=None, help="results JSON (e.g. docs/results/data/genai.json)")
    args = p.parse_args(argv)
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    dense = curmoe.load(args.model)
    cur = curmoe.compress(dense, curmoe.CURConfig(ratio=0.5), progress=False)
    prompt = list(range(100, 116))  # 16 token ids, fixed
    rows = []
    tok_agreement = None
    with tempfile.TemporaryDirectory(prefix="curmoe-genai-bench.") as tmp:
        if args.tokenizer_lines:
            tok_agreement = tokenizer_agreement(Path(args.model), Path(tmp), args.tokenizer_lines)
            print(json.dumps(tok_agreement, indent=1), flush=True)
        fns = {}
        for name, m in (("dense", dense), ("cur50", cur)):
            fns |= runners(m, name, Path(tmp), args.threads, args.steps, prompt)
        rows = bench(fns, args.repeats)
    eos = dense.config.eos_token_id
    for name in ("dense", "cur50"):
        ref = next(r["tokens"] for r in rows if r["model"] == name and r["row"] == "curmoe ORT adapter")
        n = ref.index(eos) if eos in ref else len(ref)  # compared before the first eos (see _ort_genai)
        for r in rows:
            if r["model"] == name:
                r["tokens_agree"] = r["tokens"][:n] == ref[:n]
                r["tokens_compared"] = n
    data = {"provenance": provenance(argv, script=__file__),
            "setup": {"model": args.model, "threads": args.threads, "OMP_NUM_THREADS": args.threads,
                      "prompt_tokens": len(prompt), "steps": args.steps, "repeats": args.repeats, "batch": 1,
                      "precision": "float32", "dispatch": "sparse",
                      "cur50": "CURConfig(ratio=0.5), DEIM, no calibration; ratio = expert parameters removed",
                      "tok_s": "best of repeats (decode_tok_s) and median; decode steps only (prefill excluded)"},
              "rows": rows, "tokenizer_agreement": tok_agreement}
    if args.out:
        write_results(args.out, data)
    print(json.dumps({r["row"] + " / " + r["model"]: round(r["decode_tok_s"], 1) for r in rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
