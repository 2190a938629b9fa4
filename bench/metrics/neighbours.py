"""Exact nearest neighbours in torch, in row chunks: k-NN classification and k-NN radii.

Every distance is ``torch.cdist`` (Euclidean) over a chunk of rows against a whole set, so the
memory held at once is ``chunk x N`` and the work runs on the tensors' device. Nothing is
approximate: the k nearest are found by ``topk`` over all N distances.

- ``knn_classify``: the majority label among the k nearest training points (ties between labels
  go to the smallest label, as scikit-learn's ``KNeighborsClassifier`` breaks them).
- ``kth_neighbour_distance``: each point's distance to its k-th nearest other point of the same
  set (the radius of its k-NN ball in Kynkäänniemi et al.'s precision and recall).
- ``precision_recall``: the definition torch-fidelity implements (``metric_prc``): precision is
  the fraction of generated points inside some real point's k-NN ball, recall the fraction of
  real points inside some generated point's ball; a point is inside a ball when its distance is
  at most the radius. One pass over the generated-to-real distances serves both, and the real
  radii can come from a cache.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

Tensor = torch.Tensor

CHUNK = 1000  # rows of a distance matrix held at once


def knn_classify(
    train: Tensor, train_y: Tensor, query: Tensor, k: int, num_classes: int, chunk: int = CHUNK
) -> Tensor:
    """Predicted labels (M,) of ``query`` (M, d) by a majority vote of the k nearest ``train`` rows."""
    if k > len(train):
        raise ValueError(f"k = {k} nearest neighbours asked of {len(train)} training points")
    train_y = train_y.to(train.device)
    out = []
    for q in query.split(chunk):
        idx = torch.cdist(q, train).topk(k, dim=1, largest=False).indices  # (c, k)
        votes = F.one_hot(train_y[idx], num_classes).sum(1)  # (c, classes)
        out.append(votes.argmax(1))  # the first (smallest) label among tied counts
    return torch.cat(out) if out else torch.empty(0, dtype=torch.long, device=train.device)


def kth_neighbour_distance(x: Tensor, k: int, chunk: int = CHUNK) -> Tensor:
    """Each row's distance (N,) to its k-th nearest other row of ``x`` (its own distance, 0, is
    the first of the k + 1 smallest)."""
    if k >= len(x):
        raise ValueError(f"the {k}-th nearest neighbour asked of {len(x)} points")
    return torch.cat(
        [torch.cdist(c, x).topk(k + 1, dim=1, largest=False).values[:, k] for c in x.split(chunk)]
    )


def precision_recall(
    fake: Tensor, real: Tensor, k: int, real_radii: Tensor | None = None, chunk: int = CHUNK
) -> tuple[float, float]:
    """(precision, recall) of generated features ``fake`` (N, d) against ``real`` (M, d), k-NN balls
    of size ``k``; ``real_radii`` (M,) are ``kth_neighbour_distance(real, k)`` when given."""
    if real_radii is None:
        real_radii = kth_neighbour_distance(real, k, chunk)
    fake_radii = kth_neighbour_distance(fake, k, chunk)
    real_radii = real_radii.to(real)
    inside_real_ball = []  # per generated point
    real_covered = torch.zeros(len(real), dtype=torch.bool, device=real.device)
    for f, rf in zip(fake.split(chunk), fake_radii.split(chunk), strict=True):
        d = torch.cdist(f, real)  # (c, M)
        inside_real_ball.append((d <= real_radii).any(1))
        real_covered |= (d <= rf[:, None]).any(0)
    # float32 means, as torch-fidelity takes them: the same values to the last digit
    precision = torch.cat(inside_real_ball).float().mean().item()
    return precision, real_covered.float().mean().item()
