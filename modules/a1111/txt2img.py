"""A1111's `modules.txt2img`: its UI handler; extensions should build a p object and call process_images."""
from modules.a1111.unsupported import unsupported

txt2img = unsupported("txt2img.txt2img", "the UI's own txt2img handler; call process_images with a p object")
txt2img_create_processing = unsupported("txt2img.txt2img_create_processing", "build StableDiffusionProcessingTxt2Img")
