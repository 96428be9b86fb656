"""Per-model ml_collections configs; each file's get_config() starts from base."""
