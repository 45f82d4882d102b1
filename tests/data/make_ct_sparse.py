"""Writes ``ct_sparse.safetensors``: tensors compressed by compressed-tensors' own sparse compressors
(``sparse-24-bitmask``, ``sparse-bitmask``), which the package shipped up to version 0.14.0 and no
longer does; the tests read them, and check the test writers against them, without that package.

    pip install --target /tmp/ct014 --no-deps compressed-tensors==0.14.0
    PYTHONPATH=/tmp/ct014 python tests/data/make_ct_sparse.py

Each case ``<case>`` holds the dense input ``<case>.dense``, the compressor's tensors
``<case>.shape`` / ``.compressed`` / ``.bitmask`` (/ ``.row_offsets``), and, where the package's
decompressor runs on CPU, its output ``<case>.decompressed``."""
from pathlib import Path

import torch
from compressed_tensors import __version__
from compressed_tensors.compressors.sparse_compressors.sparse_24_bitmask import Sparse24BitMaskTensor
from compressed_tensors.compressors.sparse_compressors.sparse_bitmask import BitmaskTensor
from safetensors.torch import save_file

g = torch.Generator().manual_seed(0)
w = torch.randn(12, 36, generator=g)
cases = {
    "f32_24": (w, Sparse24BitMaskTensor),
    "bf16_24": (w.bfloat16(), Sparse24BitMaskTensor),
    "fp8_24": ((w * 50).to(torch.float8_e4m3fn), Sparse24BitMaskTensor),
    # codes of -128 included: the package picks the 2 of 4 by int8 abs(), in which -128 stays -128
    "i8_24": ((w * 60).round().clamp(-128, 127).to(torch.int8), Sparse24BitMaskTensor),
    "bf16_any": ((w * (torch.rand(w.shape, generator=g) < 0.45)).bfloat16(), BitmaskTensor),
    "i8_any": (((w * 40).round() * (torch.rand(w.shape, generator=g) < 0.6)).to(torch.int8), BitmaskTensor),
}
out = {}
for case, (dense, cls) in cases.items():
    t = cls.from_dense(dense, "2:4") if cls is Sparse24BitMaskTensor else cls.from_dense(dense)
    out.update({f"{case}.dense": dense, **t.dict(name_prefix=case, device="cpu")})
    try:
        out[f"{case}.decompressed"] = t.decompress()
    except (RuntimeError, NotImplementedError) as e:  # e.g. float8 scattering on CPU
        print(case, "no decompressed output:", type(e).__name__)
save_file({k: v.contiguous() for k, v in out.items()}, str(Path(__file__).with_name("ct_sparse.safetensors")),
          metadata={"compressed_tensors": __version__})
print(sorted(out))
