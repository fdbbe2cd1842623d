"""The package version, in one place (pyproject.toml reads it too), and the
REST API version this SDK speaks."""

__version__ = "0.1.0"

#: The REST API version this SDK speaks: a service must report the same
#: `api_version` in `GET /v2/version?service=all` (docs/api.md, "Version compatibility").
API_VERSION = 1
