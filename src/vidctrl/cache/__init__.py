"""Latent and text caching: `vidctrl cache` writes what the frozen encoders compute for every sample
of a planned epoch, and `vidctrl train --load_tensors` trains from it without loading the encoders.

- `fingerprint`: what decides the cached tensors, and what changed since a cache was written.
- `store`: the cache folder (plan, safetensors shards, index), written atomically and resumably.
- `build`: the `vidctrl cache` run (plan epoch 0, encode each rank's share, write, index).
- `loader`: the training side (check the fingerprint, same-shape batches of cached samples).
"""
