"""A model list in the nested tree form of a model family.

A tree file is a YAML list; each item is a model id (a model without listed children) or a
one-key mapping ``model: [children...]`` whose children follow the same rule, recursively::

    - meta-llama/Llama-2-7b-hf:
        - lmsys/vicuna-7b-v1.5
        - codellama/CodeLlama-7b-hf:
            - codellama/CodeLlama-7b-Python-hf
    - openlm-research/open_llama_7b

It names a model list (every pair of the models in it) and the ground-truth lineage at once
(each model's parent is the model it is listed under; top-level models are roots). The form is
parsed by :func:`tracing.lineage.known.parse_tree`, with the known lineage in its other forms.
"""
from __future__ import annotations

import os
from pathlib import Path

from ..errors import TracingError
from .known import parents_of, parse_tree, roots_of, yaml_data


def is_tree_form(data) -> bool:
    """True when a parsed model list is in the nested tree form (a list with a ``model: [children]`` item)."""
    return isinstance(data, list) and any(isinstance(x, dict) for x in data)


def read_yaml(path: str | os.PathLike):
    p = Path(path)
    if not p.is_file():
        raise TracingError(f"{p} does not exist; give a tree YAML file such as config/llama7b_tree.yaml")
    return yaml_data(p.read_text(encoding="utf-8"), p)


def read_tree(path: str | os.PathLike) -> tuple[list[str], list[tuple[str, str]]]:
    """:func:`parse_tree` of a YAML file."""
    return parse_tree(read_yaml(path), source=str(path))


def tree_pairs(models: list[str]) -> list[tuple[str, str]]:
    """Every unordered pair of the models, in listing order."""
    return [(a, b) for i, a in enumerate(models) for b in models[i + 1:]]


def lineage_json(models: list[str], edges: list[tuple[str, str]]) -> dict:
    """The lineage as ``{"models": {name: {"parent": p, "root": r}}}`` (the demo family's format)."""
    parents = parents_of(models, edges)
    roots = roots_of(parents)
    return {"models": {m: {"parent": parents[m], "root": roots[m]} for m in models}}
