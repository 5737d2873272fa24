"""Fused optimizers: where PyTorch has a fused kernel, the tasks use it."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from nat.engine import fused_kwargs


@pytest.mark.parametrize(
    ("opt", "fused"),
    [("adamw", True), ("AdamW", True), ("adam", True), ("sgd", False), ("lamb", False)],
)
def test_adam_and_adamw_fuse_on_the_cpu(opt, fused):
    assert fused_kwargs(nn.Linear(3, 2), opt) == ({"fused": True} if fused else {})


@pytest.mark.parametrize("opt", [None, 3])
def test_an_optimizer_name_that_is_not_a_string_is_refused(opt):
    with pytest.raises(TypeError, match=f"opt={opt!r}"):
        fused_kwargs(nn.Linear(3, 2), opt)


def test_a_model_without_trainable_float_parameters_is_not_fused():
    frozen = nn.Linear(3, 2).requires_grad_(False)
    assert fused_kwargs(frozen, "adamw") == {}
    assert fused_kwargs(nn.Identity(), "adamw") == {}


def test_fused_adamw_takes_the_same_steps_to_rounding():
    torch.manual_seed(0)
    models = [nn.Sequential(nn.Linear(8, 16), nn.GELU(), nn.Linear(16, 4)) for _ in range(2)]
    models[1].load_state_dict(models[0].state_dict())
    optimizers = [
        torch.optim.AdamW(m.parameters(), lr=1e-2, **kwargs)
        for m, kwargs in zip(models, ({}, fused_kwargs(models[1], "adamw")), strict=True)
    ]
    assert optimizers[1].defaults["fused"]
    x = torch.randn(32, 8)
    for _ in range(5):
        for model, optimizer in zip(models, optimizers, strict=True):
            optimizer.zero_grad()
            model(x).square().mean().backward()
            optimizer.step()
    for a, b in zip(models[0].parameters(), models[1].parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
