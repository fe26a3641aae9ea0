"""Turning a chat into the prompt a model was trained on: FastChat templates or the tokenizer's own."""
