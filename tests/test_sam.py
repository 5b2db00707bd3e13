"""SAM prompts -> instance masks, with a tiny randomly-initialised SAM (no checkpoint download)."""

import sys
from functools import partial

import numpy as np
import PIL.Image
import pytest
import torch

pytest.importorskip("segment_anything")
from segment_anything import SamPredictor  # noqa: E402
from segment_anything.build_sam import sam_model_registry  # noqa: E402
from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer  # noqa: E402

from mtcolor import sam as sam_module  # noqa: E402
from mtcolor.sam import SamMasker, check_prompts, load_sam  # noqa: E402

H, W = 40, 56  # non-square, smaller than the encoder's input (exercises SAM's resize + crop)


def tiny_sam(seed: int = 0, img_size: int = 64, embed_dim: int = 16, prompt_dim: int = 16) -> Sam:
    """A SAM with the real architecture at toy size: 64 px input, 4x4 image embedding."""
    torch.manual_seed(seed)
    patch = 16
    grid = img_size // patch
    model = Sam(
        image_encoder=ImageEncoderViT(
            img_size=img_size,
            patch_size=patch,
            embed_dim=embed_dim,
            depth=2,
            num_heads=2,
            mlp_ratio=2,
            out_chans=prompt_dim,
            qkv_bias=True,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
            use_rel_pos=True,
            window_size=2,
            global_attn_indexes=(1,),
        ),
        prompt_encoder=PromptEncoder(
            embed_dim=prompt_dim,
            image_embedding_size=(grid, grid),
            input_image_size=(img_size, img_size),
            mask_in_chans=4,
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(depth=1, embedding_dim=prompt_dim, mlp_dim=32, num_heads=2),
            transformer_dim=prompt_dim,
            iou_head_depth=2,
            iou_head_hidden_dim=16,
        ),
        pixel_mean=[123.675, 116.28, 103.53],
        pixel_std=[58.395, 57.12, 57.375],
    )
    return model.eval()


@pytest.fixture
def gray():
    rng = np.random.default_rng(0)
    return (rng.random((H, W)) * 255).astype(np.uint8)


@pytest.fixture
def tiny_checkpoint(tmp_path, monkeypatch):
    """A tiny SAM's state dict saved with torch.save, and the registry's vit_b pointed at its architecture."""
    path = tmp_path / "sam_tiny.pth"
    torch.save(tiny_sam(0).state_dict(), path)
    builds = []

    def build_tiny(checkpoint=None):
        assert checkpoint is None  # mtcolor loads the weights itself (weights_only=True)
        builds.append(1)
        return tiny_sam(seed=123)  # different random weights: loading must overwrite them

    monkeypatch.setitem(sam_model_registry, "vit_b", build_tiny)
    return path, builds


def test_masks_shape_dtype_count(gray):
    masks = SamMasker(tiny_sam()).masks(
        gray, points=[[(5, 5)], [(10, 20), (30, 30)], None], boxes=[None, None, (0, 0, W, H)]
    )
    assert len(masks) == 3
    for mask in masks:
        assert mask.dtype == np.bool_ and mask.shape == (H, W)


def test_single_click_keeps_best_of_three_other_prompts_single_mask(gray):
    model = tiny_sam()
    points = [[(12, 9)], [(12, 9), (40, 30)], None]
    boxes = [None, None, (3, 4, 50, 36)]
    masks = SamMasker(model).masks(gray, points=points, boxes=boxes)

    predictor = SamPredictor(model)
    predictor.set_image(np.repeat(gray[..., None], 3, axis=-1))
    several, scores, _ = predictor.predict(np.array([[12.0, 9.0]]), np.array([1]), multimask_output=True)
    assert several.shape[0] == 3
    np.testing.assert_array_equal(masks[0], several[np.argmax(scores)])
    two_points, _, _ = predictor.predict(
        np.array([[12.0, 9.0], [40.0, 30.0]]), np.array([1, 1]), multimask_output=False
    )
    np.testing.assert_array_equal(masks[1], two_points[0])
    boxed, _, _ = predictor.predict(box=np.array([3.0, 4.0, 50.0, 36.0]), multimask_output=False)
    np.testing.assert_array_equal(masks[2], boxed[0])


def test_gray_is_repeated_to_rgb_any_input_form(gray):
    masker = SamMasker(tiny_sam())
    boxes = [(3, 4, 50, 36), (0, 0, 20, 20)]
    reference = masker.masks(np.repeat(gray[..., None], 3, axis=-1), boxes=boxes)
    for image in (gray, PIL.Image.fromarray(gray), torch.from_numpy(gray.astype(np.float32) / 255.0)[None]):
        for got, want in zip(masker.masks(image, boxes=boxes), reference):
            np.testing.assert_array_equal(got, want)


def test_checkpoint_round_trip_weights_only(gray, tiny_checkpoint, monkeypatch):
    path, builds = tiny_checkpoint
    calls = []
    real_load = torch.load

    def spy_load(*args, **kwargs):
        calls.append(kwargs)
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy_load)
    loaded = load_sam(path, "vit_b", device="cpu")
    assert calls == [{"map_location": "cpu", "weights_only": True}]
    for (name, got), want in zip(loaded.state_dict().items(), tiny_sam(0).state_dict().values()):
        assert torch.equal(got, want), name
    boxes = [(3, 4, 50, 36)]
    np.testing.assert_array_equal(
        SamMasker(loaded).masks(gray, boxes=boxes)[0],
        SamMasker(tiny_sam(0)).masks(gray, boxes=boxes)[0],
    )


