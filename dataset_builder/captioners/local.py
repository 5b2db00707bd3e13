"""Captioners that run in this process: the offline rule-based namer and BLIP-2 from a local folder."""

from __future__ import annotations

import os

import numpy as np

from mtcolor.color_names import (
    ColorNamer,
    article,
    color_phrase,
    compose_global_text,
    describe_scheme,
    instance_phrase,
    join_words,
    strip_color_words,
)
from mtcolor.lexicon import default_lexicon

from .base import Captioner, CaptionerConfigError, InstanceInput, crop_instance


def _pairs(instances: list[InstanceInput], texts: list[str]) -> list[tuple[str, str]]:
    """(colour, label) per instance from its final text: "a light blue sky" -> ("light blue", "sky")."""
    lexicon = default_lexicon("extended")
    return [
        (color_phrase(text, lexicon), instance.label or strip_color_words(text, lexicon) or "object")
        for instance, text in zip(instances, texts)
    ]


class RuleBasedCaptioner(Captioner):
    """Offline captioner: the measured dominant colour (Lab, colour lexicon) + the object label.

    Instance text: "a red apple" (``"object"`` when the instance has no label). Global text: a
    colour-scheme sentence measured on the whole image (:func:`~mtcolor.color_names.describe_scheme`)
    followed by the enumeration of the instances ("The image shows a red apple and two green leaves.").

    Args:
        naming_vocabulary: ``"natural"`` (default), ``"basic"`` or ``"extended"``.
        min_share, max_pixels: see :class:`~mtcolor.color_names.ColorNamer`.
        max_global_objects: distinct phrases listed in the global text at most.
    """

    name = "rule"

    def __init__(
        self,
        naming_vocabulary: str = "natural",
        min_share: float = 0.2,
        max_pixels: int = 4096,
        max_global_objects: int = 12,
    ):
        self.namer = ColorNamer(naming_vocabulary, min_share, max_pixels)
        self.max_global_objects = int(max_global_objects)

    def caption_instances(self, image: np.ndarray, instances: list[InstanceInput]) -> list[str | None]:
        texts = []
        for instance in instances:
            measurement = instance.measurement or self.namer.measure(image, instance.mask)
            color = self.namer.name(measurement)
            texts.append(None if color is None else instance_phrase(color, instance.label or "object"))
        return texts

    def caption_global(
        self, image: np.ndarray, instances: list[InstanceInput], instance_texts: list[str]
    ) -> str | None:
        scheme = describe_scheme(image, self.namer)
        return compose_global_text(scheme, _pairs(instances, instance_texts), self.max_global_objects)


class Blip2Captioner(Captioner):
    """BLIP-2 (``Blip2ForConditionalGeneration`` + ``Blip2Processor``) from a local folder.

    Instances are asked ``instance_prompt`` on their crop; the colour words of the answer are combined
    with the label ("a red apple"); without a label the answer is used as it is. The global text is
    the answer to ``global_prompt`` followed by the enumeration of the instance texts (BLIP-2's short
    answers rarely list objects).

    Args:
        model_path: local folder with the model and processor files.
        device: torch device (default CUDA if available, else CPU). dtype: "auto", "float16",
            "bfloat16" or "float32" ("auto": float16 on CUDA, float32 on CPU).
        max_new_tokens, batch_size: generation settings.
        crop_fill: how the crop's pixels outside the mask are filled (see :func:`crop_instance`).
    """

    def __init__(
        self,
        model_path: str,
        device: str | None = None,
        dtype: str = "auto",
        max_new_tokens: int = 20,
        batch_size: int = 8,
        crop_fill: str | None = "white",
        instance_prompt: str = "Question: what color is the {label}? Answer:",
        unlabeled_prompt: str = "Question: what is this object and what color is it? Answer:",
        global_prompt: str = "Question: what are the main colors of this picture? Answer:",
        max_global_objects: int = 12,
    ):
        import torch
        from transformers import Blip2ForConditionalGeneration, Blip2Processor

        if not os.path.isdir(model_path):
            raise CaptionerConfigError(
                f"model_path={model_path!r} is not a folder; pass a local BLIP-2 model folder."
            )
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        dtypes = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}
        if dtype == "auto":
            self.dtype = torch.float16 if str(self.device).startswith("cuda") else torch.float32
        elif dtype in dtypes:
            self.dtype = dtypes[dtype]
        else:
            raise ValueError(f"dtype={dtype!r}; expected 'auto' or one of {sorted(dtypes)}.")
        self.processor = Blip2Processor.from_pretrained(model_path, local_files_only=True)
        self.processor.tokenizer.padding_side = "left"
        self.model = Blip2ForConditionalGeneration.from_pretrained(
            model_path, local_files_only=True, dtype=self.dtype
        )
        self.model.to(self.device).eval()
        self.name = f"blip2:{os.path.basename(os.path.normpath(model_path))}"
        self.max_new_tokens = int(max_new_tokens)
        self.batch_size = int(batch_size)
        self.crop_fill = crop_fill
        self.instance_prompt = instance_prompt
        self.unlabeled_prompt = unlabeled_prompt
        self.global_prompt = global_prompt
        self.max_global_objects = int(max_global_objects)
        self.lexicon = default_lexicon("extended")

    def generate(self, images: list, prompts: list[str]) -> list[str]:
        """Answers (stripped) for PIL ``images`` and their ``prompts``, in batches."""
        import torch

        answers = []
        for start in range(0, len(images), self.batch_size):
            inputs = self.processor(
                images=images[start : start + self.batch_size],
                text=prompts[start : start + self.batch_size],
                return_tensors="pt",
                padding=True,
            ).to(self.device)
            inputs["pixel_values"] = inputs["pixel_values"].to(self.dtype)
            with torch.inference_mode():
                output = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False)
            prompt_length = inputs["input_ids"].shape[1]
            if output.shape[1] > prompt_length and torch.equal(
                output[:, :prompt_length].cpu(), inputs["input_ids"].cpu()
            ):
                output = output[:, prompt_length:]
            answers += [a.strip() for a in self.processor.batch_decode(output, skip_special_tokens=True)]
        return answers

    def caption_instances(self, image: np.ndarray, instances: list[InstanceInput]) -> list[str | None]:
        if not instances:
            return []
        crops = [crop_instance(image, i.mask, self.crop_fill) for i in instances]
        prompts = [
            self.instance_prompt.format(label=i.label) if i.label else self.unlabeled_prompt
            for i in instances
        ]
        texts = []
        for instance, answer in zip(instances, self.generate(crops, prompts)):
            colors = list(dict.fromkeys(m.word for m in self.lexicon.find(answer)))
            if instance.label and colors:
                described = join_words(colors[:2])
                texts.append(f"{article(described)} {described} {instance.label}")
            else:
                texts.append(answer or None)
        return texts

    def caption_global(
        self, image: np.ndarray, instances: list[InstanceInput], instance_texts: list[str]
    ) -> str | None:
        from PIL import Image

        (answer,) = self.generate([Image.fromarray(image)], [self.global_prompt])
        answer = answer.strip().rstrip(".")
        if not answer:
            return None
        scheme = f"{answer[0].upper()}{answer[1:]}."
        return compose_global_text(scheme, _pairs(instances, instance_texts), self.max_global_objects)
