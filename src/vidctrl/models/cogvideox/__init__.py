"""CogVideoX (1.0 and 1.5) components: strict loading from a local diffusers folder, positions,
input widening, inpainting conditions, and tiny random models in the release layout."""

from vidctrl.models.cogvideox.components import (
    ALL_PARTS,
    STRAY_POS_EMBEDDING,
    CogVideoXComponents,
    CogVideoXModelFilesError,
    build_transformer,
    load_cogvideox_components,
    load_cogvideox_text_encoder,
    load_cogvideox_tokenizer,
    load_cogvideox_transformer,
    load_cogvideox_vae,
    load_scheduler_config,
    load_transformer_weights,
    resize_crop_region_for_grid,
    rotary_embedding,
    transformer_key_map,
    widen_patch_embedding,
)
from vidctrl.models.cogvideox.inpaint import draw_inpaint_mask, latent_mask, noise_kept_pixels
from vidctrl.models.cogvideox.tiny import PRESET_IN_CHANNELS, VARIANTS, tiny_configs, write_tiny_cogvideox

__all__ = [
    "ALL_PARTS",
    "PRESET_IN_CHANNELS",
    "STRAY_POS_EMBEDDING",
    "VARIANTS",
    "CogVideoXComponents",
    "CogVideoXModelFilesError",
    "build_transformer",
    "draw_inpaint_mask",
    "latent_mask",
    "load_cogvideox_components",
    "load_cogvideox_text_encoder",
    "load_cogvideox_tokenizer",
    "load_cogvideox_transformer",
    "load_cogvideox_vae",
    "load_scheduler_config",
    "load_transformer_weights",
    "noise_kept_pixels",
    "resize_crop_region_for_grid",
    "rotary_embedding",
    "tiny_configs",
    "transformer_key_map",
    "widen_patch_embedding",
    "write_tiny_cogvideox",
]
