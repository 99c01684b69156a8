"""Train the teacher: DRN-D-38 with multi-level adversarial adaptation, GTA5 (or BDD) -> Cityscapes.

Edit the constants below or override them with flags; any setting can be a constant under its flag's name
in upper case (--random-mirror: RANDOM_MIRROR), and `--help` lists them all. A name that is no setting
stops the run before anything is written.
"""
import sys

from utils.cli import run_cli
from utils.config import parse_config
from utils.engine import run_training

# network
ARCH = "drn_d_38"
AUX_LAYER = 7                      # the auxiliary head taps DRN level 7
NUM_CLASSES = 19
PRETRAINED = "imagenet"            # DRN ImageNet weights: 'imagenet', a path or URL, or 'none'
RESTORE_FROM = None                # or start from a checkpoint (ours, the original code's)
# data
SOURCE, TARGET = "gta5", "cityscapes"
DATA_DIRECTORY = "data/gta5"
DATA_LIST_PATH = None              # None: scan DATA_DIRECTORY
DATA_DIRECTORY_TARGET = "data/cityscapes"
DATA_LIST_PATH_TARGET = None
INPUT_SIZE = (1024, 512)           # (w, h) of source images
INPUT_SIZE_TARGET = (1024, 512)    # the original code wrote 512,1024 (portrait) here: a bug
RANDOM_MIRROR = False              # the original code accepted --random-mirror and ignored it
BATCH_SIZE = 5
ITER_SIZE = 1
NUM_WORKERS = 4
# optimisation
NUM_STEPS = 100_000
NUM_STEPS_STOP = 100_000
LEARNING_RATE = 2.5e-4
LEARNING_RATE_D = 1e-4
MOMENTUM = 0.9
WEIGHT_DECAY = 5e-4
POWER = 0.9
# objective
LAMBDA_SEG = 0.1
LAMBDA_ADV_AUX = 0.0002            # D1, on the aux head (the original code: LAMBDA_ADV_TARGET1)
LAMBDA_ADV_MAIN = 0.001            # D2, on the main head (LAMBDA_ADV_TARGET2)
GAN = "Vanilla"
# run
DEVICE = "auto"                    # 'cpu', 'cuda', 'cuda:N'
AMP = "off"                        # 'bf16' or 'fp16' autocast
CHANNELS_LAST = False
RANDOM_SEED = 1234
SAVE_PRED_EVERY = 2000
EVAL_EVERY = 0                     # > 0: score the target's val split and the selection signals every N steps
SELECT = "last"                    # keep the snapshot this criterion picks (e.g. "entropy"; docs/selection.md)
SNAPSHOT_DIR = None                # None: snapshots/<run name from the key settings>


def main(argv=None) -> int:
    """Parse flags over the constants above and train."""
    cfg = parse_config(globals(), argv, prog="train_gta2cs_multi_drnd38.py", description=__doc__, distill=False)
    return run_training(cfg)


if __name__ == "__main__":
    sys.exit(run_cli(main))
