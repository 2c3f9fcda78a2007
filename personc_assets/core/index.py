"""Maximum-similarity search over source embeddings with FAISS: exact, or approximate and certified.

Embeddings are L2-normalised, so inner product = cosine. The index keeps its
id map (source content hashes) and a manifest next to it; a loaded index is
checked against the manifest and refuses to be used with another encoder
version or source set (a stale index is an error, never a silent pass).

Two kinds, chosen by the number of sources N (``choose_kind``) and recorded
in the manifest:

``flat_ip``
    Exact brute force (``faiss.IndexFlatIP``: a BLAS matrix product). The
    reference path, used below ``APPROX_MIN_N`` sources.
``ivf_flat``
    ``faiss.IndexIVFFlat`` (spherical k-means cells) beside the same exact
    flat storage. Each query probes the ``nprobe`` cells with the highest
    *upper bound* and its top candidates are rescored exactly (float64).
    Nothing is trusted that is not proven:

    * every cell ``l`` records ``m_l = min(u_l · x)`` over its members
      (``u_l`` its unit centroid), so all its members lie in a spherical cap
      of half-angle ``a_l = arccos(m_l)`` around ``u_l``; for a query at angle
      ``t`` from ``u_l``, no member can score above ``|q| cos(max(0, t - a_l))``
      (``cap_upper_bounds``);
    * a query's max is **exact** when the best rescored candidate is at
      least the highest bound of every cell it did not probe;
    * with ``tau`` given, a query is **proven clear** when both its best
      candidate and every unprobed cell's bound stay below ``tau - margin``;
    * every other query — including every query whose candidates come within
      ``margin`` of tau without proving the max — is searched again exactly.

    Hence the guarantee: for every query whose brute-force max similarity is
    at least ``tau - margin`` the reported max equals brute force (to float32
    rounding), and without ``tau`` it does for every query. Reported values of
    proven-clear queries are real similarities to real sources, but may be
    below the true max; ``SearchResult.upper`` bounds the true max.

    Measured caveat (benchmarks/bench_guard.py): in 128-512 dimensions the cap
    bounds are loose (half-angles of ~80 degrees even in small cells), so few
    queries are proven clear and most fall back to the exact product. The
    guarantee is never traded for speed; the approximate kind then costs
    about as much as the exact one, plus twice the memory.

faiss-gpu: when ``faiss.get_num_gpus() > 0`` the exact flat storage is copied
to GPU 0 for the exact searches (the heavy part); everything else runs on CPU.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal, Sequence

import numpy as np

from .atomic import atomic_write_bytes, atomic_write_text

log = logging.getLogger(__name__)

IndexKind = Literal["flat_ip", "ivf_flat"]
INDEX_KINDS: tuple[IndexKind, ...] = ("flat_ip", "ivf_flat")

#: At or above this many sources ``kind="auto"`` builds ``ivf_flat``; below, ``flat_ip``.
APPROX_MIN_N = 200_000
#: Default safety margin below tau inside which every max is exact.
DEFAULT_MARGIN = 0.05
#: Candidates taken from the probed cells and rescored exactly, per query.
CANDIDATES_K = 8
#: Slack added to every bound and comparison for float32 rounding of stored vectors.
BOUND_EPS = 1e-5


class IndexUnavailableError(RuntimeError):
    """The index is missing, corrupt or stale (fail-closed callers reject)."""


def source_set_hash(ids: Sequence[str]) -> str:
    """Order-independent hash of a set of source content hashes."""
    return hashlib.sha256("\n".join(sorted(ids)).encode()).hexdigest()


@dataclass(frozen=True)
class IndexManifest:
    encoder: str
    encoder_version: str
    source_set_hash: str
    count: int
    dim: int
    kind: str = "flat_ip"
    nlist: int = 0   # ivf_flat: number of cells
    nprobe: int = 0  # ivf_flat: cells probed before the certificate is checked


@dataclass(frozen=True)
class SearchResult:
    """Outcome of ``EmbeddingIndex.search_certified`` for ``Q`` queries.

    ``sims [Q]`` and ``nearest`` are the reported max similarity and the source
    it was measured against. ``exact [Q]`` says the value is the brute-force
    max; otherwise the query was proven clear of ``tau - margin`` and
    ``upper [Q]`` (>= the true max) says by how much. ``fallback`` counts the
    queries that were searched again exhaustively.
    """

    sims: np.ndarray
    nearest: list[str | None]
    exact: np.ndarray
    upper: np.ndarray
    fallback: int


def choose_kind(count: int, kind: str = "auto", approx_min_n: int = APPROX_MIN_N) -> IndexKind:
    """The index kind for ``count`` sources: ``kind`` itself, or by size when ``"auto"``."""
    if kind == "auto":
        return "ivf_flat" if count >= approx_min_n else "flat_ip"
    if kind not in INDEX_KINDS:
        raise ValueError(f"unknown index kind {kind!r}; known kinds: auto, {', '.join(INDEX_KINDS)}")
    return kind  # type: ignore[return-value]


def default_nlist(count: int) -> int:
    """Cells for ``count`` vectors: about sqrt(N), at least 1, at most N/8 (cells of >= 8)."""
    return int(max(1, min(round(math.sqrt(count)), count // 8)))


def default_nprobe(nlist: int) -> int:
    return int(max(1, min(nlist, 8)))


def cap_upper_bounds(cos_qu: np.ndarray, cap_cos: np.ndarray, q_norm: np.ndarray,
                     cell_norm: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """Upper bounds ``[Q, L]`` of ``q · x`` over the members ``x`` of each cell.

    ``cos_qu [Q, L]``: cosine between each (normalised) query and each cell's
    unit centroid; ``cap_cos [L]``: min over the cell's members of the cosine
    between member and centroid (``-inf`` for an empty cell); ``q_norm [Q]``:
    query lengths; ``cell_norm``: shortest and longest member ``[L]`` per cell. A member at
    angle <= a from u and a query at angle t from u are at least
    max(0, t - a) apart, so ``q · x <= |q| |x| cos(max(0, t - a))``.
    """
    cq = np.clip(cos_qu, -1.0, 1.0)
    cc = np.clip(cap_cos, -1.0, 1.0)[None, :]
    sin_q, sin_c = np.sqrt(1.0 - cq ** 2), np.sqrt(1.0 - cc ** 2)
    inside = cq >= cc                                   # t <= a: the cap contains the query direction
    bound = np.where(inside, 1.0, cq * cc + sin_q * sin_c)  # cos(t - a)
    length = np.where(bound >= 0, cell_norm[1][None, :], cell_norm[0][None, :])  # |x| that maximises |x| cos
    bound = bound * q_norm[:, None] * length + BOUND_EPS
    return np.where(np.isfinite(cap_cos)[None, :], bound, -np.inf)


class EmbeddingIndex:
    """Max inner-product search ``[N, D]`` with string ids: ``flat_ip`` or certified ``ivf_flat``."""

    def __init__(self, manifest: IndexManifest, ids: list[str], index, ivf=None,
                 cells: tuple[np.ndarray, np.ndarray, tuple[np.ndarray, np.ndarray]] | None = None) -> None:
        self.manifest = manifest
        self.ids = ids
        self._index = index         # exact flat storage (IndexFlatIP)
        self._ivf = ivf             # IndexIVFFlat or None
        self._cells = cells  # unit centroids [L, D], cap cosines [L], (min, max) member norms [L] (float64)
        self._gpu = None             # (resources, gpu index) once made
        self.last_stats: dict[str, int] = {}

    # ------------------------------------------------------------------ build
    @classmethod
    def build(cls, encoder: str, encoder_version: str, ids: Sequence[str], vectors: np.ndarray,
              kind: str = "auto", nlist: int | None = None, nprobe: int | None = None,
              approx_min_n: int = APPROX_MIN_N, seed: int = 0) -> "EmbeddingIndex":
        """Index ``vectors [N, D]`` (unit rows) under ``ids``; ``kind`` "auto" picks by N."""
        import faiss

        vecs = np.ascontiguousarray(vectors, dtype=np.float32)
        if vecs.ndim != 2 or vecs.shape[0] != len(ids):
            raise ValueError(f"vectors must be [N, D] with N = len(ids) = {len(ids)}, got {vecs.shape}")
        if not np.all(np.isfinite(vecs)):
            raise ValueError("vectors contain NaN or inf")
        if len(set(ids)) != len(ids):
            raise ValueError("ids must be unique")
        n, d = vecs.shape
        chosen = choose_kind(n, kind, approx_min_n)
        flat = faiss.IndexFlatIP(d)
        flat.add(vecs)
        if chosen == "flat_ip":
            return cls(IndexManifest(encoder, encoder_version, source_set_hash(ids), n, d), list(ids), flat)
        if n == 0:
            raise ValueError("an ivf_flat index needs at least one vector; use kind='flat_ip'")
        nlist = int(nlist or default_nlist(n))
        if not 1 <= nlist <= n:
            raise ValueError(f"nlist must be in [1, N={n}], got {nlist}")
        nprobe = int(min(nprobe or default_nprobe(nlist), nlist))
        ivf = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, nlist, faiss.METRIC_INNER_PRODUCT)
        ivf.cp.spherical = True
        ivf.cp.seed = seed
        ivf.cp.min_points_per_centroid = 1  # small cells are fine: nlist <= N/8
        train = vecs
        if n > 64 * nlist:  # k-means needs a sample, not every vector
            train = vecs[np.sort(np.random.default_rng(seed).choice(n, 64 * nlist, replace=False))]
        ivf.train(train)
        ivf.add(vecs)
        manifest = IndexManifest(encoder, encoder_version, source_set_hash(ids), n, d, "ivf_flat", nlist, nprobe)
        cells = _cells(ivf, None)
        log.info("ivf_flat index for %s: %d vectors, %d cells, median cap half-angle %.1f deg",
                 encoder, n, nlist, math.degrees(float(np.median(np.arccos(np.clip(
                     cells[1][np.isfinite(cells[1])], -1, 1))))))
        return cls(manifest, list(ids), flat, ivf, cells)

    # ----------------------------------------------------------------- search
    def search_max(self, queries: np.ndarray, tau: float | None = None,
                   margin: float = DEFAULT_MARGIN) -> tuple[np.ndarray, list[str | None]]:
        """Max cosine ``[Q]`` of each query ``[Q, D]`` and the id of its nearest source.

        Exact for every query without ``tau``; with ``tau``, exact for every
        query whose true max reaches ``tau - margin`` (see the module docstring).
        """
        res = self.search_certified(queries, tau, margin)
        return res.sims, res.nearest

    def search_certified(self, queries: np.ndarray, tau: float | None = None,
                         margin: float = DEFAULT_MARGIN) -> SearchResult:
        """``search_max`` with the proof status of each query (see ``SearchResult``)."""
        q = self._check_queries(queries)
        if tau is not None and not (-1.0 < tau <= 1.0):
            raise ValueError(f"tau must be a cosine in (-1, 1], got {tau}")
        if not (margin >= 0.0) or not math.isfinite(margin):
            raise ValueError(f"margin must be a finite number >= 0, got {margin}")
        nq = len(q)
        if self.manifest.count == 0:
            self.last_stats = {"queries": nq, "fallback": 0, "proven_exact": 0, "proven_clear": 0}
            return SearchResult(np.full(nq, -1.0, np.float32), [None] * nq, np.ones(nq, bool),
                                np.full(nq, -1.0), 0)
        if self._ivf is None or nq == 0:
            sims, idx = self._exact(q)
            self.last_stats = {"queries": nq, "fallback": nq, "proven_exact": 0, "proven_clear": 0}
            return SearchResult(sims, self._names(idx), np.ones(nq, bool), sims.astype(np.float64), nq)
        return self._search_ivf(q, tau, margin)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k similarities ``[Q, k]`` and positions ``[Q, k]`` (exact)."""
        q = self._check_queries(queries)
        return self._index.search(q, min(k, self.manifest.count))

    def _check_queries(self, queries: np.ndarray) -> np.ndarray:
        q = np.ascontiguousarray(queries, dtype=np.float32)
        if q.ndim != 2 or q.shape[1] != self.manifest.dim:
            raise ValueError(f"queries must be [Q, {self.manifest.dim}], got {q.shape}")
        if not np.all(np.isfinite(q)):
            raise ValueError("queries contain NaN or inf")
        return q

    def _names(self, idx: np.ndarray) -> list[str | None]:
        return [self.ids[i] if i >= 0 else None for i in idx]

    def _exact(self, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Brute-force max ``[Q]`` and positions ``[Q]`` (GPU when faiss-gpu has one)."""
        sims, idx = self._exact_index().search(q, 1)
        return sims[:, 0].copy(), idx[:, 0].copy()

    def _exact_index(self):
        import faiss

        if self._gpu is None:
            self._gpu = (None, self._index)
            if hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0:
                res = faiss.StandardGpuResources()
                self._gpu = (res, faiss.index_cpu_to_gpu(res, 0, self._index))
                log.info("exact search for %s on GPU 0", self.manifest.encoder)
        return self._gpu[1]

    def _search_ivf(self, q: np.ndarray, tau: float | None, margin: float) -> SearchResult:
        nq, nlist = len(q), self.manifest.nlist
        nprobe = min(self.manifest.nprobe, nlist)
        q64 = q.astype(np.float64)
        q_norm = np.linalg.norm(q64, axis=1)
        unit = q64 / np.maximum(q_norm, 1e-30)[:, None]
        centroids, cap_cos, cell_norm = self._cells
        cos_qu = unit @ centroids.T                                    # [Q, L]
        bound = cap_upper_bounds(cos_qu, cap_cos, q_norm, cell_norm)   # [Q, L]
        order = np.argsort(-bound, axis=1, kind="stable")
        probe = np.ascontiguousarray(order[:, :nprobe])
        rest = (np.take_along_axis(bound, order[:, nprobe:nprobe + 1], axis=1)[:, 0]
                if nprobe < nlist else np.full(nq, -np.inf))          # best bound of an unprobed cell
        self._ivf.nprobe = nprobe
        _, cand = self._ivf.search_preassigned(
            q, min(CANDIDATES_K, self.manifest.count), probe,
            np.ascontiguousarray(np.take_along_axis(cos_qu, probe, axis=1), dtype=np.float32))
        # rescore every candidate exactly
        valid = cand >= 0
        sims_c = np.full(cand.shape, -np.inf)
        if valid.any():
            vecs = self._index.reconstruct_batch(cand[valid]).astype(np.float64)
            sims_c[valid] = np.einsum("nd,nd->n", vecs, np.repeat(q64, valid.sum(axis=1), axis=0))
        best = np.argmax(sims_c, axis=1)
        found = sims_c[np.arange(nq), best]
        found_id = np.where(np.isfinite(found), cand[np.arange(nq), best], -1)
        thr = (tau - margin) if tau is not None else -np.inf  # no tau: every max must be exact
        proven_exact = np.isfinite(found) & (found >= rest)
        proven_clear = np.isfinite(found) & (found < thr) & (rest < thr)
        need = ~(proven_exact | proven_clear)
        sims = found.astype(np.float32)
        idx = found_id.copy()
        upper = np.maximum(found, rest)
        if need.any():
            s, i = self._exact(np.ascontiguousarray(q[need]))
            sims[need], idx[need], upper[need] = s, i, s
        exact = proven_exact | need
        upper[proven_exact] = found[proven_exact]
        self.last_stats = {"queries": nq, "fallback": int(need.sum()), "proven_exact": int(proven_exact.sum()),
                           "proven_clear": int((proven_clear & ~proven_exact).sum())}
        return SearchResult(sims, self._names(idx), exact, upper, int(need.sum()))

    # ------------------------------------------------------------ persistence
    def save(self, path: Path) -> None:
        """Write ``path`` (FAISS), ``path.ids.json`` and ``path.manifest.json`` atomically.

        ``ivf_flat`` saves the IVF index only: it holds every vector, and the
        exact storage and cell caps are rebuilt from it on load.
        """
        import faiss

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        stored = self._ivf if self._ivf is not None else self._index
        atomic_write_bytes(path, faiss.serialize_index(stored).tobytes())
        atomic_write_text(path.with_suffix(path.suffix + ".ids.json"), json.dumps(self.ids))
        atomic_write_text(path.with_suffix(path.suffix + ".manifest.json"),
                          json.dumps(asdict(self.manifest), indent=2))

    @classmethod
    def load(cls, path: Path, expect: IndexManifest | None = None) -> "EmbeddingIndex":
        """Load an index; raise ``IndexUnavailableError`` if missing, corrupt or not ``expect``."""
        import faiss

        path = Path(path)
        try:
            manifest = IndexManifest(**json.loads(path.with_suffix(path.suffix + ".manifest.json").read_text()))
            ids = json.loads(path.with_suffix(path.suffix + ".ids.json").read_text())
            index = faiss.deserialize_index(np.frombuffer(path.read_bytes(), dtype=np.uint8))
        except FileNotFoundError as exc:
            raise IndexUnavailableError(f"index file missing: {exc.filename}; re-materialize embedding_indexes") from None
        except Exception as exc:  # corrupt files of any kind
            raise IndexUnavailableError(f"index at {path} cannot be read: {exc}") from None
        if index.ntotal != manifest.count or len(ids) != manifest.count or index.d != manifest.dim:
            raise IndexUnavailableError(f"index at {path} does not match its manifest "
                              f"({index.ntotal} vectors, manifest says {manifest.count})")
        if expect is not None and (manifest.encoder_version, manifest.source_set_hash) != (
                expect.encoder_version, expect.source_set_hash):
            raise IndexUnavailableError(f"index at {path} is stale: built for {manifest.encoder_version} over "
                              f"source set {manifest.source_set_hash[:12]}, expected "
                              f"{expect.encoder_version} over {expect.source_set_hash[:12]}")
        if manifest.kind == "flat_ip":
            if not isinstance(index, faiss.IndexFlatIP):
                raise IndexUnavailableError(f"index at {path} is a {type(index).__name__}, manifest says flat_ip")
            return cls(manifest, ids, index)
        if manifest.kind != "ivf_flat":
            raise IndexUnavailableError(f"index at {path} has unknown kind {manifest.kind!r}; "
                                        f"known kinds: {', '.join(INDEX_KINDS)}")
        if not isinstance(index, faiss.IndexIVFFlat):
            raise IndexUnavailableError(f"index at {path} is a {type(index).__name__}, manifest says ivf_flat")
        ivf = index
        if ivf.nlist != manifest.nlist or ivf.metric_type != faiss.METRIC_INNER_PRODUCT:
            raise IndexUnavailableError(f"index at {path} has {ivf.nlist} cells, manifest says {manifest.nlist}")
        rows = np.empty((manifest.count, manifest.dim), np.float32)
        cells = _cells(ivf, rows)
        flat = faiss.IndexFlatIP(manifest.dim)
        flat.add(rows)
        return cls(manifest, ids, flat, ivf, cells)


def _cells(ivf, rows: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, tuple[np.ndarray, np.ndarray]]:
    """Unit centroids ``[L, D]``, cap cosines ``[L]`` and (min, max) member norms ``[L]`` of an IVF-Flat index.

    When ``rows [N, D]`` is given it is filled with every stored vector at its
    id (each id must occur exactly once, else the index is corrupt).
    """
    import faiss

    d, nlist = ivf.d, ivf.nlist
    centroids = ivf.quantizer.reconstruct_n(0, nlist).astype(np.float64)
    centroids /= np.maximum(np.linalg.norm(centroids, axis=1, keepdims=True), 1e-30)
    cap_cos = np.full(nlist, -np.inf)   # empty cells: nothing can score there
    min_norm, max_norm = np.zeros(nlist), np.zeros(nlist)
    invlists = ivf.invlists
    if invlists.code_size != 4 * d:
        raise IndexUnavailableError(f"IVF index stores {invlists.code_size}-byte codes, expected raw float32 "
                                    f"vectors of {4 * d} bytes (IndexIVFFlat)")
    filled = np.zeros(len(rows), bool) if rows is not None else None
    seen = 0
    for cell in range(nlist):
        size = invlists.list_size(cell)
        if size == 0:
            continue
        codes = np.frombuffer(faiss.rev_swig_ptr(invlists.get_codes(cell), size * 4 * d),
                              dtype=np.float32).reshape(size, d).astype(np.float64)
        norms = np.linalg.norm(codes, axis=1)
        cap_cos[cell] = float(np.min((codes @ centroids[cell]) / np.maximum(norms, 1e-30))) - BOUND_EPS
        min_norm[cell], max_norm[cell] = norms.min() * (1 - BOUND_EPS), norms.max() * (1 + BOUND_EPS)
        if rows is not None:
            ids = np.array(faiss.rev_swig_ptr(invlists.get_ids(cell), size), dtype=np.int64)
            if ids.min() < 0 or ids.max() >= len(rows) or filled[ids].any() or len(np.unique(ids)) != size:
                raise IndexUnavailableError(f"IVF cell {cell} holds ids outside [0, {len(rows)}) or repeated ids")
            filled[ids] = True
            rows[ids] = codes
        seen += size
    if seen != ivf.ntotal or (rows is not None and not filled.all()):
        raise IndexUnavailableError(f"IVF cells hold {seen} vectors, index says {ivf.ntotal}")
    return centroids, cap_cos, (min_norm, max_norm)
