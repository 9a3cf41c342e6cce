"""DeepCache-style feature reuse on a diffusers ``UNet2DConditionModel`` (used by CMLoRA's cache).

A full pass can *record* the deep feature: the input of the UNet's last up block, i.e. everything the
blocks below the outermost level computed. A *shallow* pass then recomputes only the outer path (time
embedding, ``conv_in``, the first down block, the last up block, ``conv_out``) and feeds the recorded feature
where the deep blocks' output would enter::

    conv_in -> down_blocks[0] ------------------------------------------> up_blocks[-1] -> conv_out
                   \\-> down_blocks[1:] -> mid_block -> up_blocks[:-1] --/   (skipped; recorded feature instead)

On SD1.5 this is DeepCache's ``cache_layer_id=0, cache_block_id=1`` (the setting of CMLoRA's released
scripts): the shallow path runs both resnet/attention pairs of the first down block and the whole last up
block. Skipping is done by replacing the deep blocks' ``forward`` for the duration of the pass (DeepCache's
own diffusers extension works the same way), so the UNet's forward itself is not copied. The first down
block's downsampler still runs (its output feeds a skipped block): one strided convolution of waste.

Recording or reusing a feature with the same inputs gives the full pass's output exactly
(``tests/test_methods_field.py``).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Iterator

import torch


@dataclass
class RecordedFeature:
    feature: torch.Tensor | None = None


@contextlib.contextmanager
def recording_deep_feature(unet: Any) -> Iterator[RecordedFeature]:
    """Within the block, every UNet forward records the input of its last up block (the whole batch)."""
    recorded = RecordedFeature()

    def keep(_module: Any, args: tuple, kwargs: dict) -> None:
        recorded.feature = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]

    handle = unet.up_blocks[-1].register_forward_pre_hook(keep, with_kwargs=True)
    try:
        yield recorded
    finally:
        handle.remove()


@contextlib.contextmanager
def skipping_deep_blocks(unet: Any, feature: torch.Tensor) -> Iterator[None]:
    """Within the block, UNet forwards skip every block below the outermost level and use ``feature`` (shape of
    the last up block's input, one row per batch element) in their place."""
    if len(unet.down_blocks) < 2:
        raise ValueError("a UNet with one down block has no deep blocks to skip")

    def skipped_down(block: Any) -> Any:
        # as many residuals as the real block returns, so the up path slices them the same way; the skipped
        # up blocks ignore their values
        count = len(block.resnets) + (len(block.downsamplers) if getattr(block, "downsamplers", None) else 0)

        def forward(*args: Any, **kwargs: Any) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
            hidden = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
            return hidden, (hidden,) * count

        return forward

    def skipped_mid(*args: Any, **kwargs: Any) -> torch.Tensor:
        return kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]

    def skipped_up(*args: Any, **kwargs: Any) -> torch.Tensor:
        return feature

    replaced = [(block, skipped_down(block)) for block in unet.down_blocks[1:]]
    if unet.mid_block is not None:
        replaced.append((unet.mid_block, skipped_mid))
    replaced += [(block, skipped_up) for block in unet.up_blocks[:-1]]
    for block, forward in replaced:
        block.forward = forward
    try:
        yield
    finally:
        for block, _ in replaced:
            del block.forward  # back to the class's forward
