"""timm integration: registration, pretrained configs, heads, training hooks, pretrained files."""

from __future__ import annotations

import logging

import pytest
import timm
import timm.optim
import torch

import nat

VARIANTS = [
    "nat_mini", "nat_tiny", "nat_small", "nat_base",
    "dinat_mini", "dinat_tiny", "dinat_small", "dinat_base", "dinat_large", "dinat_large_384",
]  # fmt: skip


def test_variants_are_registered_with_pretrained_weights():
    pretrained = {name.split(".")[0] for name in timm.list_pretrained("*nat*")}
    assert pretrained == set(VARIANTS)
    assert "nat_digits" in timm.list_models()


@pytest.mark.parametrize("name", VARIANTS)
def test_pretrained_config(name):
    cfg = timm.models.get_pretrained_cfg(name)
    size = 384 if name.endswith("384") else 224
    assert cfg.url.startswith("https://shi-labs.com/projects/") and cfg.url.endswith(".pth")
    assert (cfg.input_size, cfg.crop_pct, cfg.interpolation) == ((3, size, size), 0.875, "bicubic")
    assert (cfg.mean, cfg.std) == ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    assert (cfg.first_conv, cfg.classifier, cfg.num_classes) == ("patch_embed.proj.0", "head", 1000)


def test_official_urls():
    assert timm.models.get_pretrained_cfg("nat_tiny").url == (
        "https://shi-labs.com/projects/nat/checkpoints/CLS/nat_tiny.pth"
    )
    assert timm.models.get_pretrained_cfg("dinat_large_384").url == (
        "https://shi-labs.com/projects/dinat/checkpoints/imagenet1k/dinat_large_in22k_in1k_384.pth"
    )


@pytest.fixture(scope="module")
def mini():
    torch.manual_seed(0)
    return timm.create_model("nat_mini").eval()


def test_forward_is_forward_head_of_forward_features(mini):
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        features = mini.forward_features(x)
        pooled = mini.forward_head(features, pre_logits=True)
        assert pooled.shape == (2, 512)
        assert torch.allclose(mini(x), mini.head(pooled))


def test_reset_classifier():
    model = timm.create_model("nat_mini")
    model.reset_classifier(7)
    assert model.get_classifier().out_features == 7 and model.num_classes == 7
    model.reset_classifier(0, global_pool="")
    with torch.no_grad():
        assert model.eval()(torch.randn(1, 3, 64, 64)).shape == (1, 2, 2, 512)


def test_num_classes_rehead():
    assert timm.create_model("dinat_mini", num_classes=21).head.out_features == 21


def test_no_weight_decay_names_every_rpb_table(mini):
    names = mini.no_weight_decay()
    assert names == {n for n, _ in mini.named_parameters() if n.endswith("attn.rpb")}
    assert len(names) == sum((3, 4, 6, 5))


def test_timm_optimizer_exempts_rpb_from_weight_decay(mini):
    groups = timm.optim.param_groups_weight_decay(
        mini, 0.05, no_weight_decay_list=mini.no_weight_decay()
    )
    no_decay = {id(p) for g in groups if g["weight_decay"] == 0.0 for p in g["params"]}
    assert id(mini.levels[0].blocks[0].attn.rpb) in no_decay
    assert id(mini.levels[0].blocks[0].attn.qkv.weight) not in no_decay


def test_grad_checkpointing_keeps_outputs():
    model = timm.create_model("nat_digits", drop_path_rate=0.0).train()
    x = torch.randn(2, 3, 32, 32)
    plain = model(x)
    model.set_grad_checkpointing(True)
    checkpointed = model(x)
    checkpointed.sum().backward()
    assert torch.allclose(plain, checkpointed, atol=1e-6)


