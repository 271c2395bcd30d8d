"""MNIST10k: the seeded split of the embedded digits, and the n_train values it accepts."""

import numpy as np
import pytest

from stbp.data import MNIST10k
from stbp.data.mnist10k import split_indices


@pytest.mark.parametrize("n_train", [0, -5, 10_000, 12_000, 2.5, True])
def test_n_train_outside_1_to_9999_is_refused(n_train):
    with pytest.raises(ValueError, match=r"n_train must be .*1\.\.9999.*got"):
        MNIST10k(train=False, n_train=n_train)


@pytest.mark.parametrize("n_train", [1, 8000, 9999])
def test_valid_n_train_splits_every_digit_once(n_train):
    train, test = MNIST10k(True, n_train=n_train), MNIST10k(False, n_train=n_train)
    assert len(train) == n_train and len(test) == 10_000 - n_train
    assert len(train.labels) == len(train) and int(test.labels[0]) == test[0][1]


def test_split_indices_is_a_seeded_permutation():
    a_train, a_test = split_indices(100, 80, seed=3)
    b_train, _ = split_indices(100, 80, seed=3)
    assert np.array_equal(a_train, b_train) and len(a_test) == 20
    assert sorted(np.concatenate([a_train, a_test]).tolist()) == list(range(100))
    assert not np.array_equal(a_train, split_indices(100, 80, seed=4)[0])
