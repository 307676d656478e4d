"""The compiled ALS conjugate-gradient step against implicit's own."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

from implicit.cpu import _als  # noqa: E402
from implicit.cpu.als import AlternatingLeastSquares  # noqa: E402

from training.models import als_cg  # noqa: E402
from training.models.als_cg import CompiledCGALS, least_squares_cg  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def _confidences(rows: int, cols: int, seed: int) -> sp.csr_matrix:
    rng = np.random.default_rng(seed)
    matrix = sp.random(rows, cols, density=0.03, random_state=rng, format="lil", dtype=np.float32)
    matrix[5, :] = 0  # a row without entries is set to zero
    matrix[7, 3] = -4.0  # a negative confidence: a disliked item, weight |c|
    csr = sp.csr_matrix(matrix * 6)
    csr.eliminate_zeros()
    return csr


@pytest.mark.parametrize("cg_steps", [1, 3])
@pytest.mark.parametrize("block_rows", [None, 5])
def test_one_solve_matches_implicit(
    cg_steps: int, block_rows: int | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    if block_rows is not None:  # rows longer than the workspace read the factors in place
        monkeypatch.setattr(als_cg, "BLOCK_BYTES", block_rows * 4 * 24)
    rng = np.random.default_rng(0)
    Cui = _confidences(400, 300, seed=1)
    X = rng.random((400, 24), dtype=np.float32)
    Y = rng.random((300, 24), dtype=np.float32) * 0.1
    expected = X.copy()
    _als.least_squares_cg(Cui, expected, Y, 0.3, num_threads=1, cg_steps=cg_steps)
    got = X.copy()
    least_squares_cg(Cui, got, Y, 0.3, num_threads=2, cg_steps=cg_steps)
    assert np.abs(got - X).max() > 0.1  # the step moved the factors
    # float32 CG from a rough start: summation order moves the last digits
    np.testing.assert_allclose(got, expected, rtol=0, atol=5e-4 * np.abs(expected).max())
    assert not got[5].any()


def test_a_fit_matches_implicit_fit() -> None:
    Cui = abs(_confidences(600, 400, seed=2))
    models = []
    for cls in (AlternatingLeastSquares, CompiledCGALS):
        model = cls(factors=16, iterations=6, regularization=0.1, random_state=7, num_threads=2,
                    calculate_training_loss=False)
        model.fit(Cui, show_progress=False)
        models.append(model)
    np.testing.assert_allclose(models[1].user_factors, models[0].user_factors, atol=1e-4)
    np.testing.assert_allclose(models[1].item_factors, models[0].item_factors, atol=1e-4)
    assert CompiledCGALS(use_cg=False).solver is AlternatingLeastSquares(use_cg=False).solver


def test_factors_of_another_dtype_are_refused() -> None:
    Cui = _confidences(20, 10, seed=3)
    with pytest.raises(TypeError, match="float32"):
        least_squares_cg(Cui, np.zeros((20, 4)), np.zeros((10, 4), np.float32), 0.1)


def test_calls_from_several_threads_are_serialised() -> None:
    # numba's workqueue pool aborts the process when two threads enter it at once
    script = textwrap.dedent(
        """
        import threading
        import numpy as np, scipy.sparse as sp
        from training.models.als_cg import least_squares_cg
        Cui = sp.random(3000, 500, density=0.02, random_state=1, format="csr", dtype=np.float32) * 5
        Y = np.random.default_rng(0).random((500, 16), dtype=np.float32)
        results = []
        def work():
            X = np.full((3000, 16), 0.01, np.float32)
            for _ in range(15):
                least_squares_cg(Cui, X, Y, 0.1, num_threads=2)
            results.append(X)
        threads = [threading.Thread(target=work) for _ in range(3)]
        for t in threads: t.start()
        for t in threads: t.join()
        assert len(results) == 3 and all(np.array_equal(r, results[0]) for r in results)
        import numba
        print(numba.threading_layer())
        """
    )
    env = dict(os.environ, NUMBA_THREADING_LAYER="workqueue", PYTHONPATH=str(ROOT))
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "workqueue"


def test_without_a_writable_cache_the_step_compiles_per_process() -> None:
    # as root every directory is writable: take numba's cache locators away instead
    script = textwrap.dedent(
        """
        from numba.core import caching
        caching.CacheImpl._locator_classes = []
        import numpy as np, scipy.sparse as sp
        from training.models import als_cg
        assert als_cg._solve_rows._cache.__class__.__name__ == "NullCache"
        Cui = sp.random(50, 30, density=0.2, random_state=1, format="csr", dtype=np.float32) * 5
        X = np.full((50, 4), 0.1, np.float32)
        als_cg.least_squares_cg(Cui, X, np.full((30, 4), 0.1, np.float32), 0.1)
        assert np.isfinite(X).all() and X.any()
        """
    )
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
