"""Evaluation data → token blocks ``[num_samples, block_size]``, the same ids for both models.

Sources (``--dataset``): ``wikitext`` (the hub's dlwh/wikitext_103_detokenized test split),
``random`` (uniform ids below the shared vocabulary), ``generated`` (generate.py's JSON for the
pair), ``demo`` (the demo family's held-out text), or a local ``.txt`` / ``.jsonl`` / ``.json``.
Text is tokenised with the base model's tokenizer and packed into blocks. When the two models'
tokenizers differ, only the text samples (paragraphs) both split into the same tokens are used,
as ids of the shared vocabulary (:func:`shared_token_blocks`).
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from .errors import TracingError

WIKITEXT = "dlwh/wikitext_103_detokenized"
PROBES = ["The quick brown fox jumps over the lazy dog.", "def f(x):\n    return x ** 2  # square",
          "Über naïve café — 東京 1234567890 !?", "   leading spaces\tand\ttabs\n\nnew lines"]


def tokenizers_compatible(tok1, tok2, shared: int) -> tuple[bool, str]:
    """Whether both tokenizers map the same strings to the same ids on the ids both models share
    (their vocabularies agree below ``shared`` and a few probe strings split identically)."""
    if tok1 is None or tok2 is None:
        return True, "a tokenizer is missing; assuming the base tokenizer applies to both"
    v1 = {t: i for t, i in tok1.get_vocab().items() if i < shared}
    v2 = {t: i for t, i in tok2.get_vocab().items() if i < shared}
    if v1 != v2:
        diff = len(set(v1.items()) ^ set(v2.items()))
        return False, f"{diff} token/id entries differ below id {shared}"
    for s in PROBES:
        a = [i for i in tok1(s, add_special_tokens=False)["input_ids"]]
        b = [i for i in tok2(s, add_special_tokens=False)["input_ids"]]
        if a != b:
            return False, f"they split {s[:20]!r} differently"
    return True, "same vocabulary on the shared range"


def read_text_file(path: Path) -> list[str]:
    if not path.is_file():
        raise TracingError(f"dataset file {path} does not exist")
    suffix = path.suffix.lower()
    try:
        if suffix == ".txt":
            texts = [path.read_text(encoding="utf-8")]
        elif suffix == ".jsonl":
            texts = []
            for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
                if line.strip():
                    obj = json.loads(line)
                    texts.append(obj["text"] if isinstance(obj, dict) else str(obj))
        elif suffix == ".json":
            obj = json.loads(path.read_text(encoding="utf-8"))
            texts = _texts_from_json(obj)
        else:
            raise TracingError(f"dataset {path} has an unknown type; use .txt, .jsonl or .json")
    except (json.JSONDecodeError, KeyError, UnicodeDecodeError) as e:
        raise TracingError(f"cannot read dataset {path} ({type(e).__name__}: {e}); "
                           f"JSON lines need a 'text' field") from None
    texts = [t for t in texts if t and t.strip()]
    if not texts:
        raise TracingError(f"dataset {path} holds no text; give a file with some text in it")
    return texts


def _texts_from_json(obj) -> list[str]:
    if isinstance(obj, dict) and "samples" in obj:  # generate.py output
        return [s["text"] if isinstance(s, dict) else str(s) for s in obj["samples"]]
    if isinstance(obj, dict) and "text" in obj:
        return [obj["text"]] if isinstance(obj["text"], str) else list(obj["text"])
    if isinstance(obj, list):
        return [o["text"] if isinstance(o, dict) else str(o) for o in obj]
    raise KeyError("text")


def generated_path(folder: str | Path, spec: str) -> Path:
    from .cli_util import slug
    return Path(folder) / f"{slug(spec)}.json"


def load_texts(dataset: str, base_spec: str, ft_spec: str, generated_dir: str | Path) -> list[str]:
    if dataset == "wikitext":
        try:
            import datasets
            ds = datasets.load_dataset(WIKITEXT, split="test")
        except Exception as e:
            raise TracingError(f"cannot load {WIKITEXT} ({type(e).__name__}); it needs the hub: pre-download it, "
                               f"or use --dataset random|demo|PATH") from None
        return [t for t in ds["text"] if t.strip()]
    if dataset == "demo":
        from .demo import demo_eval_text_path
        return read_text_file(demo_eval_text_path())
    if dataset == "generated":
        texts = []
        for spec in (base_spec, ft_spec):
            p = generated_path(generated_dir, spec)
            if not p.is_file():
                raise TracingError(f"no generated samples for {spec} at {p}; run generate.py for it first "
                                   f"(or pass --generated_dir)")
            texts += read_text_file(p)
        return texts
    return read_text_file(Path(dataset))


def window_bos(tokenizer) -> int | None:
    """The BOS id each evaluation window starts with, when the tokenizer's config asks for one: when
    encoding a text with its special tokens puts BOS first (``add_bos_token``, Gemma's and Llama 3's
    post-processors), as the model saw it in training. ``None`` otherwise."""
    bos = getattr(tokenizer, "bos_token_id", None)
    if tokenizer is None or bos is None:
        return None
    try:
        with_special = tokenizer("a", add_special_tokens=True, verbose=False)["input_ids"]
        plain = tokenizer("a", add_special_tokens=False, verbose=False)["input_ids"]
    except Exception:  # noqa: BLE001 - a tokenizer that cannot say: no BOS, as before
        return None
    return int(bos) if with_special[:1] == [bos] and plain[:1] != [bos] else None


def token_blocks(dataset: str, *, tokenizer, shared_vocab: int, block_size: int, num_samples: int, seed: int,
                 base_spec: str = "", ft_spec: str = "", generated_dir: str | Path = "results/generated") -> torch.Tensor:
    """``[n, block_size]`` token ids, ``n <= num_samples``, all below ``shared_vocab``. Text is packed
    into windows; when the tokenizer asks for a BOS token (:func:`window_bos`) each window is that
    token followed by ``block_size − 1`` text tokens. Random ids are left as drawn."""
    if dataset == "random":
        g = torch.Generator().manual_seed(int(seed))
        return torch.randint(0, shared_vocab, (num_samples, block_size), generator=g)
    texts = load_texts(dataset, base_spec, ft_spec, generated_dir)
    if tokenizer is None:
        raise TracingError(f"--dataset {dataset} needs the base model's tokenizer, but it has none; "
                           f"use --dataset random or add the tokenizer files")
    bos = window_bos(tokenizer)
    width = block_size - (bos is not None)  # text tokens per window
    if width < 1:
        raise TracingError(f"--block_size {block_size} leaves no room for text after the BOS token; use a larger one")
    ids: list[int] = []
    need = width * num_samples
    sep = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    for t in texts:
        ids += tokenizer(t, add_special_tokens=False, verbose=False)["input_ids"] + sep
        if len(ids) >= need:
            break
    n = min(num_samples, len(ids) // width)
    if n == 0:
        raise TracingError(f"dataset {dataset} gives {len(ids)} tokens, fewer than one block of {block_size}; "
                           f"use a smaller --block_size or more text")
    out = torch.tensor(ids[: n * width], dtype=torch.long).view(n, width)
    if bos is not None:
        out = torch.cat([torch.full((n, 1), bos, dtype=torch.long), out], dim=1)
    if int(out.max()) >= shared_vocab:
        raise TracingError(f"dataset {dataset} tokenises to id {int(out.max())}, past the vocabulary the two models "
                           f"share ({shared_vocab}); the tokenizers are not compatible for this text")
    return out


def _pack(samples: list[list[int]], sep: list[int], block_size: int, num_samples: int) -> torch.Tensor:
    ids: list[int] = []
    for s in samples:
        ids += s + sep
        if len(ids) >= block_size * num_samples:
            break
    n = min(num_samples, len(ids) // block_size)
    return torch.tensor(ids[: n * block_size], dtype=torch.long).view(n, block_size)


def identical_samples(texts: list[str], tok1, tok2, vm) -> tuple[list[list[int]], int]:
    """The paragraphs of ``texts`` that both tokenizers split into the same tokens (the same
    normalised token strings, in the same order, none of them the unknown token), as positions in
    ``vm``'s shared vocabulary; and the number of paragraphs examined."""
    from .vocab import id_keys
    k1, k2 = id_keys(tok1, vm.base_vocab), id_keys(tok2, vm.ft_vocab)
    pos = {k: j for j, k in enumerate(vm.keys)}
    unk = {k1.get(getattr(tok1, "unk_token_id", None)), k2.get(getattr(tok2, "unk_token_id", None))} - {None}
    out, total = [], 0
    for text in texts:
        for para in (p for p in text.split("\n\n") if p.strip()):
            total += 1
            a = [k1.get(i) for i in tok1(para, add_special_tokens=False, verbose=False)["input_ids"]]
            b = [k2.get(i) for i in tok2(para, add_special_tokens=False, verbose=False)["input_ids"]]
            if a == b and all(k in pos and k not in unk for k in a):
                out.append([pos[k] for k in a])
    return out, total


