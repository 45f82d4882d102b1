"""The demo family's recipes: names, lineage, model shape, training schedule.

Bump ``VERSION`` whenever anything that changes the built files changes (corpus lists, tokenizer,
recipe): it names the cache folder (``demo-<VERSION>``).
"""
from __future__ import annotations

from dataclasses import dataclass

from ..errors import TracingError
from ..specs import DEMO_PREFIX, demo_name  # noqa: F401 - DEMO_PREFIX re-exported: model ids are tracing.specs'

# Bump whenever anything that changes the built files changes (corpus lists, tokenizer, recipe).
VERSION = "v2"

ENV_DIR = "TRACING_DEMO_DIR"
ENV_WORKERS = "TRACING_DEMO_WORKERS"  # parallel training processes (default: min(2, cores))

MODEL_NAMES: tuple[str, ...] = ("base-a", "base-b", "base-c", "a-docs", "a-docs-v2", "a-sys", "b-docs")
SLICE_FILES = {"pretrain": "train.txt", "docs": "docs.txt", "sys": "sys.txt", "eval": "eval.txt"}

VOCAB_SIZE = 1024
BLOCK_SIZE = 128
BATCH_SIZE = 16
SPECIAL_TOKENS = ("<unk>", "<s>", "</s>", "<pad>")  # ids 0..3, as in Llama (unk 0, bos 1, eos 2)
UNK_ID, BOS_ID, EOS_ID, PAD_ID = 0, 1, 2, 3

MODEL_CONFIG = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=4,
    max_position_embeddings=256,
    tie_word_embeddings=False,
    rms_norm_eps=1e-5,
    hidden_act="silu",
    initializer_range=0.02,
)

_MARKER = ".model-tracing-demo"  # first file of every build: proves a directory is ours to replace
_COMPLETE = "COMPLETE"



@dataclass(frozen=True)
class Recipe:
    name: str
    parent: str | None
    data: str
    steps: int
    lr: float
    warmup: int
    init_seed: int  # the seed that initialised the root's weights
    data_seed: int  # order of training blocks


_BASE_STEPS, _FT_STEPS = 600, 150
_BASE_LR, _FT_LR = 3e-3, 5e-4

RECIPES: dict[str, Recipe] = {
    r.name: r
    for r in (
        Recipe("base-a", None, "pretrain", _BASE_STEPS, _BASE_LR, 40, 1, 1),
        Recipe("base-b", None, "pretrain", _BASE_STEPS, _BASE_LR, 40, 2, 2),
        Recipe("base-c", None, "pretrain", _BASE_STEPS, _BASE_LR, 40, 3, 3),
        Recipe("a-docs", "base-a", "docs", _FT_STEPS, _FT_LR, 10, 1, 11),
        Recipe("a-docs-v2", "a-docs", "sys", _FT_STEPS, _FT_LR, 10, 1, 12),
        Recipe("a-sys", "base-a", "sys", _FT_STEPS, _FT_LR, 10, 1, 13),
        Recipe("b-docs", "base-b", "docs", _FT_STEPS, _FT_LR, 10, 2, 14),
    )
}
assert tuple(RECIPES) == MODEL_NAMES
# What each training worker trains, in order: equal numbers of steps (1200 each), so neither waits
# for the other (the dependency chains alone split 1050 / 1350). A model whose parent the other
# worker trains starts from that parent's saved float32 weights, which equal the trained ones bit
# for bit; one worker (TRACING_DEMO_WORKERS=1) trains the plans one after the other.
_CHAINS = (("base-a", "base-c"), ("base-b", "b-docs", "a-docs", "a-docs-v2", "a-sys"))
assert sorted(n for c in _CHAINS for n in c) == sorted(MODEL_NAMES)
_TINY_STEPS = 3  # tiny=True: the machinery only (tests of locking and caching)


def _recipe_signature(tiny: bool) -> str:
    return f"model-tracing demo zoo {VERSION} {'tiny' if tiny else 'full'}"


def _name(spec_or_name: str) -> str:
    name = demo_name(spec_or_name) or spec_or_name
    if name not in RECIPES:
        raise TracingError(f"unknown demo model {name!r}; available: {', '.join(MODEL_NAMES)}")
    return name


def root_of(name: str) -> str:
    """The base model a demo model descends from (itself for a base). Accepts ``demo:<name>``."""
    name = _name(name)
    while RECIPES[name].parent is not None:
        name = RECIPES[name].parent
    return name


def are_dependent(a: str, b: str) -> bool:
    """True iff the two demo models share a root (one is derived from the other or both from one base)."""
    return root_of(a) == root_of(b)

