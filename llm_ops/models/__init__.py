"""Where model weights come from when no `--model` is given."""
