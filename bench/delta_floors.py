#!/usr/bin/env python3
"""Order-0 entropy floors of checkpoint deltas (XOR of bit patterns), and floatzip's sizes.

    python3 bench/delta_floors.py OLD.safetensors NEW.safetensors [FLOATZIP_BIN]

For each pair: the pooled floor (one order-0 table per plane over all tensors, the method
of ../shared/corpus/ckpt/README.md), the chunk-wise floor (one table per plane per 256 KiB
of original bytes, what a per-chunk coder can reach), the standalone floor of NEW, and,
with a floatzip binary, the sizes of `compress --base` and of plain `compress`.
Needs numpy. Tensors missing from OLD or of another dtype/shape count as standalone.
"""
import json, math, os, struct, subprocess, sys, tempfile
import numpy as np

CHUNK = 256 << 10


def read(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        hdr = json.loads(f.read(n))
        base = 8 + n
        out = {}
        for k, v in hdr.items():
            if k == "__metadata__":
                continue
            b, e = v["data_offsets"]
            f.seek(base + b)
            out[k] = (v["dtype"], tuple(v["shape"]), f.read(e - b))
        return out


def planes(dtype, raw):
    """The planes the floor is taken over: exponent and sign+mantissa for BF16/F16,
    the bytes of each significance for F32 (the README's method), the byte for others."""
    if dtype == "BF16":
        u = np.frombuffer(raw, "<u2")
        return [((u >> 7) & 0xFF).astype(np.uint8), (((u >> 8) & 0x80) | (u & 0x7F)).astype(np.uint8)]
    if dtype == "F16":
        u = np.frombuffer(raw, "<u2")
        return [(u >> 8).astype(np.uint8), (u & 0xFF).astype(np.uint8)]
    if dtype == "F32":
        b = np.frombuffer(raw, np.uint8).reshape(-1, 4)
        return [b[:, i].copy() for i in range(4)]
    return [np.frombuffer(raw, np.uint8)]


def bits(sym):
    if sym.size == 0:
        return 0.0
    c = np.bincount(sym, minlength=256).astype(np.float64)
    c = c[c > 0]
    p = c / sym.size
    return float(-(c * np.log2(p)).sum())


def floors(tensors):
    """(pooled bytes, chunk-wise bytes, original bytes) over a list of (dtype, raw)."""
    pooled = {}
    chunked = 0.0
    orig = 0
    for dtype, raw in tensors:
        orig += len(raw)
        ps = planes(dtype, raw)
        for i, p in enumerate(ps):
            pooled.setdefault((dtype, i), []).append(p)
        step = CHUNK // (len(raw) // max(1, ps[0].size)) if ps[0].size else 1
        for i, p in enumerate(ps):
            for s in range(0, p.size, max(1, step)):
                chunked += bits(p[s:s + step]) / 8
    pooled_bytes = sum(bits(np.concatenate(v)) / 8 for v in pooled.values())
    return pooled_bytes, chunked, orig


def main():
    old, new = read(sys.argv[1]), read(sys.argv[2])
    xor, alone = [], []
    for k, (dt, shape, raw) in new.items():
        alone.append((dt, raw))
        o = old.get(k)
        if o and o[0] == dt and o[1] == shape:
            a = np.frombuffer(raw, np.uint8)
            b = np.frombuffer(o[2], np.uint8)
            xor.append((dt, (a ^ b).tobytes()))
        else:
            xor.append((dt, raw))
    dp, dc, orig = floors(xor)
    sp, sc, _ = floors(alone)
    same = sum(int(np.count_nonzero(np.frombuffer(x, np.uint8) == 0)) for _, x in xor)
    print(f"{os.path.basename(sys.argv[1])} -> {os.path.basename(sys.argv[2])}: {orig} tensor bytes")
    print(f"  delta floor: pooled {dp / orig:.4f}, chunk-wise {dc / orig:.4f}; "
          f"standalone floor: pooled {sp / orig:.4f}, chunk-wise {sc / orig:.4f}; "
          f"identical bytes {same / orig:.3f}")
    if len(sys.argv) > 3:
        fz = sys.argv[3]
        with tempfile.TemporaryDirectory() as d:
            fsize = os.path.getsize(sys.argv[2])
            subprocess.run([fz, "compress", sys.argv[2], "-o", f"{d}/d.fz", "--base", sys.argv[1], "--quiet"], check=True)
            subprocess.run([fz, "compress", sys.argv[2], "-o", f"{d}/s.fz", "--quiet"], check=True)
            ds, ss = os.path.getsize(f"{d}/d.fz"), os.path.getsize(f"{d}/s.fz")
            print(f"  floatzip (whole file, {fsize} bytes): delta {ds / fsize:.4f} "
                  f"(= {ds / (dc + fsize - orig):.3f}x the chunk-wise floor + header), standalone {ss / fsize:.4f}")


if __name__ == "__main__":
    main()
