"""The fully convolutional output-space discriminator (one per adaptation level)."""

from __future__ import annotations

from torch import Tensor, nn

MIN_SIZE = 32  # height and width the five stride-2 convolutions need (32 -> 16 -> 8 -> 4 -> 2 -> 1)


class Discriminator(nn.Module):
    """Class probabilities (N, num_classes, H, W) -> domain logits (N, 1, H/32, W/32).

    Five 4x4 convolutions with stride 2 and padding 1 (num_classes -> ndf -> 2ndf -> 4ndf -> 8ndf
    -> 1), LeakyReLU(0.2) after the first four. Module names match AdaptSegNet's discriminator.
    """

    def __init__(self, num_classes: int = 19, ndf: int = 64) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(num_classes, ndf, 4, stride=2, padding=1)
        self.conv2 = nn.Conv2d(ndf, ndf * 2, 4, stride=2, padding=1)
        self.conv3 = nn.Conv2d(ndf * 2, ndf * 4, 4, stride=2, padding=1)
        self.conv4 = nn.Conv2d(ndf * 4, ndf * 8, 4, stride=2, padding=1)
        self.classifier = nn.Conv2d(ndf * 8, 1, 4, stride=2, padding=1)
        self.leaky_relu = nn.LeakyReLU(0.2, inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        """Logits map: positive means "looks like the target domain" (source label 0, target 1)."""
        for conv in (self.conv1, self.conv2, self.conv3, self.conv4):
            x = self.leaky_relu(conv(x))
        return self.classifier(x)
