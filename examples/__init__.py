"""Examples of networks of your own for `stbp train --model` (see `resnet_factory`)."""
