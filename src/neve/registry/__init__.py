"""The model registry: ``manager`` (RegistryManager: models, versions, metadata, rules),
``artifacts`` (where version directories live, with checksums), ``archive`` (directories as tar
streams between client and control plane)."""
