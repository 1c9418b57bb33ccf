"""The model's inputs and loop: checkpoint and manifest readers, conditioning, tokens, the rectified-flow sampler."""