def test_pretrained_file_overlay_loads_the_weights(tmp_path, mini):
    path = tmp_path / "nat_mini.pth"
    torch.save(mini.state_dict(), path)
    model = timm.create_model(
        "nat_mini", pretrained=True, pretrained_cfg_overlay=dict(file=str(path))
    )
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model.eval()(x), mini(x))


def test_pretrained_file_with_other_num_classes_drops_the_head(tmp_path, mini):
    path = tmp_path / "nat_mini.pth"
    torch.save(mini.state_dict(), path)
    with pytest.warns(
        UserWarning, match="num_classes: the checkpoint has 1000 classes and the model 5"
    ):
        model = timm.create_model(
            "nat_mini", pretrained=True, pretrained_cfg_overlay=dict(file=str(path)), num_classes=5
        )
    assert torch.equal(
        model.levels[3].blocks[0].mlp.fc2.weight, mini.levels[3].blocks[0].mlp.fc2.weight
    )


def test_pretrained_in_chans_adapts_the_first_conv(tmp_path, mini, caplog):
    path = tmp_path / "nat_mini.pth"
    torch.save(mini.state_dict(), path)
    with caplog.at_level(logging.INFO):
        model = timm.create_model(
            "nat_mini", pretrained=True, pretrained_cfg_overlay=dict(file=str(path)), in_chans=1
        )
    expected = mini.patch_embed.proj[0].weight.sum(dim=1, keepdim=True)
    assert torch.allclose(model.patch_embed.proj[0].weight, expected)


def test_in_memory_state_dict_overlay_goes_through_the_format_filter(mini):
    hf = nat.models.formats.original_to_hf(mini.state_dict(), "nat")
    model = timm.create_model(
        "nat_mini", pretrained=True, pretrained_cfg_overlay=dict(state_dict=hf)
    )
    assert torch.equal(model.head.weight, mini.head.weight)


def test_pretrained_true_fetches_the_official_url(tmp_path, monkeypatch, mini):
    # No network in tests: the download is replaced by a local copy of "the official file".
    path = tmp_path / "nat_mini.pth"
    torch.save(mini.state_dict(), path)
    fetched = []

    def fake_download(url, **kwargs):
        fetched.append(url)
        return str(path)

    monkeypatch.setattr(timm.models._builder, "download_cached_file", fake_download)
    model = timm.create_model("nat_mini", pretrained=True)
    assert fetched == ["https://shi-labs.com/projects/nat/checkpoints/CLS/nat_mini.pth"]
    assert torch.equal(model.head.weight, mini.head.weight)
    backbone = timm.create_model("nat_mini", pretrained=True, features_only=True)
    assert torch.equal(backbone.levels[0].blocks[0].attn.rpb, mini.levels[0].blocks[0].attn.rpb)


def test_layer_decay_groups_follow_the_levels(mini):
    optimizer = timm.optim.create_optimizer_v2(mini, "adamw", lr=1e-3, layer_decay=0.9)
    scales = {id(p): g["lr_scale"] for g in optimizer.param_groups for p in g["params"]}
    stem = scales[id(mini.patch_embed.proj[0].weight)]
    first = scales[id(mini.levels[0].blocks[0].attn.qkv.weight)]
    last = scales[id(mini.head.weight)]
    assert stem < first < last == 1.0


def test_pretrained_without_network_is_one_clear_error(monkeypatch):
    from urllib.error import URLError

    def offline(url, **kwargs):
        raise URLError(OSError(-2, "Name or service not known"))

    monkeypatch.setattr(timm.models._builder, "download_cached_file", offline)
    with pytest.raises(nat.models.PretrainedDownloadError) as err:
        timm.create_model("nat_tiny", pretrained=True)
    message = str(err.value)
    assert "\n" not in message and isinstance(err.value, RuntimeError)
    assert "https://shi-labs.com/projects/nat/checkpoints/CLS/nat_tiny.pth" in message
    assert "Name or service not known" in message
    assert "pretrained_cfg_overlay=dict(file='/path/to/nat_tiny.pth')" in message
