"""SageMaker script-mode entry point (`sagemaker_program=train_entry.py`, see shared/aws/training.py).

The PyTorch training container unpacks sourcedir.tar.gz (built by `nacelle aws package`) into /opt/ml/code,
pip-installs the requirements.txt at its root and runs `python train_entry.py` there, so `training_jobs` and
`shared` import from the archive itself. The job reads the SageMaker contract variables, not argv.
"""

from training_jobs.train import main

if __name__ == "__main__":
    raise SystemExit(main())
