"""The training loop in-process: accumulation, mixed precision, the optimizer's parameter groups."""

from __future__ import annotations

import timm

from nat.tasks.classification import TrainConfig, create_optimizer, load_checkpoint, train

from .test_distributed import NO_RANDOMNESS


def test_gradient_accumulation_matches_the_large_batch(folder, tmp_path):
    base = TrainConfig().replace(**{**NO_RANDOMNESS, "epochs": 1}, data=str(folder))
    big = train(base.replace(batch_size=4, output=str(tmp_path / "a")), progress=False)
    accum = train(
        base.replace(batch_size=2, grad_accum=2, output=str(tmp_path / "b")), progress=False
    )
    a, b = big.model.state_dict(), accum.model.state_dict()
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-5


def test_bf16_autocast_trains_on_cpu(tiny, tmp_path):
    """bf16 changes the arithmetic (the loss differs from float32's) but not the training."""
    losses = []
    for amp in ("bf16", "none"):
        result = train(tiny.replace(amp=amp, epochs=1, output=str(tmp_path / amp)), progress=False)
        (record,) = load_checkpoint(result.output / "last.pt")["history"]
        losses.append(record["train_loss"])
    bf16, fp32 = losses
    assert bf16 != fp32 and abs(bf16 - fp32) < 0.02 * fp32


def test_no_weight_decay_on_norms_biases_and_rpb():
    model = timm.create_model("nat_digits")
    optimizer = create_optimizer(model, TrainConfig())
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {
        names[id(p)] for g in optimizer.param_groups if g["weight_decay"] for p in g["params"]
    }
    assert decayed and all(n.endswith("weight") and "norm" not in n for n in decayed)
    assert not any(n.endswith("rpb") for n in decayed)


def test_learning_rate_scales_with_the_global_batch():
    model = timm.create_model("nat_digits")
    optimizer = create_optimizer(model, TrainConfig(lr=1e-3), lr_scale=128 / 1024)
    assert {g["lr"] for g in optimizer.param_groups} == {1.25e-4}
