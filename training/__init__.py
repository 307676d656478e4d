"""The offline trainer: pipelines, models, evaluation, engines.

Depends on `recsvc` only; never imports `serving`. Writes model bundles (recsvc.bundle).
"""

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # implicit warns otherwise
