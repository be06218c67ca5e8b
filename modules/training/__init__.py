"""Training on the user's own images: LoRA (kohya-format files) and textual inversion (A1111 embeddings).

`common` holds what every trainer shares (errors, progress, noise/timestep sampling, precision) and is also used by
the from-scratch demo training; `config` the JSON/TOML-readable settings; `dataset` images, captions, templates and
buckets; `text_encoding` prompts with gradients; `kohya_format` the LoRA file; `session` how a run gets the model
and its turn in the engine's queue; `loop` the step loop (saving, samples, interrupt) with `resume`, `samples` and
`loss_plot`; `lora_trainer` / `embedding_trainer` the two kinds; `command` the CLI subcommands.
"""
