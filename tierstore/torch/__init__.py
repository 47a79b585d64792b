"""PyTorch datasets over tierstore: Arrow shards to tensors, for DataLoaders.

- :class:`IterableDataset` streams a dataset's shards, partitioned by rank and then by
  DataLoader worker, shuffled deterministically in (seed, epoch), read ahead, and
  resumable mid-epoch (``state_dict()`` / ``load_state_dict()``, also per worker through
  ``torchdata.stateful_dataloader.StatefulDataLoader``).
- :class:`MapDataset` gives random access to sample ``i`` (for any sampler, e.g.
  ``DistributedSampler``).
- :class:`tierstore.torch.feed.DeviceFeeder` (imported from there) moves a loader's
  batches to a CUDA device, each copy overlapped with reading the next batch.

Both yield ``dict[str, torch.Tensor]`` — views of the received Arrow buffers wherever the
layout allows (see :mod:`tierstore.torch.arrow_tensors`) — and take their connection from
``TIERSTORE_ADDRESS`` / ``TIERSTORE_TOKEN`` / ``TIERSTORE_CA`` unless given. Needs the
``torch`` extra (from a checkout, ``pip install -e '.[torch]'``: tierstore is installed
from its repository, not from a package index). docs/torch.md is the user guide.
"""

from __future__ import annotations

from tierstore.torch.iterable import IterableDataset
from tierstore.torch.mapstyle import MapDataset

__all__ = ["IterableDataset", "MapDataset"]
