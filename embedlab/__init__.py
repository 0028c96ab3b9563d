"""embedlab: sentence embeddings of small LMs, before and after contrastive fine-tuning."""
from pathlib import Path

__version__ = "0.1.0"
ROOT = Path(__file__).resolve().parent.parent  # the repository (assets/, runs/): the one place it is computed
