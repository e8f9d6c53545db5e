"""Paged KV-cache blocks: allocation, reference counts and prefix caching.

A full block's key chains the previous block's key with this block's token ids (and extra keys such
as image hashes), so equal keys mean equal prefixes. Blocks whose reference count drops to zero go to
the free queue but keep their key: a later request with the same prefix can take them back until they
are evicted, least recently freed first.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Any

import numpy as np
import xxhash

from fastdeploy.engine.request import Request


def hash_block(parent: int | None, token_ids: list[int], extra_keys: Any = None) -> int:
    h = xxhash.xxh3_64()
    h.update((parent if parent is not None else 0).to_bytes(8, "little"))
    h.update(np.asarray(token_ids, dtype=np.int64).tobytes())
    if extra_keys is not None:
        h.update(repr(extra_keys).encode())
    return h.intdigest()


class BlockManager:
    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool = True):
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.enable_prefix_caching = enable_prefix_caching
        self.ref_counts = [0] * num_blocks
        self.block_hash: list[int | None] = [None] * num_blocks
        self.cached_blocks: dict[int, int] = {}                # key -> block id
        # free blocks in eviction order (first = evicted first); cached ones stay findable here
        self.free_queue: OrderedDict[int, None] = OrderedDict((i, None) for i in range(num_blocks))

    @property
    def num_free_blocks(self) -> int:
        return len(self.free_queue)

    @property
    def num_used_blocks(self) -> int:
        return self.num_blocks - len(self.free_queue)

    def blocks_needed(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    # ---- prefix cache -------------------------------------------------------------------------
    def find_cached_prefix(self, req: Request) -> list[int]:
        """Cached blocks for the longest run of req's leading full blocks. The last token is never
        served from the cache: the step that computes it produces the logits to sample from."""
        if not self.enable_prefix_caching:
            return []
        hits, parent = [], None
        for i in range((req.num_tokens - 1) // self.block_size):
            key = self._block_key(req, i, parent)
            block = self.cached_blocks.get(key)
            if block is None:
                break
            hits.append(block)
            parent = key
        return hits

    def _block_key(self, req: Request, i: int, parent: int | None) -> int:
        if i < len(req.block_hashes):
            return req.block_hashes[i]
        bs = self.block_size
        return hash_block(parent, req.tokens(i * bs, (i + 1) * bs), req.extra_keys)

    def cache_full_blocks(self, req: Request) -> None:
        """Registers the blocks that req's computed tokens have filled since the last call. A block whose
        last token is still on the device (async scheduling) waits: its key needs that token's value."""
        if not self.enable_prefix_caching:
            return
        num_full = min(req.num_computed_tokens, req.num_tokens) // self.block_size
        for i in range(len(req.block_hashes), num_full):
            parent = req.block_hashes[i - 1] if i else None
            key = self._block_key(req, i, parent)
            req.block_hashes.append(key)
            block = req.block_table[i]
            if key not in self.cached_blocks:          # an identical block may already be cached
                self.cached_blocks[key] = block
                self.block_hash[block] = key

    # ---- allocation ---------------------------------------------------------------------------
    def can_allocate(self, req: Request, num_new_tokens: int, cached_prefix: list[int] = ()) -> bool:
        # cached blocks that sit in the free queue are taken out of it, so they count against it
        revived = sum(1 for b in cached_prefix if self.ref_counts[b] == 0)
        have = len(req.block_table) + len(cached_prefix)
        need = self.blocks_needed(req.num_computed_tokens + len(cached_prefix) * self.block_size
                                  + num_new_tokens) - have
        return max(need, 0) + revived <= self.num_free_blocks

    def allocate(self, req: Request, num_new_tokens: int, cached_prefix: list[int] = ()) -> bool:
        """Gives req the blocks for `num_new_tokens` more tokens (after taking `cached_prefix`, the
        result of `find_cached_prefix`, as already computed). False, with nothing changed, when the
        free blocks do not suffice."""
        if not cached_prefix and req.num_computed_tokens + num_new_tokens <= len(req.block_table) * self.block_size:
            return True       # the common decode step: its last block still has room
        if not self.can_allocate(req, num_new_tokens, cached_prefix):
            return False
        for block in cached_prefix:
            self._take(block)
            req.block_table.append(block)
        req.num_computed_tokens += len(cached_prefix) * self.block_size
        need = self.blocks_needed(req.num_computed_tokens + num_new_tokens) - len(req.block_table)
        for _ in range(need):
            block, _ = self.free_queue.popitem(last=False)
            self._evict(block)
            self.ref_counts[block] = 1
            req.block_table.append(block)
        return True

    def free(self, req: Request) -> None:
        """Releases req's blocks. Tail blocks are queued first so that, among one request's blocks,
        the end of the prefix is evicted before its start (the start is the most shareable part)."""
        for block in reversed(req.block_table):
            self.ref_counts[block] -= 1
            if self.ref_counts[block] == 0:
                if self.block_hash[block] is None:
                    self.free_queue[block] = None
                    self.free_queue.move_to_end(block, last=False)   # nothing to keep: reuse first
                else:
                    self.free_queue[block] = None
        req.block_table = []
        req.block_hashes = []
        req.num_computed_tokens = 0

    def _take(self, block: int) -> None:
        if self.ref_counts[block] == 0:
            del self.free_queue[block]
        self.ref_counts[block] += 1

    def _evict(self, block: int) -> None:
        key = self.block_hash[block]
        if key is not None:
            self.block_hash[block] = None
            if self.cached_blocks.get(key) == block:
                del self.cached_blocks[key]
