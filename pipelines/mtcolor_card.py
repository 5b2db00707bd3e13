"""The Hub model card (README.md with YAML metadata) of an :class:`~pipelines.pipeline_mtcolor.MTColorPipeline`."""

from __future__ import annotations


def write_card(
    pipe,
    folder,
    base_model: str | None = None,
    tags=(),
    sections: dict | None = None,
    load_from: str | None = None,
):
    """Write ``folder/README.md`` describing ``pipe`` (see :func:`mtcolor.hub.write_model_card`): its
    UNet, ControlNet, adapter and scheduler, its inputs, and a usage example.

    Args:
        base_model: the base model's hub id or path (card metadata).
        tags: extra card tags.
        sections: extra ``{title: markdown}`` sections (training data, stages, metrics...).
        load_from: the Python expression shown in the usage example (default: the folder path).
    """
    from mtcolor.hub import write_model_card

    unet = pipe.unet.config
    facts = {
        "Model": (
            f"- UNet: `block_out_channels={list(unet.block_out_channels)}`, cross-attention dim "
            f"{unet.cross_attention_dim}\n- ControlNet: {'yes' if pipe.controlnet is not None else 'no (stage-1 model)'}\n"
            f"- MT-Color adapter: {sum(p.numel() for p in pipe.adapter.parameters()):,} parameters, "
            f"attention mode `{pipe.adapter.config.attention_mode}`, PMAM keys from "
            f"`{pipe.adapter.config.pmam_key_source}`\n- Scheduler: `{type(pipe.scheduler).__name__}`"
        ),
        "Inputs": (
            "- `image`: a gray photo, any size (a colour input contributes its luminance)\n"
            "- `masks` + `texts`: one binary mask (aligned with the image) and one text per instance, "
            'e.g. "a red car"\n- `prompt`: optional global description\n'
            "The output has the input's size and exact luminance (Lab L); the model predicts the colour."
        ),
    }
    facts.update(sections or {})
    return write_model_card(
        folder,
        pipeline_class=type(pipe).__name__,
        pipeline_tag="image-to-image",
        base_model=base_model,
        tags=["mt-color", "controlnet", "text-guided-colorization", *tags],
        description=(
            "MT-Color: instance-aware, text-guided image colorization (SD-1.5-style UNet + ControlNet on "
            "the gray image + pixel-level mask attention + a masked instance self-attention branch + "
            "multi-instance sampling), as implemented by the `mtcolor` package on Hugging Face diffusers."
        ),
        usage=(
            ("import mtcolor\n" if load_from else "")
            + "from mtcolor import MTColorPipeline\n\n"
            + f"pipe = MTColorPipeline.from_pretrained({load_from or repr(str(folder))})\n"
            'image = pipe(gray, masks, texts, prompt="a sunny street").images[0]'
        ),
        sections=facts,
    )