def test_masker_from_a_checkpoint_is_owned_by_the_caller(gray, tiny_checkpoint):
    """A masker built from a path loads the weights once and keeps them; the module keeps no model."""
    path, builds = tiny_checkpoint
    masker = SamMasker(path, "vit_b", device="cpu")
    first = masker.masks(gray, boxes=[(3, 4, 50, 36)])
    second = masker.masks(gray, points=[[(10, 10)]])
    assert len(builds) == 1
    assert first[0].shape == second[0].shape == (H, W)
    np.testing.assert_array_equal(first[0], SamMasker(tiny_sam(0)).masks(gray, boxes=[(3, 4, 50, 36)])[0])

    def holds_model(value) -> bool:
        if isinstance(value, (torch.nn.Module, SamMasker)):
            return True
        items = (
            value.values() if isinstance(value, dict) else value if isinstance(value, (list, tuple)) else ()
        )
        return any(holds_model(item) for item in items)

    assert [name for name, value in vars(sam_module).items() if holds_model(value)] == []


def test_checkpoint_of_other_architecture(tmp_path, monkeypatch):
    path = tmp_path / "bigger.pth"
    torch.save(tiny_sam(0, embed_dim=32).state_dict(), path)
    monkeypatch.setitem(sam_model_registry, "vit_b", lambda checkpoint=None: tiny_sam(0))
    with pytest.raises(ValueError, match="does not match model_type 'vit_b'.*differently-shaped"):
        load_sam(path, "vit_b")


def test_pickled_object_is_refused(tmp_path, monkeypatch):
    path = tmp_path / "evil.pth"
    torch.save({"weights": PIL.Image.new("L", (2, 2))}, path)  # not loadable with weights_only=True
    monkeypatch.setitem(sam_model_registry, "vit_b", lambda checkpoint=None: tiny_sam(0))
    with pytest.raises(ValueError, match="weights_only=True"):
        load_sam(path, "vit_b")


def test_missing_checkpoint_and_bad_model_type(tmp_path, gray):
    with pytest.raises(FileNotFoundError, match="segment-anything#model-checkpoints"):
        load_sam(tmp_path / "nope.pth")
    with pytest.raises(ValueError, match="never downloads"):
        SamMasker("https://x/sam_vit_b_01ec64.pth")
    path = tmp_path / "sam.pth"
    path.write_bytes(b"")
    with pytest.raises(ValueError, match="model_type is 'vit_x'"):
        load_sam(path, "vit_x")
    with pytest.raises(TypeError, match="checkpoint path or a segment_anything.modeling.Sam"):
        SamMasker(torch.nn.Linear(2, 2))
    with pytest.raises(TypeError, match="checkpoint path or a segment_anything.modeling.Sam"):
        SamMasker(None)


@pytest.mark.parametrize(
    "points, boxes, message",
    [
        ([[(1, 1)]], [(0, 0, 5, 5), (0, 0, 6, 6)], "points has 1 instances but boxes has 2"),
        ([[(W, 3)]], None, r"points\[0\] contains the point \(x=56, y=3\), outside the 56x40"),
        ([[(3, -1)]], None, "outside"),
        (None, [(0, 0, W + 1, H)], r"boxes\[0\] is \(x0=0, y0=0, x1=57, y1=40\)"),
        (None, [(10, 0, 5, 5)], "0 <= x0 < x1"),
        (None, [(0, 0, 5)], "4 numbers"),
        ([[]], None, "non-empty list"),
        ([None], [None], "neither points nor a box"),
        (None, None, "both None"),
        ([[(float("nan"), 1)]], None, "finite"),
    ],
)
def test_prompt_errors(points, boxes, message):
    with pytest.raises(ValueError, match=message):
        check_prompts(points, boxes, H, W)


def test_box_on_image_edge_is_inside():
    ((points, box),) = check_prompts(None, [(0, 0, W, H)], H, W)
    assert points is None and box.tolist() == [0, 0, W, H]


def test_missing_package_hint(monkeypatch):
    monkeypatch.setitem(sys.modules, "segment_anything", None)
    with pytest.raises(ImportError, match=r"pip install 'mtcolor\[sam\]'"):
        sam_module.SamMasker(object())


@pytest.mark.slow
def test_real_registry_vit_b_checkpoint(tmp_path, gray):
    """The real vit_b architecture (1024 px encoder) through the package's registry."""
    torch.manual_seed(0)
    path = tmp_path / "sam_vit_b_random.pth"
    torch.save(sam_model_registry["vit_b"]().state_dict(), path)
    masks = SamMasker(path, device="cpu").masks(gray, boxes=[(3, 4, 50, 36)], points=[[(20, 20)]])
    assert len(masks) == 1 and masks[0].shape == (H, W) and masks[0].dtype == np.bool_
