"""The reference row: the generation metrics of held-out real images against the reference set.

Held-out real images (the first ``eval.n_samples`` images of the split that is not the reference
split) scored exactly like a model's samples: the floor a model can reach under the suite's
protocol (same extractors, same n_real and n_fake, same reference split). The values are computed
once per dataset and protocol (cached on disk) and logged once per experiment as a run tagged
``bench.kind=reference`` (by ``bench.run.reference``: a metric never writes to the store), with
the metrics under the same names as the model runs and the same ``provenance.<metric>`` tags.
"""

from __future__ import annotations

from typing import Any

from bench.metrics.generative import GenerationEval

VERSION = 2  # bump when what a reference row means changes (2: held out from the domain classifier)


def protocol(gen: GenerationEval) -> dict[str, Any]:
    """What identifies a reference row: the data, both image sets and the metric settings."""
    cfg, ref, held = gen.cfg, gen.reference, gen.heldout
    return {
        "dataset": gen.full.name,
        "dataset_checksum": gen.full.checksum,
        "reference_split": ref.split,
        "n_real": ref.n,
        "heldout_split": held.split,
        "n_fake": held.n,
        "inception_weights": cfg.inception_weights,
        "kid_subsets": cfg.kid_subsets,
        "kid_subset_size": cfg.kid_subset_size,
        "prc_neighborhood": cfg.prc_neighborhood,
        "isc_splits": cfg.isc_splits,
        "version": VERSION,
        # set only when padding: reference rows cached before the option keep their keys
        **({"inception_pad_to": cfg.inception_pad_to} if cfg.inception_pad_to else {}),
    }
