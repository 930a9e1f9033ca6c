"""The ``tenantry`` command line (entry point: :func:`tenantry.cli.main.main`)."""
