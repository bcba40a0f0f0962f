"""One answer to "what is this base?": the family registry, asked by loaders, the trainer, the plan and files."""

import pytest

from lora_diffusion.families import FAMILIES, family_from_kohya_version, family_of, family_of_config, family_of_text_width
from lora_diffusion.models.tiny import tiny_pipeline
from lora_diffusion.training.plan import PROFILE_DIR


@pytest.mark.parametrize("arch", ["sd1", "sd2", "sdxl"])
def test_a_pipeline_its_components_and_its_unet_give_the_same_family(arch):
    from lora_diffusion import pipeline_components

    pipe = tiny_pipeline(arch, seed=0)
    assert family_of(pipe).name == family_of(pipeline_components(pipe)).name == arch
    assert family_of(pipe.unet).name == arch


def test_the_builtin_marker_wins_over_the_width_it_shares():
    from lora_diffusion.models.loading import load_pipeline

    assert family_of(load_pipeline("builtin")).name == "builtin"
    assert family_of_config({"_lora_diffusion_base": True, "cross_attention_dim": 768}).name == "builtin"


def test_an_unknown_unet_is_custom_unless_a_second_text_encoder_says_sdxl():
    assert family_of_config({"cross_attention_dim": 512}).name == "custom"
    assert family_of_config({"cross_attention_dim": 512}, second_text_encoder=True).name == "sdxl"
    assert family_of_config(None).name == "custom"


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_each_family_reads_back_its_own_kohya_version_and_has_a_profile(name):
    family = FAMILIES[name]
    assert family_from_kohya_version(family.kohya_version) is family
    assert (PROFILE_DIR / f"{family.profile}.yaml").is_file()


def test_kohya_versions_other_tools_write_name_the_right_family():
    assert family_from_kohya_version("sd_v2_768_v").name == "sd2"
    assert family_from_kohya_version("sdxl_base_v0-9").name == "sdxl"
    assert family_from_kohya_version("sdxl_some_finetune").name == "sdxl"
    assert family_from_kohya_version("flux1").name == "flux"
    assert family_from_kohya_version("sd3").name == "sd3"
    assert family_from_kohya_version("hunyuan_dit") is None


def test_text_width_names_the_family_an_adapter_was_made_for():
    assert [family_of_text_width(w).name for w in (768, 1024, 2048, 300)] == ["sd1", "sd2", "sdxl", "custom"]
    assert family_of_text_width(768, second_text_encoder=True).name == "sdxl"


def test_the_trainer_gets_its_conditioning_from_the_family_and_a_refiner_is_refused():
    from lora_diffusion.errors import UserError
    from lora_diffusion.training.conditioning import SdxlEncoders, SingleEncoder, conditioning_for

    assert isinstance(conditioning_for(tiny_pipeline("sd2"), "x"), SingleEncoder)
    assert isinstance(conditioning_for(tiny_pipeline("sdxl"), "x"), SdxlEncoders)
    refiner = tiny_pipeline("sdxl")
    refiner.text_encoder = None
    with pytest.raises(UserError, match="is an SDXL refiner"):
        conditioning_for(refiner, "refiner")
