"""Where a run's data, models and outputs live besides the pod's volumes: object storage
(s3), OCI registries (oci) and the Hugging Face Hub (hub); and the one place their
credentials are read and redacted (secrets)."""
