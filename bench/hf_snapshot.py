#!/usr/bin/env python3
"""`snapshot_download` through floatzip vs. the same download from a plain static server.

    bench/hf_snapshot.sh [--runs N] [--model-dir DIR]

(the .sh builds the release binary and finds a Python with huggingface_hub, then runs
this file). Both servers run on loopback on this machine:

- floatzip: `floatzip serve` with a fresh storage directory; the model folder goes up
  with `floatzip push-dir` (compressed), and is served decoded on the fly.
- static: `--serve-static` below, a minimal Hub server over the uncompressed files:
  `/api/models/...` JSON (info, revision, tree) computed once at start, and
  `/{repo}/resolve/{rev}/{path}` answering HEAD/GET with ETag (SHA-256), Content-Length,
  X-Linked-Etag/-Size, X-Repo-Commit and single Range, bodies sent with sendfile(2)
  from the page cache (zero copy, as nginx would), TCP_NODELAY on. It runs in its own
  process; curl gets about 1 GB/s from it here, so it is not what limits the download.

Each run is one `snapshot_download` in a fresh Python process with a fresh cache
(HF_HOME), HF_HUB_DISABLE_XET=1, hf_transfer off; only the call itself is timed. Runs
alternate between the two servers so that noise from other work on the machine hits
both alike. Every download is checked byte for byte against the model folder. Prints
both medians and floatzip/static.

The default model folder: /tmp/corpus-full's all-MiniLM-L6-v2 in FP32 (as
model.safetensors) and BF16 (as bf16/model.safetensors), plus config and tokenizer
files and a 1_Pooling/ folder, as a sentence-transformers repo holds them.
"""

import argparse
import hashlib
import http.server
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ORG, NAME = "bench", "minilm"
TOKEN = "bench-write-token"
REV = "b" * 40  # the static server's one revision


