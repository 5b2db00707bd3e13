"""``MTColorPipeline`` / ``LCoInsPipeline`` against what diffusers' generic pipeline tests and a
diffusers contributor expect: building without a VAE to encode prompts alone, ``cross_attention_kwargs``
reaching the UNet and the wrapped processors, one ``save_pretrained`` card convention with
``push_to_hub`` uploading the project's card, no machine paths in the shipped configs, the research
switches as one object."""

import inspect
import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers.models.attention_processor import AttnProcessor2_0
from test_lcoins_pipeline import pipe as lcoins_pipe  # noqa: F401  (the tiny L-CoIns fixture)
from test_pipeline_mtcolor import _scene

import mtcolor
from mtcolor import MTColorPipeline
from mtcolor.switches import MTColorSwitches
from mtcolor.testing import randomize_adapter, tiny_components

STEPS = dict(num_inference_steps=2, working_resolution=64, output_type="pt")


@pytest.fixture(scope="module")
def components(tmp_path_factory):
    components = tiny_components(0, tokenizer_cache=str(tmp_path_factory.mktemp("tok")))
    randomize_adapter(components["adapter"], seed=1, gate=0.5, scale=0.05)
    return components


@pytest.fixture(scope="module")
def pipe(components):
    pipeline = MTColorPipeline(**components)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def _call(pipe, **kw):
    gray, masks, texts = _scene()
    return pipe(
        gray, masks, texts, prompt="a street", generator=torch.Generator().manual_seed(0), **{**STEPS, **kw}
    )


def test_encode_prompt_works_in_isolation(components, pipe):
    """diffusers' generic test: a pipeline holding only the text components (vae=None, unet=None ...)
    encodes prompts, and a full call with those embeddings equals the call with the texts."""
    text_only = {k: (v if k in ("text_encoder", "tokenizer") else None) for k, v in components.items()}
    encoder_pipe = MTColorPipeline(**text_only)
    assert encoder_pipe.vae_scale_factor == 8  # diffusers' fallback without a VAE
    required = {
        name
        for name, p in inspect.signature(encoder_pipe.encode_prompt).parameters.items()
        if p.default is inspect.Parameter.empty
    }
    assert required == {"prompt", "device"}
    embeds, negative = encoder_pipe.encode_prompt("a street", "cpu", 1, True, "dull")
    gray, masks, texts = _scene()
    expected = _call(pipe, negative_prompt="dull").images
    got = pipe(
        gray, masks, texts, prompt_embeds=embeds, negative_prompt_embeds=negative,
        generator=torch.Generator().manual_seed(0), **STEPS,
    ).images  # fmt: skip
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_cross_attention_kwargs_reach_the_unet_and_the_wrapped_processors(pipe, caplog):
    """A keyword declared by the processor the MT-Color processors wrap (a LoRA-scale style
    ``lora_scale``) reaches it in every attention layer; ``scale`` reaches the UNet (diffusers pops it
    there to scale PEFT LoRA layers); diffusers logs no "not expected" warning."""
    seen = []

    class ScaledProcessor(AttnProcessor2_0):
        def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, lora_scale=1.0):  # fmt: skip
            seen.append(lora_scale)
            return super().__call__(attn, hidden_states, encoder_hidden_states, attention_mask, temb)

    unet_kwargs = []
    hook = pipe.unet.register_forward_pre_hook(
        lambda module, args, kwargs: unet_kwargs.append(dict(kwargs.get("cross_attention_kwargs") or {})),
        with_kwargs=True,
    )
    original = dict(pipe.unet.attn_processors)
    layers = len(original)  # (set_attn_processor empties the dict it is given)
    pipe.unet.set_attn_processor(ScaledProcessor())
    try:
        with caplog.at_level(logging.WARNING):
            scaled = _call(pipe, alpha=0.0, cross_attention_kwargs={"lora_scale": 0.5, "scale": 1.0}).images
        plain = _call(pipe, alpha=0.0).images
    finally:
        pipe.unet.set_attn_processor(original)
        hook.remove()
    assert seen[: 2 * layers] == [0.5] * (2 * layers)  # both steps of the first call, every layer
    assert seen[2 * layers :] == [1.0] * (2 * layers)  # the second call: the default
    assert all(k.get("scale") == 1.0 and k.get("lora_scale") == 0.5 for k in unet_kwargs[:2])
    assert all("mtcolor" in k for k in unet_kwargs)  # the MT-Color context rides along
    assert "not expected" not in caplog.text
    torch.testing.assert_close(scaled, plain)  # the test processor ignores its scale: same output


