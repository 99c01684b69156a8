"""The 19 Cityscapes evaluation classes, their colours, and label-id -> train-id lookup tables."""
from __future__ import annotations

import numpy as np

NUM_CLASSES = 19
IGNORE_LABEL = 255

CLASSES: tuple[str, ...] = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
    "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "train",
    "motorcycle", "bicycle",
)

# The standard Cityscapes colours, in train-id order.
PALETTE: tuple[tuple[int, int, int], ...] = (
    (128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156), (190, 153, 153),
    (153, 153, 153), (250, 170, 30), (220, 220, 0), (107, 142, 35), (152, 251, 152),
    (70, 130, 180), (220, 20, 60), (255, 0, 0), (0, 0, 142), (0, 0, 70), (0, 60, 100),
    (0, 80, 100), (0, 0, 230), (119, 11, 32),
)

# Cityscapes label id of each train id (GTA5 labels use the same ids).
LABEL_IDS: tuple[int, ...] = (7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33)


def _build_lut(pairs: dict[int, int]) -> np.ndarray:
    """A 256-entry uint8 table: every byte value a label PNG can hold -> train id, 255 elsewhere."""
    lut = np.full(256, IGNORE_LABEL, dtype=np.uint8)
    for value, train_id in pairs.items():
        lut[value] = train_id
    return lut


#: Cityscapes / GTA5 label id (PNG value) -> train id; 255 for every id that is no evaluated class.
CITYSCAPES_LUT: np.ndarray = _build_lut({label_id: t for t, label_id in enumerate(LABEL_IDS)})

#: BDD100K labels are already train ids: 0..18 stay, everything else (19..255) becomes 255, since
#: values 19..254 are not valid train ids and must not leak into the loss or the metric.
BDD_LUT: np.ndarray = _build_lut({t: t for t in range(NUM_CLASSES)})

#: Train id -> Cityscapes label id (0..18 mapped, every other entry 0 = "unlabeled"); used to write
#: predictions in the official result format and by the synthetic benchmark.
TRAIN_ID_TO_LABEL_ID: np.ndarray = np.zeros(256, dtype=np.uint8)
TRAIN_ID_TO_LABEL_ID[:NUM_CLASSES] = LABEL_IDS

_COLOR_TABLE = np.zeros((256, 3), dtype=np.uint8)
_COLOR_TABLE[:NUM_CLASSES] = PALETTE


def colorize(train_ids: np.ndarray) -> np.ndarray:
    """Colour an (H, W) train-id map with `PALETTE` (ignored / unknown ids black); returns HxWx3 uint8."""
    # torch tensors (any device) are accepted as well as arrays
    ids = train_ids.cpu().numpy() if hasattr(train_ids, "cpu") else np.asarray(train_ids)
    ids = ids.astype(np.int64)
    ids = np.where((ids >= 0) & (ids < 256), ids, IGNORE_LABEL)
    return _COLOR_TABLE[ids]


# --- SYNTHIA-RAND-CITYSCAPES ---------------------------------------------------------------------------------
#: SYNTHIA's class ids (first channel of its 16-bit GT/LABELS PNGs), from the dataset's README.
SYNTHIA_CLASSES: tuple[str, ...] = (
    "void", "sky", "building", "road", "sidewalk", "fence", "vegetation", "pole", "car", "traffic sign",
    "pedestrian", "bicycle", "motorcycle", "parking-slot", "road-work", "traffic light", "terrain", "rider",
    "truck", "bus", "train", "wall", "lanemarking",
)
SYNTHIA_MAX_ID = len(SYNTHIA_CLASSES) - 1

#: SYNTHIA id -> Cityscapes train id for the 16 classes the two share, as the field maps them; SYNTHIA's
#: terrain, truck and train (and void, parking-slot, road-work, lanemarking) are ignored, as there.
SYNTHIA_TO_TRAIN_ID: dict[int, int] = {
    3: 0, 4: 1, 2: 2, 21: 3, 5: 4, 7: 5, 15: 6, 9: 7, 6: 8, 1: 10, 10: 11, 17: 12, 8: 13, 19: 15, 12: 17, 11: 18,
}
SYNTHIA_LUT: np.ndarray = _build_lut(SYNTHIA_TO_TRAIN_ID)

#: Class sets a mean IoU is taken over: all 19; SYNTHIA's 16 (no terrain, truck, train); the 13 of the
#: field's second SYNTHIA protocol (the 16 less wall, fence and pole). Train ids, in order.
CLASS_SETS: dict[str, tuple[int, ...]] = {
    "cityscapes19": tuple(range(NUM_CLASSES)),
    "synthia16": tuple(sorted(SYNTHIA_TO_TRAIN_ID.values())),
    "synthia13": tuple(t for t in sorted(SYNTHIA_TO_TRAIN_ID.values()) if CLASSES[t] not in ("wall", "fence", "pole")),
}
