"""The evaluation protocol: the numbers that change a score (PROTOCOL_VERSION goes up with any
of them), and the lines of `ganctl eval --json`'s protocol that are no one metric's (each metric
carries its own line). Light: the metric registry reads it, and `ganctl --help` reads that.
"""

from __future__ import annotations

PROTOCOL_VERSION = 1  # bump when anything that changes a score changes
KEEP = 10_000  # features kept for KID subsets and precision/recall
MIN_COUNT = 2  # a covariance needs two images
SUBSETS = 100  # KID's random subsets
SUBSET_SIZE = 1000  # images in each, or as many as the smaller set has
K = 3  # precision/recall: each point's ball reaches to its k-th nearest neighbour

# before the metrics' own lines
FEATURES = {
    "images": "uint8 RGB as saved (grey repeated to 3 channels); fakes from G_ema, latent seeds 0..N-1",
    "resize": "to 299x299, bilinear: inside NVlabs' file (nvlabs form), else torch interpolate "
              "with align_corners=False and no antialiasing (float299 form)",
    "features": "TF Inception-v3 pool3, 2048 features, fp32, TF32 off",
}
# after them
REALS = {
    "real_subset": f"reals in a fixed random order (seed 0): the first N; KID and PR use the first "
                   f"min({KEEP}, N)",
}
