"""recsvc core: what the trainer and the server share.

Event schema and loaders, id maps, the interaction matrix, the model bundle format, the scoring
path, the feature-store interface and its implementations, generated gRPC stubs, configuration
and the CLI entry point. Must not import `training` or `serving` at module level (the CLI loads
their commands lazily by name).
"""

__version__ = "0.1.0"
BUNDLE_FORMAT_VERSION = 1
