"""Exact nearest neighbours in torch, in row chunks: k-NN classification and k-NN radii.

Distances are computed for a chunk of rows against a whole set, so the memory held at once is
``chunk x N`` and the work runs on the tensors' device. Nothing is approximate: the k nearest
are the k smallest of all N distances (``smallest``: the same values as ``topk``, found by
``topk`` over the few blocks of columns that can hold them).

- ``knn_classify``: the majority label among the k nearest training points (ties between labels
  go to the smallest label, as scikit-learn's ``KNeighborsClassifier`` breaks them).
- ``kth_neighbour_distance``: each point's distance to its k-th nearest other point of the same
  set (the radius of its k-NN ball in Kynkäänniemi et al.'s precision and recall).
- ``precision_recall``: the definition torch-fidelity implements (``metric_prc``): precision is
  the fraction of generated points inside some real point's k-NN ball, recall the fraction of
  real points inside some generated point's ball; a point is inside a ball when its distance is
  at most the radius. One pass over the generated-to-real distances serves both, and the real
  radii can come from a cache.

The radii and the ball tests are decided in float64, on each pair's coordinate differences
(``sum((a - b)**2)``, so a duplicate is at distance exactly 0), but that arithmetic runs only
where it can change an answer. Every chunk is first screened with float32 squared distances
(one matrix product, on points centred on their common mean) and a bound on their rounding
error (``_bound``): a pair whose float32 distance is further from the radius than the bound is
decided by it, and only the pairs within it, and the candidates for each k-th neighbour, are
computed again in float64. The answers are those of the float64 computation on every pair.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from bench import numerics

Tensor = torch.Tensor

CHUNK = 1000  # rows of a distance matrix held at once, at most
# ... and at most this many distances: each chunk's products come from oneDNN's GEMM
# (``numerics.packed_linear``), which writes a new tensor each time; up to 16 MB the allocator
# hands the same memory back, larger ones are paged in anew (2-core AMD EPYC, 10,000 queries
# against 60,000 64-d points, distances and top-k: 0.87 s in chunks of 69 rows, 1.15 s through
# MKL into one buffer in chunks of 1,000, 1.78 s through oneDNN in chunks of 1,000;
# benchmarks/linear.py)
CHUNK_VALUES = 1 << 22
SPARE = 8  # float32 neighbours kept beyond the k + 1 nearest, to find the exact ones among
PAIR_VALUES = 1 << 22  # float64 coordinate differences held at once (32 MB)
BLOCK = 16  # columns per block in ``smallest``


def smallest(values: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """The k smallest entries of each row of ``values`` (c, n), ascending, and their columns: the
    values ``values.topk(k, dim=1, largest=False)`` gives (which of several equal entries is taken
    is unspecified, as with ``topk``).

    The columns are dealt into blocks of ``BLOCK`` (block j: columns j, j + n / BLOCK, ...), whose
    minima are one vectorised pass. The k smallest entries lie in the k blocks of smallest minimum
    (each of those holds an entry at most the k-th smallest minimum, so the k-th smallest entry is
    at most that, and a block whose minimum is above it holds none of them), and ``topk`` runs
    over those k blocks only: 3.2x faster than over all 60,000 columns of ``knn_acc``'s chunks
    on a 2-core Intel Xeon (``benchmarks/linear.py``). ``values`` with a NaN anywhere (a NaN
    block minimum) go to ``topk`` whole."""
    c, n = values.shape
    blocks = n // BLOCK
    if blocks <= 4 * k:
        return values.topk(k, dim=1, largest=False)
    dealt = values[:, : blocks * BLOCK].reshape(c, BLOCK, blocks)
    minima = dealt.amin(1)  # (c, blocks)
    if bool(minima.amin().isnan()):  # NaN if any is (a tenth of the time of isnan().any())
        return values.topk(k, dim=1, largest=False)
    picked = minima.topk(k, dim=1, largest=False).indices  # (c, k)
    held = torch.gather(dealt, 2, picked[:, None, :].expand(c, BLOCK, k)).view(c, BLOCK * k)
    rest = values[:, blocks * BLOCK :]  # the last n % BLOCK columns, candidates always
    near, at = torch.cat([held, rest], 1).topk(k, dim=1, largest=False)
    # position p < BLOCK k of the candidates: the (p // k)-th column of block picked[p % k]
    p = at.clamp_max(BLOCK * k - 1)
    cols = torch.gather(picked, 1, p % k) + blocks * (p // k)
    return near, torch.where(at < BLOCK * k, cols, at + (blocks * BLOCK - BLOCK * k))


def knn_classify(
    train: Tensor, train_y: Tensor, query: Tensor, k: int, num_classes: int, chunk: int = CHUNK
) -> Tensor:
    """Predicted labels (M,) of ``query`` (M, d) by a majority vote of the k nearest ``train`` rows.

    The neighbours are the k smallest of |t|^2 - 2 q.t (the squared distance less the query's
    own squared norm, which does not change the order), on points centred on the training mean so
    that the norms, and with them the rounding, stay small; ``chunk`` rows at a time, fewer where
    that would be more than ``CHUNK_VALUES`` distances."""
    if k > len(train):
        raise ValueError(f"k = {k} nearest neighbours asked of {len(train)} training points")
    train_y = train_y.to(train.device)
    centre = train.mean(0)
    train, query = train - centre, query - centre
    # q -> |t|^2 - 2 q.t for every t, the weight packed once (-2 t: exact)
    distances = numerics.packed_linear(-2 * train, train.square().sum(1))
    out = []
    for q in query.split(max(1, min(chunk, CHUNK_VALUES // max(1, len(train))))):
        d2 = distances(q)  # (c, N)
        idx = smallest(d2, k)[1]  # (c, k)
        votes = F.one_hot(train_y[idx], num_classes).sum(1)  # (c, classes)
        out.append(votes.argmax(1))  # the first (smallest) label among tied counts
    return torch.cat(out) if out else torch.empty(0, dtype=torch.long, device=train.device)


U32 = 2.0**-24  # float32's unit roundoff
U64 = 2.0**-53  # float64's


def _bound(dim: int, norms: Tensor, other_max: Tensor | float, shift: float) -> Tensor:
    """An upper bound (per row) on |float32 squared distance - float64 squared distance| for rows
    of these norms against points of norm at most ``other_max`` (centred, as ``_centred`` returns;
    ``shift`` bounds how far centring in float64 moved any point).

    Each of the two squared norms is a sum of ``dim`` products and the product [a, |a|^2] . [-2 b, 1]
    one of ``dim + 1``, in any order: each one's error is at most gamma = (dim + 2) u / (1 - (dim +
    2) u) of the sum of its terms' magnitudes, together at most 2 gamma (|a| + |b|)^2;
    rounding the centred coordinates to float32 moves a squared distance by at most
    3u (|a| + |b|)^2, centring by at most 4 shift (|a| + |b|) + 4 shift^2. Together; doubled, so
    that the float64 pass that decides a pair, and float32's rounding of the radii, are inside it."""
    gamma = (dim + 2) * U32 / (1 - (dim + 2) * U32)
    span = norms + other_max
    return 2 * ((2 * gamma + 3 * U32) * span**2 + 4 * shift * span + 4 * shift**2)


