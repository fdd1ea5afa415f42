"""AWS adapters of the ports in shared.ports: one small class per service, boto3 client injected (built lazily
by default), botocore ClientError translated into shared.errors."""
