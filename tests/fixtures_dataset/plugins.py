"""A plug-in segmenter for the dataset_builder tests (loaded by import path "plugins:CenterBoxSegmenter")."""

import numpy as np
from mtcolor.dataset_builder.segmenters import Instance, Segmenter


class CenterBoxSegmenter(Segmenter):
    """One instance: the central box covering the middle half of each side."""

    name = "center-box"

    def __init__(self, label: str | None = None):
        self.label = label

    def segment(self, image, annotations):
        h, w = image.shape[:2]
        mask = np.zeros((h, w), bool)
        mask[h // 4 : h - h // 4, w // 4 : w - w // 4] = True
        return [Instance(mask, self.label)]
