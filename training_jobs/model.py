"""The detector's networks.

`ConvAutoencoder` has a real bottleneck (a few dozen latent numbers for a 6 x 100 window), so it
cannot learn the identity and must model how the features move together. `SeedAutoencoder` is the
seed's over-complete 2-D network (seed-spec §2.1), kept only as an option for comparison.
`ScoringModel` wraps either with the normalisation, missing-value handling and per-feature error,
so the exported ONNX graph holds all the math the device needs.
"""

from __future__ import annotations

import math

import torch
from torch import nn

ARCHITECTURES = ("conv1d", "seed")


class ConvAutoencoder(nn.Module):
    def __init__(self, n_features: int, length: int, channels: int = 32, latent: int = 32,
                 dropout: float = 0.0) -> None:
        super().__init__()
        self.length = length
        self.reduced = math.ceil(length / 4)
        self.channels = channels
        self.encoder = nn.Sequential(
            nn.Conv1d(n_features, channels, 5, stride=2, padding=2), nn.ReLU(), nn.Dropout(dropout),
            nn.Conv1d(channels, channels, 5, stride=2, padding=2), nn.ReLU(),
            nn.Flatten(), nn.Linear(channels * self.reduced, latent),
        )
        self.expand = nn.Linear(latent, channels * self.reduced)
        self.decoder = nn.Sequential(
            nn.ReLU(), nn.Dropout(dropout),
            nn.ConvTranspose1d(channels, channels, 4, stride=2, padding=1), nn.ReLU(),
            nn.ConvTranspose1d(channels, n_features, 4, stride=2, padding=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.expand(self.encoder(x)).view(-1, self.channels, self.reduced)
        return self.decoder(z)[..., : self.length]


class SeedAutoencoder(nn.Module):
    """The seed's network: (B, F, 100) viewed as (B, F, 10, 10), 2x2 kernels, no bottleneck."""

    def __init__(self, n_features: int, length: int, dropout: float = 0.0) -> None:
        super().__init__()
        if length != 100:
            raise ValueError("the seed architecture needs windows of exactly 100 samples")
        self.net = nn.Sequential(
            nn.Conv2d(n_features, 32, 2, padding=1), nn.ReLU(), nn.Dropout(dropout),
            nn.Conv2d(32, 64, 2, padding=1), nn.ReLU(), nn.Dropout(dropout),
            nn.Conv2d(64, 128, 2, padding=2), nn.ReLU(),
            nn.ConvTranspose2d(128, 64, 2, padding=2), nn.ReLU(), nn.Dropout(dropout),
            nn.ConvTranspose2d(64, 32, 2, padding=1), nn.ReLU(), nn.Dropout(dropout),
            nn.ConvTranspose2d(32, n_features, 2, padding=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, f, length = x.shape
        return self.net(x.reshape(b, f, 10, 10)).reshape(b, f, length)


def build_autoencoder(architecture: str, n_features: int, length: int, channels: int = 32,
                      latent: int = 32, dropout: float = 0.0) -> nn.Module:
    if architecture == "conv1d":
        return ConvAutoencoder(n_features, length, channels, latent, dropout)
    if architecture == "seed":
        return SeedAutoencoder(n_features, length, dropout)
    raise ValueError(f"unknown architecture {architecture!r}; choose one of {ARCHITECTURES}")


def masked_loss(reconstruction: torch.Tensor, target: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Mean squared error over the samples that were present."""
    diff = (reconstruction - target) * valid
    return diff.pow(2).sum() / valid.sum().clamp(min=1.0)


class ScoringModel(nn.Module):
    """Raw feature windows (B, F, L) -> per-feature error (B, F) and missing fraction (B, F).

    Missing samples (NaN) are replaced by the training mean before the network sees them and are
    left out of the error, which is the mean absolute reconstruction error in normalised units.
    """

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, autoencoder: nn.Module, mean: torch.Tensor, std: torch.Tensor) -> None:
        super().__init__()
        self.autoencoder = autoencoder
        self.register_buffer("mean", mean.reshape(1, -1, 1).float())
        self.register_buffer("std", std.reshape(1, -1, 1).float())

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        missing = torch.isnan(x)
        valid = (~missing).float()
        z = torch.where(missing, torch.zeros_like(x), (x - self.mean) / self.std)
        reconstruction = self.autoencoder(z)
        abs_error = (reconstruction - z).abs() * valid
        count = valid.sum(dim=2)
        error = abs_error.sum(dim=2) / count.clamp(min=1.0)
        return error, 1.0 - count / x.shape[2]
