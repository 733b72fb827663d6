"""The drift service's routers."""
