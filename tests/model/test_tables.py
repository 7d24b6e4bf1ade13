"""Table specs: any row range is the same rows of the whole table; seeds and names separate tables."""

from __future__ import annotations

import math

import pytest
import torch

from margo_dist.model.tables import ROWS_PER_CHUNK, LocalTable, TableSpec


def test_a_row_range_equals_those_rows_of_the_whole_table():
    spec = TableSpec.xavier("preferences.0", 2 * ROWS_PER_CHUNK + 123, 6, seed=3)
    whole = spec.rows()
    assert whole.shape == (2 * ROWS_PER_CHUNK + 123, 6)
    for start, stop in [(0, 10), (ROWS_PER_CHUNK - 5, ROWS_PER_CHUNK + 7), (17, 2 * ROWS_PER_CHUNK + 123),
                        (2 * ROWS_PER_CHUNK, 2 * ROWS_PER_CHUNK + 123), (40, 40)]:
        assert torch.equal(spec.rows(start, stop), whole[start:stop])
    with pytest.raises(ValueError, match="outside"):
        spec.rows(5, spec.num_rows + 1)


def test_seed_and_name_each_change_the_values_and_std_sets_the_scale():
    spec = TableSpec.xavier("theta", 3000, 8, seed=1)
    assert spec.std == pytest.approx(math.sqrt(2.0 / 3008))
    assert not torch.equal(spec.rows(), TableSpec.xavier("theta", 3000, 8, seed=2).rows())
    assert not torch.equal(spec.rows(), TableSpec.xavier("user_weight", 3000, 8, seed=1).rows())
    assert spec.rows().std().item() == pytest.approx(spec.std, rel=0.05)
    assert torch.equal(spec.with_init(0.0, 9).rows(), torch.zeros(3000, 8))


def test_local_table_holds_its_spec_and_resets_from_it():
    table = LocalTable(TableSpec("theta", 50, 2, 0.01, seed=4))
    assert torch.equal(table.weight.detach(), table.spec.rows())
    table.reset(1.0, 5)
    assert torch.equal(table.weight.detach(), TableSpec("theta", 50, 2, 1.0, seed=5).rows())
    assert torch.equal(table.lookup(torch.tensor([3, 3, 0])), table.weight.detach()[[3, 3, 0]])
