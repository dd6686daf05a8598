"""REST API routes of the control plane, one module per component, each exporting ``routes``."""
