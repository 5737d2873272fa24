"""``torch.export`` of NAT/DiNAT: one node per NA call, dynamic batch, save and load."""

from __future__ import annotations

import pytest
import torch

from nat.export import export_program, load_program, na_nodes, save_program

from .models import nat_digits, tiny_backbone, tiny_dinat


def _outputs(out):
    return list(out) if isinstance(out, (list, tuple)) else [out]


def _assert_matches_eager(module, model, shape):
    for batch in (1, 3):
        x = torch.randn(batch, *shape)
        with torch.no_grad():
            expected = _outputs(model(x))
        got = _outputs(module(x))
        assert len(got) == len(expected)
        for g, e in zip(got, expected, strict=True):
            torch.testing.assert_close(g, e)


def test_classifier_keeps_one_na_node_per_block_and_any_batch():
    model = nat_digits()
    program = export_program(model, torch.randn(2, 3, 32, 32))
    assert len(na_nodes(program)) == sum(len(level.blocks) for level in model.levels)
    _assert_matches_eager(program.module(), model, (3, 32, 32))


def test_dinat_records_each_blocks_dilation():
    model = tiny_dinat()
    program = export_program(model, torch.randn(2, 3, 48, 40))
    dilations = [node.args[6] for node in na_nodes(program)]
    assert dilations == [[1, 1], [2, 2], [1, 1], [1, 1]]
    _assert_matches_eager(program.module(), model, (3, 48, 40))


def test_saved_program_loads_and_matches_eager(tmp_path):
    model = tiny_backbone()
    program = export_program(model, torch.randn(2, 3, 40, 36))
    path = save_program(program, tmp_path / "backbone.pt2")
    loaded = load_program(path)
    assert len(na_nodes(loaded)) == 4
    _assert_matches_eager(loaded.module(), model, (3, 40, 36))


def test_static_batch_program_refuses_another_batch():
    model = nat_digits()
    program = export_program(model, torch.randn(1, 3, 32, 32), dynamic_batch=False)
    with pytest.raises(AssertionError, match=r"x.size\(\)\[0\] == 1"):
        program.module()(torch.randn(2, 3, 32, 32))


def test_dynamic_batch_needs_an_example_batch_of_two():
    with pytest.raises(ValueError, match="batch size 1; a dynamic batch needs"):
        export_program(nat_digits(), torch.randn(1, 3, 32, 32))


def test_export_leaves_the_models_mode_as_it_was():
    model = nat_digits().train()
    export_program(model, torch.randn(2, 3, 32, 32))
    assert model.training


def test_the_nodes_call_the_backend_asked_for():
    program = export_program(nat_digits(), torch.randn(2, 3, 32, 32), backend="torch")
    assert {node.args[9] for node in na_nodes(program)} == {"torch"}


def test_an_unknown_backend_is_refused():
    with pytest.raises(ValueError, match="backend='fused' is not one of"):
        export_program(nat_digits(), torch.randn(2, 3, 32, 32), backend="fused")


def test_the_reference_backend_is_refused_as_it_is_not_the_op():
    with pytest.raises(ValueError, match="backend='reference' computes outside the registered op"):
        export_program(nat_digits(), torch.randn(2, 3, 32, 32), backend="reference")
