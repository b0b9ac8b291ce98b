"""The real pretrained model (SmolLM2-135M-Instruct, curmoe's GGUF import) through both GenAI folders (issue 16).

For the dense model and its CUR copy (``as_single_expert`` then ``CURConfig(ratio=0.5)``: 50% of FFN parameters,
no calibration, so its text is poor; what is checked is that the stacks compute the same model): export
``--format ort-genai`` and ``--format ov-genai``, encode a prompt with the model's own tokenizer (Hugging Face
``tokenizers``) and with ONNX Runtime GenAI's, greedy-generate ``--tokens`` tokens with the float64 reference,
ONNX Runtime GenAI and OpenVINO GenAI's LLMPipeline (token ids in, so the three see the same prompt), and compare
the ids and ORT GenAI's prompt logits (max |z - z_ref| / max |z_ref|, float32 tolerance 3e-5). Export wall time
and the exporting process's peak resident memory (GNU ``time``) are recorded.

    OMP_NUM_THREADS=1 python benchmarks/genai_pretrained.py --out docs/results/data/genai_pretrained.json
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import curmoe
from curmoe.app.results import provenance, write_results

PROMPT = "The capital of France is"


def _export(model_dir: Path, fmt: str, out: Path) -> dict:
    """curmoe export in a child process: wall time and its peak resident memory (GNU time's %M: the child of a
    small process, so the parent's pages at fork are not counted, as they would be in RUSAGE_CHILDREN)."""
    cmd = [sys.executable, "-m", "curmoe.app.cli", "export", str(model_dir), "--format", fmt, "-o", str(out)]
    gnu_time = shutil.which("time") or ("/usr/bin/time" if Path("/usr/bin/time").exists() else None)
    t0 = time.perf_counter()
    res = subprocess.run(([gnu_time, "-f", "maxrss_kb=%M"] if gnu_time else []) + cmd, check=True,
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wall = time.perf_counter() - t0
    kb = [line.split("=", 1)[1] for line in res.stderr.splitlines() if line.startswith("maxrss_kb=")]
    return {"export_s": round(wall, 1), "export_peak_rss_mb": round(int(kb[-1]) / 1024) if kb else None}


def check(model_dir: Path, tmp: Path, n: int) -> dict:
    import onnxruntime_genai as og
    import openvino as ov
    import openvino_genai
    from tokenizers import Tokenizer

    from curmoe.runtimes import generate, load

    rec: dict = {"model_dir": str(model_dir)}
    rec["ort_genai"] = _export(model_dir, "ort-genai", tmp / "ort")
    rec["ov_genai"] = _export(model_dir, "ov-genai", tmp / "ov")
    prompt = Tokenizer.from_file(str(model_dir / "tokenizer.json")).encode(PROMPT, add_special_tokens=False).ids
    ref = generate(load(model_dir, "reference:float64"), np.asarray(prompt), n)[len(prompt):].tolist()
    m = og.Model(str(tmp / "ort"))
    tok = og.Tokenizer(m)
    p = og.GeneratorParams(m)
    p.set_search_options(max_length=len(prompt) + n, do_sample=False)
    g = og.Generator(m, p)
    g.append_tokens(np.asarray([prompt], np.int32))
    z = g.get_output("logits")[0].copy()
    got = []
    while not g.is_done():
        g.generate_next_token()
        got.append(int(g.get_next_tokens()[0]))
    rec["ort_genai"] |= {"tokenizer_ids_equal": [int(i) for i in tok.encode(PROMPT)] == prompt,
                         "tokens_equal": got == ref, "text": tok.decode(np.asarray(got, np.int32))}
    del g, m
    z_ref = curmoe.load(model_dir, dtype=np.float64).forward(np.asarray([prompt]))[0]
    rec["ort_genai"]["prompt_logits_max_rel_err"] = float(np.abs(z - z_ref).max() / np.abs(z_ref).max())
    del z_ref
    pipe = openvino_genai.LLMPipeline(str(tmp / "ov"), "CPU", INFERENCE_NUM_THREADS=1)
    gc = pipe.get_generation_config()
    gc.max_new_tokens, gc.do_sample = n, False
    ov_ids = [int(t) for t in pipe.generate(ov.Tensor(np.asarray([prompt], np.int64)), gc).tokens[0]]
    gc.apply_chat_template = False
    rec["ov_genai"] |= {"tokens_equal": ov_ids == ref, "text": pipe.generate(PROMPT, gc)}
    rec |= {"prompt": PROMPT, "prompt_ids": prompt, "reference_tokens": ref}
    return rec


def main(argv: list[str] | None = None) -> int:
    from curmoe.models.pretrained import as_single_expert, pretrained_dir

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--name", default="smollm2-135m")
    ap.add_argument("--tokens", type=int, default=12)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    src = Path(pretrained_dir(args.name))
    rows = []
    with tempfile.TemporaryDirectory(prefix="curmoe-genai-pretrained.") as t:
        tmp = Path(t)
        rows.append({"row": "dense"} | check(src, tmp / "dense", args.tokens))
        cur = curmoe.compress(as_single_expert(curmoe.load(src)), curmoe.CURConfig(ratio=0.5), progress=False)
        cur.save(tmp / "cur-model")
        del cur
        rows.append({"row": "cur 50% of FFN params (no calibration)"} | check(tmp / "cur-model", tmp / "cur",
                                                                               args.tokens))
    for r in rows:
        print(json.dumps(r))
    if args.out:
        write_results(args.out, {"provenance": provenance(argv, script=__file__), "model": args.name,
                                 "threads": 1, "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
