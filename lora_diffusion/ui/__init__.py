"""The web UI: a LoRA library on disk, background training jobs, and the Gradio page on top."""
