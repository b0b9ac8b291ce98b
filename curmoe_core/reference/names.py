"""Tensor names, defined once: every checkpoint key, graph initializer and routing output is built here.

Checkpoint keys (weights in torch orientation (out, in)):
- ``embed.weight`` (V, d), ``norm.weight`` (d,), ``lm_head.weight`` (V, d) unless tied;
- ``layers.{l}.{attn_norm|ffn_norm}.weight``, ``layers.{l}.attn.{q|k|v|o}.weight`` (+ ``.bias``, ``q_norm``/``k_norm``);
- MoE layers: ``layers.{l}.router.weight`` (E, d) (+ ``.bias``), ``layers.{l}.shared_gate.weight`` (1, d);
- expert matrices ``layers.{l}.experts.{e}.{gate|up|down}`` and ``layers.{l}.shared.{s}.{gate|up|down}``, each stored
  in its form: ``.weight`` (dense), ``.A``/``.B`` (SVD), ``.C``/``.U``/``.R``/``.rows``/``.cols`` (CUR);
- dense FFN layers: ``layers.{l}.mlp.{gate|up|down}.weight``.
"""

from __future__ import annotations

from curmoe.common.errors import CheckpointError
from curmoe.reference._config import ModelConfig

__all__ = [
    "EXPERT_MATRICES",
    "expected_tensors",
    "expert_key",
    "expert_keys",
    "expert_prefix",
    "layer_of",
    "routing_logits",
    "routing_selected",
    "shared_prefix",
]

EXPERT_MATRICES = ("gate", "up", "down")


def expert_prefix(layer: int, expert: int) -> str:
    """``layers.{layer}.experts.{expert}``: the key prefix of one routed expert."""
    return f"layers.{layer}.experts.{expert}"


def shared_prefix(layer: int, index: int) -> str:
    """``layers.{layer}.shared.{index}``: the key prefix of one shared expert."""
    return f"layers.{layer}.shared.{index}"


def expert_key(layer: int, expert: int, matrix: str) -> str:
    """``layers.{layer}.experts.{expert}.{matrix}``, matrix one of gate/up/down."""
    return f"{expert_prefix(layer, expert)}.{matrix}"


def layer_of(key: str) -> int:
    """The layer index of any ``layers.{l}....`` key."""
    return int(key.split(".")[1])


def routing_selected(layer: int) -> str:
    """Graph output name of layer ``layer``'s (tokens, E) bool expert selection."""
    return f"routing.{layer}.selected"


def routing_logits(layer: int) -> str:
    """Graph output name of layer ``layer``'s (tokens, E) router logits."""
    return f"routing.{layer}.logits"


def expert_keys(config: ModelConfig) -> dict[str, tuple[int, int]]:
    """Every expert matrix key -> its dense shape (out, in)."""
    d, moe = config.d_model, config.moe
    names = ("gate", "up", "down") if moe.activation == "swiglu" else ("up", "down")
    keys: dict[str, tuple[int, int]] = {}
    for l in range(config.n_layers):
        if config.layer_type(l) != "moe":
            continue
        groups = [(expert_prefix(l, e), moe.d_ff) for e in range(moe.n_experts)]
        groups += [(shared_prefix(l, s), moe.shared_d_ff) for s in range(moe.n_shared)]
        for pre, f in groups:
            for n in names:
                keys[f"{pre}.{n}"] = (d, f) if n == "down" else (f, d)
    return keys


def expected_tensors(config: ModelConfig) -> dict[str, tuple[tuple[int, ...], str]]:
    """Name -> (shape, "float" | "int") of every tensor a checkpoint of ``config`` holds."""
    c = config
    d, V, H, KV, hd = c.d_model, c.vocab_size, c.n_heads, c.kv_heads, c.head_dim_
    t: dict[str, tuple[tuple[int, ...], str]] = {"embed.weight": ((V, d), "float"), "norm.weight": ((d,), "float")}
    if not c.tie_embeddings:
        t["lm_head.weight"] = ((V, d), "float")
    for l in range(c.n_layers):
        p = f"layers.{l}."
        t[p + "attn_norm.weight"] = ((d,), "float")
        t[p + "ffn_norm.weight"] = ((d,), "float")
        t[p + "attn.q.weight"] = ((H * hd, d), "float")
        t[p + "attn.k.weight"] = ((KV * hd, d), "float")
        t[p + "attn.v.weight"] = ((KV * hd, d), "float")
        t[p + "attn.o.weight"] = ((d, H * hd), "float")
        if c.attn_bias:
            t[p + "attn.q.bias"] = ((H * hd,), "float")
            t[p + "attn.k.bias"] = ((KV * hd,), "float")
            t[p + "attn.v.bias"] = ((KV * hd,), "float")
        if c.qk_norm == "head":
            t[p + "attn.q_norm.weight"] = ((hd,), "float")
            t[p + "attn.k_norm.weight"] = ((hd,), "float")
        elif c.qk_norm == "full":
            t[p + "attn.q_norm.weight"] = ((H * hd,), "float")
            t[p + "attn.k_norm.weight"] = ((KV * hd,), "float")
        if c.layer_type(l) == "moe":
            t[p + "router.weight"] = ((c.moe.n_experts, d), "float")
            if c.moe.router.kind == "sigmoid_bias":
                t[p + "router.bias"] = ((c.moe.n_experts,), "float")
            if c.moe.shared_gate:
                t[p + "shared_gate.weight"] = ((1, d), "float")
        else:
            t[p + "mlp.gate.weight"] = ((c.dense_d_ff, d), "float")
            t[p + "mlp.up.weight"] = ((c.dense_d_ff, d), "float")
            t[p + "mlp.down.weight"] = ((d, c.dense_d_ff), "float")
    unknown = set(c.factors) - set(expert_keys(c))
    if unknown:
        raise CheckpointError(f"config.factors names {sorted(unknown)[0]!r}, which is not an expert matrix of this config")
    for key, (m, n) in expert_keys(c).items():
        spec = c.factors.get(key)
        if spec is None:
            t[key + ".weight"] = ((m, n), "float")
        elif spec["kind"] == "svd":
            r = spec["rank"]
            t[key + ".A"], t[key + ".B"] = ((m, r), "float"), ((r, n), "float")
        elif spec["kind"] == "neuron":
            k = spec["n_neurons"]
            t[key + ".weight"] = ((m, k), "float") if spec["role"] == "refit" else ((k, n), "float")
            t[key + ".neurons"] = ((k,), "int")
        elif spec["kind"] == "cur":
            r, nc = spec["rank"], spec.get("n_cols", spec["rank"])
            if spec.get("folded"):
                t[key + ".C"] = ((m, r), "float")
            else:
                t[key + ".C"], t[key + ".U"] = ((m, nc), "float"), ((nc, r), "float")
            t[key + ".R"] = ((r, n), "float")
            t[key + ".rows"], t[key + ".cols"] = ((r,), "int"), ((nc,), "int")
        else:
            raise CheckpointError(f"config.factors[{key!r}] has kind {spec['kind']!r}; expected 'cur', 'svd' or 'neuron'")
    return t


