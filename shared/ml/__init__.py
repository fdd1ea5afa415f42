"""The machine-learning core shared by training and the edge detector.

Everything here depends on numpy (and the standard library) only, so it can be imported on a
turbine gateway without torch, boto3 or pydantic.
"""
