"""Benchmark: the guard's max-similarity search at N = 1e3 ... 1e6 sources.

For each N, synthetic unit vectors ``[N, D]`` (D = 512, ArcFace-sized) are the
sources and ``Q`` candidates are searched with tau (default 0.4, ArcFace scale)
and the default safety margin:

- ``gemm``   : raw matrix product Q x D x N with a running max (torch, blocks of
               N), the FLOP bound of exact search; also the reference answer;
- ``exact``  : ``EmbeddingIndex`` kind ``flat_ip`` (faiss IndexFlatIP, BLAS);
- ``approx`` : ``EmbeddingIndex`` kind ``ivf_flat`` — certified IVF search that
               rescores candidates and falls back to exact search for every
               query it cannot prove (the guard's path at large N);
- ``ivf_raw``: the same faiss IVF searched plainly (nprobe cells, no proof) —
               what an uncertified approximate index would report.

Candidates: 80% random directions (max similarity ~ sqrt(2 ln N / D), far
below tau) and 20% noisy copies of sources with similarity spread over
[tau - 0.15, tau + 0.3] (leaks and near-misses). ``misses`` counts candidates
whose true max is >= tau - margin but whose reported max is lower (the
certified path must report 0). Prints a table and writes a CSV. Search only:
embedding a face costs far more (dlib ~150 ms per face on this machine).

    python benchmarks/bench_guard.py [--sizes 1e3 1e4 1e5 1e6] [--queries 1000] [--csv /tmp/bench_guard.csv]

Memory: at N = 1e6 the sources take 2 GB, the exact index 2 GB, the
approximate one 4 GB (IVF cells + exact storage); peak about 6 GB.
"""

from __future__ import annotations

import argparse
import csv
import gc
import logging
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from personc_assets.core.index import DEFAULT_MARGIN, EmbeddingIndex  # noqa: E402

log = logging.getLogger("bench_guard")

TOL = 1e-5


@dataclass
class Row:
    n: int
    path: str
    build_s: float
    search_s: float
    candidates_per_s: float
    gflops: float          # 2·Q·N·D / search time: GEMM-equivalent rate
    misses: int            # within margin of tau, reported below the true max
    fallback: int          # queries searched exhaustively (approx only)
    proven: int            # queries settled by the certificate (approx only)
    note: str = ""


def unit_rows(rng: np.random.Generator, n: int, d: int, chunk: int = 100_000) -> np.ndarray:
    """``[n, d]`` float32 random unit vectors, generated in chunks to bound temporaries."""
    out = np.empty((n, d), np.float32)
    for s in range(0, n, chunk):
        block = rng.standard_normal((min(chunk, n - s), d), dtype=np.float32)
        out[s:s + len(block)] = block / np.linalg.norm(block, axis=1, keepdims=True)
    return out


def make_queries(rng: np.random.Generator, src: np.ndarray, q: int, tau: float) -> np.ndarray:
    """80% random directions, 20% sources mixed with an orthogonal direction at cosine in [tau-0.15, tau+0.3]."""
    n, d = src.shape
    n_near = q // 5
    base = src[rng.integers(0, n, n_near)].astype(np.float64)
    r = rng.standard_normal((n_near, d))
    r -= np.sum(r * base, axis=1, keepdims=True) * base
    r /= np.linalg.norm(r, axis=1, keepdims=True)
    c = rng.uniform(tau - 0.15, min(1.0, tau + 0.3), (n_near, 1))
    near = c * base + np.sqrt(1 - c ** 2) * r
    return np.concatenate([unit_rows(rng, q - n_near, d), near.astype(np.float32)])


def gemm_max(src: np.ndarray, q: np.ndarray, block: int = 65_536) -> tuple[np.ndarray, float]:
    """Max of ``q @ src.T`` per row with torch (float32), in blocks of sources; (max [Q], seconds)."""
    import torch

    qt = torch.from_numpy(q)
    best = torch.full((len(q),), -float("inf"))
    out = torch.empty((len(q), block))
    start = time.perf_counter()
    for s in range(0, len(src), block):
        chunk = torch.from_numpy(src[s:s + block])
        res = torch.mm(qt, chunk.T, out=out[:, :len(chunk)])
        torch.maximum(best, res.max(dim=1).values, out=best)
    return best.numpy().copy(), time.perf_counter() - start


def exact_reference(src: np.ndarray, q: np.ndarray, block: int = 65_536) -> np.ndarray:
    """float64 max similarity of each query (independent of faiss and of float32 GEMM)."""
    q64 = q.astype(np.float64)
    best = np.full(len(q), -np.inf)
    for s in range(0, len(src), block):
        best = np.maximum(best, (q64 @ src[s:s + block].astype(np.float64).T).max(axis=1))
    return best