def shared_token_blocks(dataset: str, *, tok1, tok2, vm, block_size: int, num_samples: int, seed: int,
                        base_spec: str = "", ft_spec: str = "",
                        generated_dir: str | Path = "results/generated") -> tuple[torch.Tensor, dict]:
    """``[n, block_size]`` ids of the shared vocabulary (position j is ``vm.keys[j]`` in both
    models, see :meth:`~tracing.vocab.VocabMap.orders`), and how many samples qualified."""
    if dataset == "random":
        g = torch.Generator().manual_seed(int(seed))
        return torch.randint(0, vm.shared, (num_samples, block_size), generator=g), {}
    samples, total = identical_samples(load_texts(dataset, base_spec, ft_spec, generated_dir), tok1, tok2, vm)
    from .vocab import SPECIAL
    eos = getattr(tok1, "eos_token", None)
    key = SPECIAL + eos.encode("utf-8") if eos else None
    sep = [vm.keys.index(key)] if key in vm.keys else []
    out = _pack(samples, sep, block_size, num_samples)
    info = {"samples_total": total, "samples_qualified": len(samples)}
    if out.shape[0] == 0:
        got = sum(len(s) + len(sep) for s in samples)
        raise TracingError(f"the tokenizers differ and only {len(samples)} of {total} text samples of {dataset} split "
                           f"into the same tokens under both ({got} tokens, fewer than one block of {block_size}; "
                           f"{vm.describe()}); use more text, a smaller --block_size, or --dataset random")
    return out, info
