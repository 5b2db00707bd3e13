import io
import warnings

import numpy as np
import PIL.Image
import pytest
import torch

from mtcolor.masks import (
    attention_grids,
    instance_masks,
    lost_instances,
    masks_to_label_map,
    resize_label_map,
    token_grid,
    vanished_instances,
)


def _rect(h, w, top, left, bottom, right):
    m = np.zeros((h, w), dtype=bool)
    m[top:bottom, left:right] = True
    return m


def test_label_map_order_and_background():
    masks = [_rect(6, 8, 0, 0, 2, 2), _rect(6, 8, 4, 4, 6, 8)]
    label = masks_to_label_map(masks)
    assert label.dtype == torch.int64 and label.shape == (6, 8)
    assert (label[:2, :2] == 1).all() and (label[4:, 4:] == 2).all()
    assert int((label == 0).sum()) == 48 - 4 - 8


def test_overlap_goes_to_smallest_mask_and_warns_once():
    big = _rect(10, 10, 0, 0, 10, 10)
    small = _rect(10, 10, 2, 2, 4, 4)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        label = masks_to_label_map([big, small])
    assert len([w for w in caught if "overlap" in str(w.message)]) == 1
    assert (label[2:4, 2:4] == 2).all() and int((label == 1).sum()) == 96
    # equal areas: the lower index wins
    a, b = _rect(4, 4, 0, 0, 2, 4), _rect(4, 4, 1, 0, 3, 4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        label = masks_to_label_map([a, b])
    assert (label[1] == 1).all() and (label[2] == 2).all()


def test_mask_input_kinds_agree():
    m = _rect(5, 7, 1, 1, 4, 5)
    expected = masks_to_label_map([m])
    kinds = [
        [PIL.Image.fromarray(m.astype(np.uint8) * 255)],
        [m.astype(np.uint8) * 255],
        [m.astype(np.uint16) * 65535],
        [m.astype(np.float32) * 0.7],  # non-binary: thresholded at 0.5
        torch.from_numpy(m)[None],
        np.stack([m]),
    ]
    for masks in kinds:
        assert torch.equal(masks_to_label_map(masks), expected)


def _tiff_round_trip(array: np.ndarray) -> PIL.Image.Image:
    buffer = io.BytesIO()
    PIL.Image.fromarray(array.astype(np.int32), mode="I").save(buffer, format="TIFF")  # 32-bit TIFF
    buffer.seek(0)
    image = PIL.Image.open(buffer)
    image.load()
    assert image.mode == "I"
    return image


def _coco_decode(m: np.ndarray) -> np.ndarray:
    mask_api = pytest.importorskip("pycocotools.mask")
    decoded = mask_api.decode(mask_api.encode(np.asfortranarray(m.astype(np.uint8))))
    assert decoded.dtype == np.uint8 and decoded.max() == 1  # what COCO-style datasets hand over
    return decoded


INTEGER_MASKS = {
    "numpy uint8 0/1": lambda m: m.astype(np.uint8),
    "numpy int32 0/1": lambda m: m.astype(np.int32),
    "numpy int64 0/255": lambda m: m.astype(np.int64) * 255,
    "numpy uint16 0/65535": lambda m: m.astype(np.uint16) * 65535,
    "numpy int32 0/65535": lambda m: m.astype(np.int32) * 65535,
    "pycocotools decode": _coco_decode,
    "torch uint8 0/1": lambda m: torch.from_numpy(m.astype(np.uint8)),
    "torch uint8 0/255": lambda m: torch.from_numpy(m.astype(np.uint8) * 255),
    "torch int64 0/1 (1, H, W)": lambda m: torch.from_numpy(m.astype(np.int64))[None],
    "PIL I 0/255": lambda m: PIL.Image.fromarray(m.astype(np.int32) * 255, mode="I"),
    "PIL I 0/1": lambda m: PIL.Image.fromarray(m.astype(np.int32), mode="I"),
    "PIL I;16 0/65535": lambda m: PIL.Image.fromarray(m.astype(np.uint16) * 65535),
    "32-bit TIFF 0/255": lambda m: _tiff_round_trip(m.astype(np.int32) * 255),
    "32-bit TIFF 0/1": lambda m: _tiff_round_trip(m.astype(np.int32)),
}


@pytest.mark.parametrize("make", INTEGER_MASKS.values(), ids=INTEGER_MASKS.keys())
def test_integer_masks_are_read_by_their_range(make):
    m = _rect(5, 7, 1, 1, 4, 5)
    assert torch.equal(masks_to_label_map([make(m)]), masks_to_label_map([m]))


@pytest.mark.parametrize(
    "dtype, below, above",
    [(np.uint8, 127, 128), (np.uint16, 32767, 32768), (np.int32, 127, 128), (np.int64, 32767, 32768)],
)
def test_integer_threshold_is_half_the_full_scale(dtype, below, above):
    """Half of 255 for 8-bit, of 65535 for 16-bit; 32/64-bit: 255 when max <= 255, else 65535."""
    top = 255 if above <= 255 else 65535
    mask = np.array([[0, below, above, top]], dtype=dtype)
    assert masks_to_label_map([mask]).tolist() == [[0, 0, 1, 1]]


@pytest.mark.parametrize(
    "mask, message",
    [
        (np.zeros((4, 4), np.uint8), "masks[0] read as uint8 0/1, in the mask where value > 0.5"),
        (np.full((4, 4), 255, np.uint16), "masks[0] read as uint16 0/65535 (16-bit)"),
        (np.full((4, 4), 100, np.int32), "masks[0] read as int32 0/255 (32-bit, max <= 255)"),
        (np.full((4, 4), 70000, np.int32), "no convention fits"),
        (np.full((4, 4), -1, np.int16), "integer masks must be >= 0"),
    ],
    ids=["all zero", "uint16 0/255", "int32 below half", "too large", "negative"],
)
def test_integer_mask_errors_say_which_convention_was_assumed(mask, message):
    with pytest.raises(ValueError) as info:
        masks_to_label_map([mask])
    assert message in str(info.value)


@pytest.mark.parametrize(
    "masks, message",
    [
        ([np.zeros((4, 4), bool)], "masks[0] is empty"),
        ([np.ones((4, 4), bool), np.ones((5, 4), bool)], "masks[1] has size (5, 4)"),
        ([np.full((4, 4), 2.0, np.float32)], "must lie in [0, 1]"),
        ([np.full((4, 4), np.nan, np.float32)], "NaN"),
        ([np.ones((2, 4, 4), bool)], "must be 2-D"),
        ([PIL.Image.new("RGB", (4, 4))], "mode 'RGB'"),
        ([], "masks is empty"),
        (["not a mask"], "has type str"),
    ],
)
def test_bad_masks_are_rejected_with_a_clear_message(masks, message):
    with pytest.raises((ValueError, TypeError)) as info:
        masks_to_label_map(masks)
    assert message in str(info.value)


def _direct_majority(label, h, w):
    """Direct transcription: count the labels of the pixels whose cell is (i, j), pick the winner."""
    H, W = label.shape
    out = torch.zeros(h, w, dtype=torch.long)
    for i in range(h):
        for j in range(w):
            rows = [p for p in range(H) if p * h // H == i]
            cols = [q for q in range(W) if q * w // W == j]
            cell = label[rows][:, cols].flatten().tolist()
            counts = {lab: cell.count(lab) for lab in set(cell)}
            best = max(counts.values())
            tied = sorted(lab for lab, c in counts.items() if c == best)
            instances = [lab for lab in tied if lab > 0]
            out[i, j] = instances[0] if instances else 0
    return out


@pytest.mark.parametrize(
    "size_in, size_out", [((16, 16), (4, 4)), ((13, 17), (5, 6)), ((10, 9), (3, 7)), ((7, 7), (7, 7))]
)
def test_majority_resize_equals_direct_count(size_in, size_out):
    gen = torch.Generator().manual_seed(0)
    label = torch.randint(0, 4, size_in, generator=gen)
    assert torch.equal(resize_label_map(label, size_out), _direct_majority(label, *size_out))
    batch = torch.stack([label, label.flip(0)])
    resized = resize_label_map(batch, size_out)
    assert torch.equal(resized[1], _direct_majority(label.flip(0), *size_out))


def test_resize_accepts_non_contiguous_label_maps():
    label = torch.randint(0, 3, (12, 16))
    crop = label[2:10, 3:15]  # a view, not contiguous
    assert torch.equal(resize_label_map(crop, (4, 6)), resize_label_map(crop.contiguous(), (4, 6)))


def test_ties_prefer_instances_then_smaller_ids():
    assert resize_label_map(torch.tensor([[0, 2], [0, 2]]), (1, 1)).item() == 2  # instance beats background
    assert resize_label_map(torch.tensor([[3, 2], [3, 2]]), (1, 1)).item() == 2  # smaller id wins
    assert resize_label_map(torch.tensor([[0, 2], [3, 0]]), (1, 1)).item() == 0  # plain majority


def test_upsampling_is_nearest_and_mixed_axes_work():
    label = torch.tensor([[1, 2], [3, 0]])
    up = resize_label_map(label, (4, 4))
    assert torch.equal(up, label.repeat_interleave(2, 0).repeat_interleave(2, 1))
    mixed = resize_label_map(torch.randint(0, 3, (4, 12)), (8, 3))
    assert mixed.shape == (8, 3)


def test_token_grid_follows_unet_chain_and_aspect():
    assert token_grid(64 * 64, 64, 64) == (64, 64)
    assert token_grid(32 * 50, 64, 99) == (32, 50)  # ceil halving of odd sizes
    assert token_grid(8 * 13, 512, 792) == (8, 13)
    assert token_grid(12, 30, 40) == (3, 4)
    with pytest.raises(ValueError, match="num_tokens"):
        token_grid(0, 8, 8)


def test_vanished_instances_and_one_hot():
    label = torch.zeros(16, 16, dtype=torch.long)
    label[:8, :8] = 1
    label[15, 15] = 2
    assert vanished_instances(label, (4, 4)) == [2]
    one_hot = instance_masks(label, 2)
    assert one_hot.shape == (3, 16, 16) and torch.equal(one_hot.sum(0), torch.ones(16, 16))


def test_instance_masks_is_the_one_hot_of_the_labels():
    label = torch.tensor([[0, 1, 2], [2, 2, 5]])  # 5 > n: in no mask
    masks = instance_masks(label, 2)
    assert masks.dtype == torch.float32 and masks.shape == (3, 2, 3)
    for k in range(3):
        assert torch.equal(masks[k], (label == k).float())
    assert masks[:, 1, 2].sum() == 0
    batched = instance_masks(torch.stack([label, label]), 2, torch.bool)  # (..., H, W) -> (..., n + 1, H, W)
    assert (
        batched.dtype == torch.bool
        and batched.shape == (2, 3, 2, 3)
        and torch.equal(batched[1], masks.bool())
    )


def test_attention_grids_are_the_chain_token_grid_searches():
    assert attention_grids((64, 64), 4) == [(64, 64), (32, 32), (16, 16), (8, 8)]  # SD-1.5 at 512 px
    assert attention_grids((8, 11), 3) == [(8, 11), (4, 6), (2, 3)]  # ceil on odd sizes
    for grid in attention_grids((33, 50), 5):
        assert token_grid(grid[0] * grid[1], 33, 50) == grid


def test_lost_instances_lists_the_grids_each_instance_misses():
    label = torch.zeros(64, 64, dtype=torch.long)
    label[:40, :40] = 1  # big: kept everywhere
    label[50:53, 50:53] = 2  # 3x3 pixels: owns one cell of the 32x32 working size, 1/4 of a 16x16 cell
    label[60, 2] = 3  # one pixel: gone at the 32x32 working size already
    grids = attention_grids((16, 16), 2)  # working 32x32 / factor 2: grids 16x16 and 8x8
    lost = lost_instances(label, (32, 32), grids)
    assert lost == {2: [(16, 16), (8, 8)], 3: [(32, 32), (16, 16), (8, 8)]}
    assert lost_instances(label, (64, 64), attention_grids((64, 64), 1)) == {}
