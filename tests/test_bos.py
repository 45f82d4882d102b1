"""Evaluation windows start with the tokenizer's BOS token when its config asks for one (as Gemma's
and Llama 3's do), for --eval and every data statistic; the record says so. Tiny Llama models with
a tiny word-level tokenizer built here (no network)."""
import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

from helpers import finetuned, tiny_config, tiny_model

import tracing
from tracing.data import read_text_file, token_blocks, window_bos

WORDS = ("the a model of weights was trained on text and tested with each token window from data "
         "block layer unit every pair one two three four five six seven eight nine ten").split()
SPECIAL = ["<pad>", "<bos>", "<eos>", "<unk>"]
TEXT = "\n".join(" ".join(WORDS[(i * 7 + j * 3) % len(WORDS)] for j in range(12)) for i in range(60))
BLOCK = 16


def tiny_tokenizer(asks_bos: bool) -> PreTrainedTokenizerFast:
    """A word-level tokenizer; with ``asks_bos`` its post-processor prepends <bos> (Gemma, Llama 3)
    and its config says ``add_bos_token``."""
    vocab = {t: i for i, t in enumerate(SPECIAL + WORDS)}
    raw = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    if asks_bos:
        raw.post_processor = processors.TemplateProcessing(single="<bos> $A", pair="<bos> $A <bos> $B",
                                                           special_tokens=[("<bos>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=raw, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>",
                                   unk_token="<unk>", add_bos_token=asks_bos)


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    root = tmp_path_factory.mktemp("bos")
    (root / "text.txt").write_text(TEXT)
    cfg = tiny_config(V=64, L=2, d=32, h=64)
    base = tiny_model(cfg, seed=0)
    out = {"text": str(root / "text.txt")}
    for asks in (True, False):
        tok = tiny_tokenizer(asks)
        for name, model in (("base", base), ("ft", finetuned(base, seed=1, noise=0.2))):
            folder = root / f"{name}-{'bos' if asks else 'plain'}"
            model.save_pretrained(folder)
            tok.save_pretrained(folder)
            out[name, asks] = str(folder)
    return out


def _text_ids(tok, path) -> list[int]:
    """The text's ids as the toolkit packs them: each document, then EOS."""
    ids = []
    for doc in read_text_file(Path(path)):
        ids += tok(doc, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    return ids


def test_windows_start_with_bos_only_when_the_tokenizer_asks(pair):
    tok = tiny_tokenizer(True)
    assert window_bos(tok) == 1 and window_bos(tiny_tokenizer(False)) is None
    ids = token_blocks(pair["text"], tokenizer=tok, shared_vocab=64, block_size=BLOCK, num_samples=4, seed=0)
    text = _text_ids(tok, pair["text"])
    assert ids.shape == (4, BLOCK) and (ids[:, 0] == 1).all()
    assert ids[:, 1:].reshape(-1).tolist() == text[: 4 * (BLOCK - 1)]  # the text, BLOCK − 1 tokens a window
    plain = token_blocks(pair["text"], tokenizer=tiny_tokenizer(False), shared_vocab=64, block_size=BLOCK,
                         num_samples=4, seed=0)
    assert plain.reshape(-1).tolist() == text[: 4 * BLOCK] and not (plain[:, 0] == 1).all()
    rnd = token_blocks("random", tokenizer=tok, shared_vocab=64, block_size=BLOCK, num_samples=4, seed=0)
    assert torch.equal(rnd, torch.randint(0, 64, (4, BLOCK), generator=torch.Generator().manual_seed(0)))


def _loss(folder, ids) -> float:
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    with torch.no_grad():
        logits = model(ids).logits[:, :-1].float()
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1)).item()


@pytest.mark.parametrize("asks", [True, False])
def test_eval_feeds_bos_windows_and_the_record_says_so(pair, asks):
    opts = dict(dataset=pair["text"], block_size=BLOCK, num_samples=4)
    res = tracing.compare(pair["base", asks], pair["ft", asks], stat="jsd", eval=True, **opts)
    tok = tiny_tokenizer(asks)
    text = torch.tensor(_text_ids(tok, pair["text"]))
    if asks:
        ids = torch.cat([torch.ones(4, 1, dtype=torch.long), text[: 4 * (BLOCK - 1)].view(4, BLOCK - 1)], 1)
    else:
        ids = text[: 4 * BLOCK].view(4, BLOCK)
    e = res["eval"]
    assert e["base loss"] == pytest.approx(_loss(pair["base", asks], ids), rel=1e-4)
    assert e["ft loss"] == pytest.approx(_loss(pair["ft", asks], ids), rel=1e-4)
    data = res["data"]
    assert data["bos"] == ({"token": "<bos>", "id": 1} if asks else None)
    assert any("<bos>" in n and "window" in n for n in res["notes"]) == asks


@pytest.mark.parametrize("stat", ["mode", "jsd", "csh", "match"])
def test_every_data_statistic_records_the_bos_it_added(pair, stat):
    res = tracing.compare(pair["base", True], pair["ft", True], stat=stat, dataset=pair["text"], block_size=BLOCK,
                          num_samples=4)
    assert res["data"]["bos"] == {"token": "<bos>", "id": 1}
    assert math.isfinite(res.statistic)
    # the same pair with a tokenizer that asks for none reads the windows as before, and says nothing
    plain = tracing.compare(pair["base", False], pair["ft", False], stat=stat, dataset=pair["text"],
                            block_size=BLOCK, num_samples=4)
    assert plain["data"]["bos"] is None and not any("<bos>" in n for n in plain["notes"])
    assert json.dumps(res["data"])  # plain values
