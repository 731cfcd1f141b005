"""Registries and images: references, HTTP, credentials, the registry protocol, manifests,
indexes and configs (``schema``), the blob cache (``store``), pulling, and applying layers."""
