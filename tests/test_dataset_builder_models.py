"""Model-backed components on tiny, locally built models: BLIP-2 captioner and SAM segmenter."""

import pickle

import numpy as np
import pytest
import torch
from mtcolor.dataset_builder.captioners import (
    Blip2Captioner,
    CaptionerChain,
    InstanceInput,
    RuleBasedCaptioner,
)
from mtcolor.dataset_builder.segmenters import Instance, SAMSegmenter, filter_instances

WORDS = (
    "[PAD] </s> <unk> question : what color is the ? answer red box a are main colors of this picture and "
    "object it unable to tell"
).split()


def _tiny_blip2(folder, answer_word: str):
    """A BLIP-2 (ViT + Q-Former + OPT, hidden 32) whose language model always emits ``answer_word``,
    saved with its processor (word-level tokenizer) to ``folder``."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
    from transformers import (
        Blip2Config,
        Blip2ForConditionalGeneration,
        Blip2Processor,
        BlipImageProcessor,
        PreTrainedTokenizerFast,
    )

    backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<unk>"))
    backend.normalizer = normalizers.Lowercase()
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="[PAD]", eos_token="</s>", bos_token="</s>", unk_token="<unk>"
    )
    processor = Blip2Processor(
        BlipImageProcessor(size={"height": 32, "width": 32}), tokenizer, num_query_tokens=4
    )
    vocab = len(processor.tokenizer)
    config = Blip2Config(
        vision_config=dict(
            hidden_size=32,
            intermediate_size=37,
            num_hidden_layers=1,
            num_attention_heads=2,
            image_size=32,
            patch_size=8,
        ),
        qformer_config=dict(
            hidden_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=37,
            encoder_hidden_size=32,
            vocab_size=vocab,
        ),
        text_config=dict(
            model_type="opt",
            vocab_size=vocab,
            hidden_size=32,
            num_hidden_layers=1,
            ffn_dim=37,
            num_attention_heads=2,
            word_embed_proj_dim=32,
            max_position_embeddings=128,
            pad_token_id=0,
            bos_token_id=1,
            eos_token_id=1,
        ),
        num_query_tokens=4,
        image_token_index=processor.tokenizer.convert_tokens_to_ids("<image>"),
    )
    torch.manual_seed(0)
    model = Blip2ForConditionalGeneration(config).eval()
    with torch.no_grad():  # constant final hidden state -> the answer word always has the top logit
        norm = model.language_model.model.decoder.final_layer_norm
        norm.weight.zero_()
        norm.bias.fill_(1.0)
        head = model.get_output_embeddings()
        head.weight.zero_()
        head.weight[WORDS.index(answer_word)] = 1.0
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def test_blip2_captioner_from_a_local_folder(tmp_path):
    image = np.full((24, 24, 3), 100, np.uint8)
    image[4:20, 4:20] = (229, 0, 0)
    mask = np.zeros((24, 24), bool)
    mask[4:20, 4:20] = True
    captioner = Blip2Captioner(
        str(_tiny_blip2(tmp_path / "blip2-red", "red")), device="cpu", max_new_tokens=2
    )
    assert captioner.name == "blip2:blip2-red"
    texts = captioner.caption_instances(image, [InstanceInput(mask, "box"), InstanceInput(mask, None)])
    assert texts == ["a red box", "red red"]  # labelled: colour + label; unlabelled: the raw answer
    text = captioner.caption_global(image, [InstanceInput(mask, "box")], ["a red box"])
    assert text == "Red red. The image shows a red box."
    # a BLIP-2 that cannot answer (no colour word) falls through to the rule-based namer
    silent = Blip2Captioner(
        str(_tiny_blip2(tmp_path / "blip2-unable", "unable")), device="cpu", max_new_tokens=3
    )
    result = CaptionerChain([silent, RuleBasedCaptioner()]).caption_instances(
        image, [InstanceInput(mask, "box")]
    )
    assert result.captioners == ["rule"] and result.texts == ["a red box"]
    assert sum(result.problems.values()) == 1 and next(iter(result.problems)).startswith(
        "blip2:blip2-unable:"
    )


def test_filter_instances_min_area_and_overlap():
    a = np.zeros((10, 10), bool)
    a[:5] = True  # 50 px
    b = np.zeros((10, 10), bool)
    b[3:8] = True  # 50 px, 20 shared with a
    c = np.zeros((10, 10), bool)
    c[9, 9] = True  # 1 px
    d = a.copy()  # a duplicate
    kept = filter_instances([Instance(m) for m in (a, b, c, d)], min_area=2, max_overlap=0.5, disjoint=True)
    assert len(kept) == 2
    assert np.array_equal(kept[0].mask, a) and np.array_equal(kept[1].mask, b & ~a)
    assert not (kept[0].mask & kept[1].mask).any()
    assert len(filter_instances([Instance(m) for m in (a, b)], max_overlap=0.3)) == 1
    assert len(filter_instances([Instance(m) for m in (a, b, c)], max_instances=1)) == 1


ARCH = dict(encoder_embed_dim=32, encoder_depth=1, encoder_num_heads=2, encoder_global_attn_indexes=[0])


def test_sam_segmenter_tiny_random_model(tmp_path):
    from segment_anything.build_sam import _build_sam

    torch.manual_seed(0)
    torch.save(_build_sam(checkpoint=None, **ARCH).state_dict(), tmp_path / "sam.pt")
    segmenter = SAMSegmenter(
        str(tmp_path / "sam.pt"),
        model_type=ARCH,
        device="cpu",
        points_per_side=2,
        pred_iou_thresh=0.0,
        stability_score_thresh=0.0,
        min_area_fraction=0.02,
        max_overlap=0.3,
        max_instances=3,
    )
    rng = np.random.default_rng(0)
    image = (rng.random((48, 64, 3)) * 255).astype(np.uint8)
    instances = segmenter.segment(image)
    assert 1 <= len(instances) <= 3
    union = np.zeros((48, 64), int)
    for instance in instances:
        assert instance.mask.shape == (48, 64) and instance.mask.dtype == bool
        assert instance.area >= 0.02 * 48 * 64 and instance.label is None
        union += instance.mask
    assert union.max() <= 1  # disjoint after overlap filtering

    # checkpoints are loaded with weights_only=True: a pickle that runs code is refused
    class Payload:
        def __reduce__(self):
            return (print, ("pickle code ran",))

    with open(tmp_path / "evil.pt", "wb") as handle:
        pickle.dump({"x": Payload()}, handle, protocol=2)
    with pytest.raises(pickle.UnpicklingError):
        SAMSegmenter(str(tmp_path / "evil.pt"), model_type=ARCH, device="cpu")
    with pytest.raises(ValueError, match="does not exist"):
        SAMSegmenter(str(tmp_path / "missing.pt"), model_type=ARCH, device="cpu")
    with pytest.raises(ValueError, match="model_type"):
        SAMSegmenter(str(tmp_path / "sam.pt"), model_type="vit_x")
