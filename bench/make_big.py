#!/usr/bin/env python3
"""Writes a large BF16 safetensors file for server benchmarks by tiling the real MiniLM
BF16 weights of tests/fixtures (so it compresses like real weights, ~0.66).

    python3 bench/make_big.py OUT.safetensors SIZE_MIB
"""
import json, struct, sys
import os
src = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures", "minilm-bf16.safetensors")
b = open(src, "rb").read()
n = struct.unpack("<Q", b[:8])[0]
hdr = json.loads(b[8:8+n])
data = b[8+n:]
pool = bytearray()
for k, v in hdr.items():
    if k == "__metadata__" or v["dtype"] != "BF16": continue
    s, e = v["data_offsets"]; pool += data[s:e]
target = int(sys.argv[2]) << 20
tensor_bytes = 8 << 20
count = target // tensor_bytes
h = {}
for i in range(count):
    h[f"layers.{i}.weight"] = {"dtype": "BF16", "shape": [tensor_bytes // 2], "data_offsets": [i*tensor_bytes, (i+1)*tensor_bytes]}
j = json.dumps(h).encode()
j += b" " * ((8 - len(j) % 8) % 8)
with open(sys.argv[1], "wb") as f:
    f.write(struct.pack("<Q", len(j))); f.write(j)
    L = len(pool)
    for i in range(count):
        off = (i * 7919 * 2) % L
        buf = (pool[off:] + pool * (tensor_bytes // L + 2))[:tensor_bytes]
        f.write(buf)
