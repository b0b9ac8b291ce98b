"""A stateful OpenVINO model: the KV cache held inside the compiled model as variables, not passed in and out.

A curmoe KV-cache graph takes ``past.{l}.key/value`` (or ``past_key_values.{l}.*``) and returns
``present.{l}.key/value`` (B, KV, S, hd); every decode step then copies the whole cache out of OpenVINO and back
in. :func:`make_stateful_ir` turns each (past, present) pair into a ReadValue/Assign variable pair, as
optimum-intel does for Hugging Face models, so the cache stays in the plugin's memory between
``InferRequest.infer`` calls (``request.reset_state()`` starts a new sequence). It also adds the ``beam_idx``
input (B,) int32 that OpenVINO GenAI feeds: each step gathers the cache rows of the sequences kept (identity for
greedy search). The variables start as (B, KV, 0, hd) zeros, B taken from ``input_ids``.

This is what ``curmoe export --format ov-genai`` saves for ``openvino_genai.LLMPipeline`` and what a stateful
OpenVINO adapter (issue 15) can compile directly: feeds become input_ids, attention_mask (the whole mask, past
tokens included) and beam_idx; outputs are the logits.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import numpy as np
import openvino as ov
from openvino import opset13 as ops
from openvino._offline_transformations import apply_make_stateful_transformation

from curmoe.common.errors import InvalidInputError

__all__ = ["cache_pairs", "make_stateful_ir"]

_PAST = re.compile(r"^(?:past|past_key_values)\.(\d+)\.(key|value)$")


def cache_pairs(model: ov.Model) -> dict[str, str]:
    """{past input name: present output name} of a curmoe graph, in layer order."""
    outs = {n for o in model.outputs for n in o.get_names()}
    pairs = {}
    for i in model.inputs:
        for name in i.get_names():
            m = _PAST.match(name)
            if m:
                present = f"present.{m.group(1)}.{m.group(2)}"
                if present not in outs:
                    raise InvalidInputError(f"cache input {name!r} has no {present!r} output; pass a KV-cache export")
                pairs[name] = present
    return dict(sorted(pairs.items(), key=lambda kv: (int(_PAST.match(kv[0]).group(1)), kv[0])))  # type: ignore[union-attr]


def make_stateful_ir(model: ov.Model, pairs: Mapping[str, str] | None = None, *, beam_idx: bool = True) -> ov.Model:
    """Make ``model`` (read from a curmoe KV-cache export) stateful, in place; returns it.

    Args:
        model: an ``openvino.Model`` with inputs input_ids, attention_mask and the cache inputs.
        pairs: {past input: present output}; default :func:`cache_pairs`.
        beam_idx: add the ``beam_idx`` (B,) int32 input that reorders the cache rows (OpenVINO GenAI needs it).

    Raises:
        curmoe.InvalidInputError: no cache inputs (a ``with_cache=False`` export), or already stateful.
    """
    pairs = dict(pairs) if pairs is not None else cache_pairs(model)
    if not pairs:
        raise InvalidInputError("the model has no past.{l}.key/value inputs (a graph exported without KV cache); "
                                "export with with_cache=True")
    if any("beam_idx" in i.get_names() for i in model.inputs) or model.get_sinks():
        raise InvalidInputError("the model is already stateful (it has beam_idx / Assign sinks)")
    ids = model.input("input_ids")
    if beam_idx:
        beam = ops.parameter(ov.PartialShape([ids.get_partial_shape()[0]]), ov.Type.i32, name="beam_idx")
        beam.output(0).get_tensor().set_names({"beam_idx"})
        model.add_parameters([beam])
        for past in pairs:
            port = model.input(past)
            consumers = port.get_target_inputs()
            rows = ops.gather(port, beam, ops.constant(np.int64(0)))  # (B, KV, P, hd) rows of the kept sequences
            for c in consumers:
                c.replace_source_output(rows.output(0))
        model.validate_nodes_and_infer_types()
    apply_make_stateful_transformation(model, pairs)
    # initial state: zeros (B, KV, 0, hd) with B = input_ids' batch (the transformation leaves a dynamic shape)
    batch = ops.gather(ops.shape_of(ids, output_type="i64"), ops.constant(np.array([0], np.int64)),
                       ops.constant(np.int64(0)))
    for op in model.get_ops():
        if op.get_type_name() == "ReadValue":
            shape = op.get_output_partial_shape(0)
            dims = [batch] + [ops.constant(np.array([d.get_length() if d.is_static else 0], np.int64))
                              for d in list(shape)[1:]]
            zero = ops.constant(np.zeros((), np.float32)).output(0)
            if op.get_output_element_type(0) != ov.Type.f32:
                zero = ops.convert(zero, op.get_output_element_type(0)).output(0)
            op.set_arguments([ops.broadcast(zero, ops.concat(dims, 0))])
    model.validate_nodes_and_infer_types()
    return model
