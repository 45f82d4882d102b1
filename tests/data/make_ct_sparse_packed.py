"""Writes ``ct_sparse_packed.safetensors``: what compressed-tensors' own ``ModelCompressor`` saves when a
sparsity config (``sparse-24-bitmask``, ``sparse-bitmask``) wraps ``pack-quantized`` weights, with the
package's sparse compressors, which it shipped up to version 0.14.0 and no longer does:

    pip install --target /tmp/ct014 --no-deps compressed-tensors==0.14.0
    PYTHONPATH=/tmp/ct014 python tests/data/make_ct_sparse_packed.py

Each case ``<case>`` is a module of two linear layers ``a`` [16 × 64] and ``b`` [12 × 64] whose weights
were pruned (2 of every 4 by magnitude for ``24``, the smaller half of each row for ``any``) and
quantized (int4 groups of 32, symmetric or not, or int8 per channel; ``<case>`` is ``<pruning>_<quantization>``):
``<pruning>.<layer>.dense`` is the pruned float weight, every other ``<case>.<layer>.*`` tensor what ``ModelCompressor.compress`` returned
for it, and ``<case>.<layer>.decompressed`` what ``ModelCompressor.decompress_model`` gives back.
The file's metadata holds each case's ``quantization_config`` as the package writes it to config.json.
The sparse compressor compresses ``<module>.weight`` only, so packed weights are saved with no bitmask."""
import copy
import json
from pathlib import Path

import torch
from compressed_tensors import __version__
from compressed_tensors.compressors import ModelCompressor
from compressed_tensors.config import BitmaskConfig, Sparse24BitMaskConfig
from compressed_tensors.quantization import (QuantizationArgs, QuantizationConfig, QuantizationScheme,
                                             apply_quantization_config)
from compressed_tensors.quantization.utils import calculate_qparams
from safetensors.torch import save_file

QUANT = {
    "int4g32": dict(num_bits=4, type="int", symmetric=True, strategy="group", group_size=32),
    "int4g32asym": dict(num_bits=4, type="int", symmetric=False, strategy="group", group_size=32),
    "int8ch": dict(num_bits=8, type="int", symmetric=True, strategy="channel"),
}
SPARSE = {"24": Sparse24BitMaskConfig, "any": BitmaskConfig}


def prune(w: torch.Tensor, kind: str) -> torch.Tensor:
    if kind == "24":
        top = w.reshape(-1, 4).abs().topk(2, dim=1).indices
        return w * torch.zeros(w.numel() // 4, 4, dtype=torch.bool).scatter_(1, top, True).reshape(w.shape)
    return w * (w.abs() >= w.abs().median(-1, keepdim=True).values)


def observe(w: torch.Tensor, args):
    g = w.reshape(w.shape[0], -1, args.group_size) if args.strategy == "group" else w.unsqueeze(1)
    return g.amin(-1), g.amax(-1)


g = torch.Generator().manual_seed(0)
dense = {"a": torch.randn(16, 64, generator=g) * 0.05, "b": torch.randn(12, 64, generator=g) * 0.05}
out, configs = {}, {}
for sp, sparse_config in SPARSE.items():
    for qn, weights in QUANT.items():
        case = f"{sp}_{qn}"
        model = torch.nn.Module()
        for name, w in dense.items():
            lin = torch.nn.Linear(64, w.shape[0], bias=False)
            lin.weight.data = prune(w, sp)
            setattr(model, name, lin)
        qc = QuantizationConfig(config_groups={"group_0": QuantizationScheme(targets=["Linear"],
                                weights=QuantizationArgs(**weights))}, format="pack-quantized",
                                quantization_status="frozen")
        apply_quantization_config(model, qc)
        for name in dense:
            lin = getattr(model, name)
            scale, zero = calculate_qparams(*observe(lin.weight.data, lin.quantization_scheme.weights),
                                            lin.quantization_scheme.weights)
            lin.weight_scale.data = scale.reshape(lin.weight_scale.shape).to(lin.weight_scale.dtype)
            lin.weight_zero_point.data = zero.reshape(lin.weight_zero_point.shape).to(lin.weight_zero_point.dtype)
            out[f"{sp}.{name}.dense"] = lin.weight.data.clone()
        compressor = ModelCompressor(sparsity_config=sparse_config(targets=["Linear"]), quantization_config=qc)
        unpacked = copy.deepcopy(model)
        out.update({f"{case}.{k}": v for k, v in compressor.compress(model).items()})
        compressor.compress_model(unpacked)
        compressor.decompress_model(unpacked)
        out.update({f"{case}.{name}.decompressed": getattr(unpacked, name).weight.data for name in dense})
        configs[case] = {**qc.model_dump(), "sparsity_config": compressor.sparsity_config.model_dump()}
        configs[case]["quantization_status"] = "compressed"
save_file({k: v.contiguous() for k, v in out.items()}, str(Path(__file__).with_name("ct_sparse_packed.safetensors")),
          metadata={"compressed_tensors": __version__, "configs": json.dumps(configs)})
print(sorted(out))
