"""Tenant-isolated persistence: context, catalog, stores, sessions and isolation modes.

This package knows nothing of the job queue, the tenant lifecycle tools, the
web layer, the service or the CLI; what other parts must do when a tenant
changes, they register as :class:`~tenantry.tenancy.hooks.TenantHooks`.
"""
