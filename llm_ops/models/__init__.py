"""Where model weights come from when no `--model-path` is given."""
