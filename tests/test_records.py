"""The record format contract: RLE round trip, encode/decode of rows, loading shards."""

import numpy as np
import pytest
import torch

from mtcolor.records import FEATURES, decode_masks, decode_record, encode_masks, encode_record, load_records


def _random_masks(n=5, h=37, w=53, seed=0):
    rng = np.random.default_rng(seed)
    masks = rng.random((n, h, w)) < 0.3
    masks[0] = False  # an empty mask survives too
    masks[1, :, :] = True
    return masks


def test_masks_survive_rle_exactly():
    masks = _random_masks()
    rles = encode_masks(masks)
    assert len(rles) == 5
    assert all(isinstance(r["counts"], str) and r["size"] == [37, 53] for r in rles)
    decoded = decode_masks(rles)
    assert decoded.dtype == torch.bool
    assert torch.equal(decoded, torch.from_numpy(masks))
    # tensors in, bytes counts accepted back
    again = decode_masks(
        [{"size": r["size"], "counts": r["counts"].encode()} for r in encode_masks(torch.from_numpy(masks))]
    )
    assert torch.equal(again, decoded)


def test_empty_mask_list_and_bad_input():
    assert encode_masks(np.zeros((0, 4, 6), bool)) == []
    assert decode_masks([], size=(4, 6)).shape == (0, 4, 6)
    with pytest.raises(ValueError, match="masks has shape"):
        encode_masks(np.zeros((4, 6), bool))
    with pytest.raises(ValueError, match="other than 0/1"):
        encode_masks(np.full((1, 4, 6), 0.5))
    with pytest.raises(ValueError, match="different sizes"):
        decode_masks(encode_masks(np.ones((1, 2, 2), bool)) + encode_masks(np.ones((1, 3, 3), bool)))


def _row(masks, image):
    n = len(masks)
    return {
        "id": "x1",
        "image": image,
        "masks": masks,
        "instance_texts": [f"a red thing{i}" for i in range(n)],
        "instance_labels": [f"thing{i}" for i in range(n)],
        "instance_colors": ["red"] * n,
        "global_text": "A warm image. The image shows red things.",
        "source": "test",
        "instance_captioners": ["rule"] * n,
        "global_captioner": "rule",
        "verification": ["agree"] * n,
    }


def test_encode_decode_record_round_trip(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (37, 53, 3), dtype=np.uint8)
    masks = np.zeros((3, 37, 53), bool)
    masks[0, :10] = True
    masks[1, 10:20, :30] = True
    masks[2, 5:15, 20:40] = True  # overlaps both: smaller mask wins in the label map
    encoded = encode_record(_row(masks, image))
    assert encoded["width"] == 53 and encoded["height"] == 37
    pq.write_table(
        pa.Table.from_pylist([encoded], schema=FEATURES.arrow_schema),
        tmp_path / "train-00000-of-00001.parquet",
    )
    dataset = load_records(tmp_path, split="train")
    assert dataset.features == FEATURES
    record = decode_record(dataset[0])
    assert torch.equal(record.masks, torch.from_numpy(masks))
    assert torch.equal(
        record.image, torch.from_numpy(image).permute(2, 0, 1).float() / 255
    )  # PNG is lossless
    assert record.gray.shape == (1, 37, 53) and 0 <= record.gray.min() and record.gray.max() <= 1
    areas = masks.sum((1, 2))
    assert areas[2] < areas[1] < areas[0]
    assert (record.label_map[masks[2]] == 3).all()  # the smallest overlapping mask owns the pixel
    assert set(record.label_map.unique().tolist()) == {0, 1, 2, 3}
    assert record.instance_texts == ["a red thing0", "a red thing1", "a red thing2"]
    assert record.verification == ["agree"] * 3 and record.global_captioner == "rule"
    resized = decode_record(dataset[0], size=(20, 30))
    assert resized.image.shape == (3, 20, 30) and resized.masks.shape == (3, 20, 30)
    assert resized.label_map.shape == (20, 30)


def test_record_validation_names_the_problem():
    image = np.zeros((8, 8, 3), np.uint8)
    row = _row(np.ones((2, 8, 8), bool), image)
    row["instance_texts"] = ["only one"]
    with pytest.raises(ValueError, match="len\\(instance_texts\\) = 1 but there are 2 masks"):
        encode_record(row)
    row = _row(np.ones((1, 4, 4), bool), image)
    with pytest.raises(ValueError, match="image is 8x8"):
        encode_record(row)
    row = _row(np.ones((1, 8, 8), bool), image)
    row["verification"] = ["maybe"]
    with pytest.raises(ValueError, match="verification values"):
        encode_record(row)


def test_load_records_split_selection(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    encoded = encode_record(_row(np.ones((1, 8, 8), bool), np.zeros((8, 8, 3), np.uint8)))
    data = tmp_path / "data"
    data.mkdir()
    for split in ("train", "test"):
        pq.write_table(
            pa.Table.from_pylist([encoded], schema=FEATURES.arrow_schema),
            data / f"{split}-00000-of-00002.parquet",
        )
    (data / ".train-00001-of-00002.parquet.tmp-host-1").write_bytes(b"partial")  # in-flight: ignored
    with pytest.warns(UserWarning, match="1 of 2 shards"):
        assert len(load_records(tmp_path)) == 1  # "train" by default
    with pytest.raises(ValueError, match="available splits"):
        load_records(tmp_path, split="validation")
