"""Hook-point names: parsing, ranges against the model, and the messages for bad names."""

from __future__ import annotations

import pytest

from sae_flux import hooks


def test_names_map_to_diffusers_modules_and_tuple_positions():
    img = hooks.parse("double.18.img")
    assert img.module_path == "transformer.transformer_blocks.18"
    assert img.output_index == 1
    assert hooks.parse("single.9.txt").module_path == "transformer.single_transformer_blocks.9"
    assert hooks.parse("single.9.txt").output_index == 0
    mlp = hooks.parse("double.3.mlp")
    assert mlp.module_path == "transformer.transformer_blocks.3.ff.net.0"
    assert mlp.output_index is None and mlp.width(3072) == 12288
    assert hooks.parse("double.2.img.delta").delta


def test_real_flux_block_counts_give_every_name():
    names = hooks.all_hook_points(19, 38)
    assert len(names) == 19 * 3 + 38 * 2
    assert "double.18.mlp" in names and "single.37.img" in names
    for name in names:
        hooks.resolve(name, 19, 38)


def test_hook_points_sort_in_execution_order():
    names = ["single.0.img", "double.1.img", "double.1.mlp", "double.0.txt", "double.1.txt"]
    ordered = [p.name for p in sorted(hooks.parse(n) for n in names)]
    assert ordered == ["double.0.txt", "double.1.mlp", "double.1.txt", "double.1.img", "single.0.img"]


@pytest.mark.parametrize("name", ["double.x.img", "triple.1.img", "double.1.image", "double.1", ""])
def test_unknown_name_lists_valid_forms(name):
    with pytest.raises(ValueError, match=r"unknown hook point .*valid forms: double\.\{i\}\.img"):
        hooks.parse(name)


def test_mlp_exists_only_on_double_blocks():
    with pytest.raises(ValueError, match="MLP neurons exist only as double"):
        hooks.parse("single.2.mlp")


def test_out_of_range_block_names_the_ranges():
    with pytest.raises(ValueError, match=r"19 double blocks \(double\.0 \.\. double\.18\)"):
        hooks.resolve("double.19.img", 19, 38)
    with pytest.raises(ValueError, match=r"single\.0 \.\. single\.37"):
        hooks.resolve("single.38.txt", 19, 38)


def test_tiny_model_validates_against_its_own_blocks(tiny_flux):
    assert tiny_flux.block_counts == (2, 2)
    with pytest.raises(ValueError, match="out of range"):
        tiny_flux.resolve("double.2.img")
    assert tiny_flux.width("double.1.mlp") == 4 * tiny_flux.d_model