def _centred(*sets: Tensor) -> tuple[list[tuple[Tensor, Tensor, Tensor, Tensor]], float]:
    """Each set as (float64 as given, then centred on the mean of all of them: in float32, its
    float32 squared norms, its float64 norms), and a bound on how far centring in float64 moved
    any point. Distances do not move with the centre; the norms, and so the rounding bounds,
    shrink."""
    mean = torch.cat([x.double() for x in sets]).mean(0)
    out, largest = [], mean.abs().max().item() if len(mean) else 0.0
    for x in sets:
        x64 = x.double()
        centred = x64 - mean
        x32 = centred.float()
        out.append((x64, x32, (x32 * x32).sum(1), centred.norm(dim=1)))
        largest = max(largest, x64.abs().max().item() if x64.numel() else 0.0)
    # each centred coordinate is within 2 u64 (|x| + |mean|) of its exact value
    return out, 4 * U64 * largest * len(mean) ** 0.5


class _Squared32:
    """float32 squared distances |a|^2 + |b|^2 - 2 a.b of chunks of rows of ``a`` against all of
    ``b`` (less ``b_less`` per column, e.g. a radius squared), as one product per chunk: [a, |a|^2]
    times [-2 b, 1], plus the row |b|^2 - b_less (``numerics.packed_linear``, the weight packed
    once). ``rows``: the chunk size, ``chunk`` or fewer where that would be more than
    ``CHUNK_VALUES`` distances."""

    def __init__(self, a32: Tensor, a_sq: Tensor, b32: Tensor, b_sq: Tensor, chunk: int, b_less=None) -> None:
        self.a = torch.cat([a32, a_sq[:, None]], 1)  # (n, d + 1)
        b = torch.cat([-2 * b32, torch.ones_like(b_sq)[:, None]], 1)  # (m, d + 1); -2 b is exact
        self.product = numerics.packed_linear(b, b_sq if b_less is None else b_sq - b_less)
        self.rows = max(1, min(chunk, CHUNK_VALUES // max(1, len(b32))))

    def __call__(self, start: int, stop: int) -> Tensor:
        return self.product(self.a[start:stop])


def _pairs64(a64: Tensor, b64: Tensor, rows: Tensor, cols: Tensor) -> Tensor:
    """Squared distances of the pairs (a[rows[i]], b[cols[i]]) in float64, from their differences
    (in batches of at most ``PAIR_VALUES`` coordinates: wide features and many pairs fit)."""
    step = max(1, PAIR_VALUES // max(1, a64.shape[1]))
    parts = [
        (a64[rows[i : i + step]] - b64[cols[i : i + step]]).square().sum(1) for i in range(0, len(rows), step)
    ]
    return torch.cat(parts) if parts else torch.empty(0, dtype=torch.float64, device=a64.device)


def _kth_of_rows(rows: Tensor, values: Tensor, n_rows: int, k: int) -> Tensor:
    """For each row 0..n_rows-1, the (k + 1)-th smallest of its ``values`` (each row has more)."""
    order = torch.argsort(values, stable=True)
    order = order[torch.argsort(rows[order], stable=True)]  # by row, ascending values within it
    counts = torch.bincount(rows, minlength=n_rows)
    starts = torch.cumsum(counts, 0) - counts
    return values[order][starts + k]


def _kth(x64: Tensor, x32: Tensor, x_sq: Tensor, norms: Tensor, shift: float, k: int, chunk: int) -> Tensor:
    bound = _bound(x64.shape[1], norms, norms.max(), shift)
    m = min(len(x64), k + 1 + SPARE)
    out = []
    squared = _Squared32(x32, x_sq, x32, x_sq, chunk)
    chunk = squared.rows
    for s in range(0, len(x64), chunk):
        d2 = squared(s, min(s + chunk, len(x64)))
        near, near_cols = smallest(d2, m)
        # the exact k + 1 smallest are among the pairs within twice the bound of float32's
        limit = near[:, k] + 2 * bound[s : s + chunk].float()
        if m == len(x64) or bool((near[:, -1] > limit).all()):  # all of them among the m
            rows, at = (near <= limit[:, None]).nonzero(as_tuple=True)
            cols = near_cols[rows, at]
        else:
            rows, cols = (d2 <= limit[:, None]).nonzero(as_tuple=True)
        exact = _pairs64(x64[s : s + chunk], x64, rows, cols)
        out.append(_kth_of_rows(rows, exact, len(d2), k).sqrt())
    return torch.cat(out) if out else torch.empty(0, dtype=torch.float64, device=x64.device)


def kth_neighbour_distance(x: Tensor, k: int, chunk: int = CHUNK) -> Tensor:
    """Each row's distance (N,) to its k-th nearest other row of ``x`` (its own distance, 0, is
    the first of the k + 1 smallest), in float64."""
    if k >= len(x):
        raise ValueError(f"the {k}-th nearest neighbour asked of {len(x)} points")
    ((x64, x32, x_sq, norms),), shift = _centred(x)
    return _kth(x64, x32, x_sq, norms, shift, k, chunk)


def precision_recall(
    fake: Tensor, real: Tensor, k: int, real_radii: Tensor | None = None, chunk: int = CHUNK
) -> tuple[float, float]:
    """(precision, recall) of generated features ``fake`` (N, d) against ``real`` (M, d), k-NN balls
    of size ``k``; ``real_radii`` (M,) are ``kth_neighbour_distance(real, k)`` when given."""
    for x in (fake, real) if real_radii is None else (fake,):
        if k >= len(x):
            raise ValueError(f"the {k}-th nearest neighbour asked of {len(x)} points")
    ((f64, f32, f_sq, f_norm), (r64, r32, r_sq, r_norm)), shift = _centred(fake, real)
    if real_radii is None:
        real_radii = _kth(r64, r32, r_sq, r_norm, shift, k, chunk)
    fake_radii = _kth(f64, f32, f_sq, f_norm, shift, k, chunk)
    real_radii = real_radii.to(r64)
    # one bound for every pair (from the largest norms of both sets), plus float32's rounding of
    # the radii and of the three sums below that carry them (each value is at most 9 M^2)
    big = (f_norm.max() + r_norm.max()).item()
    slack = _bound(f64.shape[1], f_norm.max(), r_norm.max(), shift).item() + 32 * U32 * big**2
    real_r2, fake_r2 = real_radii.square().float(), fake_radii.square().float()
    inside_real_ball = []  # per generated point
    real_covered = torch.zeros(len(real), dtype=torch.bool, device=r64.device)
    # g[i, j] = d(i, j)^2 - r_j^2: generated point i is inside real point j's ball when <= 0
    squared = _Squared32(f32, f_sq, r32, r_sq, chunk, b_less=real_r2)
    chunk = squared.rows
    for s in range(0, len(fake), chunk):
        a64, fr = f64[s : s + chunk], fake_radii[s : s + chunk]
        g = squared(s, min(s + chunk, len(fake)))
        low = g.amin(1)
        inside = low < -slack
        rows = ((low <= slack) & ~inside).nonzero().flatten()  # not decided by float32
        if len(rows):
            i, j = (g[rows] <= slack).nonzero(as_tuple=True)
            hit = _pairs64(a64, r64, rows[i], j).sqrt() <= real_radii[j]
            inside[rows[i[hit]]] = True
        inside_real_ball.append(inside)
        # h[i, j] + r_j^2 = d(i, j)^2 - rf_i^2: real point j is inside generated point i's ball
        h = g.sub_(fake_r2[s : s + chunk, None])  # g is not read again
        low = h.amin(0) + real_r2
        real_covered |= low < -slack
        cols = ((low <= slack) & (low >= -slack)).nonzero().flatten()
        if len(cols):
            i, j = (h[:, cols] + real_r2[cols] <= slack).nonzero(as_tuple=True)
            hit = _pairs64(a64, r64, i, cols[j]).sqrt() <= fr[i]
            real_covered[cols[j[hit]]] = True
    # float32 means, as torch-fidelity takes them: the same values to the last digit
    precision = torch.cat(inside_real_ball).float().mean().item()
    return precision, real_covered.float().mean().item()
