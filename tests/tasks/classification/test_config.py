import pytest
import timm
import yaml

from nat.tasks.classification import TrainConfig, list_configs, load_config

PAPER = ["nat_mini", "nat_tiny", "nat_small", "nat_base"]


@pytest.mark.parametrize("name", list_configs())
def test_named_configs_load_and_name_registered_models(name):
    assert timm.is_model(load_config(name).model)


@pytest.mark.parametrize("name", PAPER + [f"di{n}" for n in PAPER])
def test_paper_recipe(name):
    c = load_config(name)
    recipe = (c.epochs, c.cooldown_epochs, c.lr, c.lr_batch_size, c.weight_decay, c.warmup_epochs)
    augment = (c.auto_augment, c.re_prob, c.mixup, c.cutmix, c.smoothing, c.clip_grad)
    assert recipe == (300, 10, 1e-3, 1024, 0.05, 20)
    assert augment == ("rand-m9-mstd0.5-inc1", 0.25, 0.8, 1.0, 0.1, 5.0)


def test_overrides_win_and_none_keeps_the_recipe():
    c = load_config("nat_tiny", epochs=3, lr=None)
    assert (c.epochs, c.lr) == (3, 1e-3)


def test_unknown_setting_is_an_error(tmp_path):
    path = tmp_path / "x.yaml"
    path.write_text(yaml.safe_dump({"learning_rate": 1.0}))
    with pytest.raises(ValueError, match="learning_rate"):
        load_config(path)


def test_unknown_config_lists_the_named_ones():
    with pytest.raises(FileNotFoundError, match="nat_tiny"):
        load_config("nat_huge")


def test_config_roundtrips_through_plain_data():
    c = load_config("nat_tiny")
    assert TrainConfig.from_dict(c.to_dict()) == c
