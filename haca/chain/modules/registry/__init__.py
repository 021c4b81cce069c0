"""registry: model manifests (versioned, owned) and inference nodes."""
