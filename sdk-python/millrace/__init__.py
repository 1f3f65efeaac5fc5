"""Millrace Python SDK.

The moose-shaped API (Stream, IngestPipeline, add_transform, ...) and the sidecar that serves user functions
arrive with the Python SDK issue; this package only reserves the name and the version for now.
"""

__version__ = "0.1.0"