def files_below(d):
    """Repo path -> local path of every non-hidden file below d (links followed)."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(d, followlinks=True):
        dirnames[:] = sorted(x for x in dirnames if not x.startswith("."))
        for f in filenames:
            if f.startswith("."):
                continue
            p = os.path.join(dirpath, f)
            out[os.path.relpath(p, d).replace(os.sep, "/")] = p
    return dict(sorted(out.items()))


def sha256_file(p):
    h = hashlib.sha256()
    with open(p, "rb") as f:
        while b := f.read(1 << 20):
            h.update(b)
    return h.hexdigest()


def default_model(dst):
    src = "/tmp/corpus-full"
    files = {
        "model.safetensors": os.path.join(src, "minilm-l6.f32.safetensors"),
        "bf16/model.safetensors": os.path.join(src, "minilm-l6.bf16.safetensors"),
    }
    for rel, p in files.items():
        if not os.path.exists(p):
            sys.exit(f"{p} is missing: pass --model-dir")
        os.makedirs(os.path.dirname(os.path.join(dst, rel)), exist_ok=True)
        os.symlink(p, os.path.join(dst, rel))
    small = {
        "config.json": {"architectures": ["BertModel"], "hidden_size": 384, "model_type": "bert",
                        "num_hidden_layers": 6, "torch_dtype": "float32"},
        "tokenizer_config.json": {"do_lower_case": True, "model_max_length": 512},
        "special_tokens_map.json": {"cls_token": "[CLS]", "sep_token": "[SEP]"},
        "1_Pooling/config.json": {"word_embedding_dimension": 384, "pooling_mode_mean_tokens": True},
        "modules.json": [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
                         {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}],
    }
    for rel, v in small.items():
        p = os.path.join(dst, rel)
        os.makedirs(os.path.dirname(p), exist_ok=True)
        with open(p, "w") as f:
            json.dump(v, f)
    with open(os.path.join(dst, "vocab.txt"), "w") as f:
        f.write("".join(f"tok{i}\n" for i in range(30522)))


# ---------------------------------------------------------------- the static server

def serve_static(model_dir, port):
    files = files_below(model_dir)
    meta = {rel: (os.path.getsize(p), sha256_file(p)) for rel, p in files.items()}
    repo = f"{ORG}/{NAME}"

    def file_entry(rel):
        size, sha = meta[rel]
        return {"type": "file", "oid": sha[:40], "size": size, "path": rel,
                "lfs": {"oid": sha, "size": size, "pointerSize": 134}}

    info = json.dumps({
        "_id": repo, "id": repo, "modelId": repo, "sha": REV, "private": False,
        "siblings": [{"rfilename": rel, "size": meta[rel][0]} for rel in files],
    }).encode()

    def tree(prefix, recursive):
        entries, dirs = [], set()
        for rel in files:
            if not rel.startswith(prefix):
                continue
            parts = rel[len(prefix):].split("/")
            for depth in range(1, len(parts) if recursive else min(2, len(parts))):
                dirs.add(prefix + "/".join(parts[:depth]))
            if recursive or len(parts) == 1:
                entries.append(file_entry(rel))
        entries += [{"type": "directory", "oid": "0" * 40, "size": 0, "path": d} for d in dirs]
        return json.dumps(sorted(entries, key=lambda e: e["path"])).encode()

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        # TCP_NODELAY, as nginx sets on keep-alive connections: without it a small body
        # written after its headers waits for a delayed ACK (~40 ms a response).
        disable_nagle_algorithm = True

        def log_message(self, *a):
            pass

        def send_json(self, body):
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def not_found(self, code="EntryNotFound"):
            self.send_response(404)
            self.send_header("X-Error-Code", code)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def do_HEAD(self):
            self.do_GET(head=True)

        def do_GET(self, head=False):
            url = urllib.parse.urlsplit(self.path)
            path = urllib.parse.unquote(url.path)
            q = urllib.parse.parse_qs(url.query)
            api = f"/api/models/{repo}"
            if path in (api, f"{api}/revision/main", f"{api}/revision/{REV}"):
                return self.send_json(info)
            for rev in ("main", REV):
                t = f"{api}/tree/{rev}"
                if path == t or path.startswith(t + "/"):
                    sub = path[len(t) + 1:].strip("/")
                    rec = q.get("recursive", ["false"])[0].lower() in ("true", "1")
                    return self.send_json(tree(sub + "/" if sub else "", rec))
                r = f"/{repo}/resolve/{rev}/"
                if path.startswith(r):
                    return self.send_file(path[len(r):], head)
            self.not_found("RepoNotFound")

        def send_file(self, rel, head):
            if rel not in files:
                return self.not_found()
            size, sha = meta[rel]
            start, end = 0, size
            rng = self.headers.get("Range")
            status = 200
            if rng and rng.startswith("bytes=") and "," not in rng:
                a, _, b = rng[6:].partition("-")
                if a:
                    start, end = int(a), (min(int(b) + 1, size) if b else size)
                else:
                    start = max(0, size - int(b))
                status = 206
            self.send_response(status)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(end - start))
            self.send_header("Accept-Ranges", "bytes")
            self.send_header("ETag", f'"{sha}"')
            self.send_header("X-Linked-Etag", f'"{sha}"')
            self.send_header("X-Linked-Size", str(size))
            self.send_header("X-Repo-Commit", REV)
            if status == 206:
                self.send_header("Content-Range", f"bytes {start}-{end - 1}/{size}")
            self.end_headers()
            if head:
                return
            self.wfile.flush()
            with open(files[rel], "rb") as f:
                off = start
                while off < end:
                    n = os.sendfile(self.connection.fileno(), f.fileno(), off, min(end - off, 1 << 24))
                    if n == 0:
                        break
                    off += n

    http.server.ThreadingHTTPServer.daemon_threads = True
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
    print("ready", flush=True)
    srv.serve_forever()


# ---------------------------------------------------------------- the benchmark

ONE_RUN = r"""
import json, sys, time
from huggingface_hub import snapshot_download
t = time.perf_counter()
p = snapshot_download(sys.argv[1])
print(json.dumps({"seconds": time.perf_counter() - t, "path": p}))
"""


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(url, proc, what):
    for _ in range(300):
        if proc.poll() is not None:
            sys.exit(f"{what} exited with {proc.returncode}")
        try:
            urllib.request.urlopen(url, timeout=1).read()
            return
        except Exception:
            time.sleep(0.1)
    sys.exit(f"{what} did not come up at {url}")


def one_download(endpoint, work, want):
    home = tempfile.mkdtemp(dir=work, prefix="hf-home-")
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("HF_", "HUGGINGFACE_")) or k == "HF_HUB_ETAG_TIMEOUT"}
    env.update(HF_ENDPOINT=endpoint, HF_HOME=home, HF_HUB_DISABLE_XET="1",
               HF_HUB_DISABLE_TELEMETRY="1", HF_HUB_DISABLE_PROGRESS_BARS="1")
    out = subprocess.run([sys.executable, "-c", ONE_RUN, f"{ORG}/{NAME}"], env=env,
                         check=True, capture_output=True, text=True)
    r = json.loads(out.stdout.strip().splitlines()[-1])
    got = files_below(r["path"])
    if list(got) != list(want):
        sys.exit(f"{endpoint}: downloaded {list(got)}, expected {list(want)}")
    for rel, p in got.items():
        if sha256_file(p) != want[rel]:
            sys.exit(f"{endpoint}: {rel} differs")
    shutil.rmtree(home)
    return r["seconds"]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--model-dir")
    ap.add_argument("--bin", default=os.path.join(
        os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target")), "release", "floatzip"))
    ap.add_argument("--serve-static", nargs=2, metavar=("DIR", "PORT"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.serve_static:
        return serve_static(a.serve_static[0], int(a.serve_static[1]))

    import huggingface_hub  # fail early, with the import error
    work = tempfile.mkdtemp(prefix="fz-hfbench-")
    procs = []
    try:
        model = a.model_dir
        if model is None:
            model = os.path.join(work, "model")
            os.makedirs(model)
            default_model(model)
        want = {rel: sha256_file(p) for rel, p in files_below(model).items()}
        total = sum(os.path.getsize(p) for p in files_below(model).values())
        print(f"model: {len(want)} files, {total / 1e6:.1f} MB; huggingface_hub "
              f"{huggingface_hub.__version__}; {a.runs} runs each")

        fz_port, st_port = free_port(), free_port()
        env = dict(os.environ, FLOATZIP_WRITE_TOKEN=TOKEN, FLOATZIP_TEMP_DIR=os.path.join(work, "tmp"),
                   RUST_LOG=os.environ.get("RUST_LOG", "warn"))
        os.makedirs(env["FLOATZIP_TEMP_DIR"])
        fz = subprocess.Popen([a.bin, "serve", "--listen", f"127.0.0.1:{fz_port}",
                               "--storage", os.path.join(work, "data")],
                              env=env, stdout=subprocess.DEVNULL, stderr=open(os.path.join(work, "server.log"), "w"))
        procs.append(fz)
        st = subprocess.Popen([sys.executable, __file__, "--serve-static", model, str(st_port)],
                              stdout=subprocess.DEVNULL)
        procs.append(st)
        fz_url, st_url = f"http://127.0.0.1:{fz_port}", f"http://127.0.0.1:{st_port}"
        wait_for(f"{fz_url}/healthz", fz, "floatzip serve")
        t = time.perf_counter()
        subprocess.run([a.bin, "push-dir", "--quiet", model, f"{fz_url}/v1/models/{ORG}/{NAME}",
                        "--token", TOKEN], check=True, stdout=subprocess.DEVNULL)
        # Containers are stored as content-addressed segments (old layout: whole blobs).
        stored = sum(os.path.getsize(os.path.join(d, f))
                     for sub in ("segments", "blobs")
                     for d, _, fs in os.walk(os.path.join(work, "data", sub)) for f in fs
                     if not f.endswith(".json"))
        print(f"push-dir: {time.perf_counter() - t:.2f} s, stored {stored / 1e6:.1f} MB "
              f"({stored / total:.3f} of the original)")
        wait_for(f"{st_url}/api/models/{ORG}/{NAME}", st, "static server")

        times = {"floatzip": [], "static": []}
        # One warm-up each (page cache, first connections), not counted.
        for url in (fz_url, st_url):
            one_download(url, work, want)
        for i in range(a.runs):
            for name, url in (("floatzip", fz_url), ("static", st_url)):
                s = one_download(url, work, want)
                times[name].append(s)
            print(f"run {i + 1}: floatzip {times['floatzip'][-1]:.3f} s, static {times['static'][-1]:.3f} s",
                  flush=True)
        fzm, stm = statistics.median(times["floatzip"]), statistics.median(times["static"])
        print(f"median snapshot_download: floatzip {fzm:.3f} s ({total / fzm / 1e6:.0f} MB/s), "
              f"static {stm:.3f} s ({total / stm / 1e6:.0f} MB/s), floatzip/static = {fzm / stm:.3f}")
    finally:
        for p in procs:
            p.terminate()
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
