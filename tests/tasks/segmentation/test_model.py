"""UPerNet-NAT: the paper's sizes, its outputs in training and evaluation, the optimizer groups,
SyncBatchNorm."""

from __future__ import annotations

import pytest
import torch
from timm.optim import create_optimizer_v2
from torch import nn

import nat.segmentation
from nat.tasks.segmentation import sync_batchnorm, upernet
from nat.tasks.segmentation.summary import PAPER, segmentation_table

from .conftest import tiny_upernet


@pytest.mark.parametrize("backbone", list(PAPER))
def test_parameters_within_two_percent_of_the_paper(backbone: str) -> None:
    (row,) = segmentation_table([backbone], gmacs=False)
    assert abs(row.params / 1e6 - PAPER[backbone].params_m) / PAPER[backbone].params_m < 0.02


@pytest.mark.slow
def test_gflops_at_512x2048_within_one_percent_of_the_paper() -> None:
    for row in segmentation_table():
        assert abs(row.gmacs - row.paper.gflops) / row.paper.gflops < 0.01, row


def test_public_module_builds_the_paper_configuration() -> None:
    with torch.device("meta"):
        model = nat.segmentation.upernet("nat_tiny", num_classes=150)
    assert model.classifier.in_channels == 512 and model.classifier.out_channels == 150
    assert model.aux_head.conv[0].in_channels == 256  # NAT-Tiny's third level
    assert model.aux_head.conv[0].out_channels == 256
    assert model.dropout.p == 0.1 and model.aux_head.dropout.p == 0.1
    batchnorms = [m for m in model.decoder.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(batchnorms) == 4 + 1 + 3 + 3 + 1  # pooling, bottleneck, laterals, FPN, fusion


def test_training_returns_the_auxiliary_logits_and_evaluation_only_the_main(model) -> None:
    x = torch.randn(2, 3, 64, 48)
    logits, aux = model.train()(x)
    assert logits.shape == aux.shape == (2, 3, 64, 48)
    assert model.eval()(x).shape == (2, 3, 64, 48)
    assert model(torch.randn(1, 3, 50, 70)).shape == (1, 3, 50, 70)  # not a multiple of 32


def test_without_auxiliary_head_training_returns_only_the_logits() -> None:
    model = tiny_upernet(aux=False).train()
    assert model.aux_head is None
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 3, 32, 32)


def test_rpb_norms_and_biases_get_no_weight_decay(model) -> None:
    optimizer = create_optimizer_v2(model, opt="adamw", lr=1e-3, weight_decay=0.01)
    params = dict(model.named_parameters())
    names = {id(p): n for n, p in params.items()}
    decay = {
        names[id(p)] for g in optimizer.param_groups if g["weight_decay"] > 0 for p in g["params"]
    }
    exempt = {n for n, p in params.items() if n.endswith(".rpb") or p.ndim == 1}
    assert any(n.endswith(".rpb") for n in exempt)
    assert decay == set(params) - exempt


def test_batchnorm_becomes_sync_batchnorm_on_gpus_only(model) -> None:
    assert sync_batchnorm(model, torch.device("cpu")) is model
    synced = sync_batchnorm(tiny_upernet(), torch.device("cuda"))
    kinds = {type(m) for m in synced.modules()}
    assert nn.SyncBatchNorm in kinds and nn.BatchNorm2d not in kinds


def test_unknown_backbone_is_named() -> None:
    with pytest.raises(ValueError, match="backbone='nat_huge' is not a timm model"):
        upernet("nat_huge")
