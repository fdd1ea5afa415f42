"""The local adapters of shared.ports, stand-ins for the AWS services: the filesystem object store (S3), the SQLite
state store (DynamoDB), model registry (SageMaker Model Registry) and Greengrass, the notifier (SNS), training and
compile as detached jobs (SageMaker); plus the data directory they share (paths) and their SQLite helpers.

They import nothing from runtime/ or edge/: what they emit (events, status changes) goes to a callable they are given.
"""
