"""A pretrained model's folder through the normal CLI (issue 14): a subword tokenizer (no <eos>) is evaluated on raw
WikiText-2 with the sliding-window protocol, calibrates on the word-level train text, and Model.save keeps its
tokenizer files (tokenizer_config.json with the chat template)."""

from __future__ import annotations

import json

import numpy as np
import pytest

import curmoe
from curmoe.common.errors import InvalidInputError
from tests.babies import TEXT, baby_config

tokenizers = pytest.importorskip("tokenizers")

TEMPLATE = "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
RAW = ["", " = Cats = ", "", " The cat sat on the mat , and the dog ran in the park . ",
       " We eat bread and drink tea ; the sun is hot . "] * 6


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    """A baby model with a byte-level BPE tokenizer (no <eos>) and a tokenizer_config.json with a chat template,
    laid out as `curmoe pretrained` writes one; and a small WikiText-2 folder with raw valid/test."""
    d = tmp_path_factory.mktemp("hf")
    tk = tokenizers
    tok = tk.Tokenizer(tk.models.BPE())
    tok.pre_tokenizer = tk.pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = tk.decoders.ByteLevel()
    tok.train_from_iterator(TEXT + RAW, tk.trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=tk.pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    src = d / "src"
    src.mkdir()
    tok.save(str(src / "tokenizer.json"))
    (src / "tokenizer_config.json").write_text(json.dumps(
        {"eos_token": "<|im_end|>", "bos_token": "<|im_start|>", "chat_template": TEMPLATE}))
    cfg = baby_config(vocab_size=tok.get_vocab_size(), eos_token_id=tok.token_to_id("<|im_end|>"),
                      layer_types=("dense", "dense"), dense_d_ff=32)
    model = curmoe.Model.random(cfg, seed=0, std=0.3, dtype=np.float32)
    model.tokenizer_path = src / "tokenizer.json"
    folder = model.save(d / "model")
    data = d / "data"
    (data / "wikitext-2").mkdir(parents=True)
    (data / "wikitext-2-raw").mkdir()
    for split in ("train", "valid", "test"):
        (data / "wikitext-2" / f"{split}.txt").write_text("\n".join(TEXT) + "\n")
    for split in ("valid", "test"):
        (data / "wikitext-2-raw" / f"{split}.txt").write_text("\n".join(RAW) + "\n")
    return folder, data


def test_save_keeps_the_tokenizer_files_and_chat_template(hf_dir, tmp_path) -> None:
    from curmoe.models.pretrained import as_single_expert
    from curmoe.models.tokenizer import load_hf_tokenizer

    folder, _ = hf_dir
    assert (folder / "tokenizer_config.json").is_file()
    model = curmoe.load(folder)
    small = curmoe.compress(as_single_expert(model), curmoe.SVDConfig(ratio=0.5), progress=False)
    again = curmoe.load(small.save(tmp_path / "compressed")).save(tmp_path / "resaved")  # compress, then re-save
    for f in (tmp_path / "compressed", again):
        tok = load_hf_tokenizer(f)
        assert tok.chat_template == TEMPLATE
        assert tok.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=False) == \
            "<|im_start|>user\nhi<|im_end|>\n"
        assert tok.eos_token_id == model.config.eos_token_id


def test_eval_subword_is_the_raw_sliding_window_protocol(hf_dir) -> None:
    from curmoe.eval import load_wikitext2, perplexity
    from curmoe.models.tokenizer import encode_text, load_hf_tokenizer
    from curmoe.runtimes import load
    from curmoe.runtimes.evaluate import evaluate_wikitext2, is_word_level

    folder, data = hf_dir
    assert not is_word_level(folder / "tokenizer.json")
    sess = load(folder, "reference")
    res = evaluate_wikitext2(sess, folder / "tokenizer.json", split="valid", data_dir=str(data), max_tokens=150)
    raw = load_wikitext2("valid", raw=True, data_dir=str(data))
    ids = encode_text(load_hf_tokenizer(folder), raw)
    model = curmoe.load(folder)
    want = perplexity(model.forward, ids, n_words=raw.n_words, context=64, stride=32, max_tokens=150)
    assert res.protocol["context"] == 64 and res.protocol["stride"] == 32  # min(max_seq_len, 1024), context // 2
    assert res.protocol["split"] == "wikitext2-raw:valid" and res.protocol["mode"] == "sliding-window"
    np.testing.assert_allclose(res.ppl_token, want.ppl_token, rtol=1e-6)
    np.testing.assert_allclose(res.ppl_word, want.ppl_word, rtol=1e-6)
    with pytest.raises(InvalidInputError, match="split 'train' has no raw text.*pass --split valid or --split test"):
        evaluate_wikitext2(sess, folder / "tokenizer.json", split="train", data_dir=str(data))


