"""The offline demo model family: tiny Llama models trained here, on CPU, with known lineage.

No network is needed. The corpus is the standard library's own documentation (docstrings of a
fixed list of modules, plus the language-reference topics that ship in ``pydoc_data``); a
byte-level BPE tokenizer is trained on it; seven small Llama models are trained from it:

==============  ==========  =========  =============================================
name            parent      root       recipe
==============  ==========  =========  =============================================
``base-a``      --          base-a     init seed 1, pretrained on ``pretrain``
``base-b``      --          base-b     init seed 2, pretrained on ``pretrain``
``base-c``      --          base-c     init seed 3, pretrained on ``pretrain``
``a-docs``      base-a      base-a     fine-tuned on ``docs`` (text-processing modules)
``a-docs-v2``   a-docs      base-a     fine-tuned on ``sys`` (os / io / network modules)
``a-sys``       base-a      base-a     fine-tuned on ``sys``
``b-docs``      base-b      base-b     fine-tuned on ``docs``
==============  ==========  =========  =============================================

Two models are dependent iff they share a root. Users name the models ``demo:<name>``.

Layout of a built family (``ensure_built()`` returns ``<root>``)::

    <root>/COMPLETE                  written last; its content names the recipe version
    <root>/lineage.json              {"models": {name: {...}}, "version": ...}
    <root>/corpus/{train,docs,sys,eval}.txt   one whitespace-normalised document per line
    <root>/tokenizer/                the shared tokenizer (PreTrainedTokenizerFast)
    <root>/<name>/                   config.json, model.safetensors (float32), tokenizer files

The root is ``$TRACING_DEMO_DIR`` if set, else ``~/.cache/model-tracing/demo-<VERSION>``
(``$XDG_CACHE_HOME`` replaces ``~/.cache`` when set). A build costs about 190 s of CPU time (two
training processes of one thread each, 1200 optimizer steps each): about 2 minutes on two idle
cores, proportionally longer on busy ones. It happens once; concurrent callers serialise on
``<root>/.lock``, the tree is built in ``<root>/.building-<pid>`` and moved into place with
``COMPLETE`` last, so a reader never sees a half-built family and nothing is written beside the root. Models are trained by worker
processes (``$TRACING_DEMO_WORKERS``, default min(2, cores)) with one torch thread each, so a
rebuild gives byte-identical weight files whatever the number of cores or workers (same Python,
torch and CPU type); only timings in ``lineage.json`` differ.

CLI::

    python -m tracing.demo build [DIR]
    python -m tracing.demo list [--root DIR]
    python -m tracing.demo path NAME [--root DIR]

Modules: ``recipes`` (names, lineage, shapes, schedule), ``paths`` (cache folder, ``demo:`` specs),
``corpus`` (+ ``extract``, run in an isolated interpreter), ``tokenizer``, ``train``, ``worker``
(one training process, ``python -m tracing.demo.worker``), ``build`` (locked, atomic build).

Heavy imports (torch, transformers, tokenizers) happen inside functions, so importing this
package, ``is_demo_spec`` and the lineage helpers are cheap.
"""
from __future__ import annotations

from .build import ensure_built
from .corpus import build_corpus
from .paths import default_root, demo_eval_text_path, is_built, is_demo_spec, lineage, resolve_demo
from .recipes import (BATCH_SIZE, BLOCK_SIZE, DEMO_PREFIX, ENV_DIR, ENV_WORKERS, MODEL_CONFIG, MODEL_NAMES, RECIPES,
                      SLICE_FILES, VERSION, VOCAB_SIZE, Recipe, are_dependent, root_of)
from .train import eval_blocks, eval_loss

__all__ = ["BATCH_SIZE", "BLOCK_SIZE", "DEMO_PREFIX", "ENV_DIR", "ENV_WORKERS", "MODEL_CONFIG", "MODEL_NAMES",
           "RECIPES", "SLICE_FILES", "VERSION", "VOCAB_SIZE", "Recipe", "are_dependent", "build_corpus",
           "default_root", "demo_eval_text_path", "ensure_built", "eval_blocks", "eval_loss", "is_built",
           "is_demo_spec", "lineage", "resolve_demo", "root_of"]
