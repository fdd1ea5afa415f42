"""Local stand-ins for the AWS services: the embedded stack's adapters of shared.ports."""
