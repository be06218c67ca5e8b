"""A1111's `modules.sd_models_xl`: SDXL conditioning hooks on the LDM model; internals we do not have."""
from modules.a1111.unsupported import unsupported

get_learned_conditioning = unsupported("sd_models_xl.get_learned_conditioning", "use prompt_parser")
apply_model = unsupported("sd_models_xl.apply_model", "the denoiser is a diffusers UNet")
get_target_prompt_token_count = unsupported("sd_models_xl.get_target_prompt_token_count", "use sd_hijack")
extend_sdxl = unsupported("sd_models_xl.extend_sdxl", "LDM internals")