def timed(fn):
    start = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - start


def bench_size(n: int, d: int, nq: int, tau: float, margin: float, rng: np.random.Generator,
               with_reference: bool) -> list[Row]:
    src = unit_rows(rng, n, d)
    q = make_queries(rng, src, nq, tau)
    flops = 2.0 * nq * n * d
    ids = [str(i) for i in range(n)]
    rows: list[Row] = []

    _, warm = gemm_max(src, q[:8])  # threads and allocator warm-up
    gemm_sims, gemm_s = gemm_max(src, q)
    ref = exact_reference(src, q) if with_reference else gemm_sims.astype(np.float64)
    near = ref >= tau - margin
    rows.append(Row(n, "gemm", 0.0, gemm_s, nq / gemm_s, flops / gemm_s / 1e9,
                    int(np.sum(near & (gemm_sims < ref - TOL))), 0, 0,
                    f"{int(near.sum())} of {nq} candidates within margin; {int((ref >= tau).sum())} at/above tau"))

    exact, build = timed(lambda: EmbeddingIndex.build("bench", "v", ids, src, kind="flat_ip"))
    (sims, _), search = timed(lambda: exact.search_max(q, tau=tau, margin=margin))
    rows.append(Row(n, "exact", build, search, nq / search, flops / search / 1e9,
                    int(np.sum(near & (sims < ref - TOL))), nq, 0))
    del exact
    gc.collect()

    approx, build = timed(lambda: EmbeddingIndex.build("bench", "v", ids, src, kind="ivf_flat"))
    res, search = timed(lambda: approx.search_certified(q, tau=tau, margin=margin))
    stats = approx.last_stats
    m = approx.manifest
    rows.append(Row(n, "approx", build, search, nq / search, flops / search / 1e9,
                    int(np.sum(near & (res.sims < ref - TOL))), stats["fallback"],
                    stats["proven_exact"] + stats["proven_clear"], f"ivf_flat nlist={m.nlist} nprobe={m.nprobe}"))
    ivf = approx._ivf  # the same faiss IVF, searched without the certificate
    ivf.nprobe = m.nprobe
    (raw, raw_idx), search = timed(lambda: ivf.search(q, 1))
    raw_sims = raw[:, 0]
    rows.append(Row(n, "ivf_raw", 0.0, search, nq / search, flops / search / 1e9,
                    int(np.sum(near & (raw_sims < ref - TOL))), 0, 0, "uncertified: for comparison only"))
    del approx, ivf, src
    gc.collect()
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=float, nargs="+", default=[1e3, 1e4, 1e5, 1e6])
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--queries", type=int, default=1000)
    p.add_argument("--tau", type=float, default=0.4)
    p.add_argument("--margin", type=float, default=DEFAULT_MARGIN)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--reference-max-n", type=float, default=1e5,
                   help="largest N with an independent float64 reference (above: the float32 GEMM is the reference)")
    p.add_argument("--csv", type=Path, default=Path(tempfile.gettempdir()) / "bench_guard.csv")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    import faiss
    import torch

    rng = np.random.default_rng(args.seed)
    rows: list[Row] = []
    for n in (int(s) for s in args.sizes):
        rows += bench_size(n, args.dim, args.queries, args.tau, args.margin, rng, n <= args.reference_max_n)
        sys.stderr.write(f"N={n} done\n")
    header = (f"guard search, D={args.dim}, Q={args.queries} candidates, tau={args.tau}, margin={args.margin}; "
              f"faiss {faiss.__version__} ({faiss.omp_get_max_threads()} threads, GPUs: {faiss.get_num_gpus()}), "
              f"torch {torch.__version__} ({torch.get_num_threads()} threads)")
    cols = ["N", "path", "build s", "search s", "cand/s", "GFLOP/s", "misses", "fallback", "proven", "note"]
    table = [[f"{r.n:,}", r.path, f"{r.build_s:.2f}", f"{r.search_s:.3f}", f"{r.candidates_per_s:,.0f}",
              f"{r.gflops:.1f}", str(r.misses), str(r.fallback), str(r.proven), r.note] for r in rows]
    widths = [max(len(c), *(len(t[i]) for t in table)) for i, c in enumerate(cols)]
    line = lambda cells: "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    print(header)
    print(line(cols))
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for t in table:
        print(line(t))
    with open(args.csv, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(asdict(rows[0])))
        writer.writeheader()
        writer.writerows(asdict(r) for r in rows)
    print(f"wrote {args.csv}")
    certified = [r for r in rows if r.path in ("exact", "approx")]
    return 1 if any(r.misses for r in certified) else 0


if __name__ == "__main__":
    sys.exit(main())
