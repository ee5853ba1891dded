from __future__ import annotations

import pytest

from recaption.errors import ConfigError
from recaption.nouns.options import NounOptions
from recaption.nouns.parallel import NounPool, WorkerError, count_texts_parallel, set_blas_threads


@pytest.fixture(scope="module")
def texts(laion_texts, iiw_texts) -> list:
    # real captions of both kinds, plus the odd ones
    return [*iiw_texts[:12], *laion_texts[:60], "", None, b"caf\xe9 tables"]


def test_one_and_two_workers_equal_a_single_counter(counter, texts) -> None:
    expected_captions = counter.count(texts)
    expected = counter.count_stats(texts)
    with NounPool(counter.options, workers=1) as pool:
        one = pool.count(texts, chunk_size=17, keep_captions=True)
    with NounPool(counter.options, workers=2) as pool:
        two = pool.count(texts, chunk_size=9, keep_captions=True)
        # the same pool again, another chunking: identical merged stats
        again = pool.count(texts, chunk_size=50)
    assert one.stats == expected
    assert two.stats == expected
    assert again.stats == expected
    assert again.captions is None
    assert one.captions == expected_captions
    assert two.captions == expected_captions
    assert two.stats.to_json() == expected.to_json()
    assert (one.workers, two.workers) == (1, 2)


def test_bad_pool_options() -> None:
    with pytest.raises(ConfigError, match="backend"):
        NounPool(workers=1, backend="threads")
    with pytest.raises(ConfigError, match="workers"):
        NounPool(workers=0)


def test_a_worker_that_cannot_load_its_model_fails_clearly() -> None:
    with pytest.raises(WorkerError, match="xx_no_such_model_sm"):
        count_texts_parallel(["a dog"], NounOptions(model="xx_no_such_model_sm"), workers=1)


def test_blas_threads_can_be_set() -> None:
    import ctypes

    import numpy  # noqa: F401 - loads its BLAS

    with open("/proc/self/maps") as f:
        libs = sorted({line.split()[-1] for line in f if "openblas" in line.lower() and "/" in line})
    # NumPy wheels bundle OpenBLAS: found exactly when this process has one loaded
    assert set_blas_threads(1) is bool(libs)
    getters = ("openblas_get_num_threads", "scipy_openblas_get_num_threads64_", "openblas_get_num_threads64_")

    def counts() -> list[int]:
        fns = [getattr(ctypes.CDLL(p), g, None) for p in libs for g in getters]
        return [fn() for fn in fns if fn is not None]

    if libs:
        assert counts() and all(n == 1 for n in counts())  # the setting took effect
        set_blas_threads(2)
        assert 2 in counts()


@pytest.mark.slow
def test_ray_workers_equal_a_single_counter(counter, texts) -> None:
    pytest.importorskip("ray")
    result = count_texts_parallel(texts, counter.options, workers=2, backend="ray", chunk_size=20)
    assert result.stats == counter.count_stats(texts)
