"""SageMaker-contract jobs: training (`python -m training_jobs.train`) and, later, the edge compile step.

Runs in the SageMaker PyTorch CPU training container (Python 3.11, torch 2.5): no torch API newer
than 2.5 is used here.
"""
