"""Presets (ganctl/presets.py): listed, applied under the flags, and used on a dataset other than
their own."""

from __future__ import annotations

import json

from helpers import TINY, assert_one_line_error, image_folder, invoke, read_json

from ganctl.config import Config
from ganctl.presets import PRESETS


def test_presets_are_listed_applied_and_overridden(workdir):
    listed = json.loads(invoke("train", "--list-presets", "--json").stdout)
    assert {"dcgan-celeba64", "dcgan-cifar10", "sngan-cifar10", "cgan-cifar10", "mlp-mnist",
            "small-data", "r3-cifar10"} <= set(listed) == set(PRESETS)
    assert "resnet" in invoke("train", "--list-presets").stdout
    image_folder(workdir / "pics", 8)
    result = invoke("train", *TINY, "--preset", "small-data", "--dataset", "pics",
                    "--resolution", "32", "--g-width", "4", "--d-width", "4", "--batch-size",
                    "4", "--out", "r")
    assert result.exit_code == 0, result.output
    config = read_json(workdir / "r" / "config.json")
    assert config["preset"] == "small-data" and config["augment"] == "ada"
    assert (config["arch"], config["r1"], config["g_width"]) == ("resnet", 1.0, 4)  # flags win
    assert_one_line_error(invoke("train", "--preset", "biggan"), 1, "unknown preset 'biggan'")
    # a preset on another built-in dataset: that dataset's image size, and a note
    result = invoke("train", *TINY, "--preset", "mlp-mnist", "--dataset", "shapes", "--arch",
                    "dcgan", "--g-width", "4", "--d-width", "4", "--batch-size", "4", "--out", "m")
    assert result.exit_code == 0, result.output
    config = read_json(workdir / "m" / "config.json")
    assert (config["arch"], config["resolution"], config["channels"]) == ("dcgan", 32, 3)
    assert "preset mlp-mnist is made for mnist; on shapes the image size comes from that " \
        "dataset's defaults and your flags, not the preset: 32x32x3" in result.stdout
    # on a folder or zip (such as CIFAR-10 as JPEGs) the preset's size stays, and is named
    image_folder(workdir / "pics", 8)
    result = invoke("train", *TINY, "--preset", "mlp-mnist", "--dataset", "pics",
                    "--g-width", "4", "--d-width", "4", "--batch-size", "4", "--out", "m2")
    assert result.exit_code == 0, result.output
    config = read_json(workdir / "m2" / "config.json")
    assert (config["resolution"], config["channels"]) == (28, 1)
    assert "preset mlp-mnist is made for mnist; on pics it trains at 28x28x1 (--resolution " \
        "and --channels change that)" in result.stdout
    for preset in PRESETS.values():  # every preset is a valid config
        values = {**preset.settings, "dataset": "shapes", "resolution": 32,
                  "channels": preset.settings.get("channels", 3)}
        Config.from_dict({k: v for k, v in values.items() if k != "preset"})
