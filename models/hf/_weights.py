"""Map Hugging Face MoE tensor names and layouts onto curmoe checkpoint names (see ``curmoe.reference._checkpoint``).

Both weight layouts are accepted; W stays in torch orientation (out, in) throughout:

- transformers 5.x fused experts: ``mlp.experts.gate_up_proj`` (E, 2I, H), gate rows first (``gate, up =
  linear(x, gate_up_proj[e]).chunk(2, -1)``), and ``mlp.experts.down_proj`` (E, H, I). They are split per expert.
- per-expert checkpoints (what ``save_pretrained`` writes, and every Hub checkpoint): ``experts.{e}.gate_proj /
  up_proj / down_proj`` (Qwen, OLMoE) or Mixtral's ``block_sparse_moe.experts.{e}.w1 / w3 / w2`` (gate / up / down).

Every source tensor must be used and every curmoe tensor found, with the shape the config implies.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable

import numpy as np

from curmoe.common.errors import CheckpointError
from curmoe.reference import DenseLinear, Linear, ModelConfig, expected_tensors
from curmoe.reference.names import expert_prefix

__all__ = ["convert_tensors"]

log = logging.getLogger(__name__)

_TOP = {"embed_tokens.weight": "embed.weight", "norm.weight": "norm.weight", "lm_head.weight": "lm_head.weight"}
_PROJ = {"gate_proj": "gate", "up_proj": "up", "down_proj": "down", "w1": "gate", "w3": "up", "w2": "down"}
_LAYER = re.compile(r"layers\.(\d+)\.(.+)")
_RULES: list[tuple[re.Pattern[str], str]] = [  # layer-local HF name -> curmoe name ("{l}" = layer index)
    (re.compile(r"input_layernorm\.weight"), "layers.{l}.attn_norm.weight"),
    (re.compile(r"post_attention_layernorm\.weight"), "layers.{l}.ffn_norm.weight"),
    (re.compile(r"self_attn\.([qkvo])_proj\.(weight|bias)"), r"layers.{l}.attn.\1.\2"),
    (re.compile(r"self_attn\.([qk])_norm\.weight"), r"layers.{l}.attn.\1_norm.weight"),
    (re.compile(r"mlp\.gate\.weight"), "layers.{l}.router.weight"),
    (re.compile(r"mlp\.shared_expert_gate\.weight"), "layers.{l}.shared_gate.weight"),
    (re.compile(r"mlp\.(gate|up|down)_proj\.weight"), r"layers.{l}.mlp.\1.weight"),
]
_SHARED = re.compile(r"mlp\.shared_expert\.(gate_proj|up_proj|down_proj)\.weight")
_EXPERT = re.compile(r"mlp\.experts\.(\d+)\.(gate_proj|up_proj|down_proj|w1|w2|w3)\.weight")
_FUSED = re.compile(r"mlp\.experts\.(gate_up_proj|down_proj)")


def _normalise(name: str) -> str:
    """Drop the base-model prefix and Mixtral's old module name: ``model.layers.0.block_sparse_moe.x`` -> ``layers.0.mlp.x``."""
    name = name.removeprefix("model.")
    return name.replace(".block_sparse_moe.", ".mlp.")


