"""ONNX Runtime GenAI and OpenVINO GenAI folders (issue 16): each stack loads the folder, greedy-generates the
reference's tokens (shipped model and baby dense / CUR / SVD / neuron-CUR models), ORT GenAI's logits are within
the float32 tolerance of the float64 reference, the exported tokenizer encodes and decodes as curmoe's, and what
no stack can decode is refused before anything is written."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import curmoe
from tests.babies import TEXT, baby_config

og = pytest.importorskip("onnxruntime_genai")
ovg = pytest.importorskip("openvino_genai")
pytest.importorskip("openvino_tokenizers")
tokenizers = pytest.importorskip("tokenizers")
pytest.importorskip("transformers")

from curmoe.exporters.genai import export_ort_genai, export_ov_genai, genai_tokenizer
from curmoe.runtimes.tolerances import tolerance_for

TINY = Path(__file__).resolve().parents[1] / "models" / "wt2-moe-tiny"
PROMPT = [452, 1661, 464, 452, 1211]  # "the history of the city" in the shipped tokenizer
SENTENCES = ["the history of the city", "In 1998 , the band released its second album @-@ a record .",
             "Homarus gammarus , known as the European lobster , is a species of clawed lobster .",
             "He was 60 years old ( born in 1950 ) and lived in New York"]


def _reference_tokens(model: curmoe.Model, prompt: list[int], n: int) -> list[int]:
    """Greedy continuation by the float64 reference with a KV cache (what ``curmoe generate`` computes)."""
    ref = model.astype(np.float64)
    cache = ref.new_cache()
    ids, out = np.asarray([prompt]), []
    for _ in range(n):
        nxt = int(np.argmax(ref.forward(ids, cache=cache)[0, -1]))
        out.append(nxt)
        ids = np.asarray([[nxt]])
    return out


def _og_generate(folder: Path, prompt: list[int], n: int) -> tuple[list[int], np.ndarray]:
    """ORT GenAI greedy tokens and the logits it computed at every position (T + n - 1, V)."""
    m = og.Model(str(folder))
    p = og.GeneratorParams(m)
    p.set_search_options(max_length=len(prompt) + n, do_sample=False)
    g = og.Generator(m, p)
    g.append_tokens(np.asarray([prompt], np.int32))
    logits = [g.get_output("logits")[0]]  # (T, V): the prompt's
    toks: list[int] = []
    while not g.is_done():
        g.generate_next_token()
        toks.append(int(g.get_next_tokens()[0]))
        if len(toks) >= 2:  # the model has now run on the previous new token
            logits.append(g.get_output("logits")[0])
    return toks, np.concatenate(logits)


def _ov_generate(folder: Path, prompt: list[int], n: int) -> list[int]:
    import openvino as ov

    pipe = ovg.LLMPipeline(str(folder), "CPU", INFERENCE_NUM_THREADS=1)
    gc = pipe.get_generation_config()
    gc.max_new_tokens, gc.do_sample, gc.min_new_tokens = n, False, n
    return [int(t) for t in pipe.generate(ov.Tensor(np.asarray([prompt], np.int64)), gc).tokens[0]]


# --- the shipped model ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny() -> curmoe.Model:
    return curmoe.load(TINY)


@pytest.fixture(scope="module")
def ort_folder(tiny, tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("ortg") / "out"
    rec = export_ort_genai(tiny, d, threads=1)
    assert rec["tokenizer"] == "GemmaTokenizer" and "genai_config.json" in rec["files"]
    return d


@pytest.fixture(scope="module")
def ov_folder(tiny, tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("ovg") / "out"
    export_ov_genai(tiny, d)
    return d


def test_ort_genai_graph_names(ort_folder):
    import onnx

    g = onnx.load(str(ort_folder / "model.onnx"), load_external_data=False).graph
    ins, outs = [i.name for i in g.input], [o.name for o in g.output]
    assert ins[:2] == ["input_ids", "attention_mask"] and "past_key_values.1.value" in ins
    assert not any(n.startswith("past.") for n in ins)
    assert outs[0] == "logits" and "present.1.key" in outs
    cfg = json.loads((ort_folder / "genai_config.json").read_text())
    assert cfg["model"]["eos_token_id"] == 1 and cfg["model"]["context_length"] == 128
    assert cfg["search"]["past_present_share_buffer"] is False


def test_ort_genai_tokens_and_logits_match_reference(tiny, ort_folder):
    n = 10
    toks, logits = _og_generate(ort_folder, PROMPT, n)
    ref = _reference_tokens(tiny, PROMPT, n)
    assert toks == ref
    z = tiny.astype(np.float64).forward(np.asarray([PROMPT + ref[:-1]]))[0]  # (T + n - 1, V)
    assert logits.shape == z.shape and logits.dtype == np.float32
    rel = np.abs(logits - z).max() / np.abs(z).max()
    assert rel <= tolerance_for("float32").max_rel_err, f"ORT GenAI logits max_rel_err {rel:.2e}"


def test_ov_genai_tokens_and_text_match_reference(tiny, ov_folder):
    n = 10
    assert _ov_generate(ov_folder, PROMPT, n) == _reference_tokens(tiny, PROMPT, n)
    # text in, text out: the tokenizer/detokenizer IRs agree with curmoe's tokenizer on this prompt
    tok = tokenizers.Tokenizer.from_file(str(TINY / "tokenizer.json"))
    pipe = ovg.LLMPipeline(str(ov_folder), "CPU", INFERENCE_NUM_THREADS=1)
    text = pipe.generate("the history of the city", max_new_tokens=n, do_sample=False)
    assert text == tok.decode(_reference_tokens(tiny, PROMPT, n))


def test_stateful_ir_logits_match_reference(tiny, ov_folder):
    """The saved stateful IR, compiled with the defaults stored in it (float32 KV cache and compute): logits of
    the prompt and of each decode step within the float32 tolerance; reset_state starts a new sequence."""
    import openvino as ov

    compiled = ov.Core().compile_model(str(ov_folder / "openvino_model.xml"), "CPU", {"INFERENCE_NUM_THREADS": 1})
    assert str(compiled.get_property("KV_CACHE_PRECISION")) == "<Type: 'float32'>"
    assert {i.get_any_name() for i in compiled.inputs} == {"input_ids", "attention_mask", "beam_idx"}
    req = compiled.create_infer_request()
    ref = tiny.astype(np.float64)
    new = [7, 99, 3]
    z = ref.forward(np.asarray([PROMPT + new]))[0]
    for _ in range(2):
        req.reset_state()
        got = [req.infer({"input_ids": np.asarray([PROMPT], np.int64), "beam_idx": np.zeros(1, np.int32),
                          "attention_mask": np.ones((1, len(PROMPT)), np.int64)})["logits"][0]]
        for i, t in enumerate(new):
            mask = np.ones((1, len(PROMPT) + i + 1), np.int64)
            got.append(req.infer({"input_ids": np.asarray([[t]], np.int64), "attention_mask": mask,
                                  "beam_idx": np.zeros(1, np.int32)})["logits"][0])
        got = np.concatenate(got)
        assert got.shape == z.shape
        assert np.abs(got - z).max() / np.abs(z).max() <= tolerance_for("float32").max_rel_err


def test_stacks_tokenizers_agree_with_curmoe(ort_folder, ov_folder):
    import openvino as ov

    ref = tokenizers.Tokenizer.from_file(str(TINY / "tokenizer.json"))
    otok = og.Tokenizer(og.Model(str(ort_folder)))
    ovtok = ov.compile_model(str(ov_folder / "openvino_tokenizer.xml"), "CPU")
    ovdec = ov.compile_model(str(ov_folder / "openvino_detokenizer.xml"), "CPU")
    for s in SENTENCES:
        ids = ref.encode(s, add_special_tokens=False).ids
        assert [int(i) for i in otok.encode(s)] == ids, s
        assert [int(i) for i in ovtok([s])["input_ids"][0]] == ids, s
        assert ovdec(np.asarray([ids], np.int64))["string_output"][0] == ref.decode(ids)
        # onnxruntime-extensions keeps the leading space of the first piece (Hugging Face strips it)
        assert otok.decode(np.asarray(ids, np.int32)).lstrip(" ") == ref.decode(ids)


def test_float16_and_dense_dispatch_on_both_stacks(tiny, tmp_path):
    """--dtype float16 (ORT: a float16 graph; OpenVINO: float16 weights, compress_to_fp16) with dense dispatch."""
    from curmoe.exporters import OnnxExportConfig

    cfg = OnnxExportConfig(dtype="float16", dispatch="dense")
    n = 8
    ref = _reference_tokens(tiny, PROMPT, n)
    export_ort_genai(tiny, tmp_path / "ort", cfg, threads=1)
    toks, logits = _og_generate(tmp_path / "ort", PROMPT, n)
    assert toks == ref
    z = tiny.astype(np.float64).forward(np.asarray([PROMPT + ref[:-1]]))[0]
    assert np.abs(logits - z).max() / np.abs(z).max() <= tolerance_for("float16").max_rel_err
    export_ov_genai(tiny, tmp_path / "ov", cfg)
    assert _ov_generate(tmp_path / "ov", PROMPT, n) == ref


# --- the tokenizer layout (pure JSON maths, checked with Hugging Face tokenizers) ------------------------------
_SHIPPED = json.loads((TINY / "tokenizer.json").read_text())
_CONVERTED, _ADDED = genai_tokenizer(_SHIPPED)
_TOK_A = tokenizers.Tokenizer.from_str(json.dumps(_SHIPPED))
_TOK_B = tokenizers.Tokenizer.from_str(json.dumps(_CONVERTED))
_FIRST = sorted({t for t in _SHIPPED["model"]["vocab"] if len(t) == 1})  # word-initial characters
_NEXT = sorted({t[2:] for t in _SHIPPED["model"]["vocab"] if t.startswith("##") and len(t) == 3})  # mid-word ones
_WORD = st.tuples(st.sampled_from(_FIRST), st.text(alphabet=_NEXT, max_size=11)).map("".join)


@given(st.lists(_WORD, min_size=1, max_size=8))
def test_converted_tokenizer_is_the_same_tokenizer(words):
    """Same ids and the same decoded text on any text curmoe's tokenizer encodes without <unk>: the layout is a
    bijection of the pieces."""
    text = " ".join(words)
    a = _TOK_A.encode(text, add_special_tokens=False).ids
    assert _TOK_B.encode(text, add_special_tokens=False).ids == a
    assert _TOK_B.decode(a) == _TOK_A.decode(a)


def test_converted_tokenizer_extra_pieces_only_where_curmoe_has_unk():
    V = len(_SHIPPED["model"]["vocab"])
    assert _ADDED == len(_CONVERTED["model"]["vocab"]) - V > 0
    text = "x(y) ☃snow"  # '(' mid-word and '☃' outside the alphabet: curmoe emits <unk> there
    a = _TOK_A.encode(text, add_special_tokens=False).ids
    b = [i if i < V else 2 for i in _TOK_B.encode(text, add_special_tokens=False).ids]  # what the graph does
    assert [i for i in b if i != 2] == [i for i in a if i != 2] and 2 in a


# --- baby models: dense and compressed, both stacks -----------------------------------------------------------
@pytest.fixture(scope="module")
def baby_models(tmp_path_factory) -> dict[str, curmoe.Model]:
    from curmoe.models.tokenizer import save_tokenizer, train_bpe_tokenizer

    tok = train_bpe_tokenizer(TEXT, vocab_size=80, min_frequency=1)
    tpath = save_tokenizer(tok, tmp_path_factory.mktemp("babytok") / "tokenizer.json")
    cfg = baby_config(vocab_size=tok.get_vocab_size(), eos_token_id=tok.token_to_id("<eos>"))
    dense = curmoe.Model.random(cfg, seed=0, std=0.3)
    calib = np.random.default_rng(3).integers(0, cfg.vocab_size, size=(16, 16))
    out = {"dense": dense,
           "cur": curmoe.compress(dense, curmoe.CURConfig(ratio=0.5), progress=False),
           "svd": curmoe.compress(dense, curmoe.SVDConfig(ratio=0.5), progress=False),
           "neuron": curmoe.compress(dense, curmoe.NeuronConfig(ratio=0.5), calib_ids=calib, progress=False)}
    for m in out.values():
        m.tokenizer_path = tpath
    return out


@pytest.mark.parametrize("kind", ["dense", "cur", "svd", "neuron"])
def test_babies_generate_reference_tokens_on_both_stacks(baby_models, kind, tmp_path):
    model = baby_models[kind]
    prompt, n = [5, 9, 14, 22, 7, 30], 8
    ref = _reference_tokens(model, prompt, n)
    export_ort_genai(model, tmp_path / "ort", threads=1)
    toks, logits = _og_generate(tmp_path / "ort", prompt, n)
    assert toks == ref, kind
    z = model.astype(np.float64).forward(np.asarray([prompt + ref[:-1]]))[0]
    assert np.abs(logits - z).max() / np.abs(z).max() <= tolerance_for("float32").max_rel_err
    export_ov_genai(model, tmp_path / "ov")
    assert _ov_generate(tmp_path / "ov", prompt, n) == ref, kind


# --- refusals: nothing written ----------------------------------------------------------------------------------
def test_expert_choice_is_refused_before_writing(tmp_path):
    m = curmoe.Model.random(baby_config(router={"kind": "expert_choice", "capacity_factor": 1.0}), seed=0)
    for fn in (export_ort_genai, export_ov_genai):
        with pytest.raises(curmoe.DecodingNotSupportedError, match="expert_choice"):
            fn(m, tmp_path / fn.__name__)
        assert not (tmp_path / fn.__name__).exists()


def test_missing_package_gives_the_install_line(tiny, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "openvino_tokenizers", None)
    with pytest.raises(curmoe.MissingExtraError, match=r"pip install 'curmoe\[genai\]'"):
        export_ov_genai(tiny, tmp_path / "ov")
    assert not (tmp_path / "ov").exists()


def test_cli_export_both_formats(tmp_path, capsys):
    from curmoe.app.cli import main

    assert main(["export", str(TINY), "--format", "ort-genai", "-o", str(tmp_path / "o"), "--json"]) == 0
    rec = json.loads(capsys.readouterr().out)
    assert rec["format"] == "ort-genai" and (tmp_path / "o" / "model.onnx").is_file()
    assert main(["export", str(TINY), "--format", "ort-genai", "-o", str(tmp_path / "o")]) == 2  # exists
    assert "--force" in capsys.readouterr().err
    assert main(["export", str(TINY), "--format", "ov-genai", "--no-cache", "-o", str(tmp_path / "v")]) == 2
    assert "--no-cache" in capsys.readouterr().err and not (tmp_path / "v").exists()


def test_byte_level_tokenizer_passes_through(tmp_path):
    """A Hugging Face byte-level BPE tokenizer (what imported models carry) is written unchanged, and both stacks'
    tokenizers encode and decode as Hugging Face does (non-ASCII and a leading space included)."""
    import openvino as ov
    from tokenizers import decoders, models, pre_tokenizers, trainers

    tok = tokenizers.Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(TEXT, trainers.BpeTrainer(vocab_size=300, special_tokens=["<pad>", "<eos>", "<unk>"],
                                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                                      show_progress=False))
    tok.save(str(tmp_path / "tokenizer.json"))
    template = "{% for m in messages %}<eos>{{ m['content'] }}{% endfor %}"
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"chat_template": template, "bos_token": "<pad>"}))
    m = curmoe.Model.random(baby_config(vocab_size=tok.get_vocab_size(), eos_token_id=1), seed=0, std=0.3)
    m.tokenizer_path = tmp_path / "tokenizer.json"
    assert export_ort_genai(m, tmp_path / "o")["tokenizer_added_pieces"] == 0
    export_ov_genai(m, tmp_path / "v")
    assert json.loads((tmp_path / "o" / "tokenizer.json").read_text()) == json.loads(tok.to_str())
    cfg = json.loads((tmp_path / "o" / "tokenizer_config.json").read_text())  # the source's template and bos kept
    assert cfg["chat_template"] == template and cfg["bos_token"] == "<pad>" and cfg["add_bos_token"] is False
    pipe_tok = ovg.Tokenizer(str(tmp_path / "v"))
    assert pipe_tok.chat_template == template
    otok = og.Tokenizer(og.Model(str(tmp_path / "o")))
    vtok = ov.compile_model(str(tmp_path / "v" / "openvino_tokenizer.xml"), "CPU")
    vdec = ov.compile_model(str(tmp_path / "v" / "openvino_detokenizer.xml"), "CPU")
    for s in ["the cat sat on the mat .", "a dog ran in the zoo, héllo ☃!", " leading space"]:
        ids = tok.encode(s).ids
        assert [int(i) for i in otok.encode(s)] == ids and [int(i) for i in vtok([s])["input_ids"][0]] == ids
        assert otok.decode(np.asarray(ids, np.int32)) == tok.decode(ids)
        assert vdec(np.asarray([ids], np.int64))["string_output"][0] == tok.decode(ids)
