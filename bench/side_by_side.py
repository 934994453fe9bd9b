#!/usr/bin/env python3
"""floatzip vs ZipNN (and zstd) on the same files, in the same run, round after round.

    python3 -m venv /tmp/peers && /tmp/peers/bin/pip install zipnn zstandard numpy
    /tmp/peers/bin/python bench/side_by_side.py --rounds 3 --runs 5 DIR_OR_FILES...

Each round measures every file with `floatzip bench --no-zstd --json` and then with
`bench/peers.py` (ZipNN at its best setting for the file, zstd -3/-19), so both see the same
machine load; a shared machine slows single rounds down, so the table gives, per file, the
floatzip/ZipNN speed ratio of each round and the numbers of the round where floatzip's
decode ratio was median. Single thread for everyone unless --threads.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def floatzip(binary, path, runs, threads, extra):
    out = subprocess.run([binary, "bench", "--runs", str(runs), "--threads", str(threads),
                          "--no-zstd", "--json", *extra, path], check=True, capture_output=True).stdout
    rep = json.loads(out)[0]
    by = {c["name"]: c for c in rep["contenders"]}
    full, codec = by["floatzip"], by["floatzip (codec only)"]
    return {"ratio": full["ratio"], "floor": rep["floor_ratio"],
            "enc": full["compress_mb_s"], "enc_codec": codec["compress_mb_s"],
            "dec": codec["decompress_mb_s"], "dec_verify": full["decompress_mb_s"]}


def peers(path, runs, threads):
    with tempfile.NamedTemporaryFile(suffix=".json") as f:
        subprocess.run([sys.executable, os.path.join(ROOT, "bench/peers.py"), "--runs", str(runs),
                        "--threads", str(threads), "--json", f.name, path],
                       check=True, capture_output=True)
        rows = json.load(open(f.name))[0]["contenders"]
    z = rows[0]
    return {"zipnn": z["name"], "ratio": z["ratio"], "enc": z["compress_mb_s"],
            "dec": z["decompress_mb_s"], "zstd3": rows[1]["ratio"], "zstd19": rows[2]["ratio"]}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("paths", nargs="+")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--bin", default=os.path.join(ROOT, "target/release/floatzip"))
    ap.add_argument("--json")
    ap.add_argument("--floatzip-arg", action="append", default=[],
                    help="an argument for `floatzip bench` (repeat for more), e.g. --floatzip-arg=--min-gain=0.02")
    a = ap.parse_args()
    files = []
    for p in a.paths:
        if os.path.isdir(p):
            files += sorted(os.path.join(p, f) for f in os.listdir(p) if f.endswith(".safetensors"))
        else:
            files.append(p)
    rounds = {f: [] for f in files}
    for r in range(a.rounds):
        for f in files:
            rounds[f].append((floatzip(a.bin, f, a.runs, a.threads, a.floatzip_arg), peers(f, a.runs, a.threads)))
            print(f"round {r + 1}: {os.path.basename(f)}", file=sys.stderr)
    print("| file | floor | floatzip | ZipNN | zstd -3 | zstd -19 | enc MB/s: compress / codec (ZipNN) "
          "| dec MB/s: codec / with verify (ZipNN) | dec ×ZipNN per round | codec enc ×ZipNN per round |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for f, rs in rounds.items():
        dec_x = [fz["dec"] / z["dec"] for fz, z in rs]
        enc_x = [fz["enc_codec"] / z["enc"] for fz, z in rs]
        fz, z = rs[sorted(range(len(rs)), key=lambda i: dec_x[i])[len(rs) // 2]]
        name = os.path.basename(f).replace("minilm-l6.", "").replace(".safetensors", "")
        print(f"| {name} | {fz['floor']:.4f} | **{fz['ratio']:.4f}** | {z['ratio']:.4f} | "
              f"{z['zstd3']:.4f} | {z['zstd19']:.4f} | {fz['enc']:.0f} / {fz['enc_codec']:.0f} ({z['enc']:.0f}) | "
              f"{fz['dec']:.0f} / {fz['dec_verify']:.0f} ({z['dec']:.0f}) | "
              f"{' '.join(f'{x:.2f}' for x in dec_x)} | {' '.join(f'{x:.2f}' for x in enc_x)} |")
    if a.json:
        json.dump(rounds, open(a.json, "w"), indent=1)


if __name__ == "__main__":
    main()