def convert_tensors(
    config: ModelConfig, names: Iterable[str], get: Callable[[str], np.ndarray]
) -> tuple[dict[str, np.ndarray], dict[str, Linear]]:
    """Build curmoe ``(tensors, experts)`` from HF tensors.

    Args:
        config: the translated curmoe config (fixes every expected name and shape).
        names: the HF tensor names available.
        get: loads one HF tensor by name as a float array of the target dtype.

    Returns:
        ``tensors`` (non-expert weights by curmoe name) and ``experts`` (key -> DenseLinear).

    Raises:
        CheckpointError: a tensor is missing, has the wrong shape, or is not part of the architecture.
    """
    d, f, E = config.d_model, config.moe.d_ff, config.moe.n_experts
    flat: dict[str, np.ndarray] = {}
    unused: list[str] = []
    for src in names:
        name = _normalise(src)
        if name == "lm_head.weight" and config.tie_embeddings:
            continue  # tied: the head is the embedding
        if name.endswith("rotary_emb.inv_freq"):
            continue  # a derived buffer that old checkpoints saved
        if name in _TOP:
            flat[_TOP[name]] = get(src)
            continue
        m = _LAYER.fullmatch(name)
        if m is None:
            unused.append(src)
            continue
        l, rest = int(m.group(1)), m.group(2)
        if rest == "mlp.shared_expert_gate.weight" and not config.moe.n_shared:
            continue  # gates a zero-width shared expert
        for pat, target in _RULES:
            if (r := pat.fullmatch(rest)) is not None:
                flat[r.expand(target.replace("{l}", str(l)))] = get(src)
                break
        else:
            if (r := _SHARED.fullmatch(rest)) is not None:
                if not config.moe.n_shared:
                    continue  # shared_expert_intermediate_size=0: a zero-width expert adds nothing
                flat[f"layers.{l}.shared.0.{_PROJ[r.group(1)]}.weight"] = get(src)
            elif (r := _EXPERT.fullmatch(rest)) is not None:
                flat[f"layers.{l}.experts.{int(r.group(1))}.{_PROJ[r.group(2)]}.weight"] = get(src)
            elif (r := _FUSED.fullmatch(rest)) is not None:
                flat.update(_split_fused(src, r.group(1), l, get(src), E, d, f))
            else:
                unused.append(src)
    if unused:
        raise CheckpointError(
            f"tensor(s) {unused[:3]}{' ...' if len(unused) > 3 else ''} are not part of a curmoe-convertible "
            "model of this architecture (an unsupported feature or a different architecture)"
        )
    return _check_and_split(config, flat)


def _split_fused(
    src: str, kind: str, l: int, a: np.ndarray, E: int, d: int, f: int
) -> dict[str, np.ndarray]:
    """Per-expert matrices from a fused 3-D tensor: gate_up_proj (E, 2f, d) -> gate = [:, :f], up = [:, f:]."""
    want = (E, 2 * f, d) if kind == "gate_up_proj" else (E, d, f)
    if tuple(a.shape) != want:
        raise CheckpointError(f"fused tensor {src!r} has shape {tuple(a.shape)}, the config implies {want} (E, out, in)")
    out = {}
    for e in range(E):
        pre = expert_prefix(l, e)
        if kind == "gate_up_proj":
            out[f"{pre}.gate.weight"] = np.ascontiguousarray(a[e, :f])  # (f, d)
            out[f"{pre}.up.weight"] = np.ascontiguousarray(a[e, f:])  # (f, d)
        else:
            out[f"{pre}.down.weight"] = np.ascontiguousarray(a[e])  # (d, f)
    return out


def _check_and_split(
    config: ModelConfig, flat: dict[str, np.ndarray]
) -> tuple[dict[str, np.ndarray], dict[str, Linear]]:
    want = expected_tensors(config)
    problems = [f"missing tensor {n!r} (shape {s})" for n, (s, _) in want.items() if n not in flat]
    problems += [
        f"tensor {n!r} has shape {tuple(a.shape)}, config implies {want[n][0]}"
        for n, a in flat.items() if n in want and tuple(a.shape) != want[n][0]
    ]
    problems += [f"tensor {n!r} is not used by this config" for n in flat if n not in want]
    if problems:
        if "lm_head.weight" in want and "lm_head.weight" not in flat:
            problems.append("pass the ...ForCausalLM model, not the bare base model")
        raise CheckpointError("the Hugging Face weights do not match their config: " + "; ".join(problems[:5]))
    tensors: dict[str, np.ndarray] = {}
    experts: dict[str, Linear] = {}
    for n, a in flat.items():
        if ".experts." in n or ".shared." in n:
            experts[n.removesuffix(".weight")] = DenseLinear(a)
        else:
            tensors[n] = a
    log.debug("converted %d tensors and %d expert matrices", len(tensors), len(experts))
    return tensors, experts
