"""What each micro-step trains on: this process's share of the global batch, its latents and conditioning, with
pixels made ahead on worker threads and the next batch's latents encoded while the current step runs."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

from ..data.prefetch import Prefetcher, default_workers
from .objective import Share

PREFETCH_AHEAD = 4  # micro-batches whose pixels worker threads make ahead of the step


@dataclass
class MicroBatch:
    latents: torch.Tensor
    text_states: torch.Tensor
    added: dict | None  # SDXL's pooled text and size conditioning
    share: Share
    mask: torch.Tensor | None = None  # B×1×h×w loss weights at the latents' size (--masked-loss)
    weights: torch.Tensor | None = None  # B: each sample's loss weight (regularization images: --prior-loss-weight)


class BatchFeed:
    """Micro-batches of one run, by index (step × gradient accumulation + micro-step): a pure function of the
    seed and the index, so a resumed run trains on exactly what a straight run did."""

    def __init__(self, run):
        cfg, accelerator = run.cfg, run.accelerator
        self.data, self.inputs, self.train_text = run.data, run.inputs, cfg.train_text_encoder
        self.prior_weight = cfg.prior_loss_weight
        self.world, self.rank = accelerator.num_processes, accelerator.process_index
        self.per_step = cfg.batch_size * self.world  # the global batch, split across processes
        # the number of batches per epoch does not depend on the shuffle, so it is computed once
        self.batches_per_epoch = max(1, len(self.data.batches(0, self.per_step)))
        self.epoch_batches: dict[int, list[list[int]]] = {}
        self.total = cfg.steps * cfg.gradient_accumulation
        # uncached pixels (random crops, cache off) are made on worker threads a few batches ahead
        cuda = accelerator.device.type == "cuda"
        self.prefetch = (Prefetcher(lambda key: self.data.pixels(*key), default_workers())
                         if cuda and not self.inputs.cache_latents else None)
        # uncached latents: the next batch is encoded while this step runs (StepInputs.stage)
        self.lookahead = not self.inputs.cache_latents
        self.masks: dict[tuple[int, bool], torch.Tensor] = {}  # (index, flipped) -> 1×h×w, fixed placements only

    def part(self, index: int) -> tuple[list[int], int, Share]:
        """This process's part of global batch ``index``, its epoch, and where the part sits in the batch."""
        epoch, position = divmod(index, self.batches_per_epoch)
        if epoch not in self.epoch_batches:
            if len(self.epoch_batches) > 1:  # the current epoch and the next (looked at by the prefetcher)
                del self.epoch_batches[min(self.epoch_batches)]
            self.epoch_batches[epoch] = self.data.batches(epoch, self.per_step)
        batch = self.epoch_batches[epoch][position]
        each = math.ceil(len(batch) / self.world)
        # a bucket's last batch may be short: a process left without rows repeats the last one
        start = min(self.rank * each, len(batch) - 1)
        stop = max(start + 1, min(len(batch), start + each))
        return batch[start:stop], epoch, Share(start, len(batch))

    def batch(self, index: int, generator: torch.Generator) -> MicroBatch:
        """Micro-batch ``index``: latents sampled with ``generator``, captions encoded (with grad if trained)."""
        indices, epoch, share = self.part(index)
        if self.prefetch is not None:
            self._prefetch_after(index)
        data = self.data
        places = [data.placement(i, epoch) for i in indices]  # one crop/flip draw per sample
        latents = self.inputs.latent_batch([(i, p.flipped) for i, p in zip(indices, places)],
                                           self._pixels_for(epoch), generator, share)
        captions = [data.caption(i, epoch) for i in indices]
        geometries = [data.geometry(i, epoch, p) for i, p in zip(indices, places)]
        states, added = self.inputs.unet_conditioning(captions, geometries, self.train_text)
        mask = self._masks(indices, places, epoch, latents) if data.masked else None
        weights = (torch.tensor([self.prior_weight if data.is_reg(i) else 1.0 for i in indices], device=latents.device)
                   if data.has_reg else None)
        return MicroBatch(latents, states, added, share, mask, weights)

    def _masks(self, indices: list[int], places: list, epoch: int, latents: torch.Tensor) -> torch.Tensor:
        """The samples' loss masks, placed as their pixels and averaged down to the latents' size (a latent pixel
        counts by the share of its image pixels that do); cached like the latents when the placement is fixed."""
        out = []
        for i, place in zip(indices, places):
            key = (i, place.flipped)
            mask = self.masks.get(key)
            if mask is None:
                pixels = self.data.mask(i, epoch, place.flipped)[None]
                mask = torch.nn.functional.interpolate(pixels, size=tuple(latents.shape[-2:]), mode="area")[0]
                if self.data.deterministic:
                    self.masks[key] = mask
            out.append(mask)
        return torch.stack(out).to(latents.device)

    def stage_after(self, index: int) -> None:
        """Start encoding the batch after ``index`` (uncached latents only); called while the step runs."""
        if self.lookahead and index + 1 < self.total:
            next_indices, next_epoch, _ = self.part(index + 1)
            keys = [(i, self.data.placement(i, next_epoch).flipped) for i in next_indices]
            self.inputs.stage(keys, self._pixels_for(next_epoch))

    def close(self) -> None:
        if self.prefetch is not None:
            self.prefetch.close()

    def _pixels_for(self, epoch: int) -> Callable:
        if self.prefetch is None:
            return lambda key: self.data.pixels(key[0], epoch, key[1])
        return lambda key: self.prefetch.get((key[0], epoch, key[1]))

    def _prefetch_after(self, index: int) -> None:
        for later in range(index + 1, min(index + 1 + PREFETCH_AHEAD, self.total)):
            later_indices, later_epoch, _ = self.part(later)
            self.prefetch.want((i, later_epoch, self.data.placement(i, later_epoch).flipped) for i in later_indices)
