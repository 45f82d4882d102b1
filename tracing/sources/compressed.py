"""compressed-tensors checkpoints (``quant_method: compressed-tensors``; llm-compressor's output).

``quantization_config.format`` (or each ``config_groups`` entry's ``format``) names the compressor;
each group's ``weights`` arguments (``num_bits``, ``type`` int / float, ``symmetric``, ``strategy``
tensor / channel / group / block, ``group_size``, ``block_structure``) say how the scales apply, and
its ``targets`` (``Linear`` or ``re:<pattern>`` of module names) which layers it covers.

- ``pack-quantized``: ``<module>.weight_packed`` int32 [out × ⌈in · bits / 32⌉], the integers
  (offset by 2^(bits−1)) packed densely along each row, lowest bits first; ``weight_scale``;
  ``weight_shape`` [out, in]; when asymmetric, ``weight_zero_point`` packed the same way along the
  output dimension; ``weight_g_idx`` when the input columns were grouped out of order (act-order).
- ``int-quantized``, ``naive-quantized``, ``float-quantized``: ``<module>.weight`` holds the codes
  (int8, or float8_e4m3fn) next to ``weight_scale`` and, when asymmetric, ``weight_zero_point``.
- ``sparsity_config.format`` ``sparse-24-bitmask`` / ``sparse-bitmask``: the weight (or the int8 /
  float8 codes of the quantization format it wraps) is stored sparse, as :mod:`tracing.sources.sparse`
  reads it.  Over ``pack-quantized`` there is no bitmask: the package's sparse compressor compresses
  ``<module>.weight`` only, after the quantization compressor has replaced it by ``weight_packed``,
  so those layers are stored packed as above and their pruned values are zero codes.

W = (q − zero) · scale, the scale and zero of each element's tensor / row / group / block.  The
arithmetic here is written out and tested against the package's own decompressors.

llm-compressor saves its recipe (``recipe.yaml``) beside the weights; when it applied AWQ or
SmoothQuant, per-channel scales were moved between the norms and the layers they feed, and the
backend says so (``moves_norm_scales``) so that norm gains are folded before comparing, as for AWQ.
"""
from __future__ import annotations

import math
import re
import sys

import numpy as np
import torch

from ..errors import TracingError
from .layered import Layer, LayeredBackend, bad_part
from .sparse import FORMATS as SPARSE, PARTS as SPARSE_PARTS, UNSTRUCTURED
from .sparse import row_counts, scatter, unpack_bitmask, value_positions

PACKED, CODES = "pack-quantized", ("int-quantized", "naive-quantized", "float-quantized")
STRATEGIES = ("tensor", "channel", "group", "block")
SPARSE_VALUES = ("F32", "F16", "BF16", "I8", "F8_E4M3", "F8_E5M2")  # the dtypes a sparse layer's kept values have
SCALE_MOVERS = r"\b(AWQModifier|SmoothQuantModifier)\b"  # llm-compressor modifiers that migrate scales


