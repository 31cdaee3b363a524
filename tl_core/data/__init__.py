"""Images in: the datasets package (safe decoding, ingest, audit, splits, the decoded-image cache,
versions), augmentation presets, and the bundled sample."""
