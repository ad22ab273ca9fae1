"""The backup catalog: manifest models, key layout, and reading/writing manifests through Storage.

Import what you need from the submodules (``backups``, ``layout``, ``models``): this package
imports nothing, so the archive fast path can use ``layout`` without loading pydantic.
"""
