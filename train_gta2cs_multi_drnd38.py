"""Train the teacher: DRN-D-38 with multi-level adversarial adaptation, GTA5 (or BDD) -> Cityscapes.

Edit the constants below or override them with flags (`--help` lists them all).
"""
import sys

from utils.cli import run_cli
from utils.config import config_from_constants, parse_config
from utils.engine import run_training

ARCH = "drn_d_38"
AUX_LAYER = 7                      # the auxiliary head taps DRN level 7
SOURCE, TARGET = "gta5", "cityscapes"
DATA_DIRECTORY = "data/gta5"
DATA_LIST_PATH = None              # None: scan DATA_DIRECTORY
DATA_DIRECTORY_TARGET = "data/cityscapes"
DATA_LIST_PATH_TARGET = None
INPUT_SIZE = (1024, 512)           # (w, h) of source images
INPUT_SIZE_TARGET = (1024, 512)    # the original code wrote 512,1024 (portrait) here: a bug
BATCH_SIZE = 5
ITER_SIZE = 1
NUM_WORKERS = 4
NUM_STEPS = 100_000
NUM_STEPS_STOP = 100_000
LEARNING_RATE = 2.5e-4
LEARNING_RATE_D = 1e-4
LAMBDA_SEG = 0.1
LAMBDA_ADV_AUX = 0.0002            # D1, on the aux head (the original code: LAMBDA_ADV_TARGET1)
LAMBDA_ADV_MAIN = 0.001            # D2, on the main head (LAMBDA_ADV_TARGET2)
GAN = "Vanilla"
PRETRAINED = "imagenet"            # DRN ImageNet weights: 'imagenet', a path or URL, or 'none'
RANDOM_SEED = 1234
SAVE_PRED_EVERY = 2000
SNAPSHOT_DIR = None                # None: snapshots/<run name from the key settings>

DEFAULTS = config_from_constants(globals())


def main(argv=None) -> int:
    """Parse flags over the constants above and train."""
    cfg = parse_config(DEFAULTS, argv, prog="train_gta2cs_multi_drnd38.py", description=__doc__, distill=False)
    return run_training(cfg)


if __name__ == "__main__":
    sys.exit(run_cli(main))
