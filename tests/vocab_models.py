"""Tiny word-level tokenizers (built locally with the tokenizers library) and tiny models whose
vocabularies differ: extended with transplanted rows, replaced except for some shared tokens,
or independent with another tokenizer."""
from __future__ import annotations

import itertools

import numpy as np
import torch

from helpers import finetuned, tiny_config, tiny_model

SPECIALS = ("<unk>", "<s>", "</s>")
_SYL = ["ka", "lo", "mi", "nu", "pe", "ri", "so", "tu", "va", "ze", "bo", "di", "fa", "gu", "he", "jo"]
WORDS = ["".join(p) for p in itertools.product(_SYL, repeat=2)] + \
        ["".join(p) for p in itertools.product(_SYL[:8], repeat=3)]  # 256 + 512 distinct words


def word_tokenizer(words, style: str = "byte"):
    """A word-level tokenizer over ``words`` (after the specials): ``byte`` spells a word after a
    space ``Ġword`` (byte-level BPE), ``spm`` spells it ``▁word`` (SentencePiece)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    mark = "Ġ" if style == "byte" else "\u2581"
    vocab = {t: i for i, t in enumerate(list(SPECIALS) + [mark + w for w in words])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    if style == "byte":
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True, use_regex=True)
        tok.decoder = decoders.ByteLevel()
    else:
        tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always")
        tok.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="always")
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>")


def with_vocab(model, rows: torch.Tensor, head: torch.Tensor | None = None):
    """``model`` with its embedding (and untied lm_head) replaced by ``rows`` [V × d]."""
    model.resize_token_embeddings(rows.shape[0])
    with torch.no_grad():
        model.get_input_embeddings().weight.copy_(rows)
        if head is not None:
            model.get_output_embeddings().weight.copy_(head)
    model.config.vocab_size = rows.shape[0]
    return model


def transplant_rows(E: torch.Tensor, n: int, seed: int, atoms: int = 4) -> torch.Tensor:
    """``n`` new rows, each a sparse combination of ``atoms`` rows of ``E`` (what tokensurgeon's
    orthogonal matching pursuit produces)."""
    g = torch.Generator().manual_seed(seed)
    out = torch.empty(n, E.shape[1])
    for j in range(n):
        idx = torch.randperm(E.shape[0], generator=g)[:atoms]
        out[j] = torch.randn(atoms, generator=g) @ E[idx]
    return out


def extended(base, words, frac: float, seed: int):
    """A fine-tune of ``base`` whose vocabulary grew by ``frac`` new words (appended ids), their
    embedding and lm_head rows transplanted from the existing ones; returns (model, words)."""
    ft = finetuned(base, seed=seed)
    E, H = ft.get_input_embeddings().weight.detach(), ft.get_output_embeddings().weight.detach()
    n_new = int(round(frac * len(words)))
    new_words = [w for w in WORDS if w not in set(words)][:n_new]
    add = transplant_rows(E[len(SPECIALS):], n_new, seed)
    head = torch.cat([H, transplant_rows(H[len(SPECIALS):], n_new, seed + 1)])
    return with_vocab(ft, torch.cat([E, add]), head), list(words) + new_words


def replaced(base, words, keep: float, seed: int):
    """A fine-tune of ``base`` whose vocabulary was replaced except for a fraction ``keep`` of its
    words, in a new id order, the replaced tokens' rows re-initialised; returns (model, words)."""
    ft = finetuned(base, seed=seed)
    rng = np.random.default_rng(seed)
    n = len(words)
    kept = sorted(rng.choice(n, int(round(keep * n)), replace=False).tolist())
    fresh = [w for w in WORDS if w not in set(words)][: n - len(kept)]
    new_words = [words[i] for i in kept] + fresh
    order = rng.permutation(n)
    new_words = [new_words[i] for i in order]
    src = {w: i for i, w in enumerate(words)}
    k = len(SPECIALS)
    E, H = ft.get_input_embeddings().weight.detach(), ft.get_output_embeddings().weight.detach()
    std = float(E.std())
    g = torch.Generator().manual_seed(seed)
    rows_e, rows_h = [E[:k]], [H[:k]]
    for w in new_words:
        if w in src:
            rows_e.append(E[k + src[w]][None])
            rows_h.append(H[k + src[w]][None])
        else:
            rows_e.append(std * torch.randn(1, E.shape[1], generator=g))
            rows_h.append(std * torch.randn(1, E.shape[1], generator=g))
    return with_vocab(ft, torch.cat(rows_e), torch.cat(rows_h)), new_words


def random_words(n: int, seed: int, pool: int = 200) -> list[str]:
    """``n`` words drawn from the first ``pool`` (two draws share about n²/pool words), in random order."""
    rng = np.random.default_rng(seed)
    return [WORDS[i] for i in rng.choice(pool, n, replace=False)]


def word_model(words, seed: int, d: int = 32, h: int = 64, L: int = 2):
    return tiny_model(tiny_config(d=d, h=h, L=L, V=len(SPECIALS) + len(words)), seed=seed)


def save(folder, model, words, style: str = "byte") -> str:
    model.save_pretrained(folder)
    word_tokenizer(words, style).save_pretrained(folder)
    return str(folder)