def test_calibration_text_for_a_subword_tokenizer(hf_dir) -> None:
    from curmoe.app.calibdata import calibration_ids
    from curmoe.eval import load_wikitext2
    from curmoe.models.tokenizer import encode_text, load_hf_tokenizer

    folder, data = hf_dir
    model = curmoe.load(folder)
    ids = calibration_ids("wikitext2:train", model, data_dir=str(data), n_tokens=128, seq_len=32)
    train = load_wikitext2("train", data_dir=str(data))
    want = encode_text(load_hf_tokenizer(folder), train)[:128].reshape(-1, 32)  # lines + "\n", one stream, no <eos>
    np.testing.assert_array_equal(ids, want)
    with pytest.raises(InvalidInputError, match="would leak the evaluation text; pass --calib wikitext2:train"):
        calibration_ids("wikitext2:valid", model, data_dir=str(data))


def test_cli_eval_and_compress_on_a_pretrained_style_folder(hf_dir, tmp_path, capsys) -> None:
    from curmoe.app.cli import main
    from curmoe.models.pretrained import as_single_expert

    folder, data = hf_dir
    assert main(["eval", str(folder), "--data-dir", str(data), "--max-tokens", "100", "--json"]) == 0
    rec = json.loads(capsys.readouterr().out)
    assert rec["protocol"]["split"] == "wikitext2-raw:valid" and np.isfinite(rec["ppl_token"])
    assert main(["eval", str(folder), "--data-dir", str(data), "--split", "train"]) == 2
    assert "pass --split valid or --split test" in capsys.readouterr().err
    moe_dir = as_single_expert(curmoe.load(folder)).save(tmp_path / "moe")  # compress works on MoE layers
    out = tmp_path / "small"
    assert main(["compress", str(moe_dir), "--method", "svd-llm", "--ratio", "0.5", "--calib", "wikitext2:train",
                 "--calib-tokens", "256", "--data-dir", str(data), "-o", str(out), "--no-calib-cache",
                 "--json"]) == 0
    capsys.readouterr()
    assert (out / "tokenizer_config.json").is_file()
    assert main(["eval", str(out), "--data-dir", str(data), "--max-tokens", "100", "--json"]) == 0
    assert np.isfinite(json.loads(capsys.readouterr().out)["ppl_token"])


def test_compress_takes_the_dense_folder_itself(hf_dir, tmp_path, capsys) -> None:
    """`curmoe compress` on an all-dense folder compresses each FFN as one always-on expert (as_single_expert);
    the library names that fix instead of dividing by zero expert parameters."""
    from curmoe.app.cli import main

    folder, data = hf_dir
    out = tmp_path / "small"
    assert main(["compress", str(folder), "--method", "cur-neuron", "--ratio", "0.5", "--calib", "wikitext2:train",
                 "--calib-tokens", "256", "--data-dir", str(data), "-o", str(out), "--no-calib-cache",
                 "--json"]) == 0
    rec = json.loads(capsys.readouterr().out)
    assert rec["ratio_expert_params"] >= 0.5 and (out / "tokenizer_config.json").is_file()
    with pytest.raises(InvalidInputError, match="no experts to compress.*as_single_expert"):
        curmoe.compress(curmoe.load(folder), curmoe.SVDConfig(ratio=0.5))
