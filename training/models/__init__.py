"""Model code for the slice filter (ViT backbone + linear head), DINO-LG pretraining head and U-Net."""

from cacstream.training.models.registry import create_model, list_models, model_entry

__all__ = ["create_model", "list_models", "model_entry"]
