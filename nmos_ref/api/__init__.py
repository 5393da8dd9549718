"""The HTTP APIs (Klein), one module per API, sharing api.common."""
