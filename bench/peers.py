#!/usr/bin/env python3
"""Ratio and speed of the peers floatzip is measured against: ZipNN and zstd.

    python3 -m venv /tmp/peers && /tmp/peers/bin/pip install zipnn zstandard numpy
    /tmp/peers/bin/python bench/peers.py --runs 5 FILES... [--json out.json]

For every file, ZipNN is run with each setting that can apply and the best ratio is kept
(its "best settings for the dtype"); speeds are of original bytes, median of --runs,
single-threaded (threads=1) unless --threads says otherwise. zstd levels 3 and 19 via the
zstandard module. Run it in the same session as `floatzip bench` for side-by-side numbers.
"""
import argparse
import json
import statistics
import time

import zstandard
from zipnn import ZipNN


def settings_for(path):
    name = path.lower()
    if "bf16" in name or "bfloat16" in name:
        dtypes = ["bfloat16"]
    elif "f16" in name:
        dtypes = ["float16"]
    elif "f32" in name:
        dtypes = ["float32"]
    else:  # FP8 / FP4 / mixed: try them all, keep the best.
        dtypes = ["bfloat16", "float16", "float32"]
    return [dict(bytearray_dtype=d, method=m) for d in dtypes for m in ("HUFFMAN", "ZSTD", "AUTO")]


def timed(runs, fn, make_input):
    """Median seconds of fn(input) over runs; each run gets a fresh input made untimed,
    because ZipNN's C extension reorders its input buffer in place."""
    times = []
    out = None
    for _ in range(runs):
        arg = make_input()
        t = time.perf_counter()
        out = fn(arg)
        times.append(time.perf_counter() - t)
    return statistics.median(times), out


def bench_zipnn(data, path, runs, threads):
    best = None
    for s in settings_for(path):
        try:
            z = ZipNN(threads=threads, **s)
            comp = bytes(z.compress(bytearray(data)))
        except Exception as e:  # a setting that does not apply to this data
            continue
        if best is None or len(comp) < len(best[1]):
            best = (s, comp)
    s, comp = best
    z = ZipNN(threads=threads, **s)
    c, _ = timed(runs, z.compress, lambda: bytearray(data))
    d, back = timed(runs, z.decompress, lambda: bytearray(comp))
    assert bytes(back) == data, "ZipNN round trip differs"
    return {"name": f"zipnn {s['bytearray_dtype']}/{s['method']}", "ratio": len(comp) / len(data),
            "compress_mb_s": len(data) / 1e6 / c, "decompress_mb_s": len(data) / 1e6 / d}


def bench_zstd(data, level, runs):
    cctx = zstandard.ZstdCompressor(level=level)
    comp = cctx.compress(data)
    dctx = zstandard.ZstdDecompressor()
    c, _ = timed(1 if level > 9 else runs, cctx.compress, lambda: data)
    d, _ = timed(runs, dctx.decompress, lambda: comp)
    return {"name": f"zstd -{level}", "ratio": len(comp) / len(data),
            "compress_mb_s": len(data) / 1e6 / c, "decompress_mb_s": len(data) / 1e6 / d}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("files", nargs="+")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json")
    a = ap.parse_args()
    reports = []
    for path in a.files:
        data = open(path, "rb").read()
        rows = [bench_zipnn(data, path, a.runs, a.threads)] + [bench_zstd(data, l, a.runs) for l in (3, 19)]
        reports.append({"file": path, "bytes": len(data), "contenders": rows})
        print(f"{path} ({len(data) / 1e6:.1f} MB)")
        for r in rows:
            print(f"  {r['name']:<24} {r['ratio']:7.4f} {r['compress_mb_s']:12.0f} {r['decompress_mb_s']:12.0f}")
    if a.json:
        json.dump(reports, open(a.json, "w"), indent=2)


if __name__ == "__main__":
    main()
