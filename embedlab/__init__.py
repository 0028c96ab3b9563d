"""embedlab: sentence embeddings of small LMs, before and after contrastive fine-tuning."""
__version__ = "0.1.0"