def test_switches_are_one_object(pipe):
    as_object = _call(pipe, switches=MTColorSwitches(use_pmam=False, attention_mode="paper")).images
    as_dict = _call(pipe, switches={"use_pmam": False, "attention_mode": "paper"}).images
    default = _call(pipe).images
    torch.testing.assert_close(as_object, as_dict, atol=0, rtol=0)
    assert (as_object - default).abs().max() > 1e-3  # the switches reach the processors
    signature = inspect.signature(MTColorPipeline.__call__).parameters
    assert not {"use_pmam", "attention_mode", "sam_points", "sam_checkpoint"} & set(signature)
    assert "cross_attention_kwargs" in signature and "switches" in signature


def _fake_hub(monkeypatch, uploads):
    import huggingface_hub

    def create_repo(repo_id, **kwargs):
        return huggingface_hub.RepoUrl(f"https://huggingface.co/user/{repo_id}")

    def upload_folder(*, repo_id, folder_path, **kwargs):
        uploads.append({"repo_id": repo_id, "card": (Path(folder_path) / "README.md").read_text(), **kwargs})

    monkeypatch.setattr(huggingface_hub, "create_repo", create_repo)
    monkeypatch.setattr(huggingface_hub, "upload_folder", upload_folder)


def test_push_to_hub_uploads_the_project_card(pipe, lcoins_pipe, tmp_path, monkeypatch):  # noqa: F811
    uploads = []
    _fake_hub(monkeypatch, uploads)
    sections = {"Training": "tiny test weights"}
    pipe.save_pretrained(tmp_path / "mt", push_to_hub=True, model_card_kwargs={"sections": sections})
    lcoins_pipe.save_pretrained(tmp_path / "lc", push_to_hub=True, model_card_kwargs={"sections": sections})
    assert [u["repo_id"] for u in uploads] == ["user/mt", "user/lc"]
    for upload, name in zip(uploads, ("MTColorPipeline", "LCoInsPipeline")):
        assert f"{name}.from_pretrained" in upload["card"] and "## Training" in upload["card"]
        assert "mtcolor" in upload["card"] and upload["commit_message"] == f"Upload {name}"
    for name, cls in (("mt", MTColorPipeline), ("lc", type(lcoins_pipe))):
        params = inspect.signature(cls.save_pretrained).parameters
        assert {"model_card", "model_card_kwargs", "push_to_hub"} <= set(params), name


def test_saved_configs_hold_no_machine_path(pipe, tmp_path):
    loaded = MTColorPipeline.from_pretrained(_save(pipe, tmp_path / "a"))
    folder = _save(loaded, tmp_path / "b")  # loaded from a path: diffusers recorded it
    for path in folder.rglob("*.json"):
        assert "_name_or_path" not in json.loads(path.read_text()), path


def _save(pipe, folder) -> Path:
    pipe.save_pretrained(folder, model_card=False)
    return folder


def test_shipped_models_hold_no_machine_path():
    """Every file of the embedded models: no absolute path of the machine that trained them."""
    roots = [Path(mtcolor.embedded_model(name)) for name in ("mtcolor-tiny", "lcoins-tiny")]
    found = []
    for root in roots:
        for path in root.rglob("*"):
            if path.is_file() and path.suffix in (".json", ".md", ".txt", ".yaml"):
                text = path.read_text(encoding="utf-8")
                if "_name_or_path" in text or any(p in text for p in ("/work/", "/root/", "/home/", "/tmp/")):
                    found.append(str(path.relative_to(root.parent)))
    assert found == []


def test_output_formats_agree(pipe):
    np_images = _call(pipe, output_type="np").images
    pt_images = _call(pipe).images
    np.testing.assert_allclose(np_images, pt_images.permute(0, 2, 3, 1).numpy(), atol=1e-6)
