"""DINO-LG self-supervised pretraining: loss, schedules, multi-crop with guided crops, augmentations,
trainer."""
