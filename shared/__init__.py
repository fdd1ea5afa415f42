"""Code shared by every Lambda, the local stack, the training job and the edge detector."""
