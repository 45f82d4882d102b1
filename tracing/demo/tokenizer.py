"""The demo family's byte-level BPE tokenizer, and packing text into token blocks."""
from __future__ import annotations

from .recipes import BLOCK_SIZE, BOS_ID, EOS_ID, MODEL_CONFIG, SPECIAL_TOKENS, VOCAB_SIZE


def _train_tokenizer(docs: list[str]):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        min_frequency=2,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(docs, trainer=trainer, length=len(docs))
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", BOS_ID)]
    )
    for i, t in enumerate(SPECIAL_TOKENS):
        assert tok.token_to_id(t) == i, (t, tok.token_to_id(t))
    return tok


def _wrap_tokenizer(raw_tok):
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(
        tokenizer_object=raw_tok,
        bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>",
        model_max_length=MODEL_CONFIG["max_position_embeddings"],
        clean_up_tokenization_spaces=False,
    )


def _pack(raw_tok, docs: list[str]):
    """Token blocks [N, BLOCK_SIZE]: each document as ``<s> ... </s>``, concatenated, remainder dropped."""
    import torch

    ids: list[int] = []
    for enc in raw_tok.encode_batch(docs, add_special_tokens=True):
        ids.extend(enc.ids)
        ids.append(EOS_ID)
    n = len(ids) // BLOCK_SIZE
    return torch.tensor(ids[: n * BLOCK_SIZE], dtype=torch.long).view(n, BLOCK_SIZE)


