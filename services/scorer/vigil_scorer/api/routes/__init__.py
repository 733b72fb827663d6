"""The scorer's routers."""
