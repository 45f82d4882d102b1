"""A reference index: screen one model against thousands of references in seconds.

Build once (:mod:`.build`, ``python -m tracing.index build LIST.yaml --out DIR``): for each
reference, the sampled up_proj rows of a fixed block subset at a fixed seed and K (the same rows in
every entry of one shape), their fixed random-projection sketch, sampled embedding columns and what
identifies the weights (:mod:`.entry`, :mod:`.layout`). Screen (:mod:`.screen`, ``python -m
tracing.scan MODEL --index DIR``): the exact sampled test against every compatible reference, Holm
across them, and the references the screen cannot rule out listed with reasons; the references
dependent after Holm are then tested on their weights (:mod:`.followup`). Build jobs are sized from
each reference's config (:mod:`.sizing`).
"""
from .layout import FORMAT_VERSION, Settings
from .screen import Line, screen, summary

__all__ = ["FORMAT_VERSION", "Line", "Settings", "screen", "summary"]