def unpack_int32(packed: torch.Tensor, bits: int, n: int) -> torch.Tensor:
    """Dense compressed-tensors packing along the last dimension: ``n`` signed integers per row."""
    rows = packed.shape[0]
    if 8 % bits == 0 and sys.byteorder == "little":  # no value straddles a byte: split the bytes
        b = packed.contiguous().reshape(-1).view(torch.uint8).reshape(rows, -1)
        vals = (b[:, :, None] >> torch.arange(0, 8, bits, dtype=torch.uint8)) & ((1 << bits) - 1)
        return vals.reshape(rows, -1)[:, :n].to(torch.int16).sub_(1 << (bits - 1)).to(torch.int8)
    words = packed.to(torch.int64) & 0xFFFFFFFF
    words = torch.nn.functional.pad(words, (0, 1))
    start = torch.arange(n) * bits
    lo = words[:, start // 32] >> (start % 32)
    hi = words[:, start // 32 + 1] << (32 - start % 32)
    return ((lo | hi) & ((1 << bits) - 1)).sub_(1 << (bits - 1)).to(torch.int8)


def expand(t: torch.Tensor, strategy: str, shape: tuple[int, int], group_size: int | None = None,
           g_idx: torch.Tensor | None = None, block: tuple[int, int] | None = None) -> torch.Tensor:
    """A scale or zero point broadcast to the weight's ``shape`` (rows of it, for channel and group)."""
    r, c = shape
    if strategy == "tensor":
        return t.reshape(())
    if strategy == "channel":
        return t.reshape(-1, 1)
    if strategy == "group":
        g = g_idx.long() if g_idx is not None else torch.arange(c) // group_size
        return t[:, g]
    b0, b1 = block
    return t.repeat_interleave(b0, 0)[:r].repeat_interleave(b1, 1)[:, :c]


def dequantize(q: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor | None, strategy: str,
               **kw) -> torch.Tensor:
    """W = (q − zero) · scale in float32, with scale and zero as :func:`expand` lays them out."""
    w = q.to(torch.float32)
    if zero is not None:
        w = w - expand(zero.to(torch.float32), strategy, tuple(q.shape), **kw)
    return w * expand(scale.to(torch.float32), strategy, tuple(q.shape), **kw)


def _scheme_for(groups: dict, module: str) -> dict | None:
    fallback = None
    for g in groups.values():
        for t in g.get("targets", []):
            if t.startswith("re:") and re.match(t[3:], module):
                return g
            if not t.startswith("re:") and fallback is None:
                fallback = g  # a layer class such as Linear: every quantized layer is one
    return fallback


class CompressedTensorsBackend(LayeredBackend):
    method = "compressed-tensors"
    undoes = "W = (q − zero_point) × weight_scale per tensor / channel / group / block (packed integers unpacked)"

    def __init__(self, folder, qcfg, label):
        self.groups = qcfg.get("config_groups") or {}
        where = f"{folder}/config.json"
        sparsity = (qcfg.get("sparsity_config") or {}).get("format")
        if sparsity not in (None, "dense", *SPARSE):
            raise TracingError(f"{where}: compressed-tensors sparsity format {sparsity!r} is not supported "
                               f"(supported: {', '.join(SPARSE)}); decompress the model with compressed-tensors "
                               f"(ModelCompressor) and use that copy")
        self.sparsity = sparsity if sparsity in SPARSE else None
        sparse_cfg = qcfg.get("sparsity_config") or {}
        self.sparse_targets, self.sparse_ignore = sparse_cfg.get("targets") or [], sparse_cfg.get("ignore") or []
        if qcfg.get("format") not in (None, "mixed-precision", "dense", PACKED, *CODES):
            raise TracingError(f"{where}: compressed-tensors format {qcfg.get('format')!r} is not supported "
                               f"(supported: {', '.join((PACKED, *CODES))}); use a checkpoint in one of these "
                               f"formats or a dequantized copy")
        for name, g in self.groups.items():
            fmt = g.get("format") or qcfg.get("format")
            w = g.get("weights") or {}
            if fmt not in (PACKED, *CODES, "dense"):
                raise TracingError(f"{where}: compressed-tensors format {fmt!r} (group {name}) is not supported "
                                   f"(supported: {', '.join((PACKED, *CODES))}); use a checkpoint in one of these "
                                   f"formats or a dequantized copy")
            if fmt != "dense" and (w.get("strategy") not in STRATEGIES or w.get("type") not in ("int", "float")
                                   or (w.get("type") == "float" and w.get("num_bits") != 8)):
                raise TracingError(f"{where}: compressed-tensors weights {w.get('type')}{w.get('num_bits')} with "
                                   f"strategy {w.get('strategy')!r} (group {name}) are not supported (supported: "
                                   f"int with strategy {', '.join(STRATEGIES)}, float8)")
        super().__init__(folder, qcfg, label)
        recipe = self.folder / "recipe.yaml"
        found = re.findall(SCALE_MOVERS, recipe.read_text(errors="replace")) if recipe.is_file() else []
        self.moves_norm_scales = bool(found)
        if found:
            self.undoes += f"; {found[0]} scales moved between norms and layers (norm gains folded)"

    def layer(self, stored):
        if not stored.endswith(".weight"):
            return None
        mod = stored[: -len(".weight")]
        sparse = self._sparse(mod)
        packed = sparse is None and self.has_key(f"{mod}.weight_packed")
        codes = sparse["q"] if sparse else f"{mod}.weight_packed" if packed else stored
        if not packed and not (self.has_key(codes) and self.meta(codes).dtype in ("I8", "F8_E4M3", "F8_E5M2")):
            if sparse is None:
                return None  # stored as it is
            return Layer(f"{self._sparse_kind()} {self.meta(codes).dtype}", sparse,
                         {"args": None, "shape": self._sparse_shape(sparse), "packed": False})
        scheme = _scheme_for(self.groups, mod)
        if scheme is None or not scheme.get("weights"):
            raise bad_part(self.folder, codes, "is quantized but no config_groups entry of quantization_config "
                           "targets it", "use the config.json that came with these weights")
        need = [f"{mod}.weight_scale"] + ([f"{mod}.weight_shape"] if packed else [])
        if not scheme["weights"].get("symmetric", True):
            need.append(f"{mod}.weight_zero_point")
        for key in need:
            if not self.has_key(key):
                raise bad_part(self.folder, codes, f"has no {key} beside it", "the download is incomplete — "
                               "download it again")
        args = scheme["weights"]
        parts = {**(sparse or {}), "q": codes, "scale": need[0]}
        if f"{mod}.weight_zero_point" in need:
            parts["zero"] = f"{mod}.weight_zero_point"
        if self.has_key(f"{mod}.weight_g_idx"):
            parts["g_idx"] = f"{mod}.weight_g_idx"
        shape = (tuple(int(x) for x in self.read(need[1]).tolist()) if packed
                 else self._sparse_shape(sparse) if sparse else self.meta(stored).shape)
        kind = self._kind(args, packed)
        if sparse or (packed and self._sparse_target(mod)):
            kind = f"{self._sparse_kind()} {kind}"
        lay = Layer(kind, parts,
                    {"args": args, "shape": shape, "packed": packed})
        self._check_scale(lay)
        return lay

    def quantization(self):
        info = super().quantization()
        if not self.sparsity:
            return info
        kinds = set(self.tensor_types().values())
        spread = f"{' (2 of every 4)' if self.sparsity != UNSTRUCTURED else ''}"
        if any(k.startswith(self._sparse_kind() + " ") and " packed " not in k for k in kinds):
            info["undone"] += f"; {self.sparsity}: the kept values put back in place{spread}, zeros elsewhere"
        if any(k.startswith(self._sparse_kind() + " packed ") for k in kinds):
            info["undone"] += (f"; {self.sparsity} over pack-quantized: stored packed with no bitmask (compressed-tensors' "
                               f"sparse compressor leaves weight_packed as it is), the pruned values{spread} are zero codes")
        return info

    # sparse layers -----------------------------------------------------------------------
    def _sparse_target(self, mod: str) -> bool:
        """Whether ``sparsity_config`` covers layer ``mod`` (``targets`` / ``ignore``: a layer class
        such as ``Linear``, a module name, or ``re:<pattern>``)."""
        def hits(t: str) -> bool:
            return bool(re.match(t[3:], mod)) if t.startswith("re:") else t == mod
        return (any(hits(t) or (not t.startswith("re:") and "." not in t and t[:1].isupper()) for t in self.sparse_targets)
                and not any(hits(t) for t in self.sparse_ignore))

    def _sparse(self, mod: str) -> dict | None:
        """The sparse parts of layer ``mod`` (``q``: its kept values), None when it is not stored sparse."""
        parts = {"q" if p == "compressed" else p: f"{mod}.{p}" for p in SPARSE_PARTS}
        if not self.has_key(parts["q"]) or not self.has_key(parts["bitmask"]):
            return None
        if self.sparsity is None:
            raise bad_part(self.folder, parts["q"], "is stored sparse but quantization_config has no "
                           "sparsity_config format", "use the config.json that came with these weights")
        if self.sparsity == UNSTRUCTURED:
            parts["row_offsets"] = f"{mod}.row_offsets"
        for key in parts.values():
            if not self.has_key(key):
                raise bad_part(self.folder, parts["q"], f"has no {key} beside it", "the download is incomplete — "
                               "download it again")
        dtype = self.meta(parts["q"]).dtype
        if dtype not in SPARSE_VALUES:
            raise bad_part(self.folder, parts["q"], f"holds {dtype} values, which {self.sparsity} does not store (it "
                           f"keeps float weights or int8 / float8 codes; packed int4 / int8 codes stay in weight_packed, "
                           f"with no bitmask)", "use the checkpoint as compressed-tensors saved it")
        return parts

    def _sparse_kind(self) -> str:
        return "sparse" if self.sparsity == UNSTRUCTURED else "2:4 sparse"

    def _sparse_shape(self, parts: dict) -> tuple[int, int]:
        """The dense shape, checked against the bitmask's, the values' and the row offsets' shapes."""
        shape = tuple(int(x) for x in self.read(parts["shape"]).reshape(-1).tolist())
        r, c = shape if len(shape) == 2 else (0, 0)
        want = {"bitmask": (r, -(-c // 8)), "q": (r, c // 2) if self.sparsity != UNSTRUCTURED else None,
                "row_offsets": (r,)}
        for part, w in want.items():
            got = tuple(self.meta(parts[part]).shape) if part in parts else w
            if len(shape) != 2 or (w is not None and got != w):
                raise bad_part(self.folder, parts[part], f"has shape {got}, which does not fit the dense shape "
                               f"{list(shape)} of {parts['shape']} in {self.sparsity}",
                               "the checkpoint is inconsistent — download it again")
        return shape

    def _sparse_values(self, lay: Layer, rows) -> torch.Tensor:
        """The dense codes (or weights) of a sparse layer, or rows ``rows`` of them: only those rows
        of the bitmask and only their values are read."""
        p, c = lay.parts, lay.info["shape"][1]
        if rows is None:
            mask, values = unpack_bitmask(self.read(p["bitmask"]), c), self.read(p["q"])
        else:
            rows = np.asarray(rows)
            mask = unpack_bitmask(self.read_rows(p["bitmask"], rows), c)
            if "row_offsets" in p:
                at = value_positions(self.read_rows(p["row_offsets"], rows).numpy(), row_counts(mask))
                values = self.read_rows(p["q"], at)
            else:
                values = self.read_rows(p["q"], rows)
        if int(mask.sum()) != values.numel():
            raise bad_part(self.folder, p["bitmask"], f"marks {int(mask.sum())} values kept but {p['q']} holds "
                           f"{values.numel()} for them", "the checkpoint is inconsistent — download it again")
        return scatter(values, mask)

    @staticmethod
    def _kind(args: dict, packed: bool) -> str:
        s = args["strategy"]
        detail = {"group": f" g{args.get('group_size')}", "block": " block " + "×".join(
            map(str, args.get("block_structure") or ()))}.get(s, f" per-{s}")
        sym = "" if args.get("symmetric", True) else " asym"
        return f"{'packed ' if packed else ''}{args['type']}{args['num_bits']}{detail}{sym}"

    def _check_scale(self, lay: Layer) -> None:
        r, c = lay.info["shape"]
        a, key = lay.info["args"], lay.parts["scale"]
        want = {"tensor": None, "channel": [(r, 1), (r,)],
                "group": [(r, math.ceil(c / (a.get("group_size") or c)))],
                "block": [tuple(math.ceil(n / b) for n, b in zip((r, c), a.get("block_structure") or (1, 1)))]}
        got = tuple(self.meta(key).shape)
        allowed = want[a["strategy"]]
        if (allowed is None and math.prod(got) != 1) or (allowed is not None and got not in allowed):
            raise bad_part(self.folder, key, f"has shape {got}, but {a['strategy']} scales of "
                           f"{lay.parts['q']} ({r}×{c}) have shape {allowed[0] if allowed else (1,)}",
                           "the scales do not belong to this weight or config_groups is wrong")

    def _codes(self, lay: Layer, rows) -> torch.Tensor:
        key, c = lay.parts["q"], lay.info["shape"][1]
        if "bitmask" in lay.parts:
            return self._sparse_values(lay, rows)
        t = self.read(key) if rows is None else self.read_rows(key, rows)
        return unpack_int32(t, lay.info["args"]["num_bits"], c) if lay.info["packed"] else t

    def _zero(self, lay: Layer, rows) -> torch.Tensor | None:
        key = lay.parts.get("zero")
        if key is None:
            return None
        bits, s = lay.info["args"]["num_bits"], lay.info["args"]["strategy"]
        if not lay.info["packed"] or s not in ("group", "channel"):  # stored as it is
            return self.read(key) if rows is None or s in ("tensor", "block") else self.read_rows(key, rows)
        n = lay.info["shape"][0]
        if rows is None or 32 % bits:
            z = unpack_int32(self.read(key).T.contiguous(), bits, n).T
            return z if rows is None else z[torch.as_tensor(rows)]
        per = 32 // bits  # rows r of the zero points are in word row r // per
        words, pos = np.unique(np.asarray(rows) // per, return_inverse=True)
        z = unpack_int32(self.read_rows(key, words).T.contiguous(), bits, len(words) * per).T
        return z[torch.from_numpy(pos * per + np.asarray(rows) % per)]

    def dequantize(self, layer, rows):
        a = layer.info["args"]
        if a is None:  # sparse, not quantized
            return self._codes(layer, rows).to(torch.float32)
        s = a["strategy"]
        q = self._codes(layer, rows)
        kw = {"group_size": a.get("group_size"), "block": tuple(a.get("block_structure") or (1, 1))}
        if "g_idx" in layer.parts:
            kw["g_idx"] = self.read(layer.parts["g_idx"])
        scale_key = layer.parts["scale"]
        if rows is None or s == "tensor":
            scale = self.read(scale_key)
        elif s == "block":
            need, pos = np.unique(np.asarray(rows) // kw["block"][0], return_inverse=True)
            scale = self.read_rows(scale_key, need)[torch.from_numpy(pos)]
            kw["block"] = (1, kw["block"][1])
        else:
            scale = self.read_rows(scale_key, rows)
        zero = self._zero(layer, rows)
        if zero is not None and s == "block" and rows is not None:
            zero = zero[torch.as_tensor(np.asarray(rows) // a["block_structure"][0])]
        return dequantize(q, scale, zero, s, **kw)
