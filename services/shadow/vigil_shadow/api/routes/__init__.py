"""The shadow service's routers."""
