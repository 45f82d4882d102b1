"""One opened pair of models and what is computed once for all its statistics (data, alignment, eval)."""
from __future__ import annotations

import time
from dataclasses import replace

import torch

from .align import align
from .data import shared_token_blocks, token_blocks, tokenizers_compatible, window_bos
from .errors import TracingError
from .evaluate import lm_losses, perplexity
from .models import default_device, resolve_dtype
from .options import Options
from .specs import is_demo
from .stats import Context, get
from .transforms import fold_norms, permute, rotate

TEXT_DEFAULT, DEMO_DEFAULT = "wikitext", "demo"


def max_positions(src) -> int | None:
    """A model's context length (``max_position_embeddings``), when its config says."""
    raw = getattr(getattr(src, "backend", None), "raw_config", None)  # config.json as data: no transformers
    cfg = raw if isinstance(raw, dict) else src.config
    n = cfg.get("max_position_embeddings") if isinstance(cfg, dict) else getattr(cfg, "max_position_embeddings", None)
    return int(n) if n else None


class Pair:
    """``base`` (θ₁) and ``ft`` (θ₂, after ``--permute`` / ``--rotate``) as weight sources, both
    with their norm gains folded when ``fold_norms`` (by default when either model is AWQ).

    ``base_ckpt``/``ft_ckpt``: the sources as opened (tokenizer, provenance when on disk);
    ``tokens``: evaluation ids to use for every data statistic instead of ``--dataset``.
    """

    def __init__(self, base_src, ft_src, options: Options, progress: bool, *, base_label: str, ft_label: str,
                 tokens: torch.Tensor | None = None, timings: dict | None = None):
        self.base_ckpt, self.ft_ckpt = base_src, ft_src
        self.base_spec, self.ft_spec, self.options, self.progress = base_label, ft_label, options, progress
        self.timings: dict[str, float] = dict(timings or {})
        self.device = options.device or default_device()
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise TracingError("--device cuda was given but no GPU is visible; use --device cpu")
        self.dtype = resolve_dtype(options.dtype, self.device)
        t = time.time()
        self.fold_norms = options.fold_norms
        if self.fold_norms is None:  # a format moving scales between norms and layers (AWQ): undo that in both
            self.fold_norms = any(getattr(getattr(s, "backend", None), "moves_norm_scales", False)
                                  for s in (base_src, ft_src))
        self.base = fold_norms(base_src) if self.fold_norms else base_src
        ft = fold_norms(ft_src) if self.fold_norms else ft_src
        if options.permute:
            ft = permute(ft, seed=options.seed)
        if options.rotate:
            ft = rotate(ft, seed=options.seed + 1)
        self.ft = ft
        self.timings["transform"] = time.time() - t
        self._given_tokens = tokens
        self._tokens: dict[str, torch.Tensor] = {}
        self._bos: dict[str, dict | None] = {}  # dataset → the BOS token each window starts with
        self._alignment = None
        self._vocab: list | None = None
        self._samples: dict[str, dict] = {}

    @property
    def is_demo(self) -> bool:
        return is_demo(self.base_spec)

    @property
    def same_shape(self) -> bool:
        """Both models have the same number of blocks and widths (L, d, h)."""
        a, b = self.base.arch, self.ft_ckpt.arch
        return (a.L, a.d, a.h) == (b.L, b.d, b.h)

    @property
    def upcycling(self) -> bool:
        """One model is dense and the other a mixture of experts."""
        return self.base.arch.has_experts != self.ft_ckpt.arch.has_experts

    def check(self, stats) -> None:
        """Every requested statistic against this pair, before any is computed; resolves the block
        size (an explicit one longer than the models' context is an error when data is used)."""
        ctx_len = [n for n in (max_positions(self.base_ckpt), max_positions(self.ft_ckpt)) if n]
        size = self.options.check_pair(self.base.arch, self.ft_ckpt.arch, stats, min(ctx_len) if ctx_len else None)
        self.options = replace(self.options, block_size=size)

    @property
    def block_size(self) -> int:
        return self.options.block_size or self.options.block_size_for(None)

    def _tokenizer(self, src):
        """A source's tokenizer: its ``tokenizer()`` method, or a tokenizer set on it as an attribute
        (a tokenizer is itself callable: tell them apart by ``get_vocab``)."""
        tok = getattr(src, "tokenizer", None)
        return tok if tok is None or hasattr(tok, "get_vocab") else tok()

    def tokens(self, dataset: str) -> torch.Tensor:
        if self._given_tokens is not None:
            return self._given_tokens
        if dataset not in self._tokens:
            t = time.time()
            o = self.options
            where = dict(block_size=self.block_size, num_samples=o.num_samples, seed=o.seed,
                         base_spec=self.base_spec, ft_spec=self.ft_spec, generated_dir=o.generated_dir)
            tok, vm = self._tokenizer(self.base_ckpt), self.by_string()
            if vm is not None:  # different tokenizers: text both split the same way, as shared-vocabulary ids
                self._bos[dataset] = None
                self._tokens[dataset], self._samples[dataset] = shared_token_blocks(
                    dataset, tok1=tok, tok2=self._tokenizer(self.ft_ckpt), vm=vm, **where)
            else:
                bos = window_bos(tok) if dataset != "random" else None
                self._bos[dataset] = None if bos is None else {"token": tok.convert_ids_to_tokens(bos), "id": bos}
                self._tokens[dataset] = token_blocks(dataset, tokenizer=tok,
                                                     shared_vocab=min(self.base.arch.V, self.ft_ckpt.arch.V), **where)
            self.timings["data"] = self.timings.get("data", 0.0) + time.time() - t
        return self._tokens[dataset]

    def by_string(self):
        """The vocabulary map when the two vocabularies are matched by token string (else None)."""
        vm = self.vocab()
        return vm if vm is not None and not vm.by_id else None

    def lanes(self, stat: str | None, ft=None) -> tuple:
        """The two models as a data statistic (``stat``, or --eval when None) runs them: with their
        vocabularies relabelled shared tokens first when the tokenizers differ (the evaluation ids
        are then shared-vocabulary ids); weight statistics get the models as they are."""
        ft = self.ft if ft is None else ft
        vm = self.by_string() if stat is None or get(stat).needs_data else None
        if vm is None:
            return self.base, ft
        from .transforms import VocabOrder
        o1, o2 = vm.orders()
        return VocabOrder(self.base, o1), VocabOrder(ft, o2)

    def dataset_for(self, stat: str | None) -> str:
        if self._given_tokens is not None:
            return "given token ids"
        default = get(stat).default_dataset if stat else None
        return self.options.dataset or default or (DEMO_DEFAULT if self.is_demo else TEXT_DEFAULT)

    def data_used(self, stat: str | None) -> dict | None:
        """Which data a statistic read, and how much of what was asked."""
        ds = self.dataset_for(stat)
        ids = self._given_tokens if self._given_tokens is not None else self._tokens.get(ds)
        if ids is None:
            return None
        out = {"dataset": ds, "num_blocks": int(ids.shape[0]), "block_size": int(ids.shape[1]),
               "num_samples_asked": self.options.num_samples, "bos": self._bos.get(ds)}
        vm = self.by_string() if self._given_tokens is None else None
        if vm is not None:  # the tokenizers differ: the text both split into the same tokens, shared-vocabulary ids
            out.update(self._samples.get(ds, {}), vocab=vm.record())
        return out

    def context(self, stat: str | None, options: Options | None = None) -> Context:
        opts = options or (self.options.for_stat(stat) if stat else self.options)
        return Context(opts, self.device, self.dtype, self.progress,
                       tokens=lambda: self.tokens(self.dataset_for(stat)), vocab=self.vocab)

    def vocab(self):
        """The two vocabularies mapped by token string when the tokenizers differ on the ids both
        models have; marked ``by_id`` when they agree there and θ₂ only adds tokens; None when they
        are the same (or a tokenizer is missing): then rows match by id."""
        if self._vocab is None:
            from .vocab import vocab_map
            V1, V2 = self.base.arch.V, self.ft_ckpt.arch.V
            try:
                tok1, tok2 = self._tokenizer(self.base_ckpt), self._tokenizer(self.ft_ckpt)
            except TracingError:  # a tokenizer that cannot be loaded counts as missing: rows match by id
                tok1 = tok2 = None
            vm = None if tok1 is None or tok2 is None else vocab_map(tok1, V1, tok2, V2)
            if vm is not None and tokenizers_compatible(tok1, tok2, min(V1, V2))[0]:
                vm.by_id = True
                vm = vm if vm.ft_only.size else None
            self._vocab = [vm]
        return self._vocab[0]

    def aligned_ft(self):
        if self._alignment is None:
            t = time.time()
            self._alignment = align(self.base, self.ft, progress=self.progress, vocab=self.vocab())
            self.timings["align"] = time.time() - t
        return self._alignment.apply(self.ft)

    def eval_losses(self) -> dict:
        ctx = self.context(None)
        dataset = self.dataset_for(None)
        t = time.time()
        ids, engine = self.tokens(dataset), ctx.engine()
        base, ft = self.lanes(None)
        if self.base.arch.L == self.ft_ckpt.arch.L:
            lb, lf = lm_losses(engine, [base, ft], ids, desc="eval")
        else:  # models of different depths cannot run in lockstep: one pass each
            (lb,), (lf,) = (lm_losses(engine, [m], ids, desc="eval") for m in (base, ft))
        self.timings["eval"] = time.time() - t
        return {"dataset": dataset, "base loss": lb, "ft loss": lf, "base ppl": perplexity(lb), "ft ppl": perplexity(lf),
                "bos": self._bos.get(dataset)}
